"""Language-model metrics, each labelled with the tokenizer it was measured under.

Perplexity is only comparable between runs with the same tokenizer and vocabulary; bits per byte (total
cross-entropy in bits divided by the UTF-8 bytes of the text) is comparable across tokenizers.

Accuracy is top-1: a token counts as a hit when its logit is strictly above every other logit. A tie is a miss, so
a model that predicts nothing (a constant head, e.g. the zero head Phase 2 starts from) scores 0, not 100 %; every
model of the kit is scored by this one rule (:func:`top1_hits`, and the chunked cross-entropy's own count).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class LMEval:
    """Token-averaged evaluation of next-token prediction."""

    loss: float  # mean cross-entropy per predicted token, nats
    tokens: int  # predicted tokens
    correct: int  # top-1 hits: the target's logit above every other (a tie is a miss)
    tokenizer: str
    vocab_size: int
    n_bytes: Optional[int] = None  # UTF-8 bytes of the evaluated text, for bits per byte

    @property
    def perplexity(self) -> float:
        return perplexity(self.loss)

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> Optional[float]:
        return bits_per_byte(self.loss, self.tokens, self.n_bytes) if self.n_bytes else None

    @property
    def label(self) -> str:
        return f"{self.tokenizer} (V={self.vocab_size:,})"

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(perplexity=self.perplexity, accuracy=self.accuracy, bits_per_byte=self.bits_per_byte)
        return out

    def summary(self) -> str:
        bpb = f", {self.bits_per_byte:.3f} bits/byte" if self.bits_per_byte is not None else ""
        return (f"loss {self.loss:.4f}, PPL {self.perplexity:.2f} [{self.label}], "
                f"accuracy {100 * self.accuracy:.2f}%{bpb} over {self.tokens:,} tokens")


def perplexity(mean_loss_nats: float) -> float:
    """exp(mean cross-entropy); inf when the loss overflows."""
    try:
        return math.exp(mean_loss_nats)
    except OverflowError:
        return float("inf")


def bits_per_byte(mean_loss_nats: float, tokens: int, n_bytes: int) -> float:
    """Total cross-entropy in bits over the text's UTF-8 bytes."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes={n_bytes} must be > 0")
    return mean_loss_nats * tokens / (n_bytes * math.log(2))


def top1_hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row of logits [N, V], whether the target's logit is strictly above every other one (bool [N])."""
    picked = logits.gather(-1, targets[:, None])
    others = logits.scatter(-1, targets[:, None], float("-inf")).amax(dim=-1, keepdim=True)
    return (picked > others).squeeze(-1)

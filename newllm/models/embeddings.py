"""Token embeddings for the CVFP model: GPT-2's wte through transformers, or a random fallback."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from newllm.config.models import ModelConfig
from newllm.data.sources import hub_reachable
from newllm.data.tokenizers import GPT2_VOCAB_SIZE

GPT2_EMBED_DIM = 768


# ------------------------------------------------------------------------------------------ embeddings

def load_gpt2_embeddings(source: str = "gpt2", reachable: Callable[[], bool] = hub_reachable) -> torch.Tensor:
    """GPT-2's token embedding matrix wte (50257 x 768), via ``transformers`` (hub name or local model folder).

    The hub is checked first (offline variables, then a 1.5 s probe) so that an offline machine gets an answer at
    once instead of transformers' retries. Raises RuntimeError with what to do when it cannot be loaded.
    """
    local = os.path.isdir(source)
    if not local and not reachable():
        raise RuntimeError(
            "GPT-2 embeddings cannot be loaded: the Hugging Face hub is unreachable or disabled (HF_HUB_OFFLINE=1). "
            "Use embedding='random', or pass a local GPT-2 model folder, or run on a connected machine."
        )
    try:
        from transformers import GPT2Model

        model = GPT2Model.from_pretrained(source)
    except Exception as exc:  # any load failure becomes one actionable message
        raise RuntimeError(
            f"GPT-2 embeddings could not be loaded from {source!r} ({type(exc).__name__}: {str(exc)[:200]}). "
            "Use embedding='random' offline, or run where the Hugging Face hub is reachable."
        ) from exc
    return model.wte.weight.detach().clone()


@dataclass(frozen=True)
class EmbeddingChoice:
    kind: str  # "gpt2" or "random"
    reason: str


def resolve_embedding(
    cfg: ModelConfig, loader=load_gpt2_embeddings, reachable: Callable[[], bool] = hub_reachable
) -> tuple[Optional[torch.Tensor], EmbeddingChoice]:
    """Decide between GPT-2 and random embeddings; returns (weights or None, the choice with its reason).

    "auto" asks ``reachable`` first, so offline it chooses random embeddings at once, without trying to load.
    """
    if cfg.embedding == "random":
        return None, EmbeddingChoice("random", "requested")
    gpt2_shape = cfg.vocab_size == GPT2_VOCAB_SIZE and cfg.embed_dim == GPT2_EMBED_DIM
    if cfg.embedding == "auto" and not gpt2_shape:
        return None, EmbeddingChoice("random", f"vocab {cfg.vocab_size} x dim {cfg.embed_dim} is not GPT-2's 50257 x 768")
    if cfg.embedding == "auto" and not reachable():
        return None, EmbeddingChoice("random", "GPT-2 weights unavailable: the Hugging Face hub is offline or unreachable")
    try:
        weights = loader()
    except RuntimeError as exc:
        if cfg.embedding == "gpt2":
            raise
        warnings.warn(f"embedding='auto': falling back to random embeddings ({exc})", stacklevel=2)
        return None, EmbeddingChoice("random", f"GPT-2 weights could not be loaded: {exc}")
    return weights, EmbeddingChoice("gpt2", "loaded GPT-2 wte")

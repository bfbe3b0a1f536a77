"""Baselines for the CVFP models: an LSTM LM and a small causal Transformer, matched in parameter count and trained
on the same tokens, and one evaluation routine shared by every model family.

Both baselines take ids [B, T] and return logits [B, T, V] (position i predicts token i+1).

Parameter matching (:func:`build_matched_baseline`) counts parameters the way ``newllm.models.common.parameter_count`` does
for the CVFP model (every parameter once, frozen ones included). ``match="total"`` compares totals;
``match="non_embedding"`` leaves out the embedding tables (token and position) and the output head (any Linear
producing ``vocab_size`` logits) on both sides, so a large vocabulary does not dominate the comparison. Note that the
CVFP embedding is frozen by default while the baselines train theirs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from newllm.config.models import GatedLMConfig, LSTMConfig, ModelConfig, TransformerConfig
from newllm.models.common import parameter_count
from newllm.models.cvfp import CVFPModel
from newllm.models.gated import GatedContextLM
from newllm.models.sampling import Sampling
from newllm.utils.runtime import seed_everything

KINDS = ("lstm", "transformer")
MATCHES = ("total", "non_embedding")
# Preferred width per layer when several shapes land within tolerance (a heuristic, see build_matched_baseline):
# GPT-2 small and nanoGPT's character model both have d_model / n_layer = 64; LSTM LMs are usually wide and shallow
# (the original's LSTM was 3 x 256, the PyTorch word_language_model uses 2 layers of 200-1500).
PREFERRED_ASPECT = {"lstm": 128.0, "transformer": 64.0}


# ------------------------------------------------------------------------------------------ LSTM

class LSTMLM(Sampling, nn.Module):
    """Embedding -> stacked LSTM -> linear head over the vocabulary."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(
            cfg.embed_dim, cfg.hidden_dim, cfg.num_layers, batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(cfg.hidden_dim, cfg.vocab_size)
        # uniform +-0.1 for embedding and head, zero head bias: the PyTorch word_language_model's choice
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.head.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V], each sequence from a zero state."""
        check_ids(ids, self.cfg.vocab_size)
        hidden, _ = self.lstm(self.dropout(self.embedding(ids)))
        return self.head(self.dropout(hidden))

    # generate() comes from Sampling; forward() starts from a zero state, so each step re-reads the whole sequence
    def sampling_start(self, prompt: torch.Tensor):
        return None, self.forward(prompt)[:, -1]

    def sampling_step(self, state, so_far: torch.Tensor):
        return None, self.forward(so_far)[:, -1]


# ------------------------------------------------------------------------------------------ Transformer

class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)
        # [B, T, C] -> [B, heads, T, C / heads]
        q, k, v = (t.view(batch, steps, self.num_heads, width // self.num_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(batch, steps, width)))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.down = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-LN: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerLM(Sampling, nn.Module):
    """A small GPT-style causal LM: token + learned position embeddings, pre-LN blocks, final LN, linear head."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        embed_dim = cfg.embed_dim or cfg.d_model
        self.embedding = nn.Embedding(cfg.vocab_size, embed_dim)
        self.in_proj: nn.Module = nn.Identity() if embed_dim == cfg.d_model else nn.Linear(embed_dim, cfg.d_model)
        self.position = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02) weights, zero biases; projections into the residual stream scaled by 1/sqrt(2 * layers)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for linear in (block.attn.proj, block.mlp.down):
                nn.init.normal_(linear.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg.num_layers))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] (T <= max_seq_len) -> logits [B, T, V]."""
        check_ids(ids, self.cfg.vocab_size)
        steps = ids.shape[1]
        if steps > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {steps} tokens exceeds max_seq_len={self.cfg.max_seq_len}: use seq_len <= "
                f"{self.cfg.max_seq_len} or build the model with a larger max_seq_len"
            )
        positions = torch.arange(steps, device=ids.device)
        x = self.dropout(self.in_proj(self.embedding(ids)) + self.position(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    # generate() comes from Sampling; the context is cropped to the last max_seq_len tokens, as nanoGPT does
    def sampling_start(self, prompt: torch.Tensor):
        return None, self.forward(prompt[:, -self.cfg.max_seq_len:])[:, -1]

    def sampling_step(self, state, so_far: torch.Tensor):
        return self.sampling_start(so_far)


# ------------------------------------------------------------------------------------------ parameter matching

def check_ids(ids: torch.Tensor, vocab_size: int) -> None:
    """Raise a clear ValueError unless ids is an integer [B, T] tensor with every id in [0, vocab_size)."""
    if not torch.is_tensor(ids) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 2:
        shape = tuple(ids.shape) if torch.is_tensor(ids) else type(ids).__name__
        raise ValueError(f"expected token ids as an integer tensor [batch, tokens], got {shape}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(
            f"token ids range over [{int(ids.min())}, {int(ids.max())}] but vocab_size is {vocab_size}: "
            "build the model with the tokenizer's vocabulary size"
        )


def output_head(model: nn.Module) -> nn.Linear:
    """The Linear producing the vocabulary logits: ``head`` (CVFP, baselines) or ``output`` (gated LM)."""
    head = model.output if isinstance(model, GatedContextLM) else getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no output head (a Linear named 'head' or 'output')")
    return head


def non_embedding_parameter_count(model: nn.Module) -> int:
    """Parameters outside the embedding tables (every nn.Embedding: tokens, positions) and the output head."""
    excluded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    excluded.update(id(p) for p in output_head(model).parameters())
    total = 0
    for param in model.parameters():  # parameters() yields a shared tensor once
        if id(param) not in excluded:
            total += param.numel()
    return total


def count_for_match(model: nn.Module, match: str) -> int:
    """The parameter count ``match`` ("total" or "non_embedding") compares."""
    if match not in MATCHES:
        raise ValueError(f"match={match!r}: use one of {', '.join(map(repr, MATCHES))}")
    return parameter_count(model) if match == "total" else non_embedding_parameter_count(model)


def baseline_parameter_count(cfg: Union[LSTMConfig, TransformerConfig], match: str = "total") -> int:
    """The parameter count of the model ``cfg`` describes, in closed form (the width search calls it many times;
    tests check it against the built models)."""
    if match not in MATCHES:
        raise ValueError(f"match={match!r}: use one of {', '.join(map(repr, MATCHES))}")
    vocab = cfg.vocab_size
    if isinstance(cfg, LSTMConfig):
        hidden, embed = cfg.hidden_dim, cfg.embed_dim
        # per layer: 4 gates x (input + recurrent weights + two biases)
        body = sum(4 * hidden * ((embed if layer == 0 else hidden) + hidden + 2) for layer in range(cfg.num_layers))
        embedding, head = vocab * embed, hidden * vocab + vocab
    elif isinstance(cfg, TransformerConfig):
        d, embed, wide = cfg.d_model, cfg.embed_dim or cfg.d_model, cfg.mlp_ratio * cfg.d_model
        block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * wide + wide) + (wide * d + d)  # 2 LNs, attn, MLP
        in_proj = 0 if embed == d else embed * d + d
        body = in_proj + cfg.num_layers * block + 2 * d  # + final LN
        embedding, head = vocab * embed + cfg.max_seq_len * d, d * vocab + vocab
    else:
        raise ValueError(f"expected an LSTMConfig or a TransformerConfig, got {type(cfg).__name__}")
    return body + (embedding + head if match == "total" else 0)


def target_parameter_count(target: Union[int, ModelConfig, GatedLMConfig, nn.Module], match: str = "total") -> int:
    """The count to match: an int is taken as already counted the ``match`` way; a config is built on the meta
    device (no memory) and counted; a model is counted directly."""
    if isinstance(target, bool) or not isinstance(target, (int, ModelConfig, GatedLMConfig, nn.Module)):
        raise ValueError(
            "target must be a parameter count (int), a ModelConfig, a GatedLMConfig or a model, "
            f"got {type(target).__name__}"
        )
    if isinstance(target, int):
        if target < 1:
            raise ValueError(f"target={target} must be a positive parameter count")
        return target
    if isinstance(target, nn.Module):
        return count_for_match(target, match)
    with torch.device("meta"):
        model = CVFPModel(target) if isinstance(target, ModelConfig) else GatedContextLM(target)
    return count_for_match(model, match)


@dataclass(frozen=True)
class MatchInfo:
    """How a baseline was sized against its target."""

    kind: str
    match: str  # "total" or "non_embedding"
    target_params: int  # counted the ``match`` way
    matched_params: int  # the baseline, counted the ``match`` way
    total_params: int
    non_embedding_params: int
    rel_diff: float  # (matched - target) / target
    num_layers: int
    width: int  # LSTM hidden_dim or Transformer d_model
    config: Union[LSTMConfig, TransformerConfig]

    def summary(self) -> str:
        return (f"{self.kind} {self.num_layers} x {self.width}: {self.matched_params:,} {self.match} params vs target "
                f"{self.target_params:,} ({100 * self.rel_diff:+.2f}%); total {self.total_params:,}")


def _baseline_config(kind: str, vocab_size: int, width: int, layers: int, embed_dim: Optional[int], options: dict):
    if kind == "lstm":
        return LSTMConfig(vocab_size=vocab_size, embed_dim=embed_dim or width, hidden_dim=width, num_layers=layers,
                          dropout=options.get("dropout", 0.0))
    return TransformerConfig(
        vocab_size=vocab_size, d_model=width, num_layers=layers, num_heads=options.get("num_heads", 4),
        max_seq_len=options.get("max_seq_len", 256), embed_dim=embed_dim, mlp_ratio=options.get("mlp_ratio", 4),
        dropout=options.get("dropout", 0.0),
    )


def build_baseline(cfg: Union[LSTMConfig, TransformerConfig]) -> nn.Module:
    """The baseline model a config describes."""
    if isinstance(cfg, LSTMConfig):
        return LSTMLM(cfg)
    if isinstance(cfg, TransformerConfig):
        return TransformerLM(cfg)
    raise ValueError(f"build_baseline needs an LSTMConfig or a TransformerConfig, got {type(cfg).__name__}")


def _best_width(kind, vocab_size, layers, embed_dim, options, match, target, step) -> tuple[int, int]:
    """For a fixed depth, the width (a multiple of ``step``) whose count is closest to ``target``: counts grow with
    width, so a doubling search brackets the target and a bisection finds it."""
    def count(units: int) -> int:
        cfg = _baseline_config(kind, vocab_size, units * step, layers, embed_dim, options)
        return baseline_parameter_count(cfg, match)

    high = 1
    while count(high) < target and high < 1 << 20:
        high *= 2
    low = 1
    while high - low > 1:  # invariant: count(high) >= target or high is the limit
        mid = (low + high) // 2
        if count(mid) < target:
            low = mid
        else:
            high = mid
    best = min((low, high), key=lambda units: abs(count(units) - target))
    return best * step, count(best)


def build_matched_baseline(
    kind: str,
    target_params: Union[int, ModelConfig, GatedLMConfig, nn.Module],
    vocab_size: int,
    embed_dim: Optional[int] = None,
    tolerance: float = 0.05,
    match: str = "total",
    num_layers: Optional[int] = None,
    max_layers: Optional[int] = None,
    width_multiple: Optional[int] = None,
    seed: int = 42,
    **options,
) -> tuple[nn.Module, MatchInfo]:
    """An LSTM ("lstm") or causal Transformer ("transformer") LM whose parameter count lands within ``tolerance``
    (relative) of ``target_params``: a count, or a CVFP/gated config or model to count (see module docstring for
    ``match``).

    The width (LSTM hidden_dim / Transformer d_model, a multiple of ``width_multiple``: default 8, and a multiple of
    num_heads for the Transformer) is searched for each depth in 1..max_layers (default 4 for LSTM, 12 for the
    Transformer), or only ``num_layers`` when given. Among shapes within tolerance the one whose width per layer is
    closest (in log ratio) to PREFERRED_ASPECT wins. ``embed_dim`` None ties the embedding width to the model width.
    ``options``: dropout; for the Transformer num_heads (4), max_seq_len (256), mlp_ratio (4).
    Raises ValueError when no shape lands within tolerance, naming the closest one.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: use one of {', '.join(map(repr, KINDS))}")
    unknown = set(options) - ({"dropout"} if kind == "lstm" else {"dropout", "num_heads", "max_seq_len", "mlp_ratio"})
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for kind={kind!r}")
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise ValueError(f"tolerance={tolerance!r} must be a relative difference in (0, 1), e.g. 0.05")
    target_vocab = getattr(getattr(target_params, "cfg", target_params), "vocab_size", vocab_size)
    if target_vocab != vocab_size:
        raise ValueError(
            f"the target model has vocab_size={target_vocab} but the baseline would have {vocab_size}: compare models "
            "on the same tokenizer (pass the same vocab_size)"
        )
    target = target_parameter_count(target_params, match)
    step = width_multiple or (math.lcm(8, options.get("num_heads", 4)) if kind == "transformer" else 8)
    if kind == "transformer" and step % options.get("num_heads", 4):
        raise ValueError(f"width_multiple={step} must be a multiple of num_heads={options.get('num_heads', 4)}")
    depths = [num_layers] if num_layers is not None else range(1, (max_layers or (4 if kind == "lstm" else 12)) + 1)
    candidates = []
    for layers in depths:
        width, count = _best_width(kind, vocab_size, layers, embed_dim, options, match, target, step)
        candidates.append((layers, width, count, (count - target) / target))
    within = [c for c in candidates if abs(c[3]) <= tolerance]
    if not within:
        layers, width, count, rel = min(candidates, key=lambda c: abs(c[3]))
        raise ValueError(
            f"no {kind} shape lands within {100 * tolerance:.1f}% of {target:,} {match} parameters; the closest is "
            f"{layers} x {width} with {count:,} ({100 * rel:+.2f}%). Allow more layers, a smaller width_multiple "
            "or a larger tolerance"
        )
    aspect = PREFERRED_ASPECT[kind]
    layers, width, count, rel = min(within, key=lambda c: (abs(math.log(c[1] / c[0] / aspect)), abs(c[3])))
    cfg = _baseline_config(kind, vocab_size, width, layers, embed_dim, options)
    seed_everything(seed)
    model = build_baseline(cfg)
    info = MatchInfo(
        kind=kind, match=match, target_params=target, matched_params=count_for_match(model, match),
        total_params=parameter_count(model), non_embedding_params=non_embedding_parameter_count(model),
        rel_diff=rel, num_layers=layers, width=width, config=cfg,
    )
    return model, info

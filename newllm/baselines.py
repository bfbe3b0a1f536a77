"""Baselines for the CVFP models: an LSTM LM and a small causal Transformer, matched in parameter count and trained
on the same tokens, and one evaluation routine shared by every model family.

Both baselines take ids [B, T] and return logits [B, T, V] (position i predicts token i+1).

Parameter matching (:func:`build_matched_baseline`) counts parameters the way ``newllm.model.parameter_count`` does
for the CVFP model (every parameter once, frozen ones included). ``match="total"`` compares totals;
``match="non_embedding"`` leaves out the embedding tables (token and position) and the output head (any Linear
producing ``vocab_size`` logits) on both sides, so a large vocabulary does not dominate the comparison. Note that the
CVFP embedding is frozen by default while the baselines train theirs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from newllm.config import GatedLMConfig, LSTMConfig, ModelConfig, TransformerConfig
from newllm.lm_metrics import LMEval
from newllm.model import CVFPModel, GatedContextLM, parameter_count
from newllm.runtime import autocast_dtype, resolve_device, seed_everything

KINDS = ("lstm", "transformer")
MATCHES = ("total", "non_embedding")
# Preferred width per layer when several shapes land within tolerance (a heuristic, see build_matched_baseline):
# GPT-2 small and nanoGPT's character model both have d_model / n_layer = 64; LSTM LMs are usually wide and shallow
# (the original's LSTM was 3 x 256, the PyTorch word_language_model uses 2 layers of 200-1500).
PREFERRED_ASPECT = {"lstm": 128.0, "transformer": 64.0}


# ------------------------------------------------------------------------------------------ LSTM

class LSTMLM(nn.Module):
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


class TransformerLM(nn.Module):
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


# ------------------------------------------------------------------------------------------ evaluation

def _logits_and_state(model: nn.Module, ids: torch.Tensor, state=None):
    """Logits [B, T, V] and the carried state, whatever the model family returns."""
    if isinstance(model, (CVFPModel, GatedContextLM)):
        out = model(ids, state)
        return (out.logits, out.context) if isinstance(model, CVFPModel) else out
    return model(ids), None


def _windows(n_targets: int, seq_len: int) -> Iterator[tuple[int, int]]:
    """(start, length) of consecutive windows covering targets 1..n_targets, each scored once."""
    for start in range(0, n_targets, seq_len):
        yield start, min(seq_len, n_targets - start)


def evaluate_lm(
    model: nn.Module,
    ids: torch.Tensor,
    *,
    tokenizer: str,
    seq_len: int = 128,
    batch_size: int = 16,
    mode: str = "auto",
    n_bytes: Optional[int] = None,
    progress: bool = False,
) -> LMEval:
    """Next-token loss, accuracy (and bits per byte with ``n_bytes``) over a 1-D token stream; every target once.

    mode "windows": consecutive windows of ``seq_len`` targets, each from a fresh state, ``batch_size`` at a time
    (the baselines, the gated LM). mode "stream": one stream in chunks of ``seq_len`` with the context carried
    across chunks, batch 1, exactly the single-stream recurrence (CVFP, gated LM). "auto": stream for CVFPModel,
    windows otherwise. Runs on the model's device, without gradients, in eval mode (the mode is restored).
    """
    if mode not in ("auto", "windows", "stream"):
        raise ValueError(f"mode={mode!r}: use 'auto', 'windows' or 'stream'")
    if not torch.is_tensor(ids) or ids.dim() != 1 or ids.numel() < 2:
        raise ValueError("ids must be a 1-D tensor of at least 2 token ids (a stream)")
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be >= 1")
    vocab_size = model.cfg.vocab_size
    check_ids(ids[None], vocab_size)
    stream = mode == "stream" or (mode == "auto" and isinstance(model, CVFPModel))
    if stream and not isinstance(model, (CVFPModel, GatedContextLM)):
        raise ValueError(f"{type(model).__name__} carries no state between chunks: use mode='windows'")
    device = next(model.parameters()).device
    ids = ids.to(device)
    windows = list(_windows(ids.numel() - 1, seq_len))
    groups = [windows[i:i + 1] for i in range(len(windows))] if stream else _batched(windows, batch_size)
    was_training = model.training
    model.eval()
    total_loss, correct, state = 0.0, 0, None
    try:
        with torch.no_grad():
            for group in tqdm(groups, desc="evaluate", disable=not progress, leave=False):
                inputs = torch.stack([ids[s:s + n] for s, n in group])
                targets = torch.stack([ids[s + 1:s + n + 1] for s, n in group])
                logits, next_state = _logits_and_state(model, inputs, state)
                if stream:
                    state = next_state
                logits = logits.float().reshape(-1, vocab_size)
                total_loss += float(F.cross_entropy(logits, targets.reshape(-1), reduction="sum"))
                correct += int((logits.argmax(-1) == targets.reshape(-1)).sum())
    finally:
        model.train(was_training)
    tokens = ids.numel() - 1
    return LMEval(loss=total_loss / tokens, tokens=tokens, correct=correct, tokenizer=tokenizer,
                  vocab_size=vocab_size, n_bytes=n_bytes)


def _batched(windows: list[tuple[int, int]], batch_size: int) -> list[list[tuple[int, int]]]:
    """Groups of equal-length windows (only the last window can be shorter, so it goes alone)."""
    full = [w for w in windows if w[1] == windows[0][1]]
    rest = [w for w in windows if w[1] != windows[0][1]]
    return [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in rest]


# ------------------------------------------------------------------------------------------ training

def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to 10% of the peak at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup + 1:
        return 1.0
    progress = (step - warmup) / (total - warmup - 1)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_lm_baseline(
    model: nn.Module,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    token_budget: int,
    *,
    tokenizer: str,
    seq_len: int = 128,
    batch_size: int = 32,
    lr: float = 1e-3,
    schedule: str = "cosine",
    warmup_steps: Optional[int] = None,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    eval_every: Optional[int] = None,
    eval_batch_size: int = 16,
    n_bytes: Optional[int] = None,
    device: str = "auto",
    seed: int = 42,
    progress: bool = True,
) -> tuple[pd.DataFrame, LMEval]:
    """Train a baseline (model(ids) -> logits) on ``token_budget`` training targets; returns (history, final LMEval).

    Batches are non-overlapping ``seq_len`` windows of ``train_ids`` in a seeded random order, reshuffled each pass;
    the last step takes only the windows the budget has left. AdamW (weight decay ``weight_decay``), gradient norm
    clipped to ``grad_clip``, linear warm-up (default min(100, steps // 10) steps) then ``schedule`` "cosine" (to 10%
    of ``lr``) or "constant"; bf16 autocast on GPUs that support it. ``history`` has one row per evaluation (every
    ``eval_every`` steps, default a tenth of the run, and at the end): step, tokens, lr, train_loss (mean since the
    previous row), val_loss, val_ppl. The returned LMEval is the final model on all of ``val_ids`` (windows mode),
    labelled with ``tokenizer``; with ``n_bytes`` (UTF-8 bytes of the validation text) it gives bits per byte.
    """
    from newllm.quantize import is_quantized

    if is_quantized(model):
        raise ValueError("this model is int8-quantized and cannot be trained: train the fp32 model, then quantize it")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule={schedule!r}: use 'cosine' or 'constant'")
    for name, value in (("token_budget", token_budget), ("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not (lr > 0 and grad_clip > 0 and weight_decay >= 0):
        raise ValueError(f"lr={lr} and grad_clip={grad_clip} must be > 0, weight_decay={weight_decay} >= 0")
    if not torch.is_tensor(train_ids) or train_ids.dim() != 1 or train_ids.numel() < seq_len + 1:
        raise ValueError(f"train_ids must be a 1-D token tensor of at least seq_len + 1 = {seq_len + 1} ids")
    if not torch.is_tensor(val_ids) or val_ids.dim() != 1 or val_ids.numel() < 2:
        raise ValueError("val_ids must be a 1-D token tensor of at least 2 ids")
    vocab_size = model.cfg.vocab_size
    check_ids(train_ids[None], vocab_size)
    check_ids(val_ids[None], vocab_size)

    seed_everything(seed)
    dev = resolve_device(device)
    model.to(dev)
    amp = autocast_dtype(dev)
    amp = amp if amp == torch.bfloat16 else None  # fp16 would need a GradScaler: plain fp32 there instead
    train_ids = train_ids.to(dev)
    starts = torch.arange(0, train_ids.numel() - seq_len, seq_len)
    window_tokens = seq_len
    steps = math.ceil(token_budget / (batch_size * window_tokens))
    warmup = min(100, steps // 10) if warmup_steps is None else warmup_steps
    every = eval_every or max(1, steps // 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup, schedule))
    order = _window_order(starts, seed)

    rows, tokens_seen, pending = [], 0, []
    bar = tqdm(range(steps), desc=f"train {type(model).__name__}", disable=not progress)
    for step in bar:
        remaining_windows = math.ceil((token_budget - tokens_seen) / window_tokens)
        batch_starts = torch.stack([next(order) for _ in range(min(batch_size, remaining_windows))]).to(dev)
        offsets = batch_starts[:, None] + torch.arange(seq_len + 1, device=dev)
        chunk = train_ids[offsets]
        model.train()
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, vocab_size), chunk[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        current_lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        tokens_seen += chunk[:, 1:].numel()
        pending.append(float(loss.detach()))
        bar.set_postfix(loss=f"{pending[-1]:.3f}")
        if (step + 1) % every == 0 or step + 1 == steps:
            val = evaluate_lm(model, val_ids, tokenizer=tokenizer, seq_len=seq_len, batch_size=eval_batch_size,
                              mode="windows", n_bytes=n_bytes)
            rows.append({"step": step + 1, "tokens": tokens_seen, "lr": current_lr,
                         "train_loss": sum(pending) / len(pending), "val_loss": val.loss, "val_ppl": val.perplexity})
            pending = []
    model.eval()
    return pd.DataFrame(rows), val


def _window_order(starts: torch.Tensor, seed: int) -> Iterator[torch.Tensor]:
    """Window starts in a seeded random order, reshuffled at each pass over the data."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        for index in torch.randperm(len(starts), generator=generator):
            yield starts[index]

"""Phase-2 memory planning: estimate every buffer BEFORE anything is built, then choose placement, dtype and batch.

The original (seed-spec 5.4) sized its cache and batch after the fact and ran out of memory. Here the planner adds
up, per place (device, host, disk) and per phase (cache build, training):

- model weights (all, fp32); gradients and Adam moments of the Phase-2 trainable parameters; a host copy of the
  best weights (restored at the end);
- the context cache of train and val streams: sum(layer dims) values per token in the cache dtype, plus the token
  ids (the token inputs x are recomputed from ids with the frozen embedding, never cached);
- activations of one micro-batch (the TokenBlock's saved tensors, its backward and the gathered cache rows);
- the output layer: one chunk of fp32 logits (chunked cross-entropy) plus the head's gradient buffer;
- the cache build's workspace (one batch of stream segments through the recurrence);
- or, when the contexts are streamed instead of cached (``context_source``: "stream", or "auto" when no cache
  placement fits), two blocks of windows' contexts and their workspace, with the recomputation's cost printed.

It reads the free memory (``MemoryBudget.probe``: torch.cuda.mem_get_info, /proc/meminfo MemAvailable, free disk)
and keeps every place under ``memory_safety`` x free. Every choice can be forced through Phase2Config fields;
``MemoryBudget`` is a plain dataclass so tests can simulate any machine.

The gated LM's closed-form training estimate (``gated_training_bytes``) is here too: the notebook's size controls
show it and the gated trainer sizes its batch by it (``gated_batch_size``).
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd
import torch
from torch import nn

from newllm.config.models import GatedLMConfig, ModelConfig
from newllm.config.training import Phase2Config
from newllm.evaluation.context_metrics import context_metrics_bytes
from newllm.models.common import parameter_count
from newllm.models.cvfp import CVFPModel
from newllm.training.context_stream import DEFAULT_BLOCK_TOKENS, stream_costs

GiB = 2**30
MiB = 2**20

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Default tokens per optimizer step when Phase2Config.batch_size is None. CPU: the original's 512 (its CPU rule);
# GPU: between the original's planned 3,171 and 8,864. Memory only ever lowers the micro-batch, never the step.
DEFAULT_BATCH = {"cuda": 4096, "cpu": 512}
# Output-layer budget: logits of one CE chunk. Large chunks keep the three output matmuls efficient.
CE_BUDGET = {"cuda": 1 * GiB, "cpu": 512 * MiB}
MIN_MICRO_BATCH = 16
BUILD_BATCH_TOKENS = 16384  # tokens of stream segments evaluated together while building the cache
RUNTIME_HOST_BYTES = 512 * MiB  # python + torch + tokenizer, measured ~0.4 GiB RSS before any tensor


def host_memory() -> tuple[int, int]:
    """(total, available) host RAM in bytes from /proc/meminfo (MemAvailable), else sysconf (free pages)."""
    try:
        values = {}
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                name, rest = line.split(":", 1)
                values[name] = int(rest.split()[0]) * 1024
        return values["MemTotal"], values.get("MemAvailable", values["MemFree"])
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page


@dataclass(frozen=True)
class MemoryBudget:
    """What the machine offers, in bytes. Build one by hand to simulate a machine (tests, what-if planning)."""

    device_type: str  # "cuda" or "cpu"
    device_total: int  # 0 on CPU
    device_free: int  # 0 on CPU
    host_total: int
    host_available: int
    disk_free: int
    device_name: str = ""

    def __post_init__(self) -> None:
        if self.device_type not in ("cuda", "cpu"):
            raise ValueError(f"MemoryBudget.device_type={self.device_type!r}: use 'cuda' or 'cpu'")
        for name in ("device_total", "device_free", "host_total", "host_available", "disk_free"):
            if getattr(self, name) < 0:
                raise ValueError(f"MemoryBudget.{name}={getattr(self, name)} must be >= 0 bytes")

    @classmethod
    def probe(cls, device: torch.device, disk_path: Optional[str] = None, resident_bytes: int = 0) -> "MemoryBudget":
        """Read free device memory (torch.cuda.mem_get_info), host MemAvailable and free disk at ``disk_path``.

        The allocator's cached blocks are released first (what Phase 1 freed is free), and ``resident_bytes`` (the
        model's weights already on the device, see :func:`device_bytes`) are counted as free, because the plan
        adds them as an item of its own."""
        host_total, host_available = host_memory()
        disk_free = shutil.disk_usage(disk_path or tempfile.gettempdir()).free
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info(device)
            return cls("cuda", total, min(total, free + resident_bytes), host_total, host_available, disk_free,
                       torch.cuda.get_device_name(device))
        return cls("cpu", 0, 0, host_total, host_available, disk_free, "cpu")

    @classmethod
    def simulated(cls, device_gib: Optional[float], host_gib: float, disk_gib: float = 100.0) -> "MemoryBudget":
        """A machine with ``device_gib`` free GPU memory (None: no GPU) and ``host_gib`` available RAM."""
        gb = lambda value: int(value * GiB)  # noqa: E731 - local unit helper
        if device_gib is None:
            return cls("cpu", 0, 0, gb(host_gib), gb(host_gib), gb(disk_gib), "simulated cpu")
        return cls("cuda", gb(device_gib), gb(device_gib), gb(host_gib), gb(host_gib), gb(disk_gib),
                   f"simulated {device_gib:g} GiB GPU")


def device_bytes(module: nn.Module, device: torch.device) -> int:
    """Bytes of ``module``'s parameters and buffers that live on ``device`` (shared tensors once)."""
    seen, total = set(), 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen and tensor.device.type == device.type:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def phase2_trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters Phase 2 trains: TokenBlock and head, plus embedding and its LayerNorm when not frozen.

    The ContextBlock is frozen (its contexts are cached). The embedding LayerNorm follows the embedding: frozen
    together, the token inputs x are a fixed function of the ids (the original also trained embed_norm's 1,536
    values; freezing them keeps x consistent with the x the cache was built from).
    """
    modules = [model.token_block, model.head]
    if not model.cfg.freeze_embedding:
        modules += [model.embedding, model.embed_norm]
    seen: set[int] = set()
    params = []
    for module in modules:
        for param in module.parameters():
            if id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return params


@dataclass(frozen=True)
class Phase2Workload:
    """The sizes the plan depends on, from a model (or a config: no weights are allocated) and token counts."""

    train_tokens: int
    val_tokens: int
    context_dims: tuple[int, ...]  # ContextBlock layer widths: one cache row holds sum(context_dims) values
    token_layers: tuple[tuple[int, int, int], ...]  # TokenLayer (context in, state in, state out) widths
    token_dim: int  # width of the token input x
    vocab_size: int
    params: int
    trainable_params: int
    head_trainable: bool

    @classmethod
    def from_model(cls, model: nn.Module, train_tokens: int, val_tokens: int) -> "Phase2Workload":
        trainable = phase2_trainable_parameters(model)
        return cls(
            train_tokens=int(train_tokens),
            val_tokens=int(val_tokens),
            context_dims=tuple(model.context_block.dims),
            token_layers=tuple((l.ctx_dim, l.in_dim, l.out_dim) for l in model.token_block.layers),
            token_dim=model.cfg.token_input_dim,
            vocab_size=model.cfg.vocab_size,
            params=parameter_count(model),
            trainable_params=sum(p.numel() for p in trainable),
            head_trainable=any(p is model.head.weight for p in trainable),
        )

    @classmethod
    def from_config(cls, cfg: ModelConfig, train_tokens: int, val_tokens: int) -> "Phase2Workload":
        """Sizes for a model that is never built (weights on the meta device: no memory)."""
        with torch.device("meta"):
            model = CVFPModel(cfg)
        return cls.from_model(model, train_tokens, val_tokens)

    @property
    def row_values(self) -> int:
        return sum(self.context_dims)

    def cache_bytes(self, dtype: str, tokens: int) -> int:
        return tokens * self.row_values * DTYPE_BYTES[dtype]

    def activation_bytes_per_token(self, cache_dtype: str) -> int:
        """Training bytes per token of a micro-batch (fp32 compute: an upper bound under autocast).

        Per TokenLayer autograd keeps [c; s], the pre-activation/ReLU output, the LayerNorm input and output;
        backward adds one layer's gradients at a time; the gathered row (cache dtype + fp32 copy), x, the head
        input and its gradient come on top.
        """
        saved = sum(c + s + 3 * out for c, s, out in self.token_layers)
        backward = max(c + s + 2 * out for c, s, out in self.token_layers)
        head_in = self.token_layers[-1][2]
        values = saved + backward + self.row_values + self.token_dim + 2 * head_in
        return 4 * values + DTYPE_BYTES[cache_dtype] * self.row_values


@dataclass(frozen=True)
class MemoryItem:
    name: str
    where: str  # "device", "host" or "disk"
    phase: str  # "build", "train" or "both"
    nbytes: int
    note: str = ""


@dataclass(frozen=True)
class Phase2Plan:
    """The chosen settings and the memory they need, per place and phase."""

    device_type: str
    placement: str  # "gpu", "cpu" or "disk"
    cache_dtype: str
    batch_size: int  # tokens per optimizer step
    micro_batch_size: int  # tokens per forward/backward pass (gradients accumulate over a step)
    eval_batch_size: int
    ce_chunk_tokens: int
    build_batch_tokens: int
    items: tuple[MemoryItem, ...]
    limits: dict = field(default_factory=dict)  # place -> bytes the plan may use (safety x free)
    reasons: tuple[str, ...] = ()
    stream: dict = field(default_factory=dict)  # streaming only: window, burn_in, block_tokens and the cost

    def peak(self, where: str) -> int:
        """Planned peak bytes at a place: the larger of the build phase and the training phase."""
        def total(phase: str) -> int:
            return sum(i.nbytes for i in self.items if i.where == where and i.phase in (phase, "both"))

        return max(total("build"), total("train"))

    @property
    def device_peak(self) -> int:
        return self.peak("device")

    @property
    def host_peak(self) -> int:
        return self.peak("host")

    @property
    def disk_bytes(self) -> int:
        return self.peak("disk")

    def table(self) -> pd.DataFrame:
        """One row per buffer, then the peak and the limit of each place, in GiB."""
        rows = [
            {"component": i.name, "where": i.where, "phase": i.phase, "GiB": i.nbytes / GiB, "note": i.note}
            for i in self.items
        ]
        for where in ("device", "host", "disk"):
            if any(i.where == where for i in self.items) or where in self.limits:
                rows.append({"component": f"PEAK {where}", "where": where, "phase": "max",
                             "GiB": self.peak(where) / GiB,
                             "note": f"limit {self.limits.get(where, 0) / GiB:.2f} GiB (safety x free)"})
        return pd.DataFrame(rows, columns=["component", "where", "phase", "GiB", "note"])

    def summary(self) -> dict:
        """The choices and peaks as a flat JSON-able dict."""
        return {
            "device_type": self.device_type, "cache_placement": self.placement, "cache_dtype": self.cache_dtype,
            "batch_size": self.batch_size, "micro_batch_size": self.micro_batch_size,
            "eval_batch_size": self.eval_batch_size, "ce_chunk_tokens": self.ce_chunk_tokens,
            "build_batch_tokens": self.build_batch_tokens, "device_peak_bytes": self.device_peak,
            "host_peak_bytes": self.host_peak, "disk_bytes": self.disk_bytes, "reasons": list(self.reasons),
            "stream": dict(self.stream),
        }

    def __str__(self) -> str:
        where = ("contexts streamed (no cache)" if self.placement == "stream"
                 else f"cache on {self.placement} as {self.cache_dtype}")
        head = (f"Phase-2 plan: {where}; batch {self.batch_size:,} tokens "
                f"(micro-batch {self.micro_batch_size:,}, eval {self.eval_batch_size:,}, CE chunk "
                f"{self.ce_chunk_tokens:,})")
        table = self.table().to_string(index=False, float_format=lambda v: f"{v:8.3f}")
        cost = []
        if self.stream:
            st = self.stream
            cost = [f"streaming cost: windows of {st['window']:,} tokens, burn-in {st['burn_in']} checked against "
                    f"{2 * st['burn_in']}: {st['steps_per_token']:.2f} ContextBlock steps per token = "
                    f"{st['context_mflop_per_token']:.2f} MFLOP against {st['step_mflop_per_token']:.2f} MFLOP of a "
                    f"training step ({100 * st['overhead']:.1f} % more compute), every epoch"]
        return "\n".join([head, table, *self.reasons, *cost])


class MemoryPlanError(MemoryError):
    """No placement, dtype and batch fit in the memory available; the message says what would be needed."""


def _candidates(device_type: str, cfg: Phase2Config) -> list[tuple[str, str]]:
    """(placement, dtype) in order of preference, filtered by the config's overrides.

    GPU: half precision on the GPU first (the TokenBlock runs under bf16/fp16 autocast, so fp32 rows buy nothing;
    float16 keeps 8x bf16's precision for LayerNorm-bounded values), then host RAM, then disk. CPU: fp32 in RAM
    (exact, the CPU computes in fp32), fp16 in RAM, then fp16 on disk (half the I/O).
    """
    if cfg.context_source == "stream":
        return [("stream", "float32")]
    if device_type == "cuda":
        placements = {"gpu": ["float16"], "cpu": ["float16"], "disk": ["float16"]}
    else:
        placements = {"cpu": ["float32", "float16"], "disk": ["float16"]}
    streamed = [("stream", "float32")] if cfg.context_source == "auto" and cfg.cache_placement == "auto" else []
    if cfg.cache_placement != "auto":
        if cfg.cache_placement not in placements:
            raise ValueError(
                f"Phase2Config.cache_placement={cfg.cache_placement!r} needs a GPU and none is used; "
                "use 'auto', 'cpu' or 'disk'"
            )
        placements = {cfg.cache_placement: placements[cfg.cache_placement]}
    out = []
    for placement, dtypes in placements.items():
        for dtype in ([cfg.cache_dtype] if cfg.cache_dtype != "auto" else dtypes):
            out.append((placement, dtype))
    return out + streamed


def _items(work: Phase2Workload, device_type: str, placement: str, dtype: str, checkpointing: bool,
           micro: int, ce_chunk: int, build_tokens: int) -> list[MemoryItem]:
    compute = "device" if device_type == "cuda" else "host"
    cache_at = {"gpu": "device", "cpu": "host", "disk": "disk", "stream": compute}[placement]
    ids_at = "device" if placement == "gpu" else "host"
    head_in = work.token_layers[-1][2]
    tokens = work.train_tokens + work.val_tokens
    if placement == "stream":  # two blocks of windows' contexts instead of a cache; their recurrence's workspace
        contexts = [
            MemoryItem("streamed contexts (2 blocks)", compute, "train", 2 * 4 * build_tokens * work.row_values,
                       f"{build_tokens:,} tokens of windows per block, fp32"),
            MemoryItem("stream workspace", compute, "train", 2 * 4 * build_tokens * (work.row_values + work.token_dim),
                       "token projections and inputs of one block"),
        ]
    else:
        contexts = [
            MemoryItem("context cache: train", cache_at, "both", work.cache_bytes(dtype, work.train_tokens),
                       f"{work.train_tokens:,} x {work.row_values:,} {dtype}"),
            MemoryItem("context cache: val", cache_at, "both", work.cache_bytes(dtype, work.val_tokens),
                       f"{work.val_tokens:,} x {work.row_values:,} {dtype}"),
            MemoryItem("cache build workspace", compute, "build", 3 * 4 * build_tokens * work.row_values,
                       f"{build_tokens:,} tokens of segments"),
        ]
    items = [
        MemoryItem("model weights (fp32, all)", compute, "both", 4 * work.params, f"{work.params:,} parameters"),
        MemoryItem("gradients (trainable)", compute, "train", 4 * work.trainable_params,
                   f"{work.trainable_params:,} trainable"),
        MemoryItem("Adam moments", compute, "train", 8 * work.trainable_params, "exp_avg + exp_avg_sq"),
        MemoryItem("best weights copy", "host", "train", 4 * work.trainable_params, "restored at the end"),
        *contexts,
        MemoryItem("token ids (inputs, targets)", ids_at, "both", 16 * tokens, "x recomputed from ids"),
        MemoryItem("activations (micro-batch)", compute, "train", micro * work.activation_bytes_per_token(dtype),
                   f"{micro:,} tokens"),
        MemoryItem("output layer (CE chunk)", compute, "train",
                   2 * 4 * ce_chunk * work.vocab_size + (4 * work.vocab_size * head_in if work.head_trainable else 0),
                   f"{ce_chunk:,} x {work.vocab_size:,} fp32 logits + head gradient"),
        MemoryItem("runtime (python, torch)", "host", "both", RUNTIME_HOST_BYTES, "baseline process"),
        MemoryItem("context metrics (bounded)", compute, "build", context_metrics_bytes(work.context_dims[-1]),
                   "ER / pairwise subsamples, streamed row blocks"),
    ]
    if device_type == "cuda" and placement not in ("gpu", "stream"):
        items.append(MemoryItem("host staging rows", "host", "train",
                                2 * micro * work.row_values * DTYPE_BYTES[dtype], "gathered batch before copy"))
    if checkpointing:
        items.append(MemoryItem("checkpoint staging", "host", "train", 4 * work.params + 12 * work.trainable_params,
                                "CPU copies written to safetensors"))
    return items


def plan_phase2(
    work: Phase2Workload,
    cfg: Phase2Config,
    budget: MemoryBudget,
    checkpointing: bool = False,
) -> Phase2Plan:
    """Choose cache placement and dtype, micro-batch, eval batch and CE chunk so every place stays under its limit.

    Raises MemoryPlanError (with the smallest plan's table) when nothing fits, and ValueError for impossible
    overrides. A forced ``batch_size`` is kept: memory only lowers the micro-batch (gradient accumulation).
    """
    device_type = budget.device_type
    safety = cfg.memory_safety
    limits = {"host": int(safety * budget.host_available), "disk": int(safety * budget.disk_free)}
    if device_type == "cuda":
        limits["device"] = int(safety * budget.device_free)
    batch = cfg.batch_size or DEFAULT_BATCH[device_type]
    tried = []
    for placement, dtype in _candidates(device_type, cfg):
        build_tokens = (cfg.stream_block_tokens or DEFAULT_BLOCK_TOKENS) if placement == "stream" \
            else BUILD_BATCH_TOKENS
        wanted_micro = min(cfg.micro_batch_size or batch, batch)
        ce_chunk = cfg.ce_chunk_tokens or max(MIN_MICRO_BATCH, CE_BUDGET[device_type] // (2 * 4 * work.vocab_size))

        def fits(micro: int, chunk: int) -> tuple[bool, list[MemoryItem]]:
            items = _items(work, device_type, placement, dtype, checkpointing, micro, min(chunk, micro), build_tokens)
            plan = Phase2Plan(device_type, placement, dtype, batch, micro, micro, min(chunk, micro), build_tokens,
                              tuple(items), limits)
            places = ("device", "host", "disk") if device_type == "cuda" else ("host", "disk")
            return all(plan.peak(w) <= limits[w] for w in places), items

        micro = wanted_micro
        ok, items = fits(micro, ce_chunk)
        while not ok and cfg.micro_batch_size is None and micro > MIN_MICRO_BATCH:
            micro = max(MIN_MICRO_BATCH, micro // 2)
            ce_chunk = cfg.ce_chunk_tokens or min(ce_chunk, micro)
            ok, items = fits(micro, ce_chunk)
        tried.append((placement, dtype, items))
        if not ok:
            continue
        ce_chunk = min(ce_chunk, micro)
        eval_batch = cfg.eval_batch_size or _eval_batch(work, device_type, placement, dtype, checkpointing,
                                                         micro, ce_chunk, build_tokens, limits)
        reasons = [f"device {budget.device_name or device_type}: free device {budget.device_free / GiB:.2f} GiB, "
                   f"host available {budget.host_available / GiB:.2f} GiB, disk free {budget.disk_free / GiB:.1f} "
                   f"GiB; limits = {safety:g} x free"]
        skipped = [f"{p}/{d}" for p, d, _ in tried[:-1]]
        if skipped:
            reasons.append(f"did not fit: {', '.join(skipped)}")
        if micro < wanted_micro:
            reasons.append(f"micro-batch lowered from {wanted_micro:,} to {micro:,} tokens to fit")
        stream = stream_costs(work, cfg.stream_window, cfg.stream_burn_in, build_tokens) if placement == "stream" else {}
        if placement == "stream" and cfg.context_source == "auto":
            reasons.append("no cache placement fits: contexts are streamed (recomputed every batch)")
        return Phase2Plan(device_type, placement, dtype, batch, micro, eval_batch, ce_chunk, build_tokens,
                          tuple(items), limits, tuple(reasons), stream)
    placement, dtype, items = tried[-1]
    smallest = Phase2Plan(device_type, placement, dtype, batch, MIN_MICRO_BATCH, MIN_MICRO_BATCH,
                          MIN_MICRO_BATCH, build_tokens, tuple(items), limits)
    raise MemoryPlanError(
        f"Phase 2 does not fit in memory with any of {[f'{p}/{d}' for p, d, _ in tried]} "
        f"(the last, smallest option is below). Use fewer training tokens, a smaller model, a cache_dtype of "
        f"'float16', cache_placement='disk' with more free disk, or a machine with more memory.\n{smallest}"
    )


def _eval_batch(work, device_type, placement, dtype, checkpointing, micro, ce_chunk, build_tokens, limits) -> int:
    """Twice the micro-batch (forward only needs less) as long as it fits, at most 16,384."""
    eval_batch = min(2 * micro, 16384)
    while eval_batch > micro:
        items = _items(work, device_type, placement, dtype, checkpointing, eval_batch, ce_chunk, build_tokens)
        plan = Phase2Plan(device_type, placement, dtype, eval_batch, eval_batch, eval_batch, ce_chunk, build_tokens,
                          tuple(items), limits)
        if all(plan.peak(w) <= limits[w] for w in limits):
            return eval_batch
        eval_batch //= 2
    return micro


# ------------------------------------------------------------------------------------ the original's rule

def original_required_bytes(train_tokens: int, val_tokens: int, num_layers: int, ctx_dim: int,
                            token_dim: int) -> int:
    """The original's own planned requirement (seed-spec 5.4, ``can_fit_in_memory``).

    0.5 GiB model + 4 B x (L n d_c + n 768k) per stream (contexts and token embeddings, fp32) + 1.0 GiB batch.
    Its check (<= 0.8 x total GPU memory) passed for 500 samples on the 22.2 GiB L4, which then ran out of
    memory with 21.4 GiB in use.
    """
    per_token = 4 * (num_layers * ctx_dim + token_dim)
    return int(0.5 * GiB) + per_token * (train_tokens + val_tokens) + int(1.0 * GiB)


ORIGINAL_500_SAMPLE_PEAK_BYTES = int(21.4 * GiB)  # in use when the seed-003 500-sample run died (seed-spec 5.4)


def original_batch_tokens(gpu_gib: float) -> int:
    """The original's initial batch when phase2_batch_size is None: floor(GPU GiB x 500 x 0.8) (8,864 on an L4)."""
    return int(gpu_gib * 500 * 0.8)


# ------------------------------------------------------------------------------------ the gated LM

# The gated trainer keeps every training window on the device (inputs and targets, int64).
WINDOW_ID_BYTES = 2 * 8
# Share of free memory a gated run may plan to use (the same safety margin as Phase2Config.memory_safety).
GATED_MEMORY_SAFETY = Phase2Config().memory_safety
MAX_GATED_BATCH = 4096


def gated_training_bytes(cfg: GatedLMConfig, batch_size: int, window: int, parameters: int,
                         train_windows: int = 0) -> dict[str, int]:
    """Closed-form memory of one end-to-end training step of the gated LM, per component (fp32 upper bound).

    weights + gradients + Adam's two moments = 16 bytes per parameter; activations saved for backward per
    predicted token: the [e; c] input, three tensors per hidden layer (linear output, ReLU, dropout), the
    context update's ~11 ctx-wide tensors (three projections, two sigmoids, the gated sum, LayerNorm, clamp) and
    the logits with their gradient; plus the training windows held on the device.
    """
    per_token = (cfg.embed_dim + cfg.ctx_dim) + 3 * cfg.num_layers * cfg.hidden_dim + 11 * cfg.ctx_dim \
        + 2 * cfg.vocab_size
    return {
        "weights": 4 * parameters,
        "gradients": 4 * parameters,
        "Adam moments": 8 * parameters,
        "activations (one batch)": 4 * per_token * batch_size * (window - 1),
        "training windows": WINDOW_ID_BYTES * train_windows * window,
    }


def gated_batch_size(cfg: GatedLMConfig, window: int, parameters: int, available_bytes: float,
                     train_windows: int = 0, max_batch: int = MAX_GATED_BATCH) -> int:
    """The largest power of two of windows per batch (1 at least, ``max_batch`` at most) whose estimated training
    memory (:func:`gated_training_bytes`) fits in ``available_bytes``."""
    batch = 1
    while batch * 2 <= max_batch and \
            sum(gated_training_bytes(cfg, batch * 2, window, parameters, train_windows).values()) <= available_bytes:
        batch *= 2
    return batch


def format_bytes(nbytes: int) -> str:
    """'1.23 GiB' for quick prints."""
    return f"{int(nbytes) / GiB:.2f} GiB"

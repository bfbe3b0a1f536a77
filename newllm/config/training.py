"""Training configs: Phase 1, Phase 2 and the end-to-end gated LM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from newllm.config.base import ConfigBase

AMP_MODES = ("auto", "bf16", "fp16", "off")  # on CPU every mode trains in fp32

# --------------------------------------------------------------------------------------------- phase 1

@dataclass(frozen=True)
class Phase1Config(ConfigBase):
    """Fixed-point context learning (seed-spec 4.4-4.6, 5.2). Defaults: the last original run (seed 003)."""

    solver: str = "parallel"  # "sequential": exact contexts each iteration; "parallel": previous pass shifted
    sweeps_per_step: Optional[int] = None  # parallel sweeps between steps (None: 1 for parallel, exact for sequential)
    target: str = "previous"  # "previous" iteration's contexts, or the "fixed" iteration-0 output
    first_pass: str = "exact"  # iteration 0: "exact" recurrence, or "random" N(0, 0.01^2) contexts
    streams: str = "concat"  # "concat": one stream across samples; "per_sample": each sample from a zero context
    dist_reg_weight: float = 0.6
    diversity: str = "dispersion"  # original -||Y - mean||_F / n; "dispersion_rms": size-invariant
    lr: float = 0.002
    grad_clip: float = 1.0
    convergence_threshold: float = 0.03
    min_converged_ratio: float = 0.95
    min_iterations: int = 5
    max_iterations: int = 40
    noise_std: float = 0.1  # parallel solver only: Gaussian noise on the shifted input contexts
    chunk_size: int = 8000  # gradient accumulation chunk (tokens)
    tol: float = 1e-5  # exact evaluations (sweeps, segment boundaries) stop at this max-abs change
    er_max_rows: int = 10000
    seed: int = 42
    recurrence: str = "auto"  # exact evaluations: "auto", "loop", "sweeps", "segments" (newllm/recurrence.py)
    final_contexts: str = "exact"  # result contexts: "exact" under the final weights, or the "last" iteration's outputs
    er_every: int = 1  # train ER in the history every k iterations (0: only for the final contexts)
    # token 0's incoming context: "zero" (the kit's); "wrap" (parallel only: the previous iteration's last context,
    # the original's shift rolled around the stream); "carry" (sequential only: each pass runs from the previous
    # pass's last context, as the original's sequential trainer did)
    first_context: str = "zero"
    # the diversity term over the whole "stream" (chunks are a memory split only), or per "chunk" of chunk_size
    # tokens as the original computed it (loss = mean over chunks of each chunk's (1-w) CVFP + w diversity)
    diversity_scope: str = "stream"

    @classmethod
    def original(cls, era: str = "B", **overrides) -> "Phase1Config":
        """The original's Phase-1 rules: era "B" (seeds 000 / 004, seed-spec 4.4 c: parallel, wrap-around, FIXED
        iteration-0 target, no noise, thr 0.1, <= 10 iterations, w 0.9) or "C" (seed 003, 5.2: wrap-around,
        previous target, noise 0.1, thr 0.03, 5..40 iterations, w 0.6, dispersion per 8,000-token chunk); the
        train contexts are the last parallel pass's outputs in both. ``overrides`` set any other field."""
        if era not in ("B", "C"):
            raise ValueError(f"era={era!r}: use 'B' (seeds 000 / 004) or 'C' (seed 003)")
        common = dict(solver="parallel", first_context="wrap", diversity_scope="chunk", first_pass="exact",
                      final_contexts="last", lr=0.002, grad_clip=1.0, min_converged_ratio=0.95, chunk_size=8000)
        if era == "B":
            values = dict(common, target="fixed", noise_std=0.0, convergence_threshold=0.1, min_iterations=1,
                          max_iterations=10, dist_reg_weight=0.9)
        else:
            values = dict(common, target="previous", noise_std=0.1, convergence_threshold=0.03, min_iterations=5,
                          max_iterations=40, dist_reg_weight=0.6)
        return cls(**{**values, **overrides})

    def __post_init__(self) -> None:
        self._choice("solver", ("sequential", "parallel"))
        self._choice("first_context", ("zero", "wrap", "carry"))
        self._require("first_context", self.first_context != "wrap" or self.solver == "parallel",
                      "'zero' or 'carry' with solver='sequential' ('wrap' is the parallel solver's rule)")
        self._require("first_context", self.first_context != "carry" or self.solver == "sequential",
                      "'zero' or 'wrap' with solver='parallel' ('carry' is the sequential solver's rule)")
        self._choice("diversity_scope", ("stream", "chunk"))
        self._optional_positive_int("sweeps_per_step")
        self._require(
            "sweeps_per_step",
            self.sweeps_per_step is None or self.solver == "parallel",
            "None with solver='sequential' (it always uses exact contexts); set solver='parallel' to choose sweeps",
        )
        self._choice("target", ("previous", "fixed"))
        self._choice("first_pass", ("exact", "random"))
        self._choice("streams", ("concat", "per_sample"))
        self._in_range("dist_reg_weight", 0.0, 1.0)
        self._choice("diversity", ("dispersion", "dispersion_rms"))
        self._positive_float("lr")
        self._positive_float("grad_clip")
        self._positive_float("convergence_threshold")
        self._in_range("min_converged_ratio", 0.0, 1.01)
        self._positive_int("min_iterations")
        self._positive_int("max_iterations")
        self._require(
            "max_iterations",
            self.max_iterations >= self.min_iterations,
            f"an integer >= min_iterations ({self.min_iterations})",
        )
        self._positive_float("noise_std", allow_zero=True)
        self._positive_int("chunk_size")
        self._positive_float("tol")
        self._positive_int("er_max_rows", 2)
        self._positive_int("seed", 0)
        self._choice("recurrence", ("auto", "loop", "sweeps", "segments"))
        self._choice("final_contexts", ("exact", "last"))
        self._positive_int("er_every", 0)


# --------------------------------------------------------------------------------------------- phase 2

@dataclass(frozen=True)
class Phase2Config(ConfigBase):
    """Token prediction on cached contexts (seed-spec 5.3-5.4), with memory planning."""

    lr: float = 1e-3
    grad_clip: float = 1.0
    epochs: int = 10
    patience: int = 2
    batch_size: Optional[int] = None  # tokens per optimizer step; None: the planner's default (CPU 512, GPU 4096)
    shuffle: bool = True
    schedule: str = "constant"  # or "cosine"
    cache_dtype: str = "auto"  # "auto", "float32", "bfloat16", "float16"
    cache_placement: str = "auto"  # "auto", "gpu", "cpu", "disk"
    ce_chunk_tokens: Optional[int] = None  # output-layer chunk; None: planned from the memory budget
    memory_safety: float = 0.8  # plan to use at most this share of free memory
    max_oom_halvings: int = 3
    seed: int = 42
    micro_batch_size: Optional[int] = None  # tokens per forward/backward pass; None: planned (fits in memory)
    eval_batch_size: Optional[int] = None  # None: planned
    amp: str = "auto"  # "auto": bf16 autocast on CUDA (fp16 + GradScaler below cc 8.0), fp32 on CPU; "bf16", "fp16", "off"
    max_steps: Optional[int] = None  # stop after this many optimizer steps in total (budgeted runs)
    checkpoint_every_steps: Optional[int] = None  # None: checkpoint at the end of each epoch only
    cache_dir: Optional[str] = None  # folder for a disk cache; None: a temporary folder, removed afterwards
    cache_build_method: str = "auto"  # recurrence.evaluate_contexts method: "auto", "loop", "sweeps", "segments"
    cache_build_tol: float = 1e-5  # the recurrence's max-abs tolerance (sweeps, segment joins)
    cache_burn_in: Optional[int] = None  # "segments" burn-in tokens; None: the recurrence module's default
    cache_segment_tokens: Optional[int] = None  # "segments" window length; None: chosen by the recurrence module
    context_source: str = "auto"  # "cache": a context cache; "stream": recomputed per batch (flat memory); "auto"
    stream_window: Optional[int] = None  # streaming: kept tokens per window (the unit of shuffling); None: 128
    stream_burn_in: Optional[int] = None  # streaming: checked burn-in tokens (doubled until settled); None: 16
    stream_block_tokens: Optional[int] = None  # streaming: tokens of windows computed together; None: 16,384
    compile: bool = False  # torch.compile the TokenBlock + head step (the loss of one micro-batch)

    def __post_init__(self) -> None:
        self._positive_float("lr")
        self._positive_float("grad_clip")
        self._positive_int("epochs")
        self._choice("context_source", ("auto", "cache", "stream"))
        self._optional_positive_int("stream_window")
        self._optional_positive_int("stream_burn_in", 0)
        self._optional_positive_int("stream_block_tokens")
        self._require("compile", isinstance(self.compile, bool), "True or False")
        self._require(
            "cache_placement", self.context_source != "stream" or self.cache_placement == "auto",
            "'auto' with context_source='stream' (streamed contexts are not placed anywhere)",
        )
        self._positive_int("patience")
        self._optional_positive_int("batch_size")
        self._optional_positive_int("micro_batch_size")
        self._optional_positive_int("eval_batch_size")
        self._choice("amp", AMP_MODES)
        self._optional_positive_int("max_steps")
        self._optional_positive_int("checkpoint_every_steps")
        self._choice("cache_build_method", ("auto", "loop", "sweeps", "segments"))
        self._positive_float("cache_build_tol")
        self._optional_positive_int("cache_burn_in", 0)
        self._optional_positive_int("cache_segment_tokens")
        self._choice("schedule", ("constant", "cosine"))
        self._choice("cache_dtype", ("auto", "float32", "bfloat16", "float16"))
        self._choice("cache_placement", ("auto", "gpu", "cpu", "disk"))
        self._optional_positive_int("ce_chunk_tokens")
        self._require(
            "memory_safety", isinstance(self.memory_safety, (int, float)) and 0 < self.memory_safety <= 1,
            "a number in (0, 1]",
        )
        self._positive_int("max_oom_halvings", 0)
        self._positive_int("seed", 0)


# ------------------------------------------------------------------------ end-to-end gated LM training

@dataclass(frozen=True)
class GatedTrainConfig(ConfigBase):
    """End-to-end training of the gated LM on WikiText-2 windows (seed-spec 2.2-2.3)."""

    window: int = 64  # tokens per window (BOS/EOS included): window - 1 predicted targets
    stride: int = 32
    min_words: int = 5
    tail: str = "keep"  # "keep": a last window aligned to the paragraph end scores the remainder; "drop": the original
    train_targets: str = "all"  # "all": overlapped targets count in both windows (the original); "once"
    batch_size: Optional[int] = 32  # None: chosen from free GPU memory
    lr: float = 1e-4
    lr_scaling: str = "none"  # "sqrt": lr * sqrt(batch / 32), the rule the original adopted
    schedule: str = "constant"  # or "cosine"
    epochs: int = 50
    max_updates: Optional[int] = None  # stop after this many optimizer steps (budgeted runs)
    grad_clip: Union[str, float] = "adaptive"  # "adaptive": 0.5 / 1.0 / 2.0 by epoch, or a fixed max-norm
    patience: int = 10
    min_delta: float = 1e-3
    checkpoint_every: int = 5
    amp: str = "auto"  # "auto": bf16 on cc >= 8, fp16 + GradScaler below, off on CPU; "bf16", "fp16" (CUDA), "off"
    seed: int = 42

    def __post_init__(self) -> None:
        self._positive_int("window", 2)
        self._positive_int("stride")
        self._require(
            "stride", self.stride <= self.window - 1,
            f"an integer <= window - 1 = {self.window - 1} (a window of {self.window} tokens holds {self.window - 1} "
            "targets; a longer stride would leave targets between windows unscored)",
        )
        self._positive_int("min_words", 0)
        self._choice("tail", ("keep", "drop"))
        self._choice("train_targets", ("all", "once"))
        self._optional_positive_int("batch_size")
        self._positive_float("lr")
        self._choice("lr_scaling", ("none", "sqrt"))
        self._choice("schedule", ("constant", "cosine"))
        self._positive_int("epochs")
        self._optional_positive_int("max_updates")
        if isinstance(self.grad_clip, str):
            self._choice("grad_clip", ("adaptive",))
        else:
            self._positive_float("grad_clip")
        self._positive_int("patience")
        self._positive_float("min_delta", allow_zero=True)
        self._positive_int("checkpoint_every")
        self._choice("amp", AMP_MODES)
        self._positive_int("seed", 0)

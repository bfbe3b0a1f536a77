"""Typed, validated settings for every step of the kit.

Every config is a frozen dataclass validated at construction: a bad value raises ``ValueError`` naming the
field, the value and what is allowed. Variants are made with ``dataclasses.replace``; ``to_dict``/``from_dict``
and ``to_json``/``from_json`` give a JSON round trip that rejects unknown keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

T = TypeVar("T", bound="ConfigBase")


def _fail(cls_name: str, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{cls_name}.{name}={value!r} is not allowed: {allowed}")


class ConfigBase:
    """Shared validation and JSON helpers (mixed into frozen dataclasses)."""

    def _require(self, name: str, ok: bool, allowed: str) -> None:
        if not ok:
            _fail(type(self).__name__, name, getattr(self, name), allowed)

    def _positive_int(self, name: str, minimum: int = 1) -> None:
        value = getattr(self, name)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        self._require(name, ok, f"an integer >= {minimum}")

    def _optional_positive_int(self, name: str, minimum: int = 1) -> None:
        if getattr(self, name) is not None:
            self._positive_int(name, minimum)

    def _positive_float(self, name: str, allow_zero: bool = False) -> None:
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= 0 if allow_zero else value > 0)
        self._require(name, ok, "a finite number " + (">= 0" if allow_zero else "> 0"))

    def _in_range(self, name: str, low: float, high: float) -> None:
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
        self._require(name, ok, f"a number in [{low}, {high}]")

    def _choice(self, name: str, choices: tuple) -> None:
        self._require(name, getattr(self, name) in choices, "one of " + ", ".join(repr(c) for c in choices))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: dict) -> T:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}.from_dict needs a JSON object (dict), got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown key(s) {unknown}; allowed keys are {sorted(known)}"
            )
        values = dict(data)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in values and isinstance(values[f.name], list) and "tuple" in str(f.type):
                values[f.name] = tuple(values[f.name])
        return cls(**values)  # type: ignore[call-arg]

    def to_json(self, path: Optional[Union[str, Path]] = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            from newllm.io import atomic_write_text

            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_json(cls: type[T], source: Union[str, Path]) -> T:
        """Read a config from a JSON string or a path to a JSON file."""
        text = str(source)
        looks_like_json = text.lstrip().startswith("{")
        if not looks_like_json:
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"{cls.__name__}.from_json: no such file {str(path)!r} (pass a path or a JSON string)")
            text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{cls.__name__}.from_json: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                "fix the file or regenerate it with .to_json()"
            ) from None
        return cls.from_dict(data)


# ----------------------------------------------------------------------------------------------- model

EMBEDDINGS = ("auto", "gpt2", "random")


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """The CVFP model (E-architecture, seed-spec 5.1).

    Defaults are the original's last configuration: 6 layers, 768 dims, one input token, the token re-injected
    into every ContextBlock layer, GPT-2 vocabulary and frozen GPT-2 embeddings, no weight tying.
    """

    vocab_size: int = 50257
    ctx_dim: int = 768
    embed_dim: int = 768
    num_layers: int = 6
    num_input_tokens: int = 1
    token_input_all_layers: bool = True
    weight_tying: bool = False
    embedding: str = "auto"  # "gpt2": GPT-2 wte (error if unavailable); "random"; "auto": gpt2 when loadable
    freeze_embedding: bool = True
    init_std: float = 0.1
    bias_std: float = 0.01
    embedding_init_std: float = 0.02

    def __post_init__(self) -> None:
        self._positive_int("vocab_size", 2)
        self._positive_int("ctx_dim")
        self._positive_int("embed_dim")
        self._positive_int("num_layers")
        self._positive_int("num_input_tokens")
        self._choice("embedding", EMBEDDINGS)
        self._positive_float("init_std")
        self._positive_float("bias_std", allow_zero=True)
        self._positive_float("embedding_init_std")
        if self.weight_tying:
            self._require(
                "weight_tying",
                self.ctx_dim == self.embed_dim and self.num_input_tokens == 1,
                "True only when ctx_dim == embed_dim and num_input_tokens == 1 (the head reads a state of "
                f"size embed_dim; got ctx_dim={self.ctx_dim}, embed_dim={self.embed_dim}, k={self.num_input_tokens})",
            )
        if self.embedding == "gpt2":
            self._require(
                "embedding",
                self.embed_dim == 768 and self.vocab_size == 50257,
                "'gpt2' needs embed_dim=768 and vocab_size=50257 (GPT-2's wte); use 'random' for other sizes",
            )

    @property
    def token_input_dim(self) -> int:
        return self.embed_dim * self.num_input_tokens


@dataclass(frozen=True)
class GatedLMConfig(ConfigBase):
    """The end-to-end gated context-vector LM of the WikiText-2 era (seed-spec 2.1)."""

    vocab_size: int = 1000
    embed_dim: int = 256
    hidden_dim: int = 512
    ctx_dim: int = 256
    num_layers: int = 6
    dropout: float = 0.1
    context_clip: float = 10.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self._positive_int("vocab_size", 5)
        self._positive_int("embed_dim")
        self._positive_int("hidden_dim")
        self._positive_int("ctx_dim")
        self._positive_int("num_layers")
        self._require("dropout", isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "a number in [0, 1)")
        self._positive_float("context_clip")
        self._positive_float("init_std")


# ------------------------------------------------------------------------------------------- baselines

@dataclass(frozen=True)
class LSTMConfig(ConfigBase):
    """The LSTM baseline LM (newllm/baselines.py): embedding -> stacked LSTM -> linear head."""

    vocab_size: int = 1000
    embed_dim: int = 256
    hidden_dim: int = 256
    num_layers: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self._positive_int("vocab_size", 2)
        self._positive_int("embed_dim")
        self._positive_int("hidden_dim")
        self._positive_int("num_layers")
        self._require("dropout", isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "a number in [0, 1)")


@dataclass(frozen=True)
class TransformerConfig(ConfigBase):
    """The causal Transformer baseline LM (newllm/baselines.py): pre-LN blocks, learned positions, GELU MLP.

    ``embed_dim`` None: the token embedding is d_model wide; otherwise it is projected to d_model.
    """

    vocab_size: int = 1000
    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 4
    max_seq_len: int = 256
    embed_dim: Optional[int] = None
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self._positive_int("vocab_size", 2)
        self._positive_int("d_model")
        self._positive_int("num_layers")
        self._positive_int("num_heads")
        self._require(
            "num_heads", self.d_model % self.num_heads == 0,
            f"a divisor of d_model={self.d_model} (each head gets d_model / num_heads dims)",
        )
        self._positive_int("max_seq_len")
        self._optional_positive_int("embed_dim")
        self._positive_int("mlp_ratio")
        self._require("dropout", isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "a number in [0, 1)")


# ------------------------------------------------------------------------------------------------ data

TOKENIZERS = ("auto", "gpt2", "word", "bpe")
HUB_DATASETS = ("ultrachat", "wikitext2")  # datasets fetched through `datasets.load_dataset`


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Where the token streams come from.

    ``dataset``: "auto" (the hub dataset when reachable, else the built-in corpus), "builtin", "wikitext2",
    "ultrachat", or a path to a local text file or folder.
    ``samples``: the first N training documents; validation is a fixed held-out set of ``val_samples`` documents
    that never overlaps training and does not depend on ``samples``.
    """

    dataset: str = "auto"
    hub_dataset: str = "ultrachat"  # what "auto" means when the hub is reachable
    tokenizer: str = "auto"  # "auto": gpt2 for hub data (bpe when gpt2 cannot be loaded), word for builtin
    tokenizer_path: Optional[str] = None  # a local GPT-2 tokenizer folder (vocab.json + merges.txt ...)
    vocab_size: Optional[int] = None  # for "word" (default 1000) and "bpe" (default 8192)
    samples: int = 50
    val_samples: int = 20
    cache_dir: Optional[str] = None  # None: $NEWLLM_CACHE or ~/.cache/newllm
    seed: int = 42

    def __post_init__(self) -> None:
        self._require("dataset", isinstance(self.dataset, str) and self.dataset != "", "a dataset name or a path")
        self._choice("hub_dataset", HUB_DATASETS)
        self._choice("tokenizer", TOKENIZERS)
        self._optional_positive_int("vocab_size", 5)
        self._positive_int("samples")
        self._positive_int("val_samples")
        self._positive_int("seed", 0)


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

    def __post_init__(self) -> None:
        self._choice("solver", ("sequential", "parallel"))
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
    amp: str = "auto"  # "auto": bf16 autocast on CUDA (fp16 + GradScaler below cc 8.0), fp32 on CPU; "off"
    max_steps: Optional[int] = None  # stop after this many optimizer steps in total (budgeted runs)
    checkpoint_every_steps: Optional[int] = None  # None: checkpoint at the end of each epoch only
    cache_dir: Optional[str] = None  # folder for a disk cache; None: a temporary folder, removed afterwards
    cache_build_method: str = "auto"  # recurrence.evaluate_contexts method: "auto", "loop", "sweeps", "segments"
    cache_build_tol: float = 1e-5  # the recurrence's max-abs tolerance (sweeps, segment joins)
    cache_burn_in: Optional[int] = None  # "segments" burn-in tokens; None: the recurrence module's default
    cache_segment_tokens: Optional[int] = None  # "segments" window length; None: chosen by the recurrence module

    def __post_init__(self) -> None:
        self._positive_float("lr")
        self._positive_float("grad_clip")
        self._positive_int("epochs")
        self._positive_int("patience")
        self._optional_positive_int("batch_size")
        self._optional_positive_int("micro_batch_size")
        self._optional_positive_int("eval_batch_size")
        self._choice("amp", ("auto", "off"))
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
    amp: str = "auto"  # "auto": bf16 on cc >= 8, fp16 + GradScaler below, off on CPU; "off"
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
        self._choice("amp", ("auto", "off"))
        self._positive_int("seed", 0)


# ------------------------------------------------------------------------------------------------- run

@dataclass(frozen=True)
class RunConfig(ConfigBase):
    """Where and how a run executes."""

    experiment: str = "default"
    run_name: Optional[str] = None  # None: derived from the settings, made unique under results/
    results_dir: str = "results"
    device: str = "auto"  # "auto": CUDA when present, else CPU
    seed: int = 42

    def __post_init__(self) -> None:
        self._require("experiment", isinstance(self.experiment, str) and self.experiment.strip() != "", "a non-empty name")
        self._require("device", isinstance(self.device, str) and (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")), "'auto', 'cpu', 'cuda' or 'cuda:N'")
        self._positive_int("seed", 0)


# --------------------------------------------------------------------------------------------- scaling

@dataclass(frozen=True)
class ScalingConfig(ConfigBase):
    """Scaling-law fits (newllm/scaling.py): bootstrap intervals, the saturating fit's Huber loss, extrapolation targets."""

    n_bootstrap: int = 1000  # resamples for the intervals; 0: no intervals (NaN)
    confidence: float = 0.95  # two-sided percentile interval
    resample: str = "points"  # "points": sizes with replacement; "seeds": runs within each size (needs >= 2 per size)
    huber_delta: float = 1e-3  # saturating fit: Huber threshold on log-loss residuals
    targets: tuple[float, ...] = (5e5, 1e6, 2e6, 5e6, 1e7)  # extrapolation sizes (training tokens)
    seed: int = 0

    def __post_init__(self) -> None:
        self._positive_int("n_bootstrap", 0)
        self._require(
            "confidence", isinstance(self.confidence, float) and 0.0 < self.confidence < 1.0, "a float in (0, 1)"
        )
        self._choice("resample", ("points", "seeds"))
        self._positive_float("huber_delta")
        self._require(
            "targets",
            isinstance(self.targets, tuple) and len(self.targets) > 0 and all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
                for t in self.targets
            ),
            "a non-empty tuple of finite sizes > 0",
        )
        self._positive_int("seed", 0)


# ---------------------------------------------------------------------------------------------- tuning

# Tunable Phase-1 settings: StudyConfig range field -> (Phase1Config field it sets, sampled on a log scale,
# smallest allowed low end, whether that end is allowed itself).
TUNABLE_PHASE1_PARAMS: dict[str, tuple[str, bool, float, bool]] = {
    "dist_reg_weight_range": ("dist_reg_weight", False, 0.0, True),
    "lr_range": ("lr", True, 0.0, False),
    "noise_std_range": ("noise_std", False, 0.0, True),
    "convergence_threshold_range": ("convergence_threshold", False, 0.0, False),
}

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class StudyConfig(ConfigBase):
    """An Optuna study over Phase-1 settings minimising validation PPL (seed-spec 4.8; newllm/tuning.py).

    Ranges are ``(low, high)``; ``dist_reg_weight`` is always tuned, the others only when their range is given.
    ``storage``: None -> a journal file ``results_dir/experiment/study_name/optuna_journal.log`` (a killed study
    resumes from it); "memory" -> in memory (lost at exit); "<dialect>://..." -> an RDB URL (several machines);
    anything else -> the path of a journal file. ``workers`` is how many processes will share the storage; it only
    guards against storages that cannot take concurrent writers (memory, SQLite).
    ``n_trials`` counts finished trials (complete + pruned) of the study in total, across restarts and workers.
    ``min_er_pct`` / ``check_identity``: degenerate trials (train ER below the threshold / identity mapping) are
    pruned; each check needs its diagnostic from the objective (None / False turns it off).
    """

    dist_reg_weight_range: tuple[float, float] = (0.5, 0.999)
    lr_range: Optional[tuple[float, float]] = None  # log scale
    noise_std_range: Optional[tuple[float, float]] = None
    convergence_threshold_range: Optional[tuple[float, float]] = None
    n_trials: int = 20
    timeout: Optional[float] = None  # seconds for one run_study call; checked between trials
    study_name: str = "dist_reg_weight_optimization"
    experiment: str = "tuning"
    results_dir: str = "results"
    storage: Optional[str] = None
    workers: int = 1
    sampler_seed: Optional[int] = 42
    sampler_startup_trials: int = 10  # TPE's random trials before it models the objective
    pruner: str = "median"  # or "none"
    pruner_startup_trials: int = 5
    pruner_warmup_steps: int = 0
    min_er_pct: Optional[float] = 30.0  # seed-spec 4.6: ER < 30 % of d_c is "low diversity"
    check_identity: bool = True
    heartbeat_interval: int = 30  # seconds between "still running" marks of a trial
    grace_period: Optional[int] = None  # seconds without a mark before a trial counts as dead; None: 4 intervals
    max_retries: int = 2  # re-runs of a trial whose process died or was interrupted
    max_consecutive_errors: Optional[int] = 3  # this many trials in a row raising the same exception stop the study

    def __post_init__(self) -> None:
        for name, (_, log, lowest, lowest_allowed) in TUNABLE_PHASE1_PARAMS.items():
            if name == "dist_reg_weight_range" or getattr(self, name) is not None:
                self._check_range(name, log, lowest, lowest_allowed)
        if self.dist_reg_weight_range[1] > 1.0:
            _fail(type(self).__name__, "dist_reg_weight_range", self.dist_reg_weight_range, "a range inside [0, 1]")
        self._positive_int("n_trials")
        if self.timeout is not None:
            self._positive_float("timeout")
        for name in ("study_name", "experiment"):
            self._require(
                name, isinstance(getattr(self, name), str) and _SAFE_NAME.match(getattr(self, name)) is not None,
                "a folder-safe name: letters, digits, '_', '.', '-' (not starting with '.', '_' or '-')",
            )
        self._require("results_dir", isinstance(self.results_dir, str) and self.results_dir != "", "a folder path")
        self._require(
            "storage", self.storage is None or (isinstance(self.storage, str) and self.storage.strip() != ""),
            "None (journal file under results_dir), 'memory', an RDB URL or a journal file path",
        )
        self._positive_int("workers")
        if self.workers > 1:
            self._require(
                "storage", self.storage_kind != "memory",
                f"not 'memory' when workers={self.workers}: processes cannot share an in-memory study; "
                "use a journal file (storage=None) or an RDB URL",
            )
            self._require(
                "storage", not (self.storage_kind == "rdb" and self.storage.startswith("sqlite")),
                f"not a SQLite URL when workers={self.workers}: SQLite does not take concurrent writers from several "
                "processes reliably; use a journal file on a shared folder (storage=None or a path) or a server "
                "database such as postgresql://user@host/db",
            )
        if self.sampler_seed is not None:
            self._positive_int("sampler_seed", 0)
        self._positive_int("sampler_startup_trials", 0)
        self._choice("pruner", ("median", "none"))
        self._positive_int("pruner_startup_trials", 0)
        self._positive_int("pruner_warmup_steps", 0)
        if self.min_er_pct is not None:
            self._in_range("min_er_pct", 0.0, 100.0)
        self._require("check_identity", isinstance(self.check_identity, bool), "True or False")
        self._positive_int("heartbeat_interval")
        if self.grace_period is not None:
            self._require(
                "grace_period",
                isinstance(self.grace_period, int) and self.grace_period > self.heartbeat_interval,
                f"None or an integer > heartbeat_interval ({self.heartbeat_interval}); a live trial would look dead",
            )
        self._positive_int("max_retries", 0)
        self._optional_positive_int("max_consecutive_errors")

    def _check_range(self, name: str, log: bool, lowest: float, lowest_allowed: bool) -> None:
        value = getattr(self, name)
        numbers = (
            isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        )
        above = ">= {0}" if lowest_allowed else "> {0}"
        self._require(
            name,
            numbers and value[0] < value[1] and (value[0] >= lowest if lowest_allowed else value[0] > lowest),
            f"a tuple (low, high) of finite numbers with low < high and low {above.format(lowest)}"
            + (" (sampled on a log scale)" if log else ""),
        )

    @property
    def storage_kind(self) -> str:
        """'journal', 'memory' or 'rdb'."""
        if self.storage is None:
            return "journal"
        if self.storage == "memory":
            return "memory"
        return "rdb" if "://" in self.storage else "journal"

    @property
    def study_dir(self) -> Path:
        """results_dir/experiment/study_name: the default home of the journal file and of the study's outputs."""
        return Path(self.results_dir) / self.experiment / self.study_name

    @property
    def journal_path(self) -> Optional[Path]:
        """The journal file of a journal storage, else None."""
        if self.storage_kind != "journal":
            return None
        return self.study_dir / "optuna_journal.log" if self.storage is None else Path(self.storage)

    @property
    def grace_seconds(self) -> int:
        return self.grace_period if self.grace_period is not None else 4 * self.heartbeat_interval

    def search_space(self) -> dict[str, tuple[float, float, bool]]:
        """Phase1Config field -> (low, high, log) for every tuned parameter."""
        space = {}
        for name, (param, log, _, _) in TUNABLE_PHASE1_PARAMS.items():
            value = getattr(self, name)
            if value is not None:
                space[param] = (float(value[0]), float(value[1]), log)
        return space

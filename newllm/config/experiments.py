"""Experiment configs: the scaling sweep and the Optuna study."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from newllm.config.base import ConfigBase, _fail

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

"""What a study's objective must return and report: the contract the tuning engine checks (seed-spec 4.8).

The objective contract
    ``objective(params, report) -> TrialOutcome | dict``
    * ``params``: the sampled values, keyed by Phase1Config field (``{"dist_reg_weight": 0.87, ...}``).
    * ``report(epoch, val_loss)``: records an intermediate value and raises ``optuna.TrialPruned`` when the pruner
      says so or when the loss is not finite.
    * returns ``val_ppl`` plus optional diagnostics, the fields of :class:`TrialOutcome` (the one place where
      diagnostics keys are defined). An unknown or missing key, a wrong type, or a configured degenerate check whose
      diagnostic is absent raises :class:`ObjectiveContractError` and stops the study rather than
      silently pruning every trial.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from newllm.config.experiments import StudyConfig

# Trial user attributes written by the engine.
PRUNE_REASON = "prune_reason"
FAIL_REASON = "fail_reason"
RETRY_OF = "retry_of"  # number of the first trial of a chain of re-runs
RETRY_COUNT = "retry_count"

Report = Callable[[int, float], None]


class ObjectiveContractError(ValueError):
    """The objective returned or reported something outside the contract. Stops the study: every trial would fail."""


def _diagnostic(kind: type) -> Any:
    return field(default=None, metadata={"kind": kind})


@dataclass(frozen=True)
class TrialOutcome:
    """What an objective returns: validation PPL plus optional diagnostics (the only definition of their keys).

    Return an instance, or a dict with exactly these keys (``val_ppl`` required). Values are plain Python numbers;
    NaN/inf are allowed here and make the trial degenerate (pruned) rather than a contract error.
    """

    val_ppl: float = field(metadata={"kind": float})
    val_loss: Optional[float] = _diagnostic(float)
    val_accuracy: Optional[float] = _diagnostic(float)
    train_er_pct: Optional[float] = _diagnostic(float)
    val_er_pct: Optional[float] = _diagnostic(float)
    is_identity: Optional[bool] = _diagnostic(bool)
    converged_ratio: Optional[float] = _diagnostic(float)
    phase1_iterations: Optional[int] = _diagnostic(int)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name != "val_ppl":
                continue
            object.__setattr__(self, f.name, as_kind(f"TrialOutcome.{f.name}", value, f.metadata["kind"]))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_any(cls, raw: Any) -> "TrialOutcome":
        """Accept a TrialOutcome or a dict; anything else, unknown keys or a missing val_ppl is a contract error."""
        if isinstance(raw, cls):
            return raw
        if not isinstance(raw, dict):
            raise ObjectiveContractError(
                f"the objective must return a TrialOutcome or a dict with keys from {list(cls.keys())}; "
                f"got {type(raw).__name__}"
            )
        unknown = sorted(set(raw) - set(cls.keys()))
        if unknown:
            raise ObjectiveContractError(
                f"the objective returned unknown key(s) {unknown}; allowed keys are {list(cls.keys())} "
                "(rename the key, or add the diagnostic to newllm.experiments.study_contract.TrialOutcome)"
            )
        if "val_ppl" not in raw:
            raise ObjectiveContractError(f"the objective returned no 'val_ppl' (keys: {sorted(raw)})")
        return cls(**raw)

    def diagnostics(self) -> dict[str, Any]:
        """Every field that was given, as plain Python values."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def as_kind(label: str, value: Any, kind: type) -> Any:
    """Convert numpy/python scalars to ``kind``; anything else (tensors, strings, bools for numbers) is an error."""
    if kind is bool:
        ok = isinstance(value, (bool, np.bool_))  # numpy's bool is no subclass of bool
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok:
        raise ObjectiveContractError(
            f"{label} must be a {kind.__name__}, got {type(value).__name__} {value!r} "
            "(convert tensors with .item())"
        )
    return kind(value)


def degenerate_reason(outcome: TrialOutcome, config: StudyConfig) -> Optional[str]:
    """Why a finished trial is degenerate and must be pruned, or None when its val_ppl counts."""
    if config.check_identity and outcome.is_identity is None:
        raise ObjectiveContractError(
            "StudyConfig.check_identity=True needs the objective to return 'is_identity'; return it or set "
            "check_identity=False"
        )
    if config.min_er_pct is not None and outcome.train_er_pct is None:
        raise ObjectiveContractError(
            f"StudyConfig.min_er_pct={config.min_er_pct} needs the objective to return 'train_er_pct'; return it or "
            "set min_er_pct=None"
        )
    if not math.isfinite(outcome.val_ppl):
        return f"non-finite val_ppl ({outcome.val_ppl})"
    if config.check_identity and outcome.is_identity:
        return "identity mapping: the Phase-1 context map is degenerate"
    if config.min_er_pct is not None:
        if not math.isfinite(outcome.train_er_pct):
            return f"non-finite train_er_pct ({outcome.train_er_pct})"
        if outcome.train_er_pct < config.min_er_pct:
            return f"train ER {outcome.train_er_pct:.2f}% is below min_er_pct {config.min_er_pct:.2f}%"
    return None

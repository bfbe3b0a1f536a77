"""Optuna studies over Phase-1 settings around an injected objective: trials, the study loop and its summary.

The objective's contract is :mod:`newllm.experiments.study_contract`; storage, heartbeats and the shared trial budget
are :mod:`newllm.experiments.study_storage`.

How each trial ends (reasons are in ``trial.user_attrs``)
    * COMPLETE, value = val_ppl.
    * PRUNED, ``prune_reason``: the pruner; a non-finite loss or PPL; identity mapping; train ER below
      ``min_er_pct``; an exception raised by the objective (type and message; also logged with its traceback).
      ``max_consecutive_errors`` trials in a row raising the same exception type stop the study with a
      RuntimeError: that is a bug, not a bad parameter, and must not burn the budget.
    * FAIL, ``fail_reason``: a contract violation (the study stops); interrupted (KeyboardInterrupt); stale (its
      process died); surplus (another worker had already used the last of ``n_trials``). Interrupted and stale
      trials are queued again with the same parameters, up to ``max_retries`` times (``retry_of`` / ``retry_count``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

import optuna
import pandas as pd
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from tqdm.auto import tqdm

from newllm.config.experiments import StudyConfig
from newllm.experiments.study_contract import (
    FAIL_REASON,
    PRUNE_REASON,
    ObjectiveContractError,
    Report,
    TrialOutcome,
    as_kind,
    degenerate_reason,
)
from newllm.experiments.study_storage import (
    OWNER_ATTR,
    Heartbeat,
    budget_used,
    fail_and_requeue,
    finished_count,
    open_storage,
    open_study,
    recover_stale_trials,
    release_surplus,
    this_process,
)

logger = logging.getLogger(__name__)


def _suggest(trial: optuna.Trial, config: StudyConfig) -> dict[str, float]:
    return {name: trial.suggest_float(name, low, high, log=log)
            for name, (low, high, log) in config.search_space().items()}


class _Pruned(optuna.TrialPruned):
    """TrialPruned whose reason is already recorded on the trial."""


class _Reporter:
    """The ``report(epoch, val_loss)`` callable handed to the objective for one trial."""

    def __init__(self, trial: optuna.Trial) -> None:
        self._trial = trial
        self.pruned = False  # set once it has raised TrialPruned

    def __call__(self, epoch: int, val_loss: float) -> None:
        """Record val_loss for ``epoch``; raises optuna.TrialPruned when the trial should stop."""
        if not isinstance(epoch, numbers.Integral) or isinstance(epoch, bool) or epoch < 0:
            raise ObjectiveContractError(f"report(epoch, val_loss): epoch must be an int >= 0, got {epoch!r}")
        val_loss = as_kind("report(epoch, val_loss): val_loss", val_loss, float)
        if not math.isfinite(val_loss):
            self._prune(f"non-finite val_loss ({val_loss}) at epoch {epoch}")
        self._trial.report(val_loss, int(epoch))
        if self._trial.should_prune():
            self._prune(f"pruner: val_loss {val_loss:.4g} at epoch {epoch} is worse than the median of earlier trials")

    def _prune(self, reason: str) -> None:
        self._trial.set_user_attr(PRUNE_REASON, reason)
        self.pruned = True
        raise _Pruned(reason)


@dataclass(frozen=True)
class _TrialEnd:
    state: TrialState
    error: Optional[BaseException] = None


def _finish(study: optuna.Study, trial: optuna.Trial, state: TrialState, value: Optional[float] = None,
            reason: Optional[str] = None) -> _TrialEnd:
    try:
        if reason is not None:
            trial.set_user_attr(PRUNE_REASON if state == TrialState.PRUNED else FAIL_REASON, reason)
        study.tell(trial, value, state=state)
    except UpdateFinishedTrialError:
        logger.error("trial %d was marked dead by another worker while it ran (late heartbeat); its result is "
                     "discarded and its re-run counts instead", trial.number)
        return _TrialEnd(TrialState.FAIL)
    return _TrialEnd(state)


def _run_trial(study: optuna.Study, storage: BaseStorage, trial: optuna.Trial, objective: Callable,
               config: StudyConfig) -> _TrialEnd:
    storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, this_process())
    heartbeat = Heartbeat(storage, trial._trial_id, config.heartbeat_interval)
    heartbeat.beat()
    params = _suggest(trial, config)
    report = _Reporter(trial)
    try:
        with heartbeat:
            raw = objective(dict(params), report)
        if report.pruned:  # typically an `except Exception` in the objective; TrialPruned is an Exception too
            raise ObjectiveContractError(
                "the objective caught the optuna.TrialPruned raised by report() and went on; let it propagate"
            )
        outcome = TrialOutcome.from_any(raw)
        for key, value in outcome.diagnostics().items():
            trial.set_user_attr(key, value)
        reason = degenerate_reason(outcome, config)
    except _Pruned:
        return _finish(study, trial, TrialState.PRUNED)
    except optuna.TrialPruned as exc:
        return _finish(study, trial, TrialState.PRUNED, reason=f"pruned by the objective: {exc}")
    except ObjectiveContractError as exc:
        _finish(study, trial, TrialState.FAIL, reason=f"objective contract violated: {exc}")
        raise
    except Exception as exc:
        logger.error("trial %d raised %s with params %s (recorded as pruned)", trial.number, type(exc).__name__,
                     params, exc_info=True)
        end = _finish(study, trial, TrialState.PRUNED, reason=f"exception {type(exc).__name__}: {exc}")
        return dataclasses.replace(end, error=exc)
    except BaseException:  # KeyboardInterrupt & co: the trial did not fail on its merits, run it again later
        fail_and_requeue(study, storage, storage.get_trial(trial._trial_id), "interrupted", config.max_retries)
        raise
    if reason is not None:
        return _finish(study, trial, TrialState.PRUNED, reason=reason)
    return _finish(study, trial, TrialState.COMPLETE, value=outcome.val_ppl)


class _ErrorStreak:
    """Stops the study when ``limit`` trials in a row raise the same exception type (a bug, not bad luck)."""

    def __init__(self, limit: Optional[int]) -> None:
        self.limit, self.kind, self.count = limit, None, 0

    def update(self, error: Optional[BaseException]) -> None:
        """Count the trial that just ended (``error``: what it raised, or None); raise when the streak is too long."""
        if error is None:
            self.kind, self.count = None, 0
            return
        self.count = self.count + 1 if type(error) is self.kind else 1
        self.kind = type(error)
        if self.limit is not None and self.count >= self.limit:
            raise RuntimeError(
                f"{self.count} trials in a row raised {type(error).__name__}: {error}. Stopping the study: this looks "
                "like a bug in the objective, not a bad parameter (the trials are recorded as pruned with the "
                "exception as prune_reason). Fix the objective, or raise StudyConfig.max_consecutive_errors."
            ) from error


# ------------------------------------------------------------------------------------------------- study

@dataclass(frozen=True, eq=False)
class StudyResult:
    """A study's state: best trial (None when no trial completed), every trial, and the five best."""

    study_name: str
    search_space: dict[str, tuple[float, float, bool]]
    best_params: Optional[dict[str, float]]
    best_value: Optional[float]
    best_trial: Optional[int]
    trials: pd.DataFrame  # optuna's trials_dataframe: number, value, state, params_*, user_attrs_*, times
    top: pd.DataFrame  # the five best completed trials, best first
    n_complete: int
    n_pruned: int
    n_failed: int


def study_result(study: optuna.Study, config: StudyConfig) -> StudyResult:
    """Summarise ``study`` (e.g. after several workers finished) into a StudyResult."""
    trials = study.trials_dataframe(
        attrs=("number", "value", "state", "params", "user_attrs", "datetime_start", "datetime_complete", "duration")
    )
    if len(trials):
        # Optuna stores a pruned trial's last reported val_loss as its value; only val_ppl belongs in this column.
        trials.loc[trials["state"] != "COMPLETE", "value"] = float("nan")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = min(complete, key=lambda t: t.value) if complete else None
    if len(trials):
        top = trials[trials["state"] == "COMPLETE"].sort_values(["value", "number"]).head(5).reset_index(drop=True)
    else:
        top = trials
    return StudyResult(
        study_name=study.study_name,
        search_space=config.search_space(),
        best_params=dict(best.params) if best else None,
        best_value=float(best.value) if best else None,
        best_trial=best.number if best else None,
        trials=trials,
        top=top,
        n_complete=len(complete),
        n_pruned=len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
        n_failed=len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
    )


def load_study_result(config: StudyConfig, storage: Union[str, BaseStorage, None] = None) -> StudyResult:
    """Open the existing study of ``config`` and summarise it."""
    if storage is None and config.journal_path is not None and not config.journal_path.is_file():
        raise ValueError(f"no study journal at {config.journal_path}; run run_study with this config first")
    storage_obj = _resolve_storage(config, storage)
    try:
        study = optuna.load_study(study_name=config.study_name, storage=storage_obj)
    except KeyError:
        raise ValueError(f"the storage holds no study named {config.study_name!r}") from None
    return study_result(study, config)


def _resolve_storage(config: StudyConfig, storage: Union[str, BaseStorage, None]) -> BaseStorage:
    if isinstance(storage, BaseStorage):
        return storage
    return open_storage(config if storage is None else dataclasses.replace(config, storage=storage))


def run_study(objective: Callable[[dict, Report], Union[TrialOutcome, dict]], config: StudyConfig, *,
              storage: Union[str, BaseStorage, None] = None, progress: bool = True) -> StudyResult:
    """Run trials of ``objective`` until the study has ``config.n_trials`` finished trials (or the timeout).

    ``storage``: None uses ``config.storage``; a string replaces it; an optuna storage object is used as is.
    Several processes may call this with the same config and storage: together they finish ``n_trials``.
    Raises ObjectiveContractError on a contract violation, RuntimeError on a streak of identical exceptions.
    """
    storage_obj = _resolve_storage(config, storage)
    study = open_study(config, storage_obj)
    streak = _ErrorStreak(config.max_consecutive_errors)
    deadline = None if config.timeout is None else time.monotonic() + config.timeout
    with tqdm(total=config.n_trials, initial=min(finished_count(study), config.n_trials), disable=not progress,
              desc=f"study {config.study_name}", unit="trial") as bar:
        while deadline is None or time.monotonic() < deadline:
            recover_stale_trials(study, storage_obj, config)
            if budget_used(study) >= config.n_trials:
                break
            trial = study.ask()
            if budget_used(study, before_number=trial.number) >= config.n_trials:
                release_surplus(study, storage_obj, trial)  # another worker took the last slot meanwhile
                break
            end = _run_trial(study, storage_obj, trial, objective, config)
            bar.n = min(finished_count(study), config.n_trials)
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if complete:
                bar.set_postfix(best_val_ppl=f"{min(t.value for t in complete):.4g}", refresh=False)
            bar.refresh()
            if progress:  # one plain line per trial: what `papermill --log-output` shows of a long study
                best = f"; best val PPL {min(t.value for t in complete):.4g}" if complete else ""
                tqdm.write(f"[study {config.study_name}] trial {trial.number} {end.state.name.lower()} "
                           f"({min(finished_count(study), config.n_trials)}/{config.n_trials} finished{best})")
            streak.update(end.error)
    return study_result(study, config)

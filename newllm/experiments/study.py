"""Optuna studies over Phase-1 settings around an injected objective (seed-spec 4.8, issue #6).

The objective contract
    ``objective(params, report) -> TrialOutcome | dict``
    * ``params``: the sampled values, keyed by Phase1Config field (``{"dist_reg_weight": 0.87, ...}``).
    * ``report(epoch, val_loss)``: records an intermediate value and raises ``optuna.TrialPruned`` when the pruner
      says so or when the loss is not finite.
    * returns ``val_ppl`` plus optional diagnostics, the fields of :class:`TrialOutcome` (the one place where
      diagnostics keys are defined). An unknown or missing key, a wrong type, or a configured degenerate check whose
      diagnostic is absent raises :class:`ObjectiveContractError` and stops the study. The original read
      ``is_identity`` while its diagnostics returned ``is_identity_mapping``; the KeyError was caught and every
      trial was silently "pruned".

How each trial ends (reasons are in ``trial.user_attrs``)
    * COMPLETE, value = val_ppl.
    * PRUNED, ``prune_reason``: the pruner; a non-finite loss or PPL; identity mapping; train ER below
      ``min_er_pct``; an exception raised by the objective (type and message; also logged with its traceback).
      ``max_consecutive_errors`` trials in a row raising the same exception type stop the study with a
      RuntimeError: that is a bug, not a bad parameter, and must not burn the budget as it did in the original.
    * FAIL, ``fail_reason``: a contract violation (the study stops); interrupted (KeyboardInterrupt); stale (its
      process died); surplus (another worker had already used the last of ``n_trials``). Interrupted and stale
      trials are queued again with the same parameters, up to ``max_retries`` times (``retry_of`` / ``retry_count``).

Storage, resume and several workers
    The default storage is a journal file under ``results/<experiment>/<study_name>/``; a killed study resumes from
    it, and ``n_trials`` counts finished (complete + pruned) trials in total, so a resumed study runs only the
    remainder. Processes sharing one journal file (or an RDB URL, for several machines) form one study: before
    asking for a trial a worker counts finished and running trials, and after asking, the trial numbers decide
    which of two racing workers gets the last slot, so the study ends with exactly ``n_trials`` finished trials.

Dead trials
    Optuna 5's heartbeats exist for RDBStorage only and run only inside ``study.optimize``. This engine uses
    ask/tell (so that exceptions become PRUNED with a reason) and keeps its own storage-agnostic heartbeat: each
    trial records its owner (host, pid, process start time) and a timestamp refreshed every
    ``heartbeat_interval`` seconds, both as trial system attributes. Before every trial, a RUNNING trial counts as
    dead when its owner is on this host and that process no longer exists (a restart after ``kill -9`` sees it at
    once), or when its last mark is older than the grace period (another host, e.g. a lost Colab VM; this relies
    on the hosts' clocks agreeing to well within the grace period). Dead trials are marked FAIL and queued again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import optuna
import pandas as pd
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from newllm.config.experiments import StudyConfig
from newllm.config.training import Phase1Config
from newllm.utils.io import atomic_path, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

# Trial user attributes written by the engine.
PRUNE_REASON = "prune_reason"
FAIL_REASON = "fail_reason"
RETRY_OF = "retry_of"  # number of the first trial of a chain of re-runs
RETRY_COUNT = "retry_count"
# Trial system attributes (engine bookkeeping, kept out of the trials table).
_OWNER = "newllm:owner"
_HEARTBEAT = "newllm:heartbeat"
# Optuna's own system attribute holding the parameters of a queued trial (study.enqueue_trial).
_OPTUNA_FIXED_PARAMS = "fixed_params"
# Study user attribute: the search space the study was created with (a resumed study must use the same).
_SEARCH_SPACE = "newllm:search_space"

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

Report = Callable[[int, float], None]


class ObjectiveContractError(ValueError):
    """The objective returned or reported something outside the contract. Stops the study: every trial would fail."""


# ------------------------------------------------------------------------------------------ trial outcome

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
            object.__setattr__(self, f.name, _as_kind(f"TrialOutcome.{f.name}", value, f.metadata["kind"]))

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
                "(rename the key, or add the diagnostic to newllm.experiments.study.TrialOutcome)"
            )
        if "val_ppl" not in raw:
            raise ObjectiveContractError(f"the objective returned no 'val_ppl' (keys: {sorted(raw)})")
        return cls(**raw)

    def diagnostics(self) -> dict[str, Any]:
        """Every field that was given, as plain Python values."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _as_kind(label: str, value: Any, kind: type) -> Any:
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


# -------------------------------------------------------------------------------------------------- storage

def open_storage(config: StudyConfig) -> BaseStorage:
    """The storage named by ``config.storage`` (see StudyConfig); a journal file's folder is created."""
    kind = config.storage_kind
    if kind == "memory":
        return InMemoryStorage()
    if kind == "rdb":
        return RDBStorage(config.storage)
    path = config.journal_path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Default lock: a symlink, atomic on NFS too; a lock left by a killed process expires after 30 s.
    return JournalStorage(JournalFileBackend(str(path)))


def _open_study(config: StudyConfig, storage: BaseStorage) -> optuna.Study:
    """Create or load the study, check it matches ``config``, and attach this run's sampler and pruner."""
    study = optuna.create_study(
        storage=storage, study_name=config.study_name, direction="minimize", load_if_exists=True
    )
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise ValueError(f"study {config.study_name!r} in this storage maximises; the tuning engine minimises val_ppl")
    space = {name: list(bounds) for name, bounds in config.search_space().items()}
    stored = study.user_attrs.get(_SEARCH_SPACE)
    if stored is None:
        study.set_user_attr(_SEARCH_SPACE, space)
    elif stored != space:
        raise ValueError(
            f"study {config.study_name!r} was created with the search space {stored}, but this config asks for "
            f"{space}; use a new study_name (or the original ranges) so that its trials stay comparable"
        )
    existing = len(study.get_trials(deepcopy=False))
    seed = None
    if config.sampler_seed is not None:
        # Mixed with the number of trials already there, so that a resumed study does not replay the same random
        # proposals; with several workers also with the pid, so that workers starting together do not propose the
        # same values (concurrent runs are not reproducible anyway). A hash, not a sum: consecutive pids and trial
        # counts must not cancel out.
        entropy = [config.sampler_seed, existing] + ([os.getpid()] if config.workers > 1 else [])
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.sampler_startup_trials)
    if config.pruner == "median":
        pruner: optuna.pruners.BasePruner = optuna.pruners.MedianPruner(
            n_startup_trials=config.pruner_startup_trials, n_warmup_steps=config.pruner_warmup_steps
        )
    else:
        pruner = optuna.pruners.NopPruner()
    return optuna.load_study(study_name=config.study_name, storage=storage, sampler=sampler, pruner=pruner)


# ------------------------------------------------------------------------------------- liveness of trials

def _proc_stat(pid: int) -> Optional[list[str]]:
    """Fields 3.. of /proc/<pid>/stat (state first), or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses


def _this_process() -> dict[str, Any]:
    stat = _proc_stat(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": stat[19] if stat else None}


def _owner_is_dead(owner: dict[str, Any]) -> bool:
    """True only when the owning process is certainly gone: same host, and no process with that pid and start time."""
    if owner.get("host") != socket.gethostname():
        return False  # another machine: only the heartbeat can tell
    pid = owner.get("pid")
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):  # gone, or a zombie nobody has reaped yet
            return True
        return owner.get("started") is not None and stat[19] != owner["started"]  # pid reused by a new process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _stale_reason(trial: FrozenTrial, config: StudyConfig, now: float) -> Optional[str]:
    owner = trial.system_attrs.get(_OWNER)
    if owner is not None and _owner_is_dead(owner):
        return f"stale: its process (host {owner['host']}, pid {owner['pid']}) is gone"
    last = trial.system_attrs.get(_HEARTBEAT)
    if last is None and trial.datetime_start is not None:
        last = trial.datetime_start.timestamp()
    if last is not None and now - last > config.grace_seconds:
        return f"stale: no heartbeat for {now - last:.0f} s (grace period {config.grace_seconds} s)"
    return None


def _fail_and_requeue(study: optuna.Study, storage: BaseStorage, trial: FrozenTrial, reason: str,
                      max_retries: int) -> bool:
    """Mark a RUNNING trial FAIL with ``reason`` and queue its parameters again. False if someone else finished it."""
    try:
        storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
        if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False  # finished meanwhile, by its owner or by another worker doing this same recovery
    retry_count = int(trial.user_attrs.get(RETRY_COUNT, 0)) + 1
    if not trial.params:
        logger.warning("trial %d failed (%s) before its parameters were drawn; nothing to re-run", trial.number, reason)
    elif retry_count > max_retries:
        logger.error("trial %d failed (%s) and has used its %d retries; not re-queued", trial.number, reason,
                     max_retries)
    else:
        origin = int(trial.user_attrs.get(RETRY_OF, trial.number))
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: origin, RETRY_COUNT: retry_count})
        logger.warning("trial %d failed (%s); its parameters are queued again (retry %d of %d)", trial.number,
                       reason, retry_count, max_retries)
    return True


def recover_stale_trials(study: optuna.Study, storage: BaseStorage, config: StudyConfig) -> list[int]:
    """Fail and re-queue RUNNING trials whose process is dead (see the module docstring); their numbers."""
    now = time.time()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _stale_reason(trial, config, now)
        if reason is not None and _fail_and_requeue(study, storage, trial, reason, config.max_retries):
            recovered.append(trial.number)
    return recovered


class _Heartbeat:
    """Refreshes a trial's heartbeat attribute from a background thread while the objective runs."""

    def __init__(self, storage: BaseStorage, trial_id: int, interval: float) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"newllm-heartbeat-{trial_id}", daemon=True)
        self.lost = False  # set when another worker declared the trial dead

    def beat(self) -> None:
        self._storage.set_trial_system_attr(self._trial_id, _HEARTBEAT, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.beat()
            except UpdateFinishedTrialError:
                self.lost = True
                return
            except Exception as exc:  # a flaky shared filesystem must not kill the trial; the next beat may work
                logger.warning("heartbeat of trial id %d failed: %s", self._trial_id, exc)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------------ budget

def _finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _budget_used(study: optuna.Study, before_number: Optional[int] = None) -> int:
    """Finished trials plus running ones (all, or only those numbered below ``before_number``)."""
    used = 0
    for trial in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)):
        if trial.state in FINISHED:
            used += 1
        elif before_number is None or trial.number < before_number:
            used += 1
    return used


def _release_surplus(study: optuna.Study, storage: BaseStorage, trial: optuna.Trial) -> None:
    """Give back a trial asked for after the last slot was taken; a queued trial goes back to the queue."""
    frozen = storage.get_trial(trial._trial_id)
    storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, "surplus: n_trials was already reached by other workers")
    study.tell(trial, state=TrialState.FAIL)
    fixed = frozen.system_attrs.get(_OPTUNA_FIXED_PARAMS)
    if fixed:
        study.enqueue_trial(fixed, user_attrs=dict(frozen.user_attrs))


# ------------------------------------------------------------------------------------------------- trials

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
        val_loss = _as_kind("report(epoch, val_loss): val_loss", val_loss, float)
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
    storage.set_trial_system_attr(trial._trial_id, _OWNER, _this_process())
    heartbeat = _Heartbeat(storage, trial._trial_id, config.heartbeat_interval)
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
        _fail_and_requeue(study, storage, storage.get_trial(trial._trial_id), "interrupted", config.max_retries)
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
    study = _open_study(config, storage_obj)
    streak = _ErrorStreak(config.max_consecutive_errors)
    deadline = None if config.timeout is None else time.monotonic() + config.timeout
    with tqdm(total=config.n_trials, initial=min(_finished_count(study), config.n_trials), disable=not progress,
              desc=f"study {config.study_name}", unit="trial") as bar:
        while deadline is None or time.monotonic() < deadline:
            recover_stale_trials(study, storage_obj, config)
            if _budget_used(study) >= config.n_trials:
                break
            trial = study.ask()
            if _budget_used(study, before_number=trial.number) >= config.n_trials:
                _release_surplus(study, storage_obj, trial)  # another worker took the last slot meanwhile
                break
            end = _run_trial(study, storage_obj, trial, objective, config)
            bar.n = min(_finished_count(study), config.n_trials)
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if complete:
                bar.set_postfix(best_val_ppl=f"{min(t.value for t in complete):.4g}", refresh=False)
            bar.refresh()
            streak.update(end.error)
    return study_result(study, config)


# ------------------------------------------------------------------------------------------------- outputs

def config_optimized_text(result: StudyResult) -> str:
    """A small Python module defining the best values as constants (the original's ``config_optimized.py``)."""
    if result.best_params is None:
        raise ValueError(f"study {result.study_name!r} has no completed trial, so there is no best configuration")
    lines = [
        f'"""Best Phase-1 settings found by the Optuna study {result.study_name!r}.',
        "",
        "Generated by newllm.experiments.study.write_study_outputs; regenerate rather than edit.",
        '"""',
        "",
        f"STUDY_NAME = {result.study_name!r}",
        f"BEST_TRIAL = {result.best_trial!r}",
        f"BEST_VAL_PPL = {result.best_value!r}",
    ]
    lines += [f"{name.upper()} = {float(value)!r}" for name, value in sorted(result.best_params.items())]
    overrides = ", ".join(f"{name!r}: {name.upper()}" for name in sorted(result.best_params))
    lines += ["", "# Merge into Phase1Config: Phase1Config(**{**Phase1Config().to_dict(), **PHASE1_OVERRIDES})",
              f"PHASE1_OVERRIDES = {{{overrides}}}", ""]
    return "\n".join(lines)


def write_study_outputs(result: StudyResult, folder: Union[str, Path],
                        base_phase1: Optional[Phase1Config] = None) -> dict[str, Path]:
    """Write a study's results into ``folder``; returns name -> path of what was written.

    summary.json, trials.csv and top5.csv always; with a completed trial also phase1_config_best.json (the best
    values merged into ``base_phase1``, loadable with Phase1Config.from_json), config_optimized.py and the plots
    optimization_history.png and param_slices.png.
    """
    from newllm.plotting import plot_optimization_history, plot_param_slices

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def csv(name: str, frame: pd.DataFrame) -> None:
        with atomic_path(folder / name) as tmp:
            frame.to_csv(tmp, index=False)
        written[name] = folder / name

    csv("trials.csv", result.trials)
    csv("top5.csv", result.top)
    summary = {
        "study_name": result.study_name,
        "search_space": {k: list(v) for k, v in result.search_space.items()},
        "best_trial": result.best_trial,
        "best_value": result.best_value,
        "best_params": result.best_params,
        "n_complete": result.n_complete,
        "n_pruned": result.n_pruned,
        "n_failed": result.n_failed,
    }
    atomic_write_json(folder / "summary.json", summary)
    written["summary.json"] = folder / "summary.json"
    if result.best_params is None:
        logger.warning("study %r has no completed trial: no best config or plots written", result.study_name)
        return written
    base = base_phase1 if base_phase1 is not None else Phase1Config()
    best_config = Phase1Config.from_dict({**base.to_dict(), **result.best_params})
    best_config.to_json(folder / "phase1_config_best.json")
    written["phase1_config_best.json"] = folder / "phase1_config_best.json"
    atomic_write_text(folder / "config_optimized.py", config_optimized_text(result))
    written["config_optimized.py"] = folder / "config_optimized.py"
    log_params = {name for name, (_, _, log) in result.search_space.items() if log}
    written["optimization_history.png"] = plot_optimization_history(result.trials, folder / "optimization_history.png")
    written["param_slices.png"] = plot_param_slices(result.trials, folder / "param_slices.png", log_params=log_params)
    return written

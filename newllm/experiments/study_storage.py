"""A study's storage and the liveness of its trials: open or resume a study, heartbeats, dead-trial recovery,
and the trial budget shared by several workers.

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

import json
import logging
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from newllm.config.experiments import StudyConfig
from newllm.experiments.study_contract import FAIL_REASON, RETRY_COUNT, RETRY_OF

logger = logging.getLogger(__name__)

# Trial system attributes (engine bookkeeping, kept out of the trials table).
OWNER_ATTR = "newllm:owner"
HEARTBEAT_ATTR = "newllm:heartbeat"
# Optuna's own system attribute holding the parameters of a queued trial (study.enqueue_trial).
OPTUNA_FIXED_PARAMS = "fixed_params"
# Study user attribute: the search space the study was created with (a resumed study must use the same).
SEARCH_SPACE_ATTR = "newllm:search_space"

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(config: StudyConfig) -> BaseStorage:
    """The storage named by ``config.storage`` (see StudyConfig); a journal file's folder is created."""
    kind = config.storage_kind
    if kind == "memory":
        return InMemoryStorage()
    if kind == "rdb":
        return RDBStorage(config.storage)
    path = config.journal_path
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_journal(path)
    # Default lock: a symlink, atomic on NFS too; a lock left by a killed process expires after 30 s.
    return JournalStorage(JournalFileBackend(str(path)))


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def repair_journal(path: Path) -> Optional[str]:
    """Cut a journal file back to its last complete record when its last line was left partial (disk full, a
    killed writer on NFS): otherwise Optuna's reader fails on it with JSONDecodeError and every trial is out of
    reach. The cut bytes are kept in ``<journal>.damaged``; what was done is warned and returned."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    end = len(data)
    while end > 0:  # drop incomplete records from the end (a complete one is a JSON object and a newline)
        start = data.rfind(b"\n", 0, end - 1) + 1
        if data[end - 1:end] == b"\n" and _is_json(data[start:end]):
            break
        end = start
    if end == len(data):
        return None
    damaged = path.with_name(path.name + ".damaged")
    damaged.write_bytes(data[end:])
    with open(path, "r+b") as handle:
        handle.truncate(end)
    message = (f"{path}: its last record was incomplete ({len(data) - end} bytes, kept in {damaged.name}); the "
               "journal was cut back to its last complete record and the study continues from there")
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    return message


def open_study(config: StudyConfig, storage: BaseStorage) -> optuna.Study:
    """Create or load the study, check it matches ``config``, and attach this run's sampler and pruner."""
    study = optuna.create_study(
        storage=storage, study_name=config.study_name, direction="minimize", load_if_exists=True
    )
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise ValueError(f"study {config.study_name!r} in this storage maximises; the tuning engine minimises val_ppl")
    space = {name: list(bounds) for name, bounds in config.search_space().items()}
    stored = study.user_attrs.get(SEARCH_SPACE_ATTR)
    if stored is None:
        study.set_user_attr(SEARCH_SPACE_ATTR, space)
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


def this_process() -> dict[str, Any]:
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
    owner = trial.system_attrs.get(OWNER_ATTR)
    if owner is not None and _owner_is_dead(owner):
        return f"stale: its process (host {owner['host']}, pid {owner['pid']}) is gone"
    last = trial.system_attrs.get(HEARTBEAT_ATTR)
    if last is None and trial.datetime_start is not None:
        last = trial.datetime_start.timestamp()
    if last is not None and now - last > config.grace_seconds:
        return f"stale: no heartbeat for {now - last:.0f} s (grace period {config.grace_seconds} s)"
    return None


def fail_and_requeue(study: optuna.Study, storage: BaseStorage, trial: FrozenTrial, reason: str,
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
        if reason is not None and fail_and_requeue(study, storage, trial, reason, config.max_retries):
            recovered.append(trial.number)
    return recovered


class Heartbeat:
    """Refreshes a trial's heartbeat attribute from a background thread while the objective runs."""

    def __init__(self, storage: BaseStorage, trial_id: int, interval: float) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"newllm-heartbeat-{trial_id}", daemon=True)
        self.lost = False  # set when another worker declared the trial dead

    def beat(self) -> None:
        self._storage.set_trial_system_attr(self._trial_id, HEARTBEAT_ATTR, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.beat()
            except UpdateFinishedTrialError:
                self.lost = True
                return
            except Exception as exc:  # a flaky shared filesystem must not kill the trial; the next beat may work
                logger.warning("heartbeat of trial id %d failed: %s", self._trial_id, exc)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------------ budget

def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def budget_used(study: optuna.Study, before_number: Optional[int] = None) -> int:
    """Finished trials plus running ones (all, or only those numbered below ``before_number``)."""
    used = 0
    for trial in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)):
        if trial.state in FINISHED:
            used += 1
        elif before_number is None or trial.number < before_number:
            used += 1
    return used


def release_surplus(study: optuna.Study, storage: BaseStorage, trial: optuna.Trial) -> None:
    """Give back a trial asked for after the last slot was taken; a queued trial goes back to the queue."""
    frozen = storage.get_trial(trial._trial_id)
    storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, "surplus: n_trials was already reached by other workers")
    study.tell(trial, state=TrialState.FAIL)
    fixed = frozen.system_attrs.get(OPTUNA_FIXED_PARAMS)
    if fixed:
        study.enqueue_trial(fixed, user_attrs=dict(frozen.user_attrs))

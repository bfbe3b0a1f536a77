"""The Optuna study engine (newllm/tuning.py) with a cheap synthetic objective: val_ppl = 100 + 1000 (w - 0.8)^2."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from newllm.config.experiments import StudyConfig
from newllm.config.training import Phase1Config
from newllm.experiments.study import load_study_result, run_study
from newllm.experiments.study_contract import (
    FAIL_REASON,
    PRUNE_REASON,
    RETRY_COUNT,
    RETRY_OF,
    ObjectiveContractError,
    TrialOutcome,
)
from newllm.experiments.study_outputs import write_study_outputs
from newllm.experiments.study_storage import open_storage, recover_stale_trials

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("tuning_worker.py")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def quadratic_ppl(w: float) -> float:
    return 100 + 1000 * (w - 0.8) ** 2


def synthetic(params, report):
    """The reference objective: three epochs of decreasing val_loss, then a healthy outcome."""
    ppl = quadratic_ppl(params["dist_reg_weight"])
    for epoch in range(3):
        report(epoch, math.log(ppl) * (1.2 - 0.1 * epoch))
    return {"val_ppl": ppl, "is_identity": False, "train_er_pct": 60.0}


def memory_config(**overrides) -> StudyConfig:
    return StudyConfig(**{"storage": "memory", **overrides})


def load(config: StudyConfig) -> optuna.Study:
    return optuna.load_study(study_name=config.study_name, storage=open_storage(config))


def snapshot(study: optuna.Study) -> dict[int, tuple]:
    return {t.number: (t.state, t.value, dict(t.params)) for t in study.get_trials(deepcopy=False)}


# ------------------------------------------------------------------------------------------------ search

def test_study_finds_the_optimum_and_records_pruner_reasons():
    result = run_study(synthetic, memory_config(n_trials=30), progress=False)
    assert abs(result.best_params["dist_reg_weight"] - 0.8) < 0.03
    assert result.best_value == pytest.approx(quadratic_ppl(result.best_params["dist_reg_weight"]))
    assert result.n_complete + result.n_pruned == 30 and result.n_failed == 0
    assert result.n_pruned > 0  # the median pruner stopped trials worse than earlier ones at the same epoch
    pruned = result.trials[result.trials["state"] == "PRUNED"]
    assert pruned["user_attrs_prune_reason"].str.startswith("pruner: val_loss").all()
    assert pruned["value"].isna().all()  # the value column holds val_ppl only, never a pruned trial's val_loss
    assert list(result.top["value"]) == sorted(result.top["value"]) and len(result.top) == 5
    assert result.top["number"].iloc[0] == result.best_trial


def test_degenerate_outcomes_are_pruned_with_their_reason(caplog):
    def scripted(params, report):
        call = scripted.calls
        scripted.calls += 1
        ok = {"val_ppl": quadratic_ppl(params["dist_reg_weight"]), "is_identity": False, "train_er_pct": 60.0}
        if call == 0:
            return {**ok, "is_identity": True}
        if call == 1:
            return {**ok, "train_er_pct": 12.5}
        if call == 2:
            return {**ok, "val_ppl": float("inf")}
        if call == 3:
            report(0, float("nan"))
        if call == 4:
            raise RuntimeError("CUDA out of memory (simulated)")
        if call == 5:
            raise optuna.TrialPruned("too slow")
        return TrialOutcome(**ok, converged_ratio=0.97, phase1_iterations=7)

    scripted.calls = 0
    config = memory_config(n_trials=7, pruner="none", min_er_pct=30.0)
    with caplog.at_level(logging.ERROR, logger="newllm.experiments.study"):
        result = run_study(scripted, config, progress=False)
    reasons = result.trials.set_index("number")["user_attrs_prune_reason"]
    assert reasons[0].startswith("identity mapping")
    assert reasons[1] == "train ER 12.50% is below min_er_pct 30.00%"
    assert reasons[2] == "non-finite val_ppl (inf)"
    assert reasons[3] == "non-finite val_loss (nan) at epoch 0"
    assert reasons[4] == "exception RuntimeError: CUDA out of memory (simulated)"
    assert reasons[5] == "pruned by the objective: too slow"
    assert list(result.trials["state"]) == ["PRUNED"] * 6 + ["COMPLETE"]
    assert result.trials["user_attrs_phase1_iterations"].iloc[6] == 7  # diagnostics are stored on the trial
    # The exception is pruned, but loudly: logged at ERROR with its traceback.
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "RuntimeError" in r.getMessage()]
    assert errors and errors[0].exc_info is not None


def test_the_same_exception_in_a_row_stops_the_study():
    def broken(params, report):
        raise KeyError("is_identity")  # the original's bug class, raised inside the objective

    config = memory_config(n_trials=10, max_consecutive_errors=3)
    storage = open_storage(config)
    with pytest.raises(RuntimeError, match="3 trials in a row raised KeyError"):
        run_study(broken, config, storage=storage, progress=False)
    trials = optuna.load_study(study_name=config.study_name, storage=storage).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3
    assert all(t.user_attrs[PRUNE_REASON] == "exception KeyError: 'is_identity'" for t in trials)


def test_alternating_exceptions_do_not_stop_the_study():
    def flaky(params, report):
        flaky.calls += 1
        raise (ValueError if flaky.calls % 2 else TypeError)("bad luck")

    flaky.calls = 0
    result = run_study(flaky, memory_config(n_trials=5, max_consecutive_errors=2), progress=False)
    assert result.n_pruned == 5 and result.best_params is None


@pytest.mark.parametrize(
    "returned, fragment",
    [
        (
            {"val_ppl": 120.0, "is_identity_mapping": False, "train_er_pct": 60.0},  # the original's mismatch
            "unknown key(s) ['is_identity_mapping']",
        ),
        ({"ppl": 120.0, "is_identity": False, "train_er_pct": 60.0}, "unknown key(s) ['ppl']"),
        ({"is_identity": False, "train_er_pct": 60.0}, "no 'val_ppl'"),
        ({"val_ppl": "120", "is_identity": False, "train_er_pct": 60.0}, "TrialOutcome.val_ppl must be a float"),
        ({"val_ppl": 120.0, "is_identity": "no", "train_er_pct": 60.0}, "TrialOutcome.is_identity must be a bool"),
        ({"val_ppl": 120.0, "train_er_pct": 60.0}, "check_identity=True needs the objective to return 'is_identity'"),
        ({"val_ppl": 120.0, "is_identity": False}, "min_er_pct=30.0 needs the objective to return 'train_er_pct'"),
        (120.0, "must return a TrialOutcome or a dict"),
    ],
)
def test_contract_violations_stop_the_study_loudly(returned, fragment):
    config = memory_config(n_trials=5)
    storage = open_storage(config)
    with pytest.raises(ObjectiveContractError) as excinfo:
        run_study(lambda params, report: returned, config, storage=storage, progress=False)
    assert fragment in str(excinfo.value)
    (trial,) = optuna.load_study(study_name=config.study_name, storage=storage).trials  # no second trial was run
    assert trial.state == TrialState.FAIL
    reason = trial.user_attrs[FAIL_REASON]
    assert reason.startswith("objective contract violated") and fragment in reason


@pytest.mark.parametrize("epoch, loss, fragment", [(-1, 1.0, "epoch must be an int >= 0"), (0, "1.0", "val_loss must")])
def test_bad_reports_are_contract_errors(epoch, loss, fragment):
    def objective(params, report):
        report(epoch, loss)
        return {"val_ppl": 1.0, "is_identity": False, "train_er_pct": 60.0}

    with pytest.raises(ObjectiveContractError, match=fragment):
        run_study(objective, memory_config(n_trials=2), progress=False)


def test_an_objective_swallowing_the_prune_signal_is_a_contract_error():
    def swallowing(params, report):
        try:
            report(0, float("inf"))
        except Exception:  # the classic mistake: optuna.TrialPruned is an Exception
            pass
        return {"val_ppl": 100.0, "is_identity": False, "train_er_pct": 60.0}

    with pytest.raises(ObjectiveContractError, match="caught the optuna.TrialPruned"):
        run_study(swallowing, memory_config(n_trials=2), progress=False)


# ---------------------------------------------------------------------------------------- persistence

def test_resumed_study_runs_only_the_remainder(tmp_path):
    calls = []

    def counting(params, report):
        calls.append(params["dist_reg_weight"])
        return synthetic(params, report)

    config = StudyConfig(n_trials=4, results_dir=str(tmp_path))
    run_study(counting, config, progress=False)
    assert config.journal_path.is_file() and config.journal_path.parent == tmp_path / "tuning" / config.study_name
    first = snapshot(load(config))
    result = run_study(counting, StudyConfig(n_trials=7, results_dir=str(tmp_path)), progress=False)
    assert len(calls) == 7 and len(set(calls)) == 7  # 4 + the 3 missing, and no replayed random proposal
    assert result.n_complete + result.n_pruned == 7
    after = snapshot(load(config))
    assert all(after[n] == first[n] for n in first)
    run_study(counting, StudyConfig(n_trials=7, results_dir=str(tmp_path)), progress=False)
    assert len(calls) == 7  # already complete: nothing more runs


def test_loading_a_study_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no study journal at"):
        load_study_result(StudyConfig(results_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="no study named 'other'"):
        load_study_result(StudyConfig(study_name="other"), storage=open_storage(memory_config()))


def test_resume_with_another_search_space_is_refused(tmp_path):
    run_study(synthetic, StudyConfig(n_trials=1, results_dir=str(tmp_path)), progress=False)
    with pytest.raises(ValueError, match="use a new study_name"):
        run_study(synthetic, StudyConfig(n_trials=2, results_dir=str(tmp_path), lr_range=(1e-4, 1e-2)), progress=False)


def test_sqlite_storage_single_worker(tmp_path):
    config = StudyConfig(n_trials=3, storage=f"sqlite:///{tmp_path / 'study.db'}", pruner="none")
    result = run_study(synthetic, config, progress=False)
    assert result.n_complete == 3
    assert load_study_result(config).n_complete == 3  # a second connection sees the same study


def test_interrupted_trial_is_failed_and_rerun_with_its_params():
    config = memory_config(n_trials=3, pruner="none")
    storage = open_storage(config)

    def interrupted(params, report):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(interrupted, config, storage=storage, progress=False)
    (trial,) = optuna.load_study(study_name=config.study_name, storage=storage).get_trials(states=(TrialState.FAIL,))
    assert trial.user_attrs[FAIL_REASON] == "interrupted"
    seen = []

    def recording(params, report):
        seen.append(params["dist_reg_weight"])
        return synthetic(params, report)

    result = run_study(recording, config, storage=storage, progress=False)
    assert seen[0] == trial.params["dist_reg_weight"]  # the queued re-run goes first
    retry = result.trials[result.trials["user_attrs_retry_of"] == trial.number]
    assert len(retry) == 1 and retry["user_attrs_retry_count"].iloc[0] == 1
    assert result.n_complete == 3


def _running_trial(study: optuna.Study, storage, owner: dict, heartbeat_age: float, user_attrs=None):
    trial = study.ask()
    trial.suggest_float("dist_reg_weight", 0.5, 0.999)
    for key, value in (user_attrs or {}).items():
        trial.set_user_attr(key, value)
    storage.set_trial_system_attr(trial._trial_id, "newllm:owner", owner)
    storage.set_trial_system_attr(trial._trial_id, "newllm:heartbeat", time.time() - heartbeat_age)
    return trial


def test_stale_trials_are_detected_by_heartbeat_or_dead_process(tmp_path):
    import socket

    config = StudyConfig(storage=str(tmp_path / "j.log"), heartbeat_interval=10, max_retries=2)
    storage = open_storage(config)
    study = optuna.create_study(storage=storage, study_name=config.study_name)
    here = {"host": socket.gethostname(), "pid": os.getpid(), "started": None}
    elsewhere = {"host": "another-machine", "pid": 1, "started": None}
    dead_child = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_child.wait()
    silent = _running_trial(study, storage, elsewhere, heartbeat_age=1000)  # past the 40 s grace period
    recent = _running_trial(study, storage, elsewhere, heartbeat_age=5)
    alive = _running_trial(study, storage, here, heartbeat_age=5)
    dead = _running_trial(study, storage, {**here, "pid": dead_child.pid}, heartbeat_age=0)
    reused = _running_trial(study, storage, {**here, "started": "1"}, heartbeat_age=0)  # our pid, another process
    exhausted = _running_trial(study, storage, elsewhere, heartbeat_age=1000, user_attrs={RETRY_OF: 0, RETRY_COUNT: 2})

    recovered = recover_stale_trials(study, storage, config)

    assert sorted(recovered) == sorted([silent.number, dead.number, reused.number, exhausted.number])
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[recent.number].state == by_number[alive.number].state == TrialState.RUNNING
    assert "no heartbeat for" in by_number[silent.number].user_attrs[FAIL_REASON]
    assert f"pid {dead_child.pid}) is gone" in by_number[dead.number].user_attrs[FAIL_REASON]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs[RETRY_OF] for t in waiting) == sorted([silent.number, dead.number, reused.number])
    assert recover_stale_trials(study, storage, config) == []  # nothing is recovered twice


def test_a_worker_that_loses_the_race_for_the_last_slot_gives_its_trial_back(monkeypatch):
    """Another worker asks between this worker's budget check and its ask: the lower trial number keeps the slot."""
    config = memory_config(n_trials=1)
    storage = open_storage(config)
    original_ask = optuna.Study.ask
    racer = []

    def racing_ask(self, *args, **kwargs):
        if not racer:
            other_worker = optuna.load_study(study_name=config.study_name, storage=storage)
            racer.append(original_ask(other_worker))
        return original_ask(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "ask", racing_ask)
    calls = []
    run_study(lambda params, report: calls.append(params) or synthetic(params, report), config, storage=storage,
              progress=False)
    assert calls == []  # the surplus trial never reached the objective
    trials = optuna.load_study(study_name=config.study_name, storage=storage).trials
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.FAIL]
    assert trials[0].number == racer[0].number
    assert trials[1].user_attrs[FAIL_REASON].startswith("surplus")


def test_a_running_trial_keeps_its_heartbeat_fresh():
    config = memory_config(n_trials=1, heartbeat_interval=1, pruner="none")
    storage = open_storage(config)
    seen = []

    def watching(params, report):
        (running,) = optuna.load_study(study_name=config.study_name, storage=storage).get_trials(
            states=(TrialState.RUNNING,))
        first = running.system_attrs["newllm:heartbeat"]
        assert running.system_attrs["newllm:owner"]["pid"] == os.getpid()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.1)
            latest = storage.get_trial(running._trial_id).system_attrs["newllm:heartbeat"]
            if latest > first:
                seen.append(latest)
                break
        return synthetic(params, report)

    run_study(watching, config, storage=storage, progress=False)
    assert seen, "the heartbeat was never refreshed while the objective ran"


def _start_worker(tmp_path: Path, name: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args], cwd=REPO, env=env,
        stdout=open(tmp_path / f"{name}.out", "w"), stderr=subprocess.STDOUT,
    )


def _wait_for(path: Path, procs: list[subprocess.Popen], tmp_path: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        for proc in procs:
            if proc.poll() is not None:
                outputs = "\n".join(p.read_text() for p in tmp_path.glob("*.out"))
                pytest.fail(f"worker exited early with {proc.returncode}:\n{outputs}")
        if time.monotonic() > deadline:
            for proc in procs:
                proc.kill()
            pytest.fail(f"{path.name} did not appear within {seconds} s")
        time.sleep(0.05)


def test_study_killed_during_a_trial_resumes_and_finishes(tmp_path):
    journal, marker = tmp_path / "study.log", tmp_path / "blocked"
    worker = _start_worker(tmp_path, "killed", "--journal", str(journal), "--n-trials", "6", "--log",
                           str(tmp_path / "calls.log"), "--block-at", "3", "--marker", str(marker))
    try:
        _wait_for(marker, [worker], tmp_path)
    finally:
        worker.kill()  # SIGKILL: no cleanup runs, the trial stays RUNNING in the journal
        worker.wait(timeout=30)
    config = StudyConfig(n_trials=6, storage=str(journal), pruner="none")
    before = snapshot(load(config))
    (killed,) = [n for n, (state, _, _) in before.items() if state == TrialState.RUNNING]
    assert sum(state in FINISHED for state, _, _ in before.values()) == 3

    result = run_study(synthetic, config, progress=False)

    study = load(config)
    after = snapshot(study)
    assert all(after[n] == before[n] for n in before if n != killed)  # earlier results intact
    killed_trial = study.trials[killed]
    assert killed_trial.state == TrialState.FAIL
    assert f"pid {worker.pid}) is gone" in killed_trial.user_attrs[FAIL_REASON]
    (retry,) = [t for t in study.trials if t.user_attrs.get(RETRY_OF) == killed]
    assert retry.state in FINISHED and retry.params == killed_trial.params
    assert result.n_complete + result.n_pruned == 6


def test_two_worker_processes_share_one_journal(tmp_path):
    journal, go = tmp_path / "shared.log", tmp_path / "go"
    calls = tmp_path / "calls.log"
    workers = [
        _start_worker(tmp_path, f"w{i}", "--journal", str(journal), "--n-trials", "10", "--workers", "2",
                      "--log", str(calls), "--ready", str(tmp_path / f"ready{i}"), "--go", str(go),
                      "--epoch-sleep", "0.1")
        for i in range(2)
    ]
    try:
        for i in range(2):
            _wait_for(tmp_path / f"ready{i}", workers, tmp_path)
        go.write_text("go")
        for proc in workers:
            assert proc.wait(timeout=90) == 0, (tmp_path / "w0.out").read_text() + (tmp_path / "w1.out").read_text()
    finally:
        for proc in workers:
            proc.kill()
    study = load(StudyConfig(storage=str(journal)))
    trials = study.trials
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 10
    assert len({t.number for t in trials}) == len(trials)
    assert all(t.user_attrs.get(FAIL_REASON, "").startswith("surplus") for t in trials if t.state == TrialState.FAIL)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    lines = [line.split() for line in calls.read_text().splitlines()]
    weights = [float(w) for _, w in lines]
    assert len(weights) == len(set(weights)) == 10  # every objective call is one finished trial, none ran twice
    assert sorted(weights) == sorted(t.params["dist_reg_weight"] for t in finished)
    assert len({pid for pid, _ in lines}) == 2  # both processes took part


# ------------------------------------------------------------------------------------------------ outputs

def test_write_study_outputs(tmp_path):
    config = memory_config(n_trials=12, lr_range=(1e-4, 1e-2), pruner="none")

    def two_params(params, report):
        out = synthetic(params, report)
        return {**out, "val_ppl": out["val_ppl"] + 10 * abs(math.log10(params["lr"]) + 3)}

    result = run_study(two_params, config, progress=False)
    base = Phase1Config(max_iterations=12)
    written = write_study_outputs(result, tmp_path, base_phase1=base)

    assert set(written) == {"trials.csv", "top5.csv", "summary.json", "phase1_config_best.json",
                            "config_optimized.py", "optimization_history.png", "param_slices.png"}
    best = Phase1Config.from_json(tmp_path / "phase1_config_best.json")
    assert best.dist_reg_weight == result.best_params["dist_reg_weight"] and best.lr == result.best_params["lr"]
    assert best.max_iterations == 12  # the rest comes from the base config
    namespace: dict = {}
    exec((tmp_path / "config_optimized.py").read_text(), namespace)
    assert namespace["DIST_REG_WEIGHT"] == result.best_params["dist_reg_weight"]
    assert namespace["PHASE1_OVERRIDES"] == result.best_params
    assert namespace["BEST_VAL_PPL"] == result.best_value and namespace["BEST_TRIAL"] == result.best_trial
    assert len(pd.read_csv(tmp_path / "trials.csv")) == 12
    top = pd.read_csv(tmp_path / "top5.csv")
    assert len(top) == 5 and top["value"].iloc[0] == pytest.approx(result.best_value)
    for name in ("optimization_history.png", "param_slices.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outputs_of_a_study_without_a_completed_trial(tmp_path):
    def identity(params, report):
        return {"val_ppl": 50.0, "is_identity": True, "train_er_pct": 60.0}

    result = run_study(identity, memory_config(n_trials=2), progress=False)
    assert result.best_params is None and result.n_pruned == 2
    written = write_study_outputs(result, tmp_path)
    assert set(written) == {"trials.csv", "top5.csv", "summary.json"}


# ------------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"dist_reg_weight_range": (0.9, 0.5)}, "dist_reg_weight_range=(0.9, 0.5)"),
        ({"dist_reg_weight_range": (0.5, 1.5)}, "inside [0, 1]"),
        ({"dist_reg_weight_range": (0.5,)}, "tuple (low, high)"),
        ({"lr_range": (0.0, 1e-3)}, "low > 0.0 (sampled on a log scale)"),
        ({"noise_std_range": (-0.1, 0.2)}, "low >= 0.0"),
        ({"convergence_threshold_range": (0.1, float("nan"))}, "finite numbers"),
        ({"n_trials": 0}, "n_trials=0"),
        ({"timeout": -1.0}, "timeout=-1.0"),
        ({"study_name": "../escape"}, "folder-safe name"),
        ({"experiment": ""}, "folder-safe name"),
        ({"storage": "memory", "workers": 2}, "processes cannot share an in-memory study"),
        ({"storage": "sqlite:///study.db", "workers": 3}, "not a SQLite URL when workers=3"),
        ({"pruner": "hyperband"}, "'median', 'none'"),
        ({"min_er_pct": 120.0}, "[0.0, 100.0]"),
        ({"heartbeat_interval": 0}, "heartbeat_interval=0"),
        ({"heartbeat_interval": 30, "grace_period": 30}, "> heartbeat_interval (30)"),
        ({"max_retries": -1}, "max_retries=-1"),
        ({"max_consecutive_errors": 0}, "max_consecutive_errors=0"),
    ],
)
def test_study_config_validation(overrides, fragment):
    with pytest.raises(ValueError) as excinfo:
        StudyConfig(**overrides)
    assert fragment in str(excinfo.value)


def test_study_config_round_trip_and_storage_kinds(tmp_path):
    config = StudyConfig(lr_range=(1e-4, 1e-2), noise_std_range=(0.0, 0.2), results_dir=str(tmp_path))
    assert StudyConfig.from_json(config.to_json()) == config
    assert config.search_space() == {"dist_reg_weight": (0.5, 0.999, False), "lr": (1e-4, 1e-2, True),
                                     "noise_std": (0.0, 0.2, False)}
    assert config.storage_kind == "journal" and config.journal_path == config.study_dir / "optuna_journal.log"
    assert StudyConfig(storage="postgresql://u@h/db", workers=4).storage_kind == "rdb"
    assert StudyConfig(storage="/shared/study.log", workers=4).journal_path == Path("/shared/study.log")
    assert config.grace_seconds == 4 * config.heartbeat_interval


def test_a_journal_with_a_partial_last_line_is_repaired_and_resumes(tmp_path):
    calls = []

    def counting(params, report):
        calls.append(params["dist_reg_weight"])
        return synthetic(params, report)

    config = StudyConfig(n_trials=3, results_dir=str(tmp_path))
    run_study(counting, config, progress=False)
    before = snapshot(load(config))
    with open(config.journal_path, "ab") as handle:  # a writer killed mid-record (disk full, NFS)
        handle.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 3, "param_na')
    with pytest.warns(RuntimeWarning, match="last record was incomplete"):
        result = run_study(counting, StudyConfig(n_trials=4, results_dir=str(tmp_path)), progress=False)
    assert result.n_complete + result.n_pruned == 4 and len(calls) == 4  # the 3 trials kept, one more run
    assert all(snapshot(load(config))[n] == before[n] for n in before)
    assert config.journal_path.with_name(config.journal_path.name + ".damaged").read_bytes().startswith(b'{"op_code"')


def test_a_headless_study_prints_a_line_per_trial(tmp_path, capsys):
    run_study(synthetic, StudyConfig(n_trials=2, results_dir=str(tmp_path)), progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[study ")]
    assert len(lines) == 2 and "(2/2 finished; best val PPL " in lines[-1]
    assert "trial 0 complete (1/2 finished" in lines[0]

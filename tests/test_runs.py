import os
import subprocess
import threading

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from newllm.config.models import ModelConfig
from newllm.utils.runs import RunFolder, original_run_name, safe_name


def test_original_naming_pattern():
    assert original_run_name(512, 12, "int8") == "new_llm_wikitext_ctx512_layers12_int8"
    assert original_run_name(256, 6) == "new_llm_wikitext_ctx256_layers6"


def test_runs_never_overwrite(tmp_path):
    first = RunFolder.create("scaling", "ctx768", tmp_path)
    second = RunFolder.create("scaling", "ctx768", tmp_path)
    assert first.path != second.path
    assert second.name == "ctx768_2"


def test_concurrent_creation_gets_distinct_folders(tmp_path):
    made = []
    threads = [threading.Thread(target=lambda: made.append(RunFolder.create("e", "r", tmp_path).path)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8


def test_config_tables_and_figures(tmp_path):
    run = RunFolder.create("exp", "one", tmp_path)
    run.write_config(model=ModelConfig(ctx_dim=16), resolved={"dataset": "builtin"})
    assert run.read_config()["model"]["ctx_dim"] == 16
    run.append_row("metrics", {"samples": 50, "ppl": 10.5})
    run.append_row("metrics", {"samples": 100, "ppl": 8.25})
    table = run.read_table("metrics")
    assert table["ppl"].tolist() == [10.5, 8.25]
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    png = run.save_figure(fig, "curve")
    assert png.read_bytes()[:4] == b"\x89PNG"
    plt.close(fig)


def test_resume_requires_an_existing_run_and_names_are_sanitised(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        RunFolder.create("exp", "missing", tmp_path, resume=True)
    assert safe_name("a b/c") == "a_b_c"
    with pytest.raises(ValueError):
        safe_name("///")


def test_a_mirror_gets_whole_files_and_only_what_changed(tmp_path, monkeypatch):
    monkeypatch.delenv("NEWLLM_MIRROR_DIR", raising=False)
    local, drive = tmp_path / "local", tmp_path / "drive"
    run = RunFolder.create("scaling", "m", results_dir=local, mirror_dir=drive)
    assert run.mirror == drive / "scaling" / "m"
    run.write_json("summary", {"ppl": 12.0})
    (run.path / "ckpt").mkdir()
    (run.path / "ckpt" / "epoch_1.safetensors").write_bytes(b"x" * 1000)
    assert run.sync() == 2
    assert (run.mirror / "ckpt" / "epoch_1.safetensors").read_bytes() == b"x" * 1000
    assert run.sync() == 0  # nothing changed
    run.append_row("scaling", {"samples": 2})
    assert run.sync() == 1 and (run.mirror / "scaling.csv").read_text() == run.file("scaling.csv").read_text()
    assert not [p for p in run.mirror.rglob("*.tmp")]
    # a fresh machine (local disk empty) resumes from the mirror's copy; a new run never takes the mirror's name
    resumed = RunFolder.create("scaling", "m", results_dir=tmp_path / "new_vm", resume=True, mirror_dir=drive)
    assert (resumed.path / "ckpt" / "epoch_1.safetensors").exists() and resumed.mirror == run.mirror
    fresh = RunFolder.create("scaling", "m", results_dir=tmp_path / "other_vm", mirror_dir=drive)
    assert fresh.name == "m_2"
    assert RunFolder.create("scaling", "plain", results_dir=local).mirror is None


def test_the_mirror_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NEWLLM_MIRROR_DIR", str(tmp_path / "drive"))
    run = RunFolder.create("x", "y", results_dir=tmp_path / "local")
    assert run.mirror == tmp_path / "drive" / "x" / "y"
    with pytest.raises(ValueError, match="nor the mirror"):
        RunFolder.create("x", "missing", results_dir=tmp_path / "local", resume=True)


def test_bad_run_names_and_unwritable_results_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="must be a string"):
        RunFolder.create("scaling", 123, results_dir=tmp_path)
    with pytest.raises(ValueError, match="300 characters is too long"):
        RunFolder.create("scaling", "a" * 300, results_dir=tmp_path)
    locked = tmp_path / "read_only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: a file where the folder should be instead
            locked.chmod(0o700)
            locked.rmdir()
            locked.write_text("not a folder")
        with pytest.raises(ValueError, match="is not writable"):
            RunFolder.create("scaling", "x", results_dir=locked)
    finally:
        if locked.is_dir():
            locked.chmod(0o700)


def test_a_bad_device_is_a_clear_error():
    from newllm.utils.runtime import resolve_device

    with pytest.raises(ValueError, match="device='tpu' is not allowed"):
        resolve_device("tpu")


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    from newllm.utils.io import atomic_write_text

    target = tmp_path / "ckpt.safetensors"
    dead = _dead_pid()
    stale = tmp_path / f".ckpt.safetensors.{dead}.abc123.tmp"  # what kill -9 mid-save leaves
    stale.write_bytes(b"x" * 1000)
    mine = tmp_path / f".ckpt.safetensors.{os.getpid()}.def456.tmp"  # a live writer's: left alone
    mine.write_bytes(b"y")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and not stale.exists() and mine.exists()


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_scalars_reach_a_tensorboard_event_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunFolder.create("x", "tb", results_dir=tmp_path)
    scalars = run.scalars()
    for epoch in (1, 2):
        scalars.log("phase2", {"epoch": epoch, "val_loss": 3.0 / epoch, "stop": "epochs", "nan": float("nan")}, epoch)
    scalars.close()
    events = EventAccumulator(str(run.file("tensorboard")))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["phase2/epoch", "phase2/val_loss"]  # text and NaN left out
    assert [e.value for e in events.Scalars("phase2/val_loss")] == [3.0, 1.5]

"""The four notebooks: committed clean, one parameters cell, Colab cell inert elsewhere, and headless runs.

The notebooks' full CPU-preset runs are nbval's job (``pytest --nbval-lax notebooks/``); here scaling.ipynb runs
under papermill with small overrides into a temporary results folder, and a bad parameter is shown to stop the run
at the cell after the parameters.
"""

import json
import os
import sys
import types
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from newllm.notebook.presets import NOTEBOOK_PARAMS

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NAMES = ("advanced_training", "scaling", "parallel_tuning", "optimize_dist_reg_weight")
COLAB_BASE = "https://colab.research.google.com/github/newllm/newllm/blob/main/notebooks"


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{len(tagged)} cells tagged 'parameters'"
    return tagged[0]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_clean_with_one_parameters_cell(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "committed with outputs"
    namespace: dict = {}
    exec(_parameters_cell(nb).source, namespace)
    assert namespace["preset"] == "auto"
    for parameter in NOTEBOOK_PARAMS[name]:
        assert parameter in namespace, f"{parameter} missing from the parameters cell"
        assert namespace[parameter] is None, f"{parameter} must default to None (= the preset)"
    assert namespace["results_dir"] is None
    assert f"{COLAB_BASE}/{name}.ipynb" in nb.cells[0].source


@pytest.mark.parametrize("name", NAMES)
def test_the_colab_cell_does_nothing_outside_colab(name, monkeypatch):
    source = _read(name).cells[1].source
    assert "colab_setup.sh" in source and "NEWLLM_REPO_URL" in source
    calls = []
    monkeypatch.setattr("subprocess.run", lambda *a, **k: calls.append(a[0]))
    monkeypatch.setattr("os.chdir", lambda path: calls.append(["chdir", path]))
    path_before = list(sys.path)
    exec(source, {})
    assert calls == [] and sys.path == path_before

    # in Colab: clone (no checkout yet), run colab_setup.sh, move into notebooks/, import from the clone
    monkeypatch.setitem(sys.modules, "google.colab", object())
    monkeypatch.setattr("os.path.isdir", lambda path: False)
    monkeypatch.setattr("sys.path", list(path_before))
    exec(source, {})
    assert calls[0][:4] == ["git", "clone", "--depth", "1"]
    assert calls[1] == ["bash", "/content/newllm/colab_setup.sh"]
    assert calls[2] == ["chdir", "/content/newllm/notebooks"] and sys.path[0] == "/content/newllm"


@pytest.mark.parametrize("name", NAMES)
def test_the_colab_cell_mounts_drive_in_the_kernel_when_asked(name, monkeypatch):
    source = _read(name).cells[1].source.replace("MOUNT_DRIVE = False", "MOUNT_DRIVE = True")
    mounted = []
    fake_drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", types.SimpleNamespace(drive=fake_drive))
    monkeypatch.setattr("subprocess.run", lambda *a, **k: None)
    monkeypatch.setattr("os.chdir", lambda path: None)
    monkeypatch.setattr("os.path.isdir", lambda path: True)
    monkeypatch.setattr("sys.path", list(sys.path))
    for name in ("NEWLLM_RESULTS_DIR", "NEWLLM_MIRROR_DIR"):  # set-then-delete: monkeypatch restores them afterwards
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    exec(source, {})
    assert mounted == ["/content/drive"]
    # written on the VM's disk, copied whole to Drive after every epoch (RunFolder.sync)
    assert os.environ["NEWLLM_RESULTS_DIR"] == "/content/newllm-results"
    assert os.environ["NEWLLM_MIRROR_DIR"] == "/content/drive/MyDrive/newllm-results"


def test_the_build_script_reproduces_the_committed_notebooks():
    sys.path.insert(0, str(NOTEBOOK_DIR))
    try:
        import build_notebooks
    finally:
        sys.path.remove(str(NOTEBOOK_DIR))
    assert set(build_notebooks.NOTEBOOKS) == set(NAMES)
    assert build_notebooks.COLAB_BASE == COLAB_BASE
    for name, build in build_notebooks.NOTEBOOKS.items():
        committed = (NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8")
        assert nbformat.writes(build()) + "\n" == committed, f"{name}.ipynb differs from build_notebooks.py"


def _execute(tmp_path: Path, name: str, parameters: dict) -> nbformat.NotebookNode:
    import papermill

    out = tmp_path / f"{name}.out.ipynb"
    try:
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out), parameters=parameters,
                                   kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False)
    finally:
        executed = nbformat.read(str(out), as_version=4) if out.exists() else None
    return executed


def test_scaling_runs_headless_with_small_overrides(tmp_path, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setenv("NEWLLM_RESULTS_DIR", str(tmp_path / "not-used"))  # the parameter wins over the variable
    parameters = dict(preset="cpu", dataset="builtin", samples=[1, 2, 3], val_samples=1, ctx_dim=16, embed_dim=16,
                      layers=1, phase1_max_iterations=2, phase1_min_iterations=1, phase2_epochs=1,
                      results_dir=str(results), run_name="smoke")
    executed = _execute(tmp_path, "scaling", parameters)
    run = results / "scaling" / "smoke"
    table = pd.read_csv(run / "scaling.csv")
    assert sorted(table["samples"]) == [1, 2, 3] and (table["model"] == "cvfp").all()
    assert table["train_tokens"].is_monotonic_increasing
    assert (run / "ppl_vs_tokens.png").stat().st_size > 0 and (run / "extrapolation.csv").is_file()
    assert json.loads((run / "parameters.json").read_text())["preset_used"] == "cpu"
    assert not (tmp_path / "not-used").exists()
    text = "\n".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "power law: alpha" in text or "power law not fitted" in text


@pytest.mark.parametrize("parameters, message", [
    ({"samples": -5}, "samples=-5 is not allowed: a value >= 1"),
    ({"sampels": 200}, "unknown parameter(s) for scaling: 'sampels' (did you mean 'samples'?)"),  # a typo
    ({"resume": "no"}, "resume='no' is not allowed: use True or False"),
])
def test_a_bad_parameter_stops_at_the_cell_after_the_parameters(tmp_path, parameters, message):
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as info:
        _execute(tmp_path, "scaling", {**parameters, "results_dir": str(tmp_path / "results")})
    assert message in str(info.value)
    executed = nbformat.read(str(tmp_path / "scaling.out.ipynb"), as_version=4)
    failed = [i for i, c in enumerate(executed.cells) if c.cell_type == "code"
              and any(o.output_type == "error" for o in c.outputs)]
    injected = next(i for i, c in enumerate(executed.cells) if "injected-parameters" in c.metadata.get("tags", []))
    next_code = next(i for i, c in enumerate(executed.cells) if i > injected and c.cell_type == "code")
    assert failed == [next_code] and "notebook_values" in executed.cells[next_code].source
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("name, parameters", [
    ("parallel_tuning", {"preset": "seed000", "iterations": [2, 3], "weights": [0.5, 0.9]}),
    ("optimize_dist_reg_weight", {"preset": "seed004", "n_trials": 2, "phase2_epochs": 1}),
], ids=["seed000", "seed004"])
def test_the_seed_presets_run_headless_trimmed(tmp_path, name, parameters):
    # the seeds' own experiments (era-B / the original's Phase-1 rules), with fewer grid points or trials than the
    # committed runs (results/README.md) so CI stays short; the notebooks' own checks must pass
    executed = _execute(tmp_path, name, {**parameters, "results_dir": str(tmp_path / "results")})
    from newllm.notebook.presets import seed_deviations

    preset = parameters["preset"]
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    printed = "\n".join(o.get("text", "") for o in outputs)
    shown = "\n".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert f"preset {preset!r} differs from its seed here:" in printed
    assert all(what in shown for what in seed_deviations(preset)["what"])  # the whole table was displayed

"""The notebooks' pipelines: results folder, parameters, live displays, training, grid verdicts, study config."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from newllm.notebook import pipelines as nbp
from newllm.notebook.presets import NOTEBOOK_PARAMS

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ results folder

def test_results_dir_explicit_then_env_then_repo(tmp_path, monkeypatch):
    monkeypatch.delenv(nbp.RESULTS_DIR_ENV, raising=False)
    assert nbp.find_results_dir(tmp_path / "mine") == tmp_path / "mine"
    assert nbp.find_results_dir(start=REPO / "notebooks") == REPO / "results"
    monkeypatch.setenv(nbp.RESULTS_DIR_ENV, str(tmp_path / "env"))
    assert nbp.find_results_dir() == tmp_path / "env"
    assert nbp.find_results_dir(tmp_path / "mine") == tmp_path / "mine"


def test_repo_root_walks_up_to_the_newllm_pyproject(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "notebooks" / "deep").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text('[project]\nname = "newllm"\n')
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert nbp.repo_root(checkout / "notebooks" / "deep") == checkout
    # outside any checkout: the one this package was imported from
    assert nbp.repo_root(tmp_path / "other") == REPO


# --------------------------------------------------------------------------------------------- parameters

def test_notebook_values_reads_the_parameters_cell_namespace():
    namespace = {name: None for name in NOTEBOOK_PARAMS["scaling"]}
    namespace.update(samples=7, ctx_dim=32, unrelated=object())
    values = nbp.notebook_values("scaling", "cpu", namespace)
    assert values["samples"] == [7] and values["ctx_dim"] == 32
    assert values["layers"] == NOTEBOOK_PARAMS["scaling"]["layers"].cpu
    table = nbp.parameters_table(values)
    assert table.iloc[0].tolist() == ["preset", "cpu -> cpu"]
    with pytest.raises(ValueError, match="samples=-5 is not allowed"):
        nbp.notebook_values("scaling", "cpu", {**namespace, "samples": -5})
    with pytest.raises(ValueError, match="preset='fast' is unknown"):
        nbp.notebook_values("scaling", "fast", namespace)
    with pytest.raises(ValueError, match="one value, not a list"):
        nbp.notebook_values("parallel_tuning", "cpu", {"samples": [1, 2]})


# ------------------------------------------------------------------------------------------ live output

class FakeHandle:
    def __init__(self, log):
        self.log = log

    def update(self, obj):
        self.log.append(("update", obj))


def fake_display(log):
    def display(obj, display_id=False):
        log.append(("display", obj, display_id))
        return FakeHandle(log)

    return display


def test_live_output_displays_once_then_updates_in_place():
    log = []
    out = nbp.LiveOutput(fake_display(log))
    out.show("a")
    out.show("b")
    assert log == [("display", "a", True), ("update", "b")] and out.shown == 2


def test_live_output_outside_ipython_displays_again():
    log = []
    out = nbp.LiveOutput(lambda obj, display_id=False: log.append(obj))  # returns no handle
    out.show("a")
    out.show("b")
    assert log == ["a", "b"]


def test_live_table_grows_and_keeps_the_chosen_columns():
    log = []
    table = nbp.LiveTable(["samples", "val_ppl"], nbp.LiveOutput(fake_display(log)))
    table({"samples": 1, "val_ppl": 9.0, "other": 1})
    table({"samples": 2, "val_ppl": 8.0})
    shown = log[-1][1]
    assert list(shown.columns) == ["samples", "val_ppl"] and shown["samples"].tolist() == [1, 2]


def test_live_curves_accumulate_epochs_and_redraw():
    log = []
    curves = nbp.LiveCurves("run", "word (V=10)", nbp.LiveOutput(fake_display(log)))
    curves.on_epoch({"epoch": 1, "train_loss": 2.0, "val_loss": 2.5, "step": 9})
    assert curves.on_epoch({"epoch": 2, "val_loss": 2.2}) is None
    assert [r["epoch"] for r in curves.rows] == [1, 2] and math.isnan(curves.rows[1]["train_loss"])
    assert len(log) == 2 and log[-1][1] is curves.figure and len(curves.figure.axes) == 2


# ----------------------------------------------------------------------------------------- grid verdicts

def _grid_table():
    rows = []
    for solver, seconds, er in (("sequential", 6.0, 50.0), ("parallel", 2.0, 52.0)):
        for it in (3, 6):
            for w in (0.5, 0.9):
                rows.append({"solver": solver, "max_iterations": it, "iterations_run": it, "dist_reg_weight": w,
                             "seconds": seconds * it, "val_er_pct": er + 10 * w + it, "train_er_pct": 40.0,
                             "stopped_early": it == 6 and solver == "parallel"})
    return pd.DataFrame(rows)


def test_grid_verdicts_are_computed_from_the_table():
    lines = nbp.grid_verdicts(_grid_table())
    assert lines[0] == "best val ER: parallel, 6 it, w=0.9: 67.0 %"
    assert lines[1] == "parallel is 3.0x faster than sequential at equal settings (median of 4)"
    assert lines[2] == "parallel's val ER is 2.0 points above sequential's at equal settings (median of 4)"
    assert lines[3] == "2 of 8 runs stopped before their max_iterations (converged)"
    slow = _grid_table()
    slow.loc[slow["solver"] == "parallel", "seconds"] *= 12  # now 4x slower
    assert nbp.grid_verdicts(slow)[1] == "parallel is 4.0x slower than sequential at equal settings (median of 4)"


def test_grid_verdicts_with_one_solver_and_no_val_er():
    table = _grid_table()
    table = table[table["solver"] == "parallel"].assign(val_er_pct=float("nan"))
    lines = nbp.grid_verdicts(table)
    assert lines[0].startswith("best train ER: parallel") and len(lines) == 2


def test_grid_heatmaps_have_one_panel_per_solver():
    fig = nbp.plot_grid_heatmaps(_grid_table(), "val_er_pct", "validation ER (%)")
    panels = [ax for ax in fig.axes if ax.get_title() in ("sequential", "parallel")]
    assert [ax.get_title() for ax in panels] == ["sequential", "parallel"]
    assert panels[0].images[0].get_array().shape == (2, 2)


def test_baseline_points_are_drawn_on_the_scaling_axes():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    plt.close(fig)
    table = pd.DataFrame({"model": ["cvfp", "lstm", "lstm", "cvfp"], "samples": [1, 1, 2, 2], "seed": [0, 0, 0, 0],
                          "train_tokens": [100, 100, 200, 200], "val_ppl": [9.0, 8.0, 7.0, 6.0],
                          "parameters": [10, 11, 11, 10]})
    assert nbp.add_baseline_points(fig, table) == ["lstm"]
    line = ax.lines[-1]
    assert line.get_xdata().tolist() == [100, 200] and line.get_ydata().tolist() == [8.0, 7.0]
    assert "lstm baseline (11 parameters)" in line.get_label()
    assert nbp.add_baseline_points(fig, table[table["model"] == "cvfp"]) == []


# ------------------------------------------------------------------------------------------------- study

def test_study_config_maps_the_notebook_parameters(tmp_path):
    values = {"w_low": 0.6, "w_high": 0.95, "n_trials": 3, "timeout": None, "study_name": "s1", "storage": None,
              "seed": 7}
    config = nbp.study_config(values, tmp_path)
    assert config.dist_reg_weight_range == (0.6, 0.95) and config.n_trials == 3 and config.sampler_seed == 7
    assert config.journal_path == tmp_path / "optimize_dist_reg_weight" / "studies" / "s1" / "optuna_journal.log"
    with pytest.raises(ValueError, match="dist_reg_weight_range"):
        nbp.study_config({**values, "w_low": 0.99, "w_high": 0.5}, tmp_path)


# -------------------------------------------------------------------------------------- advanced training

def _advanced(**overrides):
    from newllm.notebook.presets import resolve

    small = dict(dataset="builtin", samples=1, val_samples=1, ctx_dim=8, layers=1, epochs=2, batch_size=64,
                 vocab_size=60)
    return resolve("advanced_training", "cpu", **{**small, **overrides})


def test_gated_training_writes_the_originals_files_and_compares_int8(tmp_path):
    values = _advanced(quantization="int8")
    setup = nbp.prepare_training(values, progress=False)
    assert setup.name == "new_llm_wikitext_ctx8_layers1_int8"
    assert setup.memory["component"].iloc[-1] == "PEAK" and setup.parameters > 0
    log = []
    curves = nbp.LiveCurves("t", output=nbp.LiveOutput(fake_display(log)))
    outcome = nbp.train(setup, tmp_path, curves=curves, progress=False)
    folder = tmp_path / "advanced_training" / setup.name
    assert outcome.run.path == folder
    for name in (f"{setup.name}_progress.json", f"{setup.name}_training_curves.png", "final.csv",
                 "int8_comparison.csv", "parameters.json", "config.json", f"checkpoints/best_{setup.name}.safetensors"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "parameters.json").read_text())["preset_used"] == "cpu"
    assert len(log) == len(outcome.history) == 2  # curves redrawn after each evaluation
    assert outcome.int8.index.tolist() == ["fp32", "int8"]
    assert outcome.int8.loc["int8", "size_mb"] < outcome.int8.loc["fp32", "size_mb"]
    assert math.isfinite(outcome.final["best_val_ppl"].iloc[0])
    again = nbp.train(setup, tmp_path, progress=False)  # never overwrites the first run
    assert again.run.path == tmp_path / "advanced_training" / f"{setup.name}_2"


def test_cvfp_training_shows_live_curves_and_writes_the_originals_files(tmp_path):
    values = _advanced(model_family="cvfp", samples=2, ctx_dim=16, layers=1, epochs=2, phase1_max_iterations=2,
                       phase1_min_iterations=1)
    setup = nbp.prepare_training(values, progress=False)
    assert setup.cvfp_settings.phase2.epochs == 2 and setup.cvfp_settings.phase2.lr == nbp.CVFP_DEFAULT_LR
    assert setup.cvfp_settings.model.embed_dim == 16  # word tokens: the embedding is ctx_dim wide
    assert "Phase-2 peak" in setup.memory_summary and setup.memory["component"].str.startswith("PEAK").any()
    log = []
    curves = nbp.LiveCurves("t", output=nbp.LiveOutput(fake_display(log)))
    outcome = nbp.train(setup, tmp_path, curves=curves, progress=False)
    assert len(log) == len(outcome.history) >= 1  # one redraw per Phase-2 epoch
    assert curves.rows[-1]["val_loss"] == pytest.approx(outcome.history["val_loss"].iloc[-1])
    for key in ("progress", "curves", "checkpoint", "final"):
        assert outcome.paths[key].is_file(), key
    final = outcome.final.iloc[0]
    assert final["family"] == "cvfp" and math.isfinite(final["best_val_ppl"]) and 0 < final["train_er_pct"] <= 100


def test_gated_batch_defaults_to_seed_001_on_a_gpu_and_the_trainers_on_a_cpu():
    assert nbp.gated_batch_size({"batch_size": None}, cuda=True) == 512
    assert nbp.gated_batch_size({"batch_size": None}, cuda=False) == 32
    assert nbp.gated_batch_size({"batch_size": 48}, cuda=True) == 48


def test_training_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="word-level tokens"):
        nbp.prepare_training(_advanced(tokenizer="gpt2"), progress=False)
    with pytest.raises(ValueError, match="gated LM only"):
        nbp.prepare_training(_advanced(model_family="cvfp", resume_from="x.safetensors"), progress=False)


# ------------------------------------------------------------------------------------------- Phase-1 grid

def test_phase1_grid_writes_table_heatmaps_and_verdicts(tmp_path):
    from newllm.notebook.presets import resolve

    values = resolve("parallel_tuning", "cpu", dataset="builtin", samples=1, val_samples=1, ctx_dim=8, embed_dim=8,
                     layers=1, iterations=[2], weights=[0.5, 0.9], solvers=["sequential", "parallel"],
                     phase1_min_iterations=1)
    outcome = nbp.run_phase1_grid(values, tmp_path, progress=False)
    assert len(outcome.table) == 4
    assert set(outcome.table["solver"]) == {"sequential", "parallel"}
    assert outcome.table["val_er_pct"].between(0, 100, inclusive="right").all()
    assert outcome.verdicts == nbp.grid_verdicts(outcome.table)
    assert json.loads(outcome.run.file("verdicts.json").read_text()) == outcome.verdicts
    assert all(path.is_file() for path in outcome.figures.values()) and len(outcome.figures) == 2
    assert outcome.run.file("grid.csv").is_file()

"""Seed 000's Phase-1 grid: verdicts computed from the table, heatmaps, and a run into a run folder."""

import json

import pandas as pd

from newllm.experiments.phase1_grid import grid_verdicts, run_phase1_grid
from newllm.notebook.parameters import open_run, settings_from_parameters
from newllm.notebook.presets import resolve
from newllm.plotting import plot_grid_heatmaps


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
    lines = grid_verdicts(_grid_table())
    assert lines[0] == "best val ER: parallel, 6 it, w=0.9: 67.0 %"
    assert lines[1] == "parallel is 3.0x faster than sequential at equal settings (median of 4)"
    assert lines[2] == "parallel's val ER is 2.0 points above sequential's at equal settings (median of 4)"
    assert lines[3] == "2 of 8 runs stopped before their max_iterations (converged)"
    slow = _grid_table()
    slow.loc[slow["solver"] == "parallel", "seconds"] *= 12  # now 4x slower
    assert grid_verdicts(slow)[1] == "parallel is 4.0x slower than sequential at equal settings (median of 4)"


def test_grid_verdicts_with_one_solver_and_no_val_er():
    table = _grid_table()
    table = table[table["solver"] == "parallel"].assign(val_er_pct=float("nan"))
    lines = grid_verdicts(table)
    assert lines[0].startswith("best train ER: parallel") and len(lines) == 2


def test_grid_heatmaps_have_one_panel_per_solver():
    fig = plot_grid_heatmaps(_grid_table(), "val_er_pct", "validation ER (%)")
    panels = [ax for ax in fig.axes if ax.get_title() in ("sequential", "parallel")]
    assert [ax.get_title() for ax in panels] == ["sequential", "parallel"]
    assert panels[0].images[0].get_array().shape == (2, 2)


def test_phase1_grid_writes_table_heatmaps_and_verdicts(tmp_path):
    values = resolve("parallel_tuning", "cpu", dataset="builtin", samples=1, val_samples=1, ctx_dim=8, embed_dim=8,
                     layers=1, iterations=[2], weights=[0.5, 0.9], solvers=["sequential", "parallel"],
                     phase1_min_iterations=1)
    run = open_run("parallel_tuning", values, tmp_path)
    outcome = run_phase1_grid(settings_from_parameters(values), run, values["iterations"], values["weights"],
                              values["solvers"], progress=False)
    assert len(outcome.table) == 4
    assert set(outcome.table["solver"]) == {"sequential", "parallel"}
    assert outcome.table["val_er_pct"].between(0, 100, inclusive="right").all()
    assert outcome.verdicts == grid_verdicts(outcome.table)
    assert json.loads(outcome.run.file("verdicts.json").read_text()) == outcome.verdicts
    assert all(path.is_file() for path in outcome.figures.values()) and len(outcome.figures) == 2
    assert outcome.run.file("grid.csv").is_file()

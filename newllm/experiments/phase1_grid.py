"""The Phase-1 tuning grid of seed 000: iterations x dist_reg_weight x solver, its verdicts and heatmaps."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd
from tqdm.auto import tqdm

from newllm.config.training import Phase1Config
from newllm.data.corpus import load_corpus
from newllm.data.streams import StreamsInput
from newllm.experiments.cvfp import CVFPSettings, model_for_corpus
from newllm.models.cvfp import CVFPModel, build_cvfp_model
from newllm.plotting import plot_grid_heatmaps
from newllm.training.phase1 import train_phase1
from newllm.utils.runs import RunFolder
from newllm.utils.runtime import resolve_device, seed_everything


def phase1_grid(
    model_factory: Callable[[], CVFPModel],
    train_ids: StreamsInput,
    val_ids: Optional[StreamsInput],
    iterations: Sequence[int] = (10, 20),
    weights: Sequence[float] = (0.5, 0.9),
    solvers: Sequence[str] = ("sequential", "parallel"),
    base_cfg: Phase1Config = Phase1Config(),
    progress: bool = True,
) -> pd.DataFrame:
    """Seed 000's tuning grid: every (solver, max_iterations, dist_reg_weight), each on a fresh model.

    Every run seeds everything with ``base_cfg.seed`` before ``model_factory()``, so all runs start from the same
    weights. min_iterations is lowered to max_iterations where it exceeds it. The table records the iterations
    actually run: with early stopping, larger max_iterations may stop at the same step (seed 000's A1-A3).
    Validation ER comes from the exact recurrence under the final weights.
    """
    combos = [(s, it, w) for s in solvers for it in iterations for w in weights]
    out = []
    for solver, max_iterations, weight in tqdm(combos, desc="Phase 1 grid", disable=not progress):
        cfg = dataclasses.replace(
            base_cfg,
            solver=solver,
            sweeps_per_step=base_cfg.sweeps_per_step if solver == "parallel" else None,
            # the original's token-0 rule of each solver: wrap-around (parallel) / carry-over (sequential)
            first_context="zero" if base_cfg.first_context == "zero" else (
                "wrap" if solver == "parallel" else "carry"),
            max_iterations=max_iterations,
            min_iterations=min(base_cfg.min_iterations, max_iterations),
            dist_reg_weight=weight,
        )
        seed_everything(base_cfg.seed)
        result = train_phase1(model_factory(), train_ids, cfg, val_ids=val_ids, progress=False)
        last = result.history.iloc[-1]
        out.append({
            "solver": solver,
            "max_iterations": max_iterations,
            "iterations_run": result.iterations,
            "steps": result.steps,
            "dist_reg_weight": weight,
            "seconds": result.seconds,
            "solver_seconds": float(result.history["seconds"].sum()),
            "train_er_pct": result.train_metrics.er_pct,
            "val_er_pct": math.nan if result.val_metrics is None else result.val_metrics.er_pct,
            "converged_ratio": float(last["converged_ratio"]),
            "converged": result.converged,
            "stopped_early": result.stopped_early,
            "final_loss": float(last["loss"]),
        })
    return pd.DataFrame(out)


def grid_verdicts(table: pd.DataFrame) -> list[str]:
    """Readable conclusions computed from a phase1_grid table (never typed in by hand)."""
    lines = []
    er_col = "val_er_pct" if table["val_er_pct"].notna().any() else "train_er_pct"
    which = "val" if er_col == "val_er_pct" else "train"
    best = table.loc[table[er_col].idxmax()]
    lines.append(f"best {which} ER: {best['solver']}, {int(best['max_iterations'])} it, "
                 f"w={best['dist_reg_weight']:g}: {best[er_col]:.1f} %")
    solvers = set(table["solver"])
    if {"sequential", "parallel"} <= solvers:
        keys = ["max_iterations", "dist_reg_weight"]
        paired = table[table["solver"] == "sequential"].merge(
            table[table["solver"] == "parallel"], on=keys, suffixes=("_seq", "_par"))
        ratio = float((paired["seconds_seq"] / paired["seconds_par"]).median())
        n = len(paired)
        if ratio >= 1:
            lines.append(f"parallel is {ratio:.1f}x faster than sequential at equal settings (median of {n})")
        else:
            lines.append(f"parallel is {1 / ratio:.1f}x slower than sequential at equal settings (median of {n})")
        gap = float((paired[f"{er_col}_par"] - paired[f"{er_col}_seq"]).median())
        direction = "above" if gap >= 0 else "below"
        lines.append(f"parallel's {which} ER is {abs(gap):.1f} points {direction} sequential's at equal settings "
                     f"(median of {n})")
    early = int(table["stopped_early"].sum())
    lines.append(f"{early} of {len(table)} runs stopped before their max_iterations (converged)")
    return lines


@dataclass
class GridOutcome:
    """The parallel-tuning grid: its table, verdicts and where they were written."""

    run: RunFolder
    table: pd.DataFrame
    verdicts: list[str]
    figures: dict[str, Path]


def run_phase1_grid(
    settings: CVFPSettings,
    run: RunFolder,
    iterations: Sequence[int],
    weights: Sequence[float],
    solvers: Sequence[str],
    progress: bool = True,
) -> GridOutcome:
    """Seed 000's grid into ``run``: every (solver, max iterations, dist_reg_weight) from the same initial weights;
    ``grid.csv``, ``verdicts.json`` and heatmaps of validation ER and time."""
    corpus = load_corpus(settings.data, progress=progress)
    model_cfg = model_for_corpus(settings.model, corpus)
    seed_everything(settings.seed)
    template, embedding = build_cvfp_model(model_cfg)  # built once: every grid point starts from these weights
    template.to(resolve_device(settings.device))
    run.write_config(settings=settings.to_dict(), grid={"iterations": list(iterations), "weights": list(weights),
                                                        "solvers": list(solvers)},
                     resolved={**corpus.info, "embedding": embedding.kind})
    table = phase1_grid(lambda: copy.deepcopy(template), corpus.train.documents(), corpus.val.documents(),
                        iterations=iterations, weights=weights, solvers=solvers, base_cfg=settings.phase1,
                        progress=progress)
    run.write_table("grid", table)
    verdicts = grid_verdicts(table)
    run.write_json("verdicts", verdicts)
    figures = {}
    for column, title in (("val_er_pct", "validation ER (%)"), ("seconds", "Phase-1 time (s)")):
        figures[column] = run.save_figure(plot_grid_heatmaps(table, column, title), f"heatmap_{column}")
    return GridOutcome(run, table, verdicts, figures)

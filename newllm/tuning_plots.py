"""PNG plots of an Optuna study's trials table (newllm.tuning): optimisation history and parameter slices.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so they need no display and change no global
backend. Input is the ``trials`` DataFrame of a StudyResult: ``number``, ``value``, ``state``, ``params_<name>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Union

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from newllm.io import atomic_path


def _complete(trials: pd.DataFrame) -> pd.DataFrame:
    if len(trials) == 0 or "state" not in trials:
        raise ValueError("the trials table is empty: run the study before plotting it")
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    if len(done) == 0:
        raise ValueError("no completed trial to plot (every trial was pruned or failed)")
    return done


def _counts(trials: pd.DataFrame) -> str:
    counts = trials["state"].value_counts()
    return ", ".join(f"{int(counts[s])} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if s in counts)


def _save(fig: Figure, path: Union[str, Path]) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_optimization_history(trials: pd.DataFrame, path: Union[str, Path]) -> Path:
    """Validation PPL of each completed trial against its number, with the best so far as a step line."""
    done = _complete(trials)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(done["number"], done["value"], s=18, label="trial")
    ax.step(done["number"], np.minimum.accumulate(done["value"].to_numpy()), where="post", color="C3",
            label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel("validation PPL")
    ax.set_title(f"optimisation history ({_counts(trials)})")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_param_slices(trials: pd.DataFrame, path: Union[str, Path], log_params: Iterable[str] = ()) -> Path:
    """One panel per tuned parameter: validation PPL against the parameter, coloured by trial number."""
    done = _complete(trials)
    params = [c[len("params_"):] for c in done.columns if c.startswith("params_")]
    if not params:
        raise ValueError("the trials table has no params_* column")
    log_params = set(log_params)
    fig = Figure(figsize=(4.2 * len(params), 3.8))
    for i, name in enumerate(params):
        ax = fig.add_subplot(1, len(params), i + 1)
        points = ax.scatter(done[f"params_{name}"], done["value"], c=done["number"], cmap="viridis", s=18)
        if name in log_params:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        if i == 0:
            ax.set_ylabel("validation PPL")
        ax.grid(alpha=0.3)
    fig.colorbar(points, ax=fig.axes, label="trial number")
    fig.suptitle(f"parameter slices ({_counts(trials)})")
    return _save(fig, path)

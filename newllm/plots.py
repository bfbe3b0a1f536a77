"""Matplotlib figures for results.

Every function builds a figure, detaches it from pyplot (so figures never pile up in a long session and a notebook
shows the returned figure once), returns the ``Figure`` and, given ``path``, writes a PNG atomically.
Without a display matplotlib renders with Agg by itself; nothing here changes the global backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from newllm.io import atomic_path
from newllm.scaling import PowerLawFit, SaturatingFit, ScalingFit, aggregate_seeds

PathLike = Union[str, Path]

_AXIS_LABELS = {"tokens": "training tokens", "samples": "training samples"}


def _new_figure(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    plt.close(fig)  # detach from pyplot's registry; the figure still draws and saves
    return fig, ax


def save_figure(fig: Figure, path: PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG only; give a path ending in .png, not {str(path)!r}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def plot_scaling(
    points: pd.DataFrame,
    power_law: Optional[PowerLawFit] = None,
    saturating: Optional[SaturatingFit] = None,
    *,
    size_col: str = "tokens",
    value_col: str = "ppl",
    extrapolate_to: Optional[float] = None,
    band: bool = True,
    title: Optional[str] = None,
    path: Optional[PathLike] = None,
) -> Figure:
    """PPL against training-set size on log-log axes: measured points, fitted curves and their bootstrap bands.

    ``points`` is either one row per run (``size_col``, ``value_col``, optionally ``seed``), averaged here, or the
    output of ``aggregate_seeds`` (``{value_col}_mean`` and ``{value_col}_std``); error bars show the std over
    seeds where there is one. Curves run from the smallest size to the largest, or to ``extrapolate_to``.
    The title quotes alpha and R^2 of the power law. With ``path``, the PNG is written there too.
    """
    table = _points_table(points, size_col, value_col)
    sizes = table[size_col].to_numpy(dtype=float)
    means = table[f"{value_col}_mean"].to_numpy(dtype=float)
    stds = table[f"{value_col}_std"].to_numpy(dtype=float)

    fig, ax = _new_figure((7.5, 5.0))
    has_std = bool(np.isfinite(stds).any())
    ax.errorbar(
        sizes, means, yerr=np.where(np.isfinite(stds), stds, 0.0) if has_std else None,
        fmt="o", color="black", markersize=6, capsize=4, zorder=3,
        label="measured (mean ± std over seeds)" if has_std else "measured",
    )

    high = max(sizes.max(), extrapolate_to or 0.0)
    grid = np.geomspace(sizes.min() / 1.15, high * 1.15, 200)
    curves = [
        (power_law, "tab:blue", _power_law_label),
        (saturating, "tab:orange", _saturating_label),
    ]
    for fit, colour, label in curves:
        if fit is None:
            continue
        if not fit.ok:
            ax.plot([], [], color=colour, linestyle=":", label=f"{fit.KIND.replace('_', ' ')}: not fitted")
            continue
        ax.plot(grid, fit.predict(grid), color=colour, linewidth=2, label=label(fit))
        if band and fit.n_bootstrap_used > 0:
            low, high_band = fit.predict_interval(grid)
            ax.fill_between(
                grid, low, high_band, color=colour, alpha=0.18, linewidth=0,
                label=f"{round(100 * fit.confidence)} % bootstrap band ({fit.n_bootstrap_used} resamples)",
            )

    if high > sizes.max():
        ax.axvline(sizes.max(), color="grey", linestyle=":", linewidth=1, label="largest measured size")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(_AXIS_LABELS.get(size_col, size_col), fontsize=12)
    ax.set_ylabel("validation perplexity", fontsize=12)
    ax.tick_params(labelsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    ax.set_title(title if title is not None else _scaling_title(power_law, len(sizes)), fontsize=12)
    if path is not None:
        save_figure(fig, path)
    return fig


def _points_table(points: pd.DataFrame, size_col: str, value_col: str) -> pd.DataFrame:
    if not isinstance(points, pd.DataFrame) or points.empty:
        raise ValueError("plot_scaling needs a non-empty DataFrame of points")
    mean_col, std_col = f"{value_col}_mean", f"{value_col}_std"
    if mean_col in points.columns:
        if size_col not in points.columns:
            raise ValueError(f"plot_scaling: column {size_col!r} missing; the table has {list(points.columns)}")
        table = points.copy()
        if std_col not in table.columns:
            table[std_col] = np.nan
        return table.sort_values(size_col)
    seed_col = "seed" if "seed" in points.columns else None
    return aggregate_seeds(points, size_col=size_col, value_col=value_col, seed_col=seed_col)


def _power_law_label(fit: ScalingFit) -> str:
    return f"power law: PPL = {fit.A:,.0f} · $N^{{{fit.alpha:.3f}}}$"


def _saturating_label(fit: ScalingFit) -> str:
    return f"saturating: ln PPL = {fit.E:.2f} + {fit.B:.3g} / $N^{{{fit.beta:.3f}}}$"


def _scaling_title(power_law: Optional[PowerLawFit], n_sizes: int) -> str:
    if power_law is None:
        return f"Perplexity vs data ({n_sizes} sizes)"
    if not power_law.ok:
        return f"Perplexity vs data ({n_sizes} sizes; power law not fitted)"
    return f"Perplexity vs data: α = {power_law.alpha:.3f}, R² = {power_law.r2:.3f} ({power_law.n_points} sizes)"

"""Every figure the kit draws: training curves, scaling plots (with baselines), study plots and grid heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from newllm.evaluation.scaling_fits import PowerLawFit, SaturatingFit, ScalingFit, aggregate_seeds
from newllm.utils.io import atomic_path

REQUIRED_COLUMNS = ("epoch", "train_loss", "val_loss")


def plot_training_curves(
    history: pd.DataFrame,
    title: Optional[str] = None,
    ppl_label: str = "perplexity",
    path: Optional[Union[str, Path]] = None,
) -> Figure:
    """Two panels against epoch: loss (nats) and perplexity on a log scale, each with train and validation.

    ``history`` needs the columns epoch, train_loss and val_loss (as the gated trainer's history has); ``ppl_label``
    names the tokenizer the perplexity is measured under (e.g. "word (V=1,000)").
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in history.columns]
    if missing:
        raise ValueError(f"history lacks column(s) {missing}; it needs {list(REQUIRED_COLUMNS)}")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    # fixed margins instead of a layout engine: the figure is redrawn every few epochs and must stay cheap
    fig, (loss_ax, ppl_ax) = plt.subplots(1, 2, figsize=(11, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.85 if title else 0.9, wspace=0.25)
    plt.close(fig)  # detach from pyplot's registry; the figure still draws and saves
    epoch = history["epoch"].to_numpy(dtype=float)
    marker = "o" if len(history) <= 30 else None
    for column, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss = history[column].to_numpy(dtype=float)
        loss_ax.plot(epoch, loss, marker=marker, label=label)
        with np.errstate(over="ignore"):
            ppl_ax.plot(epoch, np.exp(loss), marker=marker, label=label)
    if len(history) and history["val_loss"].notna().any():
        best = int(np.nanargmin(history["val_loss"].to_numpy(dtype=float)))
        best_loss = float(history["val_loss"].iloc[best])
        ppl_ax.axhline(np.exp(best_loss), color="grey", linestyle=":", linewidth=1,
                       label=f"best val PPL {np.exp(best_loss):.2f} @ epoch {round(epoch[best], 2):g}")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy (nats / token)")
    loss_ax.set_title("loss")
    ppl_ax.set_xlabel("epoch")
    ppl_ax.set_ylabel(f"{ppl_label} (log scale)")
    ppl_ax.set_yscale("log")
    # plain numbers (20, 30, 100) read better than 2x10^1 and avoid slow mathtext rendering
    ppl_ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ppl_ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ppl_ax.set_title("perplexity")
    for ax in (loss_ax, ppl_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    if path is not None:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    return fig


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


def add_baseline_points(figure: Figure, table: pd.DataFrame) -> list[str]:
    """Draw each baseline's validation PPL against training tokens (mean over seeds) on the scaling plot's axes.

    Returns the baselines drawn (none when the table has only CVFP rows).
    """
    if "model" not in table:
        return []
    ax = figure.axes[0]
    drawn = []
    for i, (kind, rows) in enumerate(table[table["model"] != "cvfp"].groupby("model", sort=True)):
        points = aggregate_seeds(rows, size_col="train_tokens", value_col="val_ppl", seed_col="seed")
        params = int(rows["parameters"].iloc[0]) if "parameters" in rows else None
        label = f"{kind} baseline" + (f" ({params:,} parameters)" if params else "")
        ax.plot(points["train_tokens"], points["val_ppl_mean"], marker="s", linestyle="--", color=f"C{i + 2}",
                label=label)
        drawn.append(str(kind))
    if drawn:
        ax.legend(fontsize=9, loc="best")
    return drawn


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


def plot_grid_heatmaps(table: pd.DataFrame, column: str, title: str) -> Figure:
    """One heatmap per solver: ``column`` over max_iterations (rows) x dist_reg_weight (columns), cells labelled."""
    import matplotlib.pyplot as plt

    solvers = list(dict.fromkeys(table["solver"]))
    fig, axes = plt.subplots(1, len(solvers), figsize=(4.6 * len(solvers), 3.8), squeeze=False)
    plt.close(fig)  # detached from pyplot: the notebook shows it once
    low, high = float(table[column].min()), float(table[column].max())
    for ax, solver in zip(axes[0], solvers):
        grid = table[table["solver"] == solver].pivot_table(index="max_iterations", columns="dist_reg_weight",
                                                            values=column, aggfunc="mean")
        image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", vmin=low, vmax=high, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [f"{w:g}" for w in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(int(i)) for i in grid.index])
        ax.set_xlabel("dist_reg_weight")
        ax.set_ylabel("max iterations")
        ax.set_title(solver)
        for (r, c), value in pd.DataFrame(grid.to_numpy()).stack().items():
            bright = high > low and (value - low) / (high - low) > 0.6  # viridis turns yellow: dark text there
            ax.text(c, r, f"{value:.1f}", ha="center", va="center", color="black" if bright else "white", fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), label=title)
    fig.suptitle(title)
    return fig

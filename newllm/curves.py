"""Training curves of an end-to-end run: loss and perplexity per epoch, train and validation.

The figure is detached from pyplot (a notebook shows the returned figure once, long sessions do not pile figures up);
given ``path`` it is also written as a PNG atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import pandas as pd

from newllm.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REQUIRED_COLUMNS = ("epoch", "train_loss", "val_loss")


def plot_training_curves(
    history: pd.DataFrame,
    title: Optional[str] = None,
    ppl_label: str = "perplexity",
    path: Optional[Union[str, Path]] = None,
) -> "Figure":
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

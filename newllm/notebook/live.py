"""Notebook output redrawn in place while a run goes on (IPython ``display_id`` / ``update``)."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import pandas as pd

from newllm.plotting import plot_training_curves


class LiveOutput:
    """One notebook output area, replaced in place on every ``show`` (IPython display_id + update).

    Outside IPython ``display`` returns no handle, and each ``show`` simply displays again.
    """

    def __init__(self, display: Optional[Callable[..., Any]] = None):
        if display is None:
            from IPython.display import display as ipython_display  # IPython only where a notebook shows it

            display = ipython_display
        self._display = display
        self._handle = None
        self.shown = 0

    def show(self, obj: Any) -> None:
        if self._handle is None:
            self._handle = self._display(obj, display_id=True)
        else:
            self._handle.update(obj)
        self.shown += 1


class LiveCurves:
    """Loss and perplexity curves redrawn after every evaluation.

    ``on_history(history)`` is the gated trainer's callback (the whole history so far); ``on_epoch(info)`` is
    run_cvfp's epoch callback (one row per Phase-2 epoch, accumulated here).
    """

    def __init__(self, title: str, ppl_label: str = "perplexity", output: Optional[LiveOutput] = None):
        self.title = title
        self.ppl_label = ppl_label
        self.output = output or LiveOutput()
        self.rows: list[dict] = []
        self.figure = None

    def on_history(self, history: pd.DataFrame) -> None:
        self.figure = plot_training_curves(history, title=self.title, ppl_label=self.ppl_label)
        self.output.show(self.figure)
        return None  # never asks the trainer to stop

    def on_epoch(self, info: Mapping[str, Any]) -> None:
        row = {"epoch": info["epoch"], "train_loss": info.get("train_loss", math.nan), "val_loss": info["val_loss"]}
        self.rows.append(row)
        self.on_history(pd.DataFrame(self.rows))


class LiveTable:
    """A table that grows by one row per call (e.g. ``run_scaling``'s ``on_row``), redrawn in place."""

    def __init__(self, columns: Optional[list[str]] = None, output: Optional[LiveOutput] = None):
        self.columns = columns
        self.output = output or LiveOutput()
        self.rows: list[dict] = []

    def __call__(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        self.output.show(self.frame())

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        if self.columns is not None:
            frame = frame[[c for c in self.columns if c in frame.columns]]
        return frame

"""Notebook output redrawn in place: LiveOutput, LiveTable, LiveCurves."""

import math

from newllm.notebook.live import LiveCurves, LiveOutput, LiveTable


def test_live_output_displays_once_then_updates_in_place(fake_display):
    log = []
    out = LiveOutput(fake_display(log))
    out.show("a")
    out.show("b")
    assert log == [("display", "a", True), ("update", "b")] and out.shown == 2


def test_live_output_outside_ipython_displays_again():
    log = []
    out = LiveOutput(lambda obj, display_id=False: log.append(obj))  # returns no handle
    out.show("a")
    out.show("b")
    assert log == ["a", "b"]


def test_live_table_grows_and_keeps_the_chosen_columns(fake_display):
    log = []
    table = LiveTable(["samples", "val_ppl"], LiveOutput(fake_display(log)))
    table({"samples": 1, "val_ppl": 9.0, "other": 1})
    table({"samples": 2, "val_ppl": 8.0})
    shown = log[-1][1]
    assert list(shown.columns) == ["samples", "val_ppl"] and shown["samples"].tolist() == [1, 2]


def test_live_curves_accumulate_epochs_and_redraw(fake_display):
    log = []
    curves = LiveCurves("run", "word (V=10)", LiveOutput(fake_display(log)))
    curves.on_epoch({"epoch": 1, "train_loss": 2.0, "val_loss": 2.5, "step": 9})
    assert curves.on_epoch({"epoch": 2, "val_loss": 2.2}) is None
    assert [r["epoch"] for r in curves.rows] == [1, 2] and math.isnan(curves.rows[1]["train_loss"])
    assert len(log) == 2 and log[-1][1] is curves.figure and len(curves.figure.axes) == 2

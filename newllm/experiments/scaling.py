"""The scaling experiment (seed 003): Phase 1 + Phase 2 per training size, the power-law fit and its plot.

Data flows one way: CVFPSettings + sizes -> one row per (size, seed) in ``<run>/scaling.csv`` -> seed means ->
power-law (and saturating) fit -> extrapolation table and the PPL-vs-tokens plot, all in the run folder.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import pandas as pd
from tqdm.auto import tqdm

from newllm.config.experiments import ScalingConfig
from newllm.data.corpus import load_corpus
from newllm.evaluation.scaling_extrapolation import extrapolation_table
from newllm.evaluation.scaling_fits import (
    SATURATING_MIN_SIZES,
    PowerLawFit,
    SaturatingFit,
    aggregate_seeds,
    fit_power_law,
    fit_saturating,
)
from newllm.experiments.cvfp import CVFPSettings, run_baseline, run_cvfp
from newllm.plotting import add_baseline_points, plot_scaling
from newllm.training.common import free_device_memory
from newllm.training.phase2_checkpoint import previous_checkpoint_path
from newllm.utils.runs import RunFolder

SCALING_TABLE = "scaling"
SCALING_ROW_COLUMNS = ["model", "samples", "seed", "train_tokens", "parameters", "phase1_iterations",
                       "train_er_pct", "val_er_pct", "val_ppl", "optimum_val_ppl", "val_accuracy", "total_seconds"]


def run_scaling(
    samples: Sequence[int],
    settings: CVFPSettings,
    run: RunFolder,
    seeds: Sequence[int] = (42,),
    baselines: Sequence[str] = (),
    progress: bool = True,
    on_row: Optional[Callable[[dict], None]] = None,
) -> pd.DataFrame:
    """Phase 1 + Phase 2 for every (samples, seed) on the same fixed validation set.

    Each finished size is appended to ``<run>/scaling.csv`` at once; rows already there are skipped, so an
    interrupted sweep resumes at the next size (call again with the same ``run``, e.g. ``RunFolder.create(...,
    resume=True)``). ``baselines`` ("lstm", "transformer") are trained on the same data and token budget with a
    parameter count matched to the CVFP model; their rows have ``model`` set to the baseline's name.
    """
    if not samples:
        raise ValueError("samples is empty: give at least one training size, e.g. [50, 100, 200]")
    for name, values in (("samples", samples), ("seeds", seeds), ("baselines", baselines)):
        repeated = sorted({v for v in values if list(values).count(v) > 1})
        if repeated:
            raise ValueError(f"{name} lists {repeated} more than once: give each value once")
    with run.lock():
        # a run folder holds one set of settings; a resume may only add sizes, seeds or baselines
        run.record_settings(settings.to_dict())
        finished = _finished(run)
        config = run.read_config()
        recorded = config.get("sweep", {"samples": [], "seeds": [], "baselines": []})
        config["sweep"] = {key: sorted(set(recorded.get(key, [])) | set(new), key=str)
                           for key, new in (("samples", samples), ("seeds", seeds), ("baselines", baselines))}
        run.write_json("config", config)
        _sweep(samples, settings, run, seeds, baselines, progress, on_row, finished)
    return run.read_table(SCALING_TABLE)


ROW_KEYS = ("model", "samples", "seed", "val_ppl")


def _finished(run: RunFolder) -> set[tuple[str, int, int]]:
    """The (model, samples, seed) rows already in the table. A damaged row (a line cut mid-write, a non-finite
    PPL) is dropped from the table, said aloud, and trained again."""
    path = run.file(f"{SCALING_TABLE}.csv")
    if not path.exists():
        return set()
    try:
        done = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable results table ({type(error).__name__}: {error}); move it "
                         "away to start the sweep's table again, or start a new run") from None
    missing = [key for key in ROW_KEYS if key not in done]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}: it is not this sweep's table; start a new run")
    ok = done["val_ppl"].map(lambda v: isinstance(v, (int, float)) and math.isfinite(v)) \
        & done["samples"].notna() & done["seed"].notna()
    if not ok.all():
        bad = done[~ok]
        warnings.warn(f"{path}: {len(bad)} damaged row(s) (samples {bad['samples'].tolist()}) are dropped and "
                      "trained again", RuntimeWarning, stacklevel=3)
        run.write_table(SCALING_TABLE, done[ok])
        done = done[ok]
    return {(str(r.model), int(r.samples), int(r.seed)) for r in done.itertuples()}


def _sweep(samples, settings, run, seeds, baselines, progress, on_row, finished) -> None:
    scalars = run.scalars()  # one curve per seed: the validation PPL against training tokens
    for n in sorted(samples):
        for seed in seeds:
            size_settings = dataclasses.replace(settings.with_seed(seed), data=dataclasses.replace(settings.data,
                                                                                                   samples=n))
            corpus = None
            if ("cvfp", n, seed) not in finished:
                corpus = load_corpus(size_settings.data, progress=progress)
                began = time.perf_counter()
                # an interrupted size continues its Phase 2 from this checkpoint; removed once its row is written
                checkpoint = run.file(f"phase2_samples{n}_seed{seed}.safetensors")
                result = run_cvfp(size_settings, progress=progress, corpus=corpus, checkpoint=checkpoint, resume=True)
                row = {"model": "cvfp", **result.row, "total_seconds": time.perf_counter() - began}
                # the next size must not run beside this one's model, contexts and caches on the GPU
                del result
                free_device_memory()
                run.append_row(SCALING_TABLE, row)
                scalars.log(f"scaling/seed{seed}", row, int(row.get("train_tokens") or n))
                if progress:  # one plain line per size: what `papermill --log-output` shows of a long sweep
                    tqdm.write(f"[scaling] samples {n}, seed {seed}: val PPL {row.get('val_ppl', float('nan')):.4g} "
                               f"({row.get('train_tokens', '?')} training tokens)")
                for path in (checkpoint, previous_checkpoint_path(checkpoint)):
                    path.unlink(missing_ok=True)
                run.sync()
                if on_row is not None:
                    on_row(row)
            for kind in baselines:
                if (kind, n, seed) in finished:
                    continue
                corpus = corpus or load_corpus(size_settings.data, progress=progress)
                row = run_baseline(kind, size_settings, corpus, progress=progress)
                free_device_memory()
                run.append_row(SCALING_TABLE, row)
                run.sync()
                if on_row is not None:
                    on_row(row)
    scalars.close()


@dataclass
class ScalingOutcome:
    """A finished scaling experiment: its table, fits and where everything was written."""

    run: RunFolder
    table: pd.DataFrame
    points: pd.DataFrame  # CVFP rows aggregated over seeds: tokens, ppl_mean, ppl_std, n_runs
    power_law: PowerLawFit
    saturating: Optional[SaturatingFit]
    extrapolation: pd.DataFrame

    def report(self) -> str:
        cols = ["model", "samples", "seed", "train_tokens", "phase1_iterations", "train_er_pct", "val_er_pct",
                "best_epoch", "val_ppl", "optimum_val_ppl", "val_accuracy"]
        shown = self.table[[c for c in cols if c in self.table]]
        lines = [shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"), "", self.power_law.summary()]
        if self.saturating is not None:
            lines.append(self.saturating.summary())
        return "\n".join(lines)


def fit_scaling_table(table: pd.DataFrame, n_bootstrap: int = 300, progress: bool = False):
    """Aggregate the CVFP rows over seeds and fit PPL = A * tokens^alpha (and the saturating law when possible)."""
    cvfp = table[table["model"] == "cvfp"] if "model" in table else table
    points = aggregate_seeds(cvfp, size_col="train_tokens", value_col="val_ppl", seed_col="seed")
    config = ScalingConfig(n_bootstrap=n_bootstrap)
    power = fit_power_law(points["train_tokens"], points["val_ppl_mean"], config, progress=progress)
    # the built-in corpus's best achievable PPL: no fit may promise to beat it
    known = cvfp["optimum_val_ppl"].dropna() if "optimum_val_ppl" in cvfp else pd.Series(dtype=float)
    optimum = float(known.iloc[0]) if len(known) else None
    saturating = None
    if len(points) >= SATURATING_MIN_SIZES:
        saturating = fit_saturating(points["train_tokens"], points["val_ppl_mean"], config, progress=progress,
                                    optimum_ppl=optimum)
    fits = {"power law": power} if saturating is None else {"power law": power, "saturating": saturating}
    return points, power, saturating, extrapolation_table(fits, optimum_ppl=optimum)


def run_scaling_sweep(
    settings: CVFPSettings,
    run: RunFolder,
    samples: Sequence[int],
    seeds: Sequence[int] = (42,),
    baselines: Sequence[str] = (),
    on_row: Optional[Callable[[dict], None]] = None,
    progress: bool = True,
) -> ScalingOutcome:
    """The whole experiment into ``run``: the sweep (:func:`run_scaling`), the fits, ``extrapolation.csv``,
    ``fits.json`` and ``ppl_vs_tokens.png`` (log-log, with the fit and any baselines' points)."""
    table = run_scaling(samples, settings, run, seeds=seeds, baselines=baselines, progress=progress, on_row=on_row)
    with warnings.catch_warnings():  # a refused fit (fewer than 3 sizes) is reported in the outcome, not warned
        warnings.simplefilter("ignore")
        points, power, saturating, extrapolation = fit_scaling_table(table, progress=progress)
    run.write_table("extrapolation", extrapolation)
    run.write_json("fits", {"power_law": power.to_dict(),
                            "saturating": saturating.to_dict() if saturating is not None else None})
    figure = plot_scaling(points, power_law=power, saturating=saturating, size_col="train_tokens",
                          value_col="val_ppl")
    add_baseline_points(figure, table)
    run.save_figure(figure, "ppl_vs_tokens")
    return ScalingOutcome(run, table, points, power, saturating, extrapolation)

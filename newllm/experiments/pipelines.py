"""From notebook parameters to finished results: the glue the notebooks and ``python -m newllm demo`` share.

``settings_from_parameters`` turns resolved notebook parameters (see :mod:`newllm.notebook.presets`) into
:class:`~newllm.experiments.cvfp.CVFPSettings`; ``scaling_from_parameters`` runs the whole scaling experiment (sweep,
fit, table, plot) into a run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd

from newllm.config.data import DataConfig
from newllm.config.models import ModelConfig
from newllm.config.training import Phase1Config, Phase2Config
from newllm.evaluation.scaling_fits import (
    PowerLawFit,
    SaturatingFit,
    aggregate_seeds,
    extrapolation_table,
    fit_power_law,
    fit_saturating,
)
from newllm.experiments.cvfp import CVFPSettings
from newllm.notebook.presets import resolve
from newllm.utils.runs import RunFolder


def settings_from_parameters(values: dict, samples: Optional[int] = None) -> CVFPSettings:
    """CVFPSettings from resolved notebook parameters (``samples`` overrides a list-valued ``samples``)."""
    get = values.get
    n = samples if samples is not None else (get("samples") if isinstance(get("samples"), int) else get("samples")[0])
    embedding = "auto" if get("tokenizer") == "gpt2" and get("embed_dim") == 768 else "random"
    return CVFPSettings(
        data=DataConfig(dataset=get("dataset"), tokenizer=get("tokenizer"), samples=n,
                        val_samples=get("val_samples", 20), seed=42),
        model=ModelConfig(ctx_dim=get("ctx_dim"), embed_dim=get("embed_dim"), num_layers=get("layers"),
                          num_input_tokens=get("num_input_tokens", 1), embedding=embedding),
        phase1=Phase1Config(
            solver=get("phase1_solver", "parallel"), dist_reg_weight=get("dist_reg_weight", 0.6),
            max_iterations=get("phase1_max_iterations", 40),
            min_iterations=min(get("phase1_min_iterations", 5), get("phase1_max_iterations", 40)),
        ),
        phase2=Phase2Config(epochs=get("phase2_epochs", 10), patience=get("phase2_patience", 2),
                            lr=get("phase2_lr", 1e-3)),
        seed=get("seed", 42),
    )


@dataclass
class ScalingOutcome:
    """A finished scaling experiment: its table, fits and where everything was written."""

    run: RunFolder
    table: pd.DataFrame
    points: pd.DataFrame  # CVFP rows aggregated over seeds: tokens, ppl_mean, ppl_std, n_runs
    power_law: PowerLawFit
    saturating: Optional[SaturatingFit]
    extrapolation: pd.DataFrame
    parameters: dict

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
    from newllm.config.experiments import ScalingConfig
    from newllm.evaluation.scaling_fits import SATURATING_MIN_SIZES

    cvfp = table[table["model"] == "cvfp"] if "model" in table else table
    points = aggregate_seeds(cvfp, size_col="train_tokens", value_col="val_ppl", seed_col="seed")
    config = ScalingConfig(n_bootstrap=n_bootstrap)
    power = fit_power_law(points["train_tokens"], points["val_ppl_mean"], config, progress=progress)
    saturating = None
    if len(points) >= SATURATING_MIN_SIZES:
        saturating = fit_saturating(points["train_tokens"], points["val_ppl_mean"], config, progress=progress)
    fits = {"power law": power} if saturating is None else {"power law": power, "saturating": saturating}
    return points, power, saturating, extrapolation_table(fits)


def scaling_from_parameters(
    preset: str = "auto",
    experiment: str = "scaling",
    results_dir: str = "results",
    run_name: Optional[str] = None,
    resume: bool = False,
    progress: bool = True,
    **parameters: Any,
) -> ScalingOutcome:
    """Resolve the scaling notebook's parameters, then run its sweep (table, fits, plot) into a run folder."""
    from newllm.notebook.pipelines import run_scaling_sweep

    values = resolve("scaling", preset, **{k: v for k, v in parameters.items() if v is not None})
    return run_scaling_sweep(values, results_dir, run_name=run_name, resume=resume, progress=progress,
                             experiment=experiment)

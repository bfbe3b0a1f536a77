"""Seed 004's Optuna study of dist_reg_weight: the objective (Phase 1 + Phase 2 per trial) and the study run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from newllm.config.experiments import StudyConfig
from newllm.config.training import Phase1Config
from newllm.data.corpus import load_corpus
from newllm.experiments.cvfp import CVFPSettings, run_cvfp
from newllm.experiments.study import StudyResult, run_study
from newllm.experiments.study_outputs import write_study_outputs
from newllm.utils.runs import RunFolder

STUDY_EXPERIMENT = "optimize_dist_reg_weight"
STUDIES_FOLDER = "studies"  # results/optimize_dist_reg_weight/studies/<study>/: the journal a study resumes from


def dist_reg_objective(settings: CVFPSettings, progress: bool = False) -> Callable[[dict, Callable], dict]:
    """The Optuna objective of the dist_reg_weight study: Phase 1 with the trial's parameters, then Phase 2;
    the per-epoch validation loss is reported (so the pruner can stop bad trials) and the validation PPL returned.

    The corpus is loaded once and shared by every trial.
    """
    corpus = load_corpus(settings.data, progress=progress)
    phase1_fields = {f.name for f in dataclasses.fields(Phase1Config)}

    def objective(params: dict, report: Callable[[int, float], None]) -> dict:
        unknown = sorted(set(params) - phase1_fields)
        if unknown:
            raise ValueError(f"study parameters {unknown} are not Phase1Config fields")
        trial_settings = dataclasses.replace(settings, phase1=dataclasses.replace(settings.phase1, **params))

        def on_epoch(info: dict) -> None:
            report(int(info["epoch"]), float(info["val_loss"]))

        result = run_cvfp(trial_settings, progress=progress, corpus=corpus, epoch_callback=on_epoch)
        row = result.row
        return {
            "val_ppl": float(row["val_ppl"]),
            "val_loss": float(row["val_loss"]),
            "val_accuracy": float(row["val_accuracy"]),
            "train_er_pct": float(row["train_er_pct"]),
            "val_er_pct": None if math.isnan(row["val_er_pct"]) else float(row["val_er_pct"]),
            "is_identity": bool(result.phase1.train_metrics.is_identity),
            "converged_ratio": float(row["phase1_converged_ratio"]),
            "phase1_iterations": int(row["phase1_iterations"]),
        }

    return objective


@dataclass
class StudyOutcome:
    """A finished (or resumed and finished) dist_reg_weight study and what was written."""

    run: RunFolder
    config: StudyConfig
    result: StudyResult
    written: dict[str, Path]


def run_dist_reg_study(settings: CVFPSettings, config: StudyConfig, run: RunFolder,
                       progress: bool = True) -> StudyOutcome:
    """The study of ``config`` (resumed when its journal exists) with :func:`dist_reg_objective`; its outputs
    (best config, top-5, plots) go to ``run``."""
    run.write_config(study=config, settings=settings.to_dict(), journal=str(config.journal_path))
    objective = dist_reg_objective(settings, progress=False)
    result = run_study(objective, config, progress=progress)
    written = write_study_outputs(result, run.path, base_phase1=settings.phase1)
    return StudyOutcome(run, config, result, written)

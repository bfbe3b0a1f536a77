"""The Phase-1 tuning grid of seed 000: iterations x dist_reg_weight x solver."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import pandas as pd
from tqdm.auto import tqdm

from newllm.config.training import Phase1Config
from newllm.data.streams import StreamsInput
from newllm.models.cvfp import CVFPModel
from newllm.training.phase1 import train_phase1
from newllm.utils.runtime import seed_everything

# ------------------------------------------------------------------------------------------ tuning grid

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

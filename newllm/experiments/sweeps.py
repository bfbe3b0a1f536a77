"""Context-dim and layer sweeps of the gated LM (seed 002, experiments 1 and 2): one training run per point.

Each point trains through :func:`newllm.training.gated.train_gated_lm` into its own folder ``root/<run name>/``; a
row per finished point is appended to ``root/sweep.csv`` as it completes, so an interrupted sweep keeps its finished
points and, run again, skips them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd
from tqdm.auto import tqdm

from newllm.config.models import GatedLMConfig
from newllm.config.training import GatedTrainConfig
from newllm.data.wikitext import Windows
from newllm.training.gated import GatedRunResult, experiment_name, train_gated_lm
from newllm.utils.io import atomic_write_text

# seed 002: experiment 1 varies the context dim at 6 layers, experiment 2 the depth at ctx 512
SEED002_CTX_SWEEP = ((256, 6), (512, 6), (1024, 6))
SEED002_LAYER_SWEEP = ((512, 6), (512, 12), (512, 24))

SWEEP_COLUMNS = ("ctx_dim", "layers", "parameters", "best_val_ppl", "best_val_loss", "best_epoch", "best_val_acc",
                 "epochs_run", "updates", "stopped_early", "time_s", "run_name")


def sweep_row(ctx_dim: int, layers: int, result: GatedRunResult) -> dict:
    """One sweep table row from a finished run."""
    history = result.history
    best_acc = float("nan")
    if len(history):
        best_acc = float(history.loc[history["val_loss"].idxmin(), "val_acc"])
    return {
        "ctx_dim": ctx_dim, "layers": layers, "parameters": result.parameters,
        "best_val_ppl": result.best_val_ppl, "best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch,
        "best_val_acc": best_acc, "epochs_run": float(history["epoch"].iloc[-1]) if len(history) else 0.0,
        "updates": result.updates, "stopped_early": result.stopped_early, "time_s": result.seconds,
        "run_name": result.name,
    }


def sweep_gated(
    points: Sequence[tuple[int, int]],
    base_model: GatedLMConfig,
    train_cfg: GatedTrainConfig,
    train: Windows,
    val: Windows,
    root: Union[str, Path],
    *,
    tokenizer_name: str = "word",
    device: str = "auto",
    skip_done: bool = True,
    progress: bool = True,
    extra_config: Optional[dict] = None,
) -> pd.DataFrame:
    """Train one model per (ctx_dim, layers) point and return the table (one row per point, in ``points`` order).

    Columns: ctx_dim, layers, parameters, best_val_ppl (PPL under ``tokenizer_name``), best_val_loss, best_epoch,
    best_val_acc, epochs_run, updates, stopped_early, time_s (training + evaluation seconds), run_name.
    With ``skip_done`` a point already in ``root/sweep.csv`` is not trained again.
    """
    if not points:
        raise ValueError("points is empty: give (ctx_dim, layers) pairs, e.g. SEED002_CTX_SWEEP")
    checked = [(int(c), int(l)) for c, l in points]
    configs = [replace(base_model, ctx_dim=c, num_layers=l) for c, l in checked]  # validates every point first
    if len(set(checked)) != len(checked):
        raise ValueError(f"points has duplicates: {checked}")
    root = Path(root)
    table_path = root / "sweep.csv"
    done: list[dict] = pd.read_csv(table_path).to_dict("records") if table_path.exists() else []
    rows = []
    for (ctx_dim, layers), model_cfg in tqdm(list(zip(checked, configs)), desc="sweep", disable=not progress):
        previous = [r for r in done if (r["ctx_dim"], r["layers"]) == (ctx_dim, layers)]
        if skip_done and previous:
            rows.append(previous[-1])
            continue
        name = experiment_name(model_cfg)
        result = train_gated_lm(model_cfg, train_cfg, train, val, root / name, name=name,
                                tokenizer_name=tokenizer_name, device=device, progress=progress,
                                extra_config=extra_config)
        row = sweep_row(ctx_dim, layers, result)
        rows.append(row)
        done.append(row)
        atomic_write_text(table_path, pd.DataFrame(done, columns=list(SWEEP_COLUMNS)).to_csv(index=False))
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))

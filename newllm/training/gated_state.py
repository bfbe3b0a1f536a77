"""The gated LM trainer's resumable state: the loop's cursor and history as checkpoint JSON, the checks on a
resumed run's configs, and the progress file written beside the run."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from newllm.config.models import GatedLMConfig
from newllm.config.training import GatedTrainConfig
from newllm.utils.io import atomic_write_json

# train-config fields a resumed run may change without changing what the earlier epochs mean
RESUMABLE_CHANGES = frozenset({"epochs", "max_updates", "checkpoint_every", "patience", "batch_size"})


@dataclass
class LoopState:
    """Everything (besides tensors) a checkpoint must hold to continue the run exactly."""

    epoch: int = 0  # the epoch in progress (0-based); equals the completed epochs at a boundary
    cursor: int = 0  # batches of that epoch already done
    partial: dict = field(default_factory=lambda: {"loss_sum": 0.0, "tokens": 0, "correct": 0})
    updates: int = 0
    history: list = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: float = float("nan")
    early_stopping: dict = field(default_factory=lambda: {"best": math.inf, "wait": 0})
    stopped_early: bool = False
    seconds: float = 0.0


def _json_float(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def state_to_json(loop: LoopState, name: str, model_cfg: GatedLMConfig, train_cfg: GatedTrainConfig,
                   batch_size: int, lr: float, tokenizer_name: str) -> dict:
    return {
        "name": name, "model_config": model_cfg.to_dict(), "train_config": train_cfg.to_dict(),
        "batch_size": batch_size, "lr": lr, "tokenizer": tokenizer_name,
        "epoch": loop.epoch, "cursor": loop.cursor, "partial": loop.partial, "updates": loop.updates,
        "history": loop.history, "best_val_loss": _json_float(loop.best_val_loss),
        "best_epoch": _json_float(loop.best_epoch),
        "early_stopping": {"best": _json_float(loop.early_stopping["best"]), "wait": loop.early_stopping["wait"]},
        "stopped_early": loop.stopped_early, "seconds": loop.seconds,
    }


def state_from_json(state: dict) -> LoopState:
    def num(value: Optional[float], default: float) -> float:
        return default if value is None else float(value)

    return LoopState(
        epoch=int(state["epoch"]), cursor=int(state["cursor"]), partial=dict(state["partial"]),
        updates=int(state["updates"]), history=list(state["history"]),
        best_val_loss=num(state["best_val_loss"], math.inf), best_epoch=num(state["best_epoch"], float("nan")),
        early_stopping={"best": num(state["early_stopping"]["best"], math.inf),
                        "wait": int(state["early_stopping"]["wait"])},
        stopped_early=bool(state["stopped_early"]), seconds=float(state["seconds"]),
    )


def check_resume_configs(path: Path, state: dict, model_cfg: GatedLMConfig, train_cfg: GatedTrainConfig) -> None:
    saved_model = state.get("model_config")
    if saved_model != model_cfg.to_dict():
        raise ValueError(
            f"resume_from={str(path)!r} was trained with model config {saved_model}, not {model_cfg.to_dict()}; "
            "pass the checkpoint's model config (GatedLMConfig.from_dict(state['model_config']))"
        )
    saved_train = state.get("train_config", {})
    changed = sorted(
        k for k, v in train_cfg.to_dict().items() if k not in RESUMABLE_CHANGES and saved_train.get(k) != v
    )
    if changed:
        warnings.warn(
            f"resuming {str(path)!r} with changed training settings {changed} "
            f"(was {[saved_train.get(k) for k in changed]}); the result will differ from an uninterrupted run",
            stacklevel=3,
        )


def row_ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def write_progress(path: Path, name: str, loop: LoopState, total_epochs: int, model_cfg: GatedLMConfig,
                    train_cfg: GatedTrainConfig, batch_size: int, lr: float, tokenizer_name: str,
                    parameters: int, extra: dict) -> None:
    history = loop.history
    atomic_write_json(path, {
        "model_name": name,
        "current_epoch": loop.epoch,
        "total_epochs": total_epochs,
        "updates": loop.updates,
        "epochs": [row["epoch"] for row in history],
        "train_losses": [row["train_loss"] for row in history],
        "val_losses": [row["val_loss"] for row in history],
        "train_ppls": [_json_float(row["train_ppl"]) for row in history],
        "val_ppls": [_json_float(row["val_ppl"]) for row in history],
        "val_accuracies": [row["val_acc"] for row in history],
        "best_val_loss": _json_float(loop.best_val_loss),
        "best_val_ppl": _json_float(row_ppl(loop.best_val_loss)) if math.isfinite(loop.best_val_loss) else None,
        "best_epoch": _json_float(loop.best_epoch),
        "stopped_early": loop.stopped_early,
        "ppl_tokenizer": f"{tokenizer_name} (V={model_cfg.vocab_size:,})",
        "parameters": parameters,
        "batch_size": batch_size,
        "lr": lr,
        "seconds": loop.seconds,
        "config": {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), **extra},
    })

"""Phase 2's checkpoint file: the trainable weights with a copy of the best ones, a fingerprint of the frozen ones,
the JSON state of the loop, the previous file kept beside the latest, and the checks that decide whether a run may
resume from it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Union

import torch
from safetensors import safe_open
from torch import nn

from newllm.config.training import Phase2Config
from newllm.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

# Config fields a resumed run may change: they do not alter the sequence of optimizer updates.
RESUMABLE_FIELDS = frozenset({
    "epochs", "patience", "max_steps", "checkpoint_every_steps", "cache_placement", "cache_dir", "memory_safety",
    "max_oom_halvings", "eval_batch_size", "micro_batch_size", "ce_chunk_tokens",
})


class Bundle(nn.Module):
    """What a Phase-2 checkpoint holds: the trainable parameters and a copy of the best ones. The frozen weights
    (ContextBlock, embedding) are not written again and again: the checkpoint records their fingerprint
    (:func:`frozen_fingerprint`), and a resume checks that the model it loads into has the same ones."""

    def __init__(self, model: nn.Module, named: list[tuple[str, nn.Parameter]]):
        super().__init__()
        self.trainable = nn.Module()
        self.best = nn.Module()
        for name, param in named:
            self.trainable.register_parameter(name.replace(".", "__"), param)
            self.best.register_buffer(name.replace(".", "__"), param.detach().to("cpu", copy=True))
        self._names = [name for name, _ in named]
        self._params = [param for _, param in named]

    def keep_best(self) -> None:
        for name, param in zip(self._names, self._params):
            getattr(self.best, name.replace(".", "__")).copy_(param.detach())

    def restore_best(self) -> None:
        with torch.no_grad():
            for name, param in zip(self._names, self._params):
                param.copy_(getattr(self.best, name.replace(".", "__")))


def frozen_fingerprint(model: nn.Module, trainable: list[nn.Parameter]) -> dict[str, list[float]]:
    """Per parameter and buffer Phase 2 does not train: [count, sum, L2 norm] (fp64). Compared with a tolerance
    (:func:`same_frozen_weights`): Phase 1 repeats only to rounding (threaded reductions), so bytes would not do."""
    trainable_ids = {id(p) for p in trainable}
    out = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) not in trainable_ids and tensor.is_floating_point():
            values = tensor.detach().double()
            out[name] = [values.numel(), float(values.sum()), float(values.norm())]
    return out


def same_frozen_weights(saved: dict, current: dict, rel: float = 1e-5) -> bool:
    """Whether two :func:`frozen_fingerprint` s describe the same weights up to rounding."""
    if set(saved) != set(current):
        return False
    for name, (count, total, norm) in current.items():
        s_count, s_total, s_norm = saved[name]
        scale = max(norm, s_norm, 1e-12)
        if s_count != count or abs(s_norm - norm) > rel * scale or abs(s_total - total) > rel * scale * count**0.5:
            return False
    return True


def previous_checkpoint_path(path: Union[str, Path]) -> Path:
    """Where the checkpoint before the latest is kept: ``<name>.prev<suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save(path: Path, bundle: Bundle, optimizer, scaler, state: dict) -> None:
    """Keep the current file as the previous one (a hard link: no copy), then write the new one atomically."""
    previous = previous_checkpoint_path(path)
    if path.exists():
        staging = previous.with_name(previous.name + ".tmp")
        if staging.exists():
            staging.unlink()
        try:
            os.link(path, staging)
        except OSError:
            shutil.copy2(path, staging)
        os.replace(staging, previous)
    save_checkpoint(path, bundle, optimizer, state=state, scaler=scaler)


def initial_state(cfg: Phase2Config, fingerprints: dict) -> dict:
    """Everything the loop needs to continue, as JSON: the checkpoint's ``state``."""
    return {
        "kind": "phase2", "config": cfg.to_dict(), "data": fingerprints, "epoch": 0, "step_in_epoch": 0,
        "global_step": 0, "sums": {"loss": 0.0, "correct": 0, "tokens": 0, "seconds": 0.0}, "best_val_loss": None,
        "best_epoch": 0, "best_eval": None, "bad_epochs": 0, "history": [], "batch_size": None,
        "micro_batch_size": None, "oom_halvings": 0, "finished": False, "stop_reason": None,
    }


def resumed_state(path: Path, bundle: Bundle, optimizer, scaler, cfg: Phase2Config, fingerprints: dict) -> dict:
    """Validate, then load the checkpoint into the model, best weights and optimizer; {} when there is none yet."""
    if not path.exists():
        previous = previous_checkpoint_path(path)
        if previous.exists():
            raise CheckpointError(
                f"no checkpoint at {str(path)!r}, but a previous one exists at {str(previous)!r}: resume from it "
                f"with checkpoint_path={str(previous)!r}"
            )
        return {}  # nothing saved yet: a fresh start
    _check_resumable(_peek_state(path), cfg, fingerprints)  # before anything is overwritten
    try:
        saved = load_checkpoint(path, bundle, optimizer, scaler=scaler)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot resume Phase 2: {exc}.{_previous_hint(path)}") from None
    saved["config"] = cfg.to_dict()
    return saved


def _previous_hint(path: Path) -> str:
    previous = previous_checkpoint_path(path)
    return (f" The previous checkpoint {str(previous)!r} is kept: resume from it with "
            f"checkpoint_path={str(previous)!r}." if previous.exists() else "")


def _peek_state(path: Path) -> dict:
    """The JSON state of a checkpoint, read from its header only."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads((handle.metadata() or {})["newllm"])["state"]
    except Exception as exc:  # any unreadable header is the same problem for the user
        raise CheckpointError(
            f"cannot resume Phase 2: checkpoint {str(path)!r} is truncated or corrupted "
            f"({type(exc).__name__}: {exc}).{_previous_hint(path)}"
        ) from None


def _check_resumable(saved: dict, cfg: Phase2Config, fingerprints: dict) -> None:
    if saved.get("kind") != "phase2":
        raise CheckpointError("this checkpoint was not written by Phase 2 (newllm.training.phase2.train_phase2)")
    current = cfg.to_dict()
    changed = sorted(k for k, v in saved["config"].items() if k not in RESUMABLE_FIELDS and current.get(k) != v)
    if changed:
        raise CheckpointError(
            "cannot resume: Phase2Config differs from the checkpoint's in "
            + ", ".join(f"{k} ({saved['config'][k]!r} -> {current.get(k)!r})" for k in changed)
            + f"; only {sorted(RESUMABLE_FIELDS)} may change on resume"
        )
    if not same_frozen_weights(saved["data"].get("frozen_weights") or {}, fingerprints["frozen_weights"]):
        raise CheckpointError(
            "cannot resume: the model's frozen weights (ContextBlock after Phase 1, embedding) differ from those the "
            "checkpoint was trained on; rebuild the model the same way (same Phase 1 run, same embedding)"
        )
    if {k: v for k, v in saved["data"].items() if k != "frozen_weights"} != \
            {k: v for k, v in fingerprints.items() if k != "frozen_weights"}:
        raise CheckpointError(
            f"cannot resume: the token streams differ from the checkpoint's ({saved['data']} vs {fingerprints}); "
            "pass the same train/val ids and streams mode"
        )

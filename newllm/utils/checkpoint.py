"""Checkpoints: one safetensors file holding weights, optimizer tensors and RNG states, with JSON state in its metadata.

Nothing is pickled: tensors go through safetensors, everything else (optimizer hyper-parameters, step counters,
data cursors, histories, python/numpy RNG states) through JSON. Writes are atomic (temporary file, then rename), so
an interrupted save leaves the previous checkpoint intact, and a truncated or corrupted file is reported clearly.
The metadata carries a SHA-256 of every tensor's name, dtype, shape and bytes, verified on every read: a file whose
tensor bytes changed on disk (a flipped bit loads without any safetensors error) is refused instead of resuming
silently wrong. Files written before the hash existed load without the check.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from newllm.utils.io import atomic_path

FORMAT_VERSION = 1
_MODEL = "model."
_OPTIM = "optim."
_RNG = "rng."


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or does not match the model."""


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and a JSON-able remainder."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{_OPTIM}{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIM):
            param_id, name = key[len(_OPTIM):].split(".", 1)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"{_RNG}torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{_RNG}cuda{index}"] = cuda_state
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors[f"{_RNG}torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith(f"{_RNG}cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    path: Union[str, Path],
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    state: Optional[dict] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    save_rng: bool = True,
) -> Path:
    """Write model weights (+ optimizer, scheduler, grad scaler, RNG and a JSON ``state``) atomically to ``path``."""
    path = Path(path)
    # tied weights are one tensor: store it once under its first name
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = id(tensor)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[_MODEL + name] = tensor.detach().cpu().contiguous()
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "state": state or {}, "aliases": aliases}
    if optimizer is not None:
        optim_tensors, meta["optimizer"] = _optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        meta["scaler"] = {k: (float(v) if torch.is_tensor(v) else v) for k, v in scaler.state_dict().items()}
    if save_rng:
        rng_tensors, meta["rng"] = _rng_state()
        tensors.update(rng_tensors)
    meta["content_sha256"] = content_hash(tensors)
    try:
        metadata = {"newllm": json.dumps(meta, default=_json_scalar)}
    except TypeError as exc:
        raise ValueError(f"checkpoint state must be JSON-serialisable: {exc}") from None
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _json_scalar(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_checkpoint(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a checkpoint; raises CheckpointError with the reason when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("newllm")
        meta = json.loads(raw) if raw else None
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupted ({type(exc).__name__}: {exc}); "
            "resume from an earlier checkpoint or start again"
        ) from None
    if not meta or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} is not a newllm checkpoint (format version {FORMAT_VERSION})")
    expected = meta.get("content_sha256")
    if expected is not None and content_hash(tensors) != expected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted: its tensors no longer match the content hash written with them "
            "(bytes changed on disk); resume from an earlier checkpoint or start again"
        )
    return tensors, meta


def load_checkpoint(
    path: Union[str, Path],
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    restore_rng: bool = True,
    map_location: Union[str, torch.device] = "cpu",
) -> dict:
    """Restore what :func:`save_checkpoint` wrote into the given objects; returns the JSON ``state``."""
    tensors, meta = read_checkpoint(path)
    weights = {k[len(_MODEL):]: v.to(map_location) for k, v in tensors.items() if k.startswith(_MODEL)}
    for alias, original in meta.get("aliases", {}).items():
        weights[alias] = weights[original]
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}; build the model with the config the checkpoint was saved with"
        )
    if optimizer is not None:
        if "optimizer" not in meta:
            raise CheckpointError(f"checkpoint {str(path)!r} holds no optimizer state")
        _restore_optimizer(optimizer, {k: v.to(map_location) for k, v in tensors.items()}, meta["optimizer"])
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict(meta["scaler"])
    if restore_rng and "rng" in meta:
        _restore_rng(tensors, meta["rng"])
    return meta["state"]

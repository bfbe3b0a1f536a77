"""Devices and seeding: the few decisions every run shares (precision: newllm.training.common)."""

from __future__ import annotations

import os
import random
import re

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """CUDA when present (for "auto"), else CPU. Asking for CUDA without a GPU is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or re.fullmatch(r"cuda:\d+", device)):
        raise ValueError(f"device={device!r} is not allowed: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but no CUDA GPU is available; use device='auto' or 'cpu'")
    return resolved


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices) from one integer.

    ``deterministic=True`` also makes CUDA runs repeat bit for bit (same machine, same settings): PyTorch's
    deterministic algorithms (an op without one raises), no cuDNN autotuning, and the cuBLAS workspace setting that
    deterministic matmuls need (it must be set before cuBLAS starts; set CUBLAS_WORKSPACE_CONFIG=:4096:8 yourself if
    CUDA was used earlier in the process). Slower; off by default. ``False`` turns the switch back off."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = False if deterministic else torch.backends.cudnn.benchmark

"""The training core every trainer shares: precision, the OOM backoff, gradient steps, LR schedules, early
stopping and the epoch order. Phase 2, the gated LM trainer and the baseline trainer all go through it."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

import torch

T = TypeVar("T")

SCHEDULES = ("constant", "cosine")
# Halvings of the micro-batch a trainer without its own setting allows before giving up (Phase 2's default).
MAX_OOM_HALVINGS = 3


# ------------------------------------------------------------------------------------------ precision

def autocast_dtype(device: torch.device, amp: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype of ``amp`` on ``device``: "auto" is bf16 on compute capability >= 8.0 and fp16 below (with
    a GradScaler; ``torch.cuda.is_bf16_supported()`` is not asked: it answers True on a T4 through emulation);
    "bf16" / "fp16" force one; "off" and every mode on a CPU are fp32 (None)."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"amp={amp!r}: use 'auto', 'bf16', 'fp16' or 'off'")
    if amp == "off" or device.type != "cuda":
        return None
    if amp != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """The autocast context for ``dtype`` on ``device``; a no-op for fp32 (None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@contextmanager
def tf32_matmuls(device: torch.device):
    """Within the block, fp32 matmuls on an Ampere-or-newer GPU use TensorFloat-32 (about 8x the fp32 rate; 10-bit
    mantissa, like bf16 autocast's products). Used around the training loops only: the exact recurrence (Phase 1,
    cache builds) keeps full fp32, since its fixed-point tolerances are far below TF32's rounding. Restores the
    previous setting; a no-op on CPU."""
    if device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def grad_scaler(device: torch.device, dtype: Optional[torch.dtype]) -> Optional[torch.amp.GradScaler]:
    """A GradScaler under fp16 autocast (its gradients underflow without one), else None."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


# ------------------------------------------------------------------------------------------ OOM backoff

class TrainingMemoryError(RuntimeError):
    """The device ran out of memory even after halving the micro-batch the allowed number of times."""


# Allocation failures that reach Python as a plain RuntimeError instead of torch.OutOfMemoryError
_OOM_MESSAGES = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUDA error: out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """True for a device out-of-memory error: torch.OutOfMemoryError, or the RuntimeError cuBLAS / cuDNN raise
    when their workspace cannot be allocated."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _OOM_MESSAGES)


def free_device_memory() -> None:
    """Return the caching allocator's free blocks to the device (after an OOM, before measuring free memory)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class OOMBackoff:
    """Runs ``fn(size)``; on a CUDA out-of-memory error cleans up, halves ``size`` and retries, at most
    ``max_halvings`` times, then raises TrainingMemoryError (ending with ``hint``). The halved size is kept for
    later calls."""

    def __init__(self, size: int, max_halvings: int, what: str, halvings: int = 0, unit: str = "tokens",
                 hint: str = ""):
        self.size = int(size)
        self.max_halvings = int(max_halvings)
        self.halvings = int(halvings)
        self.what = what
        self.unit = unit
        self.hint = hint

    def run(self, fn: Callable[[int], T], cleanup: Callable[[], None]) -> T:
        tried = []
        while True:
            try:
                return fn(self.size)
            except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError too
                if not is_out_of_memory(error):
                    raise
            # handled here, outside the except block, so the failed step's tensors are freed first
            cleanup()
            free_device_memory()
            tried.append(self.size)
            if self.halvings >= self.max_halvings or self.size == 1:
                raise TrainingMemoryError(
                    f"out of device memory in the {self.what} with {self.size:,} {self.unit} per pass after "
                    f"{self.halvings} halving(s) (tried {', '.join(f'{s:,}' for s in tried)}). Nothing was lost: "
                    f"the optimizer did not step and the last checkpoint is intact. {self.hint}".rstrip()
                ) from None
            self.size = max(1, self.size // 2)
            self.halvings += 1
            warnings.warn(f"{self.what}: out of device memory, retrying with {self.size:,} {self.unit} per pass",
                          RuntimeWarning, stacklevel=2)


# ------------------------------------------------------------------------------------------ gradient steps

def accumulate_gradients(
    backoff: OOMBackoff,
    optimizer: torch.optim.Optimizer,
    index: torch.Tensor,
    part_loss: Callable[[torch.Tensor, int], tuple[torch.Tensor, T]],
    scaler: Optional[torch.amp.GradScaler] = None,
    no_sync: Optional[Callable[[], object]] = None,
) -> list[T]:
    """Gradients of one optimizer step over the items ``index``, in micro-batches of ``backoff.size`` items.

    ``part_loss(part, size)`` returns (the part's loss, already scaled to its share of the step, and what the
    caller wants back). On OOM the gradients are zeroed and the whole step is redone with half the micro-batch,
    so a step never counts a part twice. Returns the parts' results. ``no_sync``: DistributedDataParallel's
    ``no_sync``; every part but the last runs under it, so each rank all-reduces once per step whatever its
    number of parts.
    """
    def run(size: int) -> list[T]:
        results = []
        parts = index.split(size)
        for number, part in enumerate(parts):
            quiet = no_sync is not None and number < len(parts) - 1
            with no_sync() if quiet else nullcontext():
                loss, result = part_loss(part, size)
                (scaler.scale(loss) if scaler is not None else loss).backward()
            results.append(result)
        return results

    optimizer.zero_grad(set_to_none=True)
    return backoff.run(run, cleanup=lambda: optimizer.zero_grad(set_to_none=True))


def train_step(
    backoff: OOMBackoff,
    optimizer: torch.optim.Optimizer,
    index: torch.Tensor,
    part_loss: Callable[[torch.Tensor, int], tuple[torch.Tensor, T]],
    max_norm: float,
    scaler: Optional[torch.amp.GradScaler] = None,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
    no_sync: Optional[Callable[[], object]] = None,
) -> list[T]:
    """One optimizer step of every trainer: the gradients over ``index`` (:func:`accumulate_gradients`), clipped to
    ``max_norm``, the step (:func:`clip_and_step`), then the LR schedule's step. Returns the parts' results."""
    results = accumulate_gradients(backoff, optimizer, index, part_loss, scaler, no_sync)
    clip_and_step(optimizer, max_norm, scaler)
    if scheduler is not None:
        scheduler.step()
    return results


def clip_and_step(optimizer: torch.optim.Optimizer, max_norm: float,
                  scaler: Optional[torch.amp.GradScaler] = None) -> None:
    """Clip the gradient norm of the optimizer's parameters to ``max_norm`` and step (through the GradScaler if
    any, unscaling first so the norm is the true one).

    Adam allocates its state at the first step, the largest allocation after the forward pass: if the device runs
    out of memory there, the allocator's free blocks are released and the step is tried once more (the gradients
    are intact, and torch's optimizers allocate a parameter group's state before updating it: the kit's trainers
    use one group), then TrainingMemoryError."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is not None:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    step_optimizer(optimizer, scaler)


def step_optimizer(optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler] = None) -> None:
    """``optimizer.step()`` (through the GradScaler if any), tried once more after a device OOM (see
    :func:`clip_and_step`), then TrainingMemoryError."""
    for _ in range(2):
        try:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            return
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
        free_device_memory()
    raise TrainingMemoryError(
        "out of device memory in the optimizer step (Adam's state needs two parameter-sized buffers) even after "
        "releasing the allocator's cache: train fewer parameters, use a smaller model, or free GPU memory held "
        "elsewhere (e.g. another notebook's kernel)."
    )


# ------------------------------------------------------------------------------------------ LR schedules

def lr_factor(step: int, schedule: str, decay_steps: int, warmup_steps: int = 0, final: float = 0.0) -> float:
    """The LR multiplier at 0-based ``step``: linear warm-up over ``warmup_steps``, then 1 ("constant") or a
    cosine from 1 to ``final`` reached ``decay_steps`` after the warm-up and held from there ("cosine")."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} must be 'constant' or 'cosine'")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or decay_steps <= 0:
        return 1.0
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return final + (1 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scheduler(optimizer: torch.optim.Optimizer, base_lr: float, factor: Callable[[int], float],
                 start_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR giving ``base_lr * factor(step)``, positioned at ``start_step`` (a resumed run's next update):
    the groups' LR is set for that step now; call ``step()`` after every optimizer step."""
    for group in optimizer.param_groups:
        group["initial_lr"] = base_lr  # what LambdaLR scales; a loaded optimizer state may hold another LR
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=start_step - 1)


# ------------------------------------------------------------------------------------------ epochs

def epoch_order(n_items: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The item order of ``epoch``: a permutation that depends on (seed, epoch) only, so a resumed run
    reproduces it; stream order without ``shuffle``."""
    if not shuffle:
        return torch.arange(n_items)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_items, generator=generator)


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations without the validation loss dropping below ``best - min_delta``."""

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    wait: int = 0

    @property
    def should_stop(self) -> bool:
        return self.wait >= self.patience

    def update(self, loss: float) -> bool:
        """Record one validation loss; True when it counts as an improvement."""
        if loss < self.best - self.min_delta:
            self.best, self.wait = loss, 0
            return True
        self.wait += 1
        return False

    def state(self) -> dict:
        return {"best": self.best, "wait": self.wait}


# ------------------------------------------------------------------------------------------ data parallel

def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, (0, 1) when none is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device_type: Optional[str] = None) -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR ... in the environment): NCCL on
    CUDA, gloo on CPU. Each rank uses CUDA device LOCAL_RANK. Without torchrun's variables nothing happens.
    Returns (rank, world size)."""
    import os

    if "WORLD_SIZE" not in os.environ or torch.distributed.is_initialized():
        return distributed_rank_world()
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return distributed_rank_world()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum ``values`` over the ranks (the values themselves on a single process)."""
    rank, world = distributed_rank_world()
    if world == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        tensor = tensor.cuda()
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().tolist()


def compiled(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(module)`` when enabled (the step's module, never a Python token loop)."""
    return torch.compile(module) if enabled else module

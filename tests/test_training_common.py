"""The shared training core: LR schedules against the trainers' former closed forms, the OOM backoff, the
epoch order, precision and the gated LM's batch size from the memory estimate."""

import math

import pytest
import torch

from newllm.config.models import GatedLMConfig
from newllm.training.common import (
    EarlyStopping,
    OOMBackoff,
    TrainingMemoryError,
    accumulate_gradients,
    autocast_dtype,
    clip_and_step,
    epoch_order,
    grad_scaler,
    is_out_of_memory,
    lr_factor,
    lr_scheduler,
    tf32_matmuls,
)
from newllm.training.planner import gated_batch_size, gated_training_bytes

# ------------------------------------------------------------------ the former closed forms (the reference)

def old_phase2_lr(lr: float, schedule: str, step: int, total_steps: int) -> float:  # phase2._lr_at
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return lr


def old_gated_lr(base_lr: float, schedule: str, update: int, total_updates: int) -> float:  # gated.learning_rate_at
    if schedule == "constant":
        return base_lr
    progress = min(update / max(total_updates, 1), 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def old_baseline_factor(step: int, total: int, warmup: int, schedule: str) -> float:  # lm_baseline._lr_factor
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup + 1:
        return 1.0
    progress = (step - warmup) / (total - warmup - 1)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduler_lrs(base_lr: float, factor, steps: int, start_step: int = 0) -> list[float]:
    """The LR each optimizer step uses under lr_scheduler, read before the step as a trainer does."""
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([param], lr=123.0)  # the scheduler, not this LR, decides
    scheduler = lr_scheduler(optimizer, base_lr, factor, start_step)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("total", [1, 7, 40])
def test_phase2_and_gated_schedules_equal_the_old_formulas_step_by_step(schedule, total):
    lr = 3e-4
    lrs = scheduler_lrs(lr, lambda s: lr_factor(s, schedule, total), total + 3)  # past the end: held
    assert lrs == [old_gated_lr(lr, schedule, s, total) for s in range(total + 3)]
    # Phase 2 took pi * step / total, the gated trainer pi * (step / total): the two differed in the last bit
    assert lrs == pytest.approx([old_phase2_lr(lr, schedule, s, total) for s in range(total + 3)], rel=1e-14, abs=0)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("steps,warmup", [(50, 5), (10, 1), (3, 2), (2, 2), (30, 0)])
def test_baseline_schedule_equals_the_old_formula_step_by_step(schedule, steps, warmup):
    lr = 1e-3
    lrs = scheduler_lrs(lr, lambda s: lr_factor(s, schedule, steps - warmup - 1, warmup, final=0.1), steps)
    assert lrs == [lr * old_baseline_factor(s, steps, warmup, schedule) for s in range(steps)]


def test_a_resumed_scheduler_continues_the_same_lrs():
    factor = lambda s: lr_factor(s, "cosine", 20)  # noqa: E731
    assert scheduler_lrs(1e-3, factor, 12, start_step=8) == scheduler_lrs(1e-3, factor, 20)[8:]


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="constant' or 'cosine"):
        lr_factor(0, "linear", 10)


# ------------------------------------------------------------------------------------------ OOM backoff

def test_backoff_halves_and_redoes_the_step_on_an_injected_oom():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4))
    data = torch.randn(32, 4)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    sizes = []

    def part_loss(part, size):
        sizes.append(len(part))
        if len(part) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return (data[part] @ weight).pow(2).sum() / len(data), len(part)

    backoff = OOMBackoff(32, max_halvings=3, what="unit step", unit="rows")
    with pytest.warns(RuntimeWarning, match="retrying with (16|8) rows"):
        parts = accumulate_gradients(backoff, optimizer, torch.arange(32), part_loss)
    assert sizes == [32, 16, 8, 8, 8, 8] and parts == [8, 8, 8, 8]
    assert backoff.size == 8 and backoff.halvings == 2
    expected = 2 * (data @ weight.detach())[:, None].mul(data).sum(0) / len(data)
    assert torch.allclose(weight.grad, expected, atol=1e-6)  # each part counted once: the failed tries left nothing
    before = weight.detach().clone()
    clip_and_step(optimizer, max_norm=1e9)  # one step, on the accumulated gradient
    assert torch.allclose(weight.detach(), before - 0.1 * expected, atol=1e-6)


def test_backoff_gives_up_with_the_hint():
    def always(size):
        raise torch.OutOfMemoryError("injected")

    backoff = OOMBackoff(4, max_halvings=1, what="unit step", hint="Lower the batch.")
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingMemoryError, match="tried 4, 2.*Lower the batch"):
        backoff.run(always, cleanup=lambda: None)


CUBLAS_OOM = RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory (injected)"), CUBLAS_OOM],
                         ids=["OutOfMemoryError", "cublas"])
def test_both_kinds_of_oom_are_backed_off(error):
    calls = []

    def step(size):
        calls.append(size)
        if size > 2:
            raise error
        return size

    with pytest.warns(RuntimeWarning):
        assert OOMBackoff(8, max_halvings=3, what="unit step").run(step, cleanup=lambda: None) == 2
    assert calls == [8, 4, 2]


def test_other_runtime_errors_are_not_taken_for_oom():
    def step(size):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        OOMBackoff(8, max_halvings=3, what="unit step").run(step, cleanup=lambda: None)
    assert is_out_of_memory(CUBLAS_OOM) and not is_out_of_memory(ValueError("out of memory"))


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("injected"), CUBLAS_OOM], ids=["OutOfMemoryError", "cublas"])
def test_the_optimizer_step_is_retried_once_after_an_oom(error, monkeypatch):
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.ones(3)
    optimizer = torch.optim.Adam([weight], lr=0.1)
    real_step, failures = optimizer.step, []

    def flaky_step(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise error
        return real_step(*args, **kwargs)

    monkeypatch.setattr(optimizer, "step", flaky_step)
    clip_and_step(optimizer, max_norm=1e9)
    assert failures == [1] and torch.allclose(weight.detach(), torch.full((3,), 0.9))

    def always(*args, **kwargs):
        raise error

    monkeypatch.setattr(optimizer, "step", always)
    with pytest.raises(TrainingMemoryError, match="optimizer step"):
        clip_and_step(optimizer, max_norm=1e9)


# ------------------------------------------------------------------------------------------ epochs, stopping

def test_epoch_order_is_a_seeded_permutation():
    first = epoch_order(100, seed=7, epoch=0)
    assert sorted(first.tolist()) == list(range(100))
    assert torch.equal(first, epoch_order(100, seed=7, epoch=0))
    assert not torch.equal(first, epoch_order(100, seed=7, epoch=1))
    assert not torch.equal(first, epoch_order(100, seed=8, epoch=0))
    assert epoch_order(4, seed=7, epoch=3, shuffle=False).tolist() == [0, 1, 2, 3]


def test_early_stopping_without_min_delta_counts_strict_improvements():
    stopper = EarlyStopping(patience=2)
    assert [stopper.update(x) for x in (3.0, 3.0, 2.5, 2.6, 2.5)] == [True, False, True, False, False]
    assert stopper.should_stop and stopper.state() == {"best": 2.5, "wait": 2}


# ------------------------------------------------------------------------------------------ precision, memory

def test_precision_on_cpu_is_fp32_without_a_scaler():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None and autocast_dtype(cpu, "off") is None
    assert grad_scaler(cpu, None) is None and grad_scaler(cpu, torch.bfloat16) is None


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
@pytest.mark.parametrize("capability, name, expected", [
    ((7, 5), "Tesla T4", torch.float16),  # Colab's free tier: bf16 only emulated, so fp16 + GradScaler
    ((7, 0), "Tesla V100", torch.float16),
    ((8, 0), "A100", torch.bfloat16),
    ((8, 9), "L4", torch.bfloat16),
    ((9, 0), "H100", torch.bfloat16),
])
def test_precision_follows_the_compute_capability_not_is_bf16_supported(monkeypatch, capability, name, expected):
    # torch.cuda.is_bf16_supported() answers True on a T4 through emulation: the kit must not ask it
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")
    assert autocast_dtype(cuda) == expected and autocast_dtype(cuda, "off") is None
    scaler = grad_scaler(cuda, expected)
    assert (scaler is not None) == (expected == torch.float16)


def test_gated_batch_size_is_the_largest_power_of_two_that_fits():
    cfg = GatedLMConfig(ctx_dim=64, num_layers=2, vocab_size=400)
    params = 100_000

    def peak(batch):
        return sum(gated_training_bytes(cfg, batch, 64, params).values())

    assert gated_batch_size(cfg, 64, params, peak(256)) == 256
    assert gated_batch_size(cfg, 64, params, peak(256) - 1) == 128
    assert gated_batch_size(cfg, 64, params, peak(256), max_batch=64) == 64
    assert gated_batch_size(cfg, 64, params, 0) == 1


def test_tf32_is_scoped_to_cuda_training_loops(monkeypatch):
    before = torch.get_float32_matmul_precision()
    with tf32_matmuls(torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == before  # nothing changes on a CPU
    seen = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda value: seen.append(value))
    with tf32_matmuls(torch.device("cuda")):
        assert seen == ["high"]
    assert seen == ["high", before]  # restored afterwards


def test_amp_modes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert autocast_dtype(cuda, "fp16") == torch.float16 and autocast_dtype(cuda, "bf16") == torch.bfloat16
    assert autocast_dtype(cpu, "fp16") is None and autocast_dtype(cpu, "bf16") is None
    with pytest.raises(ValueError, match="amp='fp8'"):
        autocast_dtype(cuda, "fp8")


def test_the_deterministic_switch_turns_on_and_off():
    from newllm.utils.runtime import seed_everything

    try:
        seed_everything(1, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        a = torch.rand(3)
        seed_everything(1, deterministic=True)
        assert torch.equal(a, torch.rand(3))
    finally:
        seed_everything(1)
    assert not torch.are_deterministic_algorithms_enabled()

"""End-to-end training of the gated context-vector LM on fixed-length windows (seed-spec 2.3), resumable exactly.

Each window is one truncated-BPTT segment: the context starts from zero and gradients flow through the whole window.
Settings come from ``GatedTrainConfig``:
- Adam (no weight decay); learning rate ``lr``, optionally scaled by the square-root rule lr * sqrt(batch / 32)
  (``lr_scaling="sqrt"``); schedule "constant" or "cosine" (per update, over the run's planned updates:
  ``epochs`` x updates per epoch, or ``max_updates`` when smaller).
- Gradient clipping: "adaptive" = max-norm 0.5 for epoch < 10, 1.0 for epoch < 30, else 2.0 (0-based epochs, as the
  original), or a fixed max-norm.
- Early stopping on validation loss: stop after ``patience`` evaluations without an improvement of more than
  ``min_delta``. The best checkpoint is written on every strict improvement of validation loss.
- Losses are token-weighted: the sum of cross-entropy over scored (non-PAD) targets divided by their number, per
  batch for the gradient and over the whole epoch / validation set for the reported figures (the original averaged
  batch means, which over-weights batches of short paragraphs).
- Mixed precision on CUDA (bf16 where supported, else fp16 with a GradScaler), fp32 on CPU; ``amp="off"`` forces fp32.
- Batch size (``batch_size=None``): 32 on CPU; on CUDA the largest power of two whose estimated memory
  (newllm.training.planner.gated_training_bytes) fits. If a step still runs out of device memory it is redone in
  halved micro-batches (gradient accumulation, newllm.training.common.OOMBackoff).
- ``max_updates`` ends a budgeted run, possibly mid-epoch; the validation set is then evaluated once more so the run
  still has a final figure (that row's ``epoch`` is fractional).

Resume: every checkpoint holds weights, Adam state, grad scaler, RNG states and, as JSON, the epoch and batch cursor,
the partial epoch's sums, the history, the early-stopping state and the configs. The shuffling order of epoch e is a
function of (seed, e), so a run resumed from an epoch-boundary checkpoint produces the same weights and history as an
uninterrupted one. Resuming from a mid-epoch checkpoint (a budgeted run's final one) continues the same update
sequence; the extra evaluation at the stop stays in the history and counts for early stopping.

Files, under ``run_dir`` with ``name`` = ``new_llm_wikitext_ctx{D}_layers{L}`` by default:
``checkpoints/best_{name}.safetensors``, ``checkpoints/{name}_epoch_{k}.safetensors`` (every ``checkpoint_every``
epochs), ``checkpoints/{name}_final.safetensors``, ``{name}_progress.json``, ``{name}_history.csv`` and
``{name}_training_curves.png`` (redrawn with every periodic checkpoint and at the end).

:func:`newllm.experiments.gated_wikitext.run_wikitext` does everything from one call: data, tokenizer, training,
files.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from newllm.config.models import GatedLMConfig
from newllm.config.training import GatedTrainConfig
from newllm.data.wikitext import Windows
from newllm.evaluation.lm_metrics import LMEval, top1_hits
from newllm.models.common import parameter_count
from newllm.models.gated import GatedContextLM
from newllm.plotting import plot_training_curves
from newllm.training.common import (
    MAX_OOM_HALVINGS,
    EarlyStopping,
    OOMBackoff,
    autocast,
    autocast_dtype,
    epoch_order,
    grad_scaler,
    lr_factor,
    lr_scheduler,
    tf32_matmuls,
    train_step,
)
from newllm.training.gated_state import (
    LoopState,
    check_resume_configs,
    row_ppl,
    state_from_json,
    state_to_json,
    write_progress,
)
from newllm.training.planner import GATED_MEMORY_SAFETY, MAX_GATED_BATCH, MemoryBudget, device_bytes, gated_batch_size
from newllm.utils.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from newllm.utils.io import atomic_write_text
from newllm.utils.runs import original_run_name
from newllm.utils.runtime import resolve_device, seed_everything

PathLike = Union[str, Path]
EpochCallback = Callable[[pd.DataFrame], Optional[bool]]

CPU_BATCH_SIZE = 32
SQRT_RULE_BASE_BATCH = 32
# epochs below each bound use that max-norm (the original's adaptive schedule); later epochs use the last value
ADAPTIVE_CLIP_SCHEDULE = ((10, 0.5), (30, 1.0))
ADAPTIVE_CLIP_FINAL = 2.0


# ------------------------------------------------------------------------------------------ schedules

def clip_norm_for_epoch(grad_clip: Union[str, float], epoch: int) -> float:
    """The gradient max-norm for 0-based ``epoch``: the adaptive 0.5 / 1.0 / 2.0 schedule or a fixed value."""
    if grad_clip == "adaptive":
        for bound, norm in ADAPTIVE_CLIP_SCHEDULE:
            if epoch < bound:
                return norm
        return ADAPTIVE_CLIP_FINAL
    if isinstance(grad_clip, (int, float)) and not isinstance(grad_clip, bool) and grad_clip > 0:
        return float(grad_clip)
    raise ValueError(f"grad_clip={grad_clip!r} must be 'adaptive' or a max-norm > 0")


def base_learning_rate(cfg: GatedTrainConfig, batch_size: int) -> float:
    """``cfg.lr``, or lr * sqrt(batch / 32) under the square-root rule (``lr_scaling="sqrt"``)."""
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(batch_size / SQRT_RULE_BASE_BATCH)
    return cfg.lr


# ------------------------------------------------------------------------------------------ batching

def experiment_name(model_cfg: GatedLMConfig, quantization: str = "none") -> str:
    """The original's run name, ``new_llm_wikitext_ctx{D}_layers{L}[_int8]``."""
    return original_run_name(model_cfg.ctx_dim, model_cfg.num_layers, quantization)


def _window_loss(
    model: GatedContextLM, inputs: torch.Tensor, targets: torch.Tensor, pad_id: int, amp_dtype: Optional[torch.dtype]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed CE over scored targets, their number, top-1 hits among them) for one batch of windows.

    All three stay tensors on the model's device, so a training step never waits for the GPU.
    """
    with autocast(inputs.device, amp_dtype):
        logits, _ = model(inputs)
    logits = logits.float().reshape(-1, logits.shape[-1])
    flat = targets.reshape(-1)
    loss_sum = F.cross_entropy(logits, flat, ignore_index=pad_id, reduction="sum")
    scored = flat != pad_id
    correct = (top1_hits(logits, flat.clamp(min=0)) & scored).sum()
    return loss_sum, scored.sum(), correct


def choose_batch_size(
    model: GatedContextLM,
    window: int,
    device: Union[str, torch.device] = "auto",
    train_windows: int = 0,
    memory_share: float = GATED_MEMORY_SAFETY,
    max_batch: int = MAX_GATED_BATCH,
) -> int:
    """Windows per batch: 32 on CPU; on CUDA the largest power of two whose estimated training memory
    (:func:`newllm.training.planner.gated_training_bytes`, ``train_windows`` held on the device) fits in
    ``memory_share`` of the free GPU memory, at most ``max_batch``."""
    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    parameters = parameter_count(model)
    # the model is on the device already: its weights are in the estimate, so the probe counts them as free
    available = memory_share * MemoryBudget.probe(device, resident_bytes=device_bytes(model, device)).device_free
    return gated_batch_size(model.cfg, window, parameters, available, train_windows, max_batch)


def _train_step(
    model: GatedContextLM,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[torch.amp.GradScaler],
    backoff: OOMBackoff,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor,
    pad_id: int,
    amp_dtype: Optional[torch.dtype],
    max_norm: float,
) -> torch.Tensor:
    """One Adam update on the token-mean loss of the windows ``index`` of ``inputs`` / ``targets``, gradients
    clipped to ``max_norm``; the batch is split into micro-batches only when the device runs out of memory.

    Returns float64 [loss sum, scored targets, correct] of the batch (on the device, not synchronised).
    """
    n_tokens = (targets[index] != pad_id).sum().clamp(min=1)

    def part_loss(part: torch.Tensor, _size: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss_sum, n, correct = _window_loss(model, inputs[part], targets[part], pad_id, amp_dtype)
        return loss_sum / n_tokens, torch.stack([loss_sum.detach(), n, correct]).to(torch.float64)

    parts = train_step(backoff, optimizer, index, part_loss, max_norm, scaler)
    return torch.stack(parts).sum(dim=0)


@torch.no_grad()
def evaluate_windows(
    model: GatedContextLM,
    windows: Windows,
    batch_size: int,
    tokenizer_name: str,
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
) -> LMEval:
    """Token-weighted loss, PPL and accuracy over every scored target of ``windows`` (model in eval mode)."""
    if windows.n_targets == 0:
        raise ValueError("the evaluation windows hold no scored targets; check the validation data")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def run(size: int) -> tuple[float, int, int]:
        loss_total, tokens, correct = 0.0, 0, 0
        for start in tqdm(range(0, len(windows), size), desc="eval", leave=False, disable=not progress):
            inputs = windows.inputs[start:start + size].to(device)
            targets = windows.targets[start:start + size].to(device)
            loss_sum, n, c = _window_loss(model, inputs, targets, windows.pad_id, amp_dtype)
            loss_total += float(loss_sum)
            tokens += int(n)
            correct += int(c)
        return loss_total, tokens, correct

    # a device OOM halves the windows per batch and evaluates again from the start
    backoff = OOMBackoff(batch_size, MAX_OOM_HALVINGS, "gated LM evaluation", unit="windows",
                         hint="Lower GatedTrainConfig.batch_size.")
    try:
        loss_total, tokens, correct = backoff.run(run, cleanup=lambda: None)
    finally:
        model.train(was_training)
    return LMEval(loss=loss_total / tokens, tokens=tokens, correct=correct, tokenizer=tokenizer_name,
                  vocab_size=model.cfg.vocab_size)


# ------------------------------------------------------------------------------------------ the run

@dataclass
class GatedRunResult:
    """What a training run returns (the files it wrote are listed in ``paths``)."""

    name: str
    run_dir: Path
    model: GatedContextLM
    history: pd.DataFrame
    best_val_loss: float
    best_epoch: float
    stopped_early: bool
    updates: int
    batch_size: int
    lr: float
    parameters: int
    seconds: float
    last_eval: Optional[LMEval]
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def best_val_ppl(self) -> float:
        return math.exp(self.best_val_loss) if math.isfinite(self.best_val_loss) else math.inf


def train_gated_lm(
    model_cfg: GatedLMConfig,
    train_cfg: GatedTrainConfig,
    train: Windows,
    val: Windows,
    run_dir: PathLike,
    *,
    name: Optional[str] = None,
    tokenizer_name: str = "word",
    device: str = "auto",
    resume_from: Optional[PathLike] = None,
    callback: Optional[EpochCallback] = None,
    progress: bool = True,
    extra_config: Optional[dict] = None,
) -> GatedRunResult:
    """Train a fresh GatedContextLM (or continue ``resume_from``) on ``train`` windows, evaluating on ``val``.

    ``train_cfg.epochs`` is the total number of epochs of the run, counted from its start, also when resuming
    (with the cosine schedule the horizon follows it, so extending a cosine run changes its remaining LRs).
    ``callback(history)`` is called after every evaluation with the history so far; returning True stops the run
    there (its checkpoints and files are written as for any stop). ``extra_config`` (JSON-able) is recorded in the
    progress file, e.g. the data source. Returns the trained model (last weights, not the best) and the history.
    """
    if len(train) == 0 or train.n_targets == 0:
        raise ValueError("no training windows: the data pipeline produced nothing to train on")
    if train.window != train_cfg.window:
        raise ValueError(f"training windows hold {train.window} tokens but train_cfg.window={train_cfg.window}")
    run_dir = Path(run_dir)
    name = name or experiment_name(model_cfg)
    device_t = resolve_device(device)
    amp_dtype = autocast_dtype(device_t, train_cfg.amp)
    scaler = grad_scaler(device_t, amp_dtype)
    checkpoints = run_dir / "checkpoints"
    paths = {
        "best": checkpoints / f"best_{name}.safetensors",
        "final": checkpoints / f"{name}_final.safetensors",
        "progress": run_dir / f"{name}_progress.json",
        "history": run_dir / f"{name}_history.csv",
        "curves": run_dir / f"{name}_training_curves.png",
    }

    saved: Optional[dict] = None
    if resume_from is not None:
        _, meta = read_checkpoint(resume_from)  # CheckpointError with the reason when unreadable
        saved = meta["state"]
        check_resume_configs(Path(resume_from), saved, model_cfg, train_cfg)
    seed_everything(train_cfg.seed)
    model = GatedContextLM(model_cfg).to(device_t)
    if train_cfg.batch_size is not None:
        batch_size = train_cfg.batch_size
    elif saved is not None:
        batch_size = int(saved["batch_size"])
    else:
        batch_size = choose_batch_size(model, train_cfg.window, device_t, len(train))
    if saved is not None and batch_size != int(saved["batch_size"]):
        warnings.warn(f"resuming with batch_size {batch_size} instead of {saved['batch_size']}", stacklevel=2)
    lr = base_learning_rate(train_cfg, batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
    loop = LoopState()
    if saved is not None:
        load_checkpoint(resume_from, model, optimizer, scaler=scaler, restore_rng=True, map_location=device_t)
        loop = state_from_json(saved)
    stopper = EarlyStopping(train_cfg.patience, train_cfg.min_delta, **loop.early_stopping)
    loop.stopped_early = stopper.should_stop  # a resumed run continues when given a larger patience
    parameters = parameter_count(model)
    extra = dict(extra_config or {}, device=str(device_t), amp=str(amp_dtype) if amp_dtype else "fp32")

    batches_per_epoch = math.ceil(len(train) / batch_size)
    planned = train_cfg.epochs * batches_per_epoch
    total_updates = min(planned, train_cfg.max_updates) if train_cfg.max_updates else planned
    scheduler = lr_scheduler(optimizer, lr, lambda update: lr_factor(update, train_cfg.schedule, total_updates),
                             start_step=loop.updates)
    backoff = OOMBackoff(batch_size, MAX_OOM_HALVINGS, "gated training step", unit="windows",
                         hint="Lower GatedTrainConfig.batch_size.")

    def budget_left() -> bool:
        return train_cfg.max_updates is None or loop.updates < train_cfg.max_updates

    def save(path: Path) -> None:
        save_checkpoint(path, model, optimizer, scaler=scaler,
                        state=state_to_json(loop, name, model_cfg, train_cfg, batch_size, lr, tokenizer_name))

    def write_reports(with_curves: bool) -> None:
        write_progress(paths["progress"], name, loop, train_cfg.epochs, model_cfg, train_cfg, batch_size, lr,
                        tokenizer_name, parameters, extra)
        history = pd.DataFrame(loop.history)
        atomic_write_text(paths["history"], history.to_csv(index=False))
        if with_curves and len(history):
            plot_training_curves(history, title=f"{name} ({parameters:,} parameters)",
                                 ppl_label=f"PPL, {tokenizer_name} (V={model_cfg.vocab_size:,})", path=paths["curves"])

    if loop.stopped_early:
        warnings.warn(f"{resume_from} had stopped early ({stopper.wait} evaluations without improvement >= patience "
                      f"{stopper.patience}); raise patience to continue training", stacklevel=2)
    last_eval: Optional[LMEval] = None
    # windows live on the training device once, batches are gathered there
    train_inputs, train_targets = train.inputs.to(device_t), train.targets.to(device_t)
    model.train()
    epoch_bar = tqdm(total=train_cfg.epochs, initial=loop.epoch, desc=name, unit="epoch", disable=not progress)
    with tf32_matmuls(device_t):
        while loop.epoch < train_cfg.epochs and budget_left() and not loop.stopped_early:
            epoch = loop.epoch
            started = time.perf_counter()
            max_norm = clip_norm_for_epoch(train_cfg.grad_clip, epoch)
            order = epoch_order(len(train), train_cfg.seed, epoch)
            batches = order.split(batch_size)
            current_lr = lr
            batch_bar = tqdm(total=len(batches), initial=loop.cursor, desc=f"epoch {epoch + 1}", leave=False,
                             disable=not progress)
            # (loss sum, tokens, correct) of the epoch so far, summed on the device in float64
            sums = torch.tensor([loop.partial["loss_sum"], loop.partial["tokens"], loop.partial["correct"]],
                                dtype=torch.float64, device=device_t)
            while loop.cursor < len(batches) and budget_left():
                index = batches[loop.cursor].to(device_t)
                current_lr = optimizer.param_groups[0]["lr"]
                step_sums = _train_step(model, optimizer, scaler, backoff, train_inputs, train_targets, index,
                                        train.pad_id, amp_dtype, max_norm)
                scheduler.step()
                sums += step_sums
                loop.updates += 1
                loop.cursor += 1
                batch_bar.update(1)
                if progress and loop.cursor % 50 == 0:  # reading the loss waits for the GPU: only now and then
                    batch_bar.set_postfix(loss=f"{float(step_sums[0] / step_sums[1].clamp(min=1)):.3f}")
            batch_bar.close()
            loss_total, tokens_total, correct_total = sums.tolist()
            loop.partial = {"loss_sum": loss_total, "tokens": int(tokens_total), "correct": int(correct_total)}
            complete = loop.cursor >= len(batches)
            last_eval = evaluate_windows(model, val, batch_size, tokenizer_name, amp_dtype)
            model.train()
            train_loss = loop.partial["loss_sum"] / max(loop.partial["tokens"], 1)
            loop.seconds += time.perf_counter() - started
            epoch_mark = epoch + 1 if complete else epoch + loop.cursor / len(batches)
            loop.history.append({
                "epoch": epoch_mark, "updates": loop.updates,
                "train_loss": train_loss, "train_ppl": row_ppl(train_loss),
                "train_acc": loop.partial["correct"] / max(loop.partial["tokens"], 1),
                "val_loss": last_eval.loss, "val_ppl": last_eval.perplexity, "val_acc": last_eval.accuracy,
                "lr": current_lr, "grad_clip": max_norm, "seconds": time.perf_counter() - started,
                "elapsed_s": loop.seconds,
            })
            stopper.update(last_eval.loss)
            loop.early_stopping = stopper.state()
            loop.stopped_early = stopper.should_stop
            improved = last_eval.loss < loop.best_val_loss
            if improved:
                loop.best_val_loss, loop.best_epoch = last_eval.loss, epoch_mark
            if complete:
                loop.epoch, loop.cursor = epoch + 1, 0
                loop.partial = {"loss_sum": 0.0, "tokens": 0, "correct": 0}
                epoch_bar.update(1)
            epoch_bar.set_postfix(val_ppl=f"{last_eval.perplexity:.2f}", best=f"{row_ppl(loop.best_val_loss):.2f}")
            if improved:
                save(paths["best"])
            periodic = complete and loop.epoch % train_cfg.checkpoint_every == 0
            if periodic:
                save(checkpoints / f"{name}_epoch_{loop.epoch}.safetensors")
            write_reports(with_curves=periodic)
            if callback is not None and callback(pd.DataFrame(loop.history)):
                break
    epoch_bar.close()
    save(paths["final"])
    write_reports(with_curves=True)
    return GatedRunResult(
        name=name, run_dir=run_dir, model=model, history=pd.DataFrame(loop.history),
        best_val_loss=loop.best_val_loss, best_epoch=loop.best_epoch, stopped_early=loop.stopped_early,
        updates=loop.updates, batch_size=batch_size, lr=lr, parameters=parameters, seconds=loop.seconds,
        last_eval=last_eval, paths={k: v for k, v in paths.items() if v.exists()},
    )


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

:func:`run_wikitext` does everything from one call: data (newllm.data.wikitext), tokenizer, training, files.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Union

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from newllm.config.models import GatedLMConfig
from newllm.config.training import GatedTrainConfig
from newllm.data.wikitext import WikiTextData, Windows, prepare_wikitext
from newllm.evaluation.lm_metrics import LMEval
from newllm.models.common import parameter_count
from newllm.models.gated import GatedContextLM
from newllm.plotting import plot_training_curves
from newllm.utils.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from newllm.utils.io import atomic_write_json, atomic_write_text
from newllm.utils.runs import original_run_name
from newllm.utils.runtime import autocast_dtype, resolve_device, seed_everything

PathLike = Union[str, Path]
EpochCallback = Callable[[pd.DataFrame], Optional[bool]]

CPU_BATCH_SIZE = 32
SQRT_RULE_BASE_BATCH = 32
# epochs below each bound use that max-norm (the original's adaptive schedule); later epochs use the last value
ADAPTIVE_CLIP_SCHEDULE = ((10, 0.5), (30, 1.0))
ADAPTIVE_CLIP_FINAL = 2.0
# train-config fields a resumed run may change without changing what the earlier epochs mean
RESUMABLE_CHANGES = frozenset({"epochs", "max_updates", "checkpoint_every", "patience", "batch_size"})


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


def learning_rate_at(base_lr: float, schedule: str, update: int, total_updates: int) -> float:
    """LR for the 0-based ``update``: constant, or cosine from ``base_lr`` towards 0 over ``total_updates``."""
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        progress = min(update / max(total_updates, 1), 1.0)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule={schedule!r} must be 'constant' or 'cosine'")


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations without the validation loss dropping below ``best - min_delta``."""

    patience: int
    min_delta: float
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


# ------------------------------------------------------------------------------------------ batching

def epoch_order(n_windows: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled window order of ``epoch``: a function of (seed, epoch) only, so resuming reproduces it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_windows, generator=generator)


def experiment_name(model_cfg: GatedLMConfig, quantization: str = "none") -> str:
    """The original's run name, ``new_llm_wikitext_ctx{D}_layers{L}[_int8]``."""
    return original_run_name(model_cfg.ctx_dim, model_cfg.num_layers, quantization)


def _amp(device: torch.device, amp: str) -> tuple[Optional[torch.dtype], Optional[torch.amp.GradScaler]]:
    dtype = autocast_dtype(device) if amp == "auto" else None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return dtype, scaler


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _window_loss(
    model: GatedContextLM, inputs: torch.Tensor, targets: torch.Tensor, pad_id: int, amp_dtype: Optional[torch.dtype]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed CE over scored targets, their number, how many the argmax got right) for one batch of windows.

    All three stay tensors on the model's device, so a training step never waits for the GPU.
    """
    with _autocast(inputs.device, amp_dtype):
        logits, _ = model(inputs)
    logits = logits.float().reshape(-1, logits.shape[-1])
    flat = targets.reshape(-1)
    loss_sum = F.cross_entropy(logits, flat, ignore_index=pad_id, reduction="sum")
    scored = flat != pad_id
    correct = ((logits.argmax(dim=-1) == flat) & scored).sum()
    return loss_sum, scored.sum(), correct


def choose_batch_size(
    model: GatedContextLM,
    window: int,
    device: Union[str, torch.device] = "auto",
    amp: str = "auto",
    memory_share: float = 0.6,
    max_batch: int = 4096,
    probe_batch: int = 16,
) -> int:
    """Windows per batch: 32 on CPU; on CUDA the largest power of two whose measured training memory fits in
    ``memory_share`` of the free GPU memory (one probe forward/backward of ``probe_batch`` windows), at most
    ``max_batch``."""
    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    amp_dtype, _ = _amp(device, amp)
    ids = torch.ones(probe_batch, window - 1, dtype=torch.long, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.random.fork_rng(devices=[device]):  # the probe's dropout must not shift the run's RNG stream
        loss_sum, _, _ = _window_loss(model, ids, ids, pad_id=-100, amp_dtype=amp_dtype)
        loss_sum.backward()
    per_window = max((torch.cuda.max_memory_allocated(device) - before) / probe_batch, 1.0)
    model.zero_grad(set_to_none=True)
    del loss_sum
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    fits = max(int(free * memory_share / per_window), 1)
    return min(2 ** int(math.log2(fits)), max_batch)


def _train_step(
    model: GatedContextLM,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[torch.amp.GradScaler],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    pad_id: int,
    amp_dtype: Optional[torch.dtype],
    max_norm: float,
) -> torch.Tensor:
    """One Adam update on the token-mean loss of a batch, gradients clipped to ``max_norm``.

    Returns float64 [loss sum, scored targets, correct] of the batch (on the device, not synchronised).
    """
    loss_sum, n_tokens, n_correct = _window_loss(model, inputs, targets, pad_id, amp_dtype)
    loss = loss_sum / n_tokens.clamp(min=1)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:  # fp16: scale the loss, unscale before clipping so the norm is the true one
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
    return torch.stack([loss_sum.detach(), n_tokens, n_correct]).to(torch.float64)


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
    loss_total, tokens, correct = 0.0, 0, 0
    for start in tqdm(range(0, len(windows), batch_size), desc="eval", leave=False, disable=not progress):
        inputs = windows.inputs[start:start + batch_size].to(device)
        targets = windows.targets[start:start + batch_size].to(device)
        loss_sum, n, c = _window_loss(model, inputs, targets, windows.pad_id, amp_dtype)
        loss_total += float(loss_sum)
        tokens += int(n)
        correct += int(c)
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


@dataclass
class _LoopState:
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


def _state_to_json(loop: _LoopState, name: str, model_cfg: GatedLMConfig, train_cfg: GatedTrainConfig,
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


def _state_from_json(state: dict) -> _LoopState:
    def num(value: Optional[float], default: float) -> float:
        return default if value is None else float(value)

    return _LoopState(
        epoch=int(state["epoch"]), cursor=int(state["cursor"]), partial=dict(state["partial"]),
        updates=int(state["updates"]), history=list(state["history"]),
        best_val_loss=num(state["best_val_loss"], math.inf), best_epoch=num(state["best_epoch"], float("nan")),
        early_stopping={"best": num(state["early_stopping"]["best"], math.inf),
                        "wait": int(state["early_stopping"]["wait"])},
        stopped_early=bool(state["stopped_early"]), seconds=float(state["seconds"]),
    )


def _check_resume_configs(path: Path, state: dict, model_cfg: GatedLMConfig, train_cfg: GatedTrainConfig) -> None:
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


def _row_ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def _write_progress(path: Path, name: str, loop: _LoopState, total_epochs: int, model_cfg: GatedLMConfig,
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
        "best_val_ppl": _json_float(_row_ppl(loop.best_val_loss)) if math.isfinite(loop.best_val_loss) else None,
        "best_epoch": _json_float(loop.best_epoch),
        "stopped_early": loop.stopped_early,
        "ppl_tokenizer": f"{tokenizer_name} (V={model_cfg.vocab_size:,})",
        "parameters": parameters,
        "batch_size": batch_size,
        "lr": lr,
        "seconds": loop.seconds,
        "config": {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), **extra},
    })


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
    amp_dtype, scaler = _amp(device_t, train_cfg.amp)
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
        _check_resume_configs(Path(resume_from), saved, model_cfg, train_cfg)
    seed_everything(train_cfg.seed)
    model = GatedContextLM(model_cfg).to(device_t)
    if train_cfg.batch_size is not None:
        batch_size = train_cfg.batch_size
    elif saved is not None:
        batch_size = int(saved["batch_size"])
    else:
        batch_size = choose_batch_size(model, train_cfg.window, device_t, train_cfg.amp)
    if saved is not None and batch_size != int(saved["batch_size"]):
        warnings.warn(f"resuming with batch_size {batch_size} instead of {saved['batch_size']}", stacklevel=2)
    lr = base_learning_rate(train_cfg, batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
    loop = _LoopState()
    if saved is not None:
        load_checkpoint(resume_from, model, optimizer, scaler=scaler, restore_rng=True, map_location=device_t)
        loop = _state_from_json(saved)
    stopper = EarlyStopping(train_cfg.patience, train_cfg.min_delta, **loop.early_stopping)
    loop.stopped_early = stopper.should_stop  # a resumed run continues when given a larger patience
    parameters = parameter_count(model)
    extra = dict(extra_config or {}, device=str(device_t), amp=str(amp_dtype) if amp_dtype else "fp32")

    batches_per_epoch = math.ceil(len(train) / batch_size)
    planned = train_cfg.epochs * batches_per_epoch
    total_updates = min(planned, train_cfg.max_updates) if train_cfg.max_updates else planned

    def budget_left() -> bool:
        return train_cfg.max_updates is None or loop.updates < train_cfg.max_updates

    def save(path: Path) -> None:
        save_checkpoint(path, model, optimizer, scaler=scaler,
                        state=_state_to_json(loop, name, model_cfg, train_cfg, batch_size, lr, tokenizer_name))

    def write_reports(with_curves: bool) -> None:
        _write_progress(paths["progress"], name, loop, train_cfg.epochs, model_cfg, train_cfg, batch_size, lr,
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
            inputs, targets = train_inputs[index], train_targets[index]
            current_lr = learning_rate_at(lr, train_cfg.schedule, loop.updates, total_updates)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            step_sums = _train_step(model, optimizer, scaler, inputs, targets, train.pad_id, amp_dtype, max_norm)
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
            "train_loss": train_loss, "train_ppl": _row_ppl(train_loss),
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
        epoch_bar.set_postfix(val_ppl=f"{last_eval.perplexity:.2f}", best=f"{_row_ppl(loop.best_val_loss):.2f}")
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


def run_wikitext(
    run_dir: PathLike,
    model_cfg: GatedLMConfig = GatedLMConfig(),
    train_cfg: GatedTrainConfig = GatedTrainConfig(),
    source: str = "auto",
    *,
    builtin_documents: tuple[int, int] = (200, 20),
    device: str = "auto",
    resume_from: Optional[PathLike] = None,
    callback: Optional[EpochCallback] = None,
    progress: bool = True,
) -> tuple[GatedRunResult, WikiTextData]:
    """One call from data to trained model: :func:`prepare_wikitext` then :func:`train_gated_lm`.

    The word tokenizer gets ``model_cfg.vocab_size`` entries; a corpus with fewer distinct words gives a smaller
    vocabulary, and the model is then sized to it (with a warning). The tokenizer is saved beside the run's files as
    ``{name}_tokenizer.json`` (load it with ``newllm.data.tokenizers.load_tokenizer``).
    """
    data = prepare_wikitext(train_cfg, source, model_cfg.vocab_size, builtin_documents, progress)
    if data.tokenizer.vocab_size != model_cfg.vocab_size:
        warnings.warn(
            f"the corpus has only {data.tokenizer.vocab_size - 4} distinct training words: the model's vocab_size is "
            f"set to {data.tokenizer.vocab_size} instead of {model_cfg.vocab_size}", stacklevel=2)
        model_cfg = replace(model_cfg, vocab_size=data.tokenizer.vocab_size)
    name = experiment_name(model_cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data.tokenizer.save(run_dir / f"{name}_tokenizer.json")
    result = train_gated_lm(
        model_cfg, train_cfg, data.train, data.val, run_dir, name=name, tokenizer_name=data.tokenizer_label,
        device=device, resume_from=resume_from, callback=callback, progress=progress,
        extra_config={"data_source": data.source, "data_stats": data.stats},
    )
    result.paths["tokenizer"] = run_dir / f"{name}_tokenizer.json"
    return result, data

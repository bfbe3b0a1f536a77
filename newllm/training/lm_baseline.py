"""Evaluating and training the baseline LMs (LSTM, Transformer): windows, state carried or fresh, schedules."""

from __future__ import annotations

import math
from typing import Iterator, Optional

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from newllm.evaluation.lm_metrics import LMEval, top1_hits
from newllm.models.baselines import check_ids
from newllm.models.cvfp import CVFPModel
from newllm.models.gated import GatedContextLM
from newllm.training.common import (
    MAX_OOM_HALVINGS,
    OOMBackoff,
    autocast,
    autocast_dtype,
    epoch_order,
    lr_factor,
    lr_scheduler,
    tf32_matmuls,
    train_step,
)
from newllm.utils.runtime import resolve_device, seed_everything

# ------------------------------------------------------------------------------------------ evaluation

def _logits_and_state(model: nn.Module, ids: torch.Tensor, state=None):
    """Logits [B, T, V] and the carried state, whatever the model family returns."""
    if isinstance(model, (CVFPModel, GatedContextLM)):
        out = model(ids, state)
        return (out.logits, out.context) if isinstance(model, CVFPModel) else out
    return model(ids), None


def _windows(n_targets: int, seq_len: int) -> Iterator[tuple[int, int]]:
    """(start, length) of consecutive windows covering targets 1..n_targets, each scored once."""
    for start in range(0, n_targets, seq_len):
        yield start, min(seq_len, n_targets - start)


def evaluate_lm(
    model: nn.Module,
    ids: torch.Tensor,
    *,
    tokenizer: str,
    seq_len: int = 128,
    batch_size: int = 16,
    mode: str = "auto",
    n_bytes: Optional[int] = None,
    progress: bool = False,
) -> LMEval:
    """Next-token loss, accuracy (and bits per byte with ``n_bytes``) over a 1-D token stream; every target once.

    mode "windows": consecutive windows of ``seq_len`` targets, each from a fresh state, ``batch_size`` at a time
    (the baselines, the gated LM). mode "stream": one stream in chunks of ``seq_len`` with the context carried
    across chunks, batch 1, exactly the single-stream recurrence (CVFP, gated LM). "auto": stream for CVFPModel,
    windows otherwise. Runs on the model's device, without gradients, in eval mode (the mode is restored).
    """
    if mode not in ("auto", "windows", "stream"):
        raise ValueError(f"mode={mode!r}: use 'auto', 'windows' or 'stream'")
    if not torch.is_tensor(ids) or ids.dim() != 1 or ids.numel() < 2:
        raise ValueError("ids must be a 1-D tensor of at least 2 token ids (a stream)")
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be >= 1")
    vocab_size = model.cfg.vocab_size
    check_ids(ids[None], vocab_size)
    stream = mode == "stream" or (mode == "auto" and isinstance(model, CVFPModel))
    if stream and not isinstance(model, (CVFPModel, GatedContextLM)):
        raise ValueError(f"{type(model).__name__} carries no state between chunks: use mode='windows'")
    device = next(model.parameters()).device
    ids = ids.to(device)
    windows = list(_windows(ids.numel() - 1, seq_len))
    groups = [windows[i:i + 1] for i in range(len(windows))] if stream else _batched(windows, batch_size)
    was_training = model.training
    model.eval()
    total_loss, correct, state = 0.0, 0, None
    try:
        with torch.no_grad():
            for group in tqdm(groups, desc="evaluate", disable=not progress, leave=False):
                inputs = torch.stack([ids[s:s + n] for s, n in group])
                targets = torch.stack([ids[s + 1:s + n + 1] for s, n in group])
                logits, next_state = _logits_and_state(model, inputs, state)
                if stream:
                    state = next_state
                logits = logits.float().reshape(-1, vocab_size)
                total_loss += float(F.cross_entropy(logits, targets.reshape(-1), reduction="sum"))
                correct += int(top1_hits(logits, targets.reshape(-1)).sum())
    finally:
        model.train(was_training)
    tokens = ids.numel() - 1
    return LMEval(loss=total_loss / tokens, tokens=tokens, correct=correct, tokenizer=tokenizer,
                  vocab_size=vocab_size, n_bytes=n_bytes)


def _batched(windows: list[tuple[int, int]], batch_size: int) -> list[list[tuple[int, int]]]:
    """Groups of equal-length windows (only the last window can be shorter, so it goes alone)."""
    full = [w for w in windows if w[1] == windows[0][1]]
    rest = [w for w in windows if w[1] != windows[0][1]]
    return [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in rest]


# ------------------------------------------------------------------------------------------ training

def train_lm_baseline(
    model: nn.Module,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    token_budget: int,
    *,
    tokenizer: str,
    seq_len: int = 128,
    batch_size: int = 32,
    lr: float = 1e-3,
    schedule: str = "cosine",
    warmup_steps: Optional[int] = None,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    eval_every: Optional[int] = None,
    eval_batch_size: int = 16,
    n_bytes: Optional[int] = None,
    device: str = "auto",
    seed: int = 42,
    progress: bool = True,
) -> tuple[pd.DataFrame, LMEval]:
    """Train a baseline (model(ids) -> logits) on ``token_budget`` training targets; returns (history, final LMEval).

    Batches are non-overlapping ``seq_len`` windows of ``train_ids`` in a seeded random order, reshuffled each pass;
    the last step takes only the windows the budget has left. AdamW (weight decay ``weight_decay``), gradient norm
    clipped to ``grad_clip``, linear warm-up (default min(100, steps // 10) steps) then ``schedule`` "cosine" (to 10%
    of ``lr``) or "constant"; bf16 autocast on GPUs that support it. A step that runs out of device memory is redone
    in halved micro-batches. ``history`` has one row per evaluation (every ``eval_every`` steps, default a tenth of
    the run, and at the end): step, tokens, lr, train_loss (mean since the previous row), val_loss, val_ppl. The returned LMEval is the final model on all of ``val_ids`` (windows mode),
    labelled with ``tokenizer``; with ``n_bytes`` (UTF-8 bytes of the validation text) it gives bits per byte.
    """
    from newllm.evaluation.quantize import is_quantized

    if is_quantized(model):
        raise ValueError("this model is int8-quantized and cannot be trained: train the fp32 model, then quantize it")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule={schedule!r}: use 'cosine' or 'constant'")
    for name, value in (("token_budget", token_budget), ("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not (lr > 0 and grad_clip > 0 and weight_decay >= 0):
        raise ValueError(f"lr={lr} and grad_clip={grad_clip} must be > 0, weight_decay={weight_decay} >= 0")
    if not torch.is_tensor(train_ids) or train_ids.dim() != 1 or train_ids.numel() < seq_len + 1:
        raise ValueError(f"train_ids must be a 1-D token tensor of at least seq_len + 1 = {seq_len + 1} ids")
    if not torch.is_tensor(val_ids) or val_ids.dim() != 1 or val_ids.numel() < 2:
        raise ValueError("val_ids must be a 1-D token tensor of at least 2 ids")
    vocab_size = model.cfg.vocab_size
    check_ids(train_ids[None], vocab_size)
    check_ids(val_ids[None], vocab_size)

    seed_everything(seed)
    dev = resolve_device(device)
    model.to(dev)
    amp = autocast_dtype(dev)
    amp = amp if amp == torch.bfloat16 else None  # fp16 would need a GradScaler: plain fp32 there instead
    train_ids = train_ids.to(dev)
    starts = torch.arange(0, train_ids.numel() - seq_len, seq_len)
    window_tokens = seq_len
    steps = math.ceil(token_budget / (batch_size * window_tokens))
    warmup = min(100, steps // 10) if warmup_steps is None else warmup_steps
    every = eval_every or max(1, steps // 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # warm-up, then the cosine reaches 10% of the peak at the last step
    scheduler = lr_scheduler(optimizer, lr, lambda s: lr_factor(s, schedule, steps - warmup - 1, warmup, final=0.1))
    backoff = OOMBackoff(batch_size, MAX_OOM_HALVINGS, "baseline training step", unit="windows",
                         hint="Lower batch_size.")
    order = _window_order(starts, seed)

    rows, tokens_seen, pending = [], 0, []
    bar = tqdm(range(steps), desc=f"train {type(model).__name__}", disable=not progress)
    with tf32_matmuls(dev):
        for step in bar:
            remaining_windows = math.ceil((token_budget - tokens_seen) / window_tokens)
            batch_starts = torch.stack([next(order) for _ in range(min(batch_size, remaining_windows))]).to(dev)

            def part_loss(part: torch.Tensor, _size: int) -> tuple[torch.Tensor, torch.Tensor]:
                chunk = train_ids[part[:, None] + torch.arange(seq_len + 1, device=dev)]
                with autocast(dev, amp):
                    logits = model(chunk[:, :-1])
                loss = F.cross_entropy(logits.float().reshape(-1, vocab_size), chunk[:, 1:].reshape(-1))
                loss = loss * (part.numel() / batch_starts.numel())  # the part's share of the step's mean
                return loss, loss.detach()

            model.train()
            current_lr = optimizer.param_groups[0]["lr"]
            losses = train_step(backoff, optimizer, batch_starts, part_loss, grad_clip, scheduler=scheduler)
            tokens_seen += batch_starts.numel() * seq_len
            pending.append(float(sum(losses)))
            bar.set_postfix(loss=f"{pending[-1]:.3f}")
            if (step + 1) % every == 0 or step + 1 == steps:
                val = evaluate_lm(model, val_ids, tokenizer=tokenizer, seq_len=seq_len, batch_size=eval_batch_size,
                                  mode="windows", n_bytes=n_bytes)
                rows.append({"step": step + 1, "tokens": tokens_seen, "lr": current_lr,
                             "train_loss": sum(pending) / len(pending), "val_loss": val.loss, "val_ppl": val.perplexity})
                pending = []
    model.eval()
    return pd.DataFrame(rows), val


def _window_order(starts: torch.Tensor, seed: int) -> Iterator[torch.Tensor]:
    """Window starts in a seeded random order, reshuffled at each pass over the data."""
    data_pass = 0
    while True:
        for index in epoch_order(len(starts), seed, data_pass):
            yield starts[index]
        data_pass += 1

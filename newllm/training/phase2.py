"""Phase 2: next-token training of the TokenBlock and output head on cached, frozen contexts (seed-spec 5.3-5.4).

The ContextBlock is frozen; its per-layer contexts for every train and val token are computed once into a
:class:`~newllm.training.context_cache.ContextCache`, placed and typed by the memory planner (:mod:`newllm.training.planner`) before anything
is allocated. Each optimizer step reads a batch of cache rows (shuffled by default), recomputes the token inputs
from the ids, runs the TokenBlock and computes the output layer's cross-entropy in chunks
(:mod:`newllm.training.chunked_ce`), so batch x vocabulary logits never exist at once. A step is split into micro-batches
(gradient accumulation) sized by the plan; if the device still runs out of memory the micro-batch is halved and
the same step is redone from zeroed gradients (the optimizer has not stepped), at most ``max_oom_halvings`` times.

Differences from the original, on purpose: shuffled batches (stream order with ``shuffle=False``); the weights of
the best validation epoch are restored at the end (the original reported its best epoch but kept the last
weights); the embedding LayerNorm is frozen with the embedding (see ``phase2_trainable_parameters``).

Checkpoints (``checkpoint_path``): one safetensors file with the model, the best weights (prefix ``best.``), the
Adam state, RNG states and a JSON cursor (epoch, step within it, running sums, history, early-stopping state),
written atomically; the previous one is kept as ``<name>.prev.safetensors``. ``resume=True`` continues where the
file left off and ends with the same numbers as an uninterrupted run on the same machine.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from newllm.config.training import Phase2Config
from newllm.data.streams import make_streams
from newllm.evaluation.lm_metrics import LMEval
from newllm.recurrence import token_inputs
from newllm.training.chunked_ce import linear_cross_entropy
from newllm.training.common import (
    EarlyStopping,
    OOMBackoff,
    all_reduce_sum,
    autocast,
    autocast_dtype,
    compiled,
    distributed_rank_world,
    grad_scaler,
    lr_factor,
    lr_scheduler,
    tf32_matmuls,
    train_step,
)
from newllm.training.context_cache import ContextCache, build_context_cache
from newllm.training.context_stream import StreamedContexts, epoch_batches, streamed_contexts
from newllm.training.phase2_checkpoint import Bundle, frozen_fingerprint, initial_state, resumed_state, save
from newllm.training.planner import (
    MemoryBudget,
    Phase2Plan,
    Phase2Workload,
    device_bytes,
    phase2_trainable_parameters,
    plan_phase2,
)

OOM_HINT = ("Lower Phase2Config.micro_batch_size / eval_batch_size, use cache_placement='cpu' or 'disk', "
            "or cache_dtype='float16'.")


@dataclass
class Phase2Result:
    """What a Phase-2 run produced; the model holds the best epoch's weights."""

    history: pd.DataFrame  # one row per (possibly partial) epoch
    best_epoch: int  # 1-based epoch with the lowest val loss (0: no epoch finished)
    val: LMEval  # validation metrics of the returned (best) weights
    plan: Phase2Plan
    cache: dict  # {"train": info, "val": info}: placement, dtype, bytes, build time
    steps: int  # optimizer steps taken in total
    stop_reason: str  # "epochs", "early_stopping", "max_steps"
    micro_batch_size: int  # after any OOM halvings
    oom_halvings: int


# ------------------------------------------------------------------------------------------- forward

def batch_inputs(model, cache: ContextCache, index: Union[torch.Tensor, slice]):
    """(per-layer contexts, token inputs x, targets) of the cached tokens at ``index``, on the model's device.

    x is recomputed from the ids (with gradients only when the embedding trains).
    """
    device = next(model.parameters()).device
    positions = torch.arange(index.start, index.stop) if isinstance(index, slice) else index
    contexts = cache.contexts(index, torch.float32)
    windows = cache.streams.windows(positions, model.cfg.num_input_tokens).to(device)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not model.cfg.freeze_embedding):
        x = token_inputs(model, windows)
    return contexts, x, cache.streams.targets[index].to(device)


def token_loss(
    model,
    contexts: Sequence[torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
    ce_chunk_tokens: int,
    amp_dtype: Optional[torch.dtype] = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` x the summed next-token cross-entropy of TokenBlock + head (chunked), and the argmax hits."""
    with autocast(x.device, amp_dtype):
        h = model.token_block(contexts, x)
    return linear_cross_entropy(h, model.head.weight, model.head.bias, targets, ce_chunk_tokens, amp_dtype, scale)


class Phase2Step(nn.Module):
    """One micro-batch's scaled loss as a module, so DistributedDataParallel (its gradient all-reduce) and
    torch.compile wrap exactly the step: token inputs from the ids, TokenBlock, chunked cross-entropy."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, contexts, windows, targets, ce_chunk_tokens: int, amp_dtype, scale: float):
        with torch.set_grad_enabled(not self.model.cfg.freeze_embedding):
            x = token_inputs(self.model, windows)
        return token_loss(self.model, contexts, x, targets, ce_chunk_tokens, amp_dtype, scale)


def step_module(model, compile_step: bool = False) -> nn.Module:
    """The Phase-2 step module: wrapped in DistributedDataParallel under torchrun, compiled on request."""
    step = Phase2Step(model)
    _, world = distributed_rank_world()
    if world > 1:
        device = next(model.parameters()).device
        step = nn.parallel.DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
    return compiled(step, compile_step)


@torch.no_grad()
def evaluate(
    model,
    cache: ContextCache,
    tokenizer_name: str = "unknown",
    n_bytes: Optional[int] = None,
    batch_size: int = 4096,
    ce_chunk_tokens: int = 1024,
    amp: str = "auto",
    max_oom_halvings: int = 3,
    progress: bool = False,
) -> LMEval:
    """Loss, perplexity, accuracy (and bits per byte with ``n_bytes``) of ``model`` over every cached token."""
    device = next(model.parameters()).device
    amp_dtype = autocast_dtype(device, amp)
    was_training = model.training
    model.eval()
    backoff = OOMBackoff(batch_size, max_oom_halvings, "evaluation", hint=OOM_HINT)
    loss, correct, start = 0.0, 0, 0
    bar = tqdm(total=len(cache), desc="eval", unit="tok", disable=not progress, leave=False)

    def run(size: int) -> tuple[float, int, int]:
        stop = min(start + size, len(cache))
        loss_sum, hits = token_loss(model, *batch_inputs(model, cache, slice(start, stop)), ce_chunk_tokens, amp_dtype)
        return float(loss_sum), int(hits), stop - start

    try:
        while start < len(cache):
            part_loss, part_correct, done = backoff.run(run, cleanup=lambda: None)
            loss, correct, start = loss + part_loss, correct + part_correct, start + done
            bar.update(done)
    finally:
        bar.close()
        model.train(was_training)
    tokens = len(cache)
    return LMEval(loss=loss / tokens, tokens=tokens, correct=correct, tokenizer=tokenizer_name,
                  vocab_size=model.cfg.vocab_size, n_bytes=n_bytes)


# ------------------------------------------------------------------------------------------- training

def make_adam(params: Sequence[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused (one pass over each tensor: ~9x faster than the per-op loop on the 38.6M-value head) when the
    build supports it for these tensors."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def train_phase2(
    model,
    train_ids,
    val_ids,
    cfg: Phase2Config = Phase2Config(),
    tokenizer_name: str = "unknown",
    train_bytes: Optional[int] = None,
    val_bytes: Optional[int] = None,
    checkpoint_path: Union[str, Path, None] = None,
    resume: bool = False,
    progress: bool = True,
    streams: str = "concat",
    budget: Optional[MemoryBudget] = None,
    callback: Optional[Callable[[dict], None]] = None,
    before_forward: Optional[Callable[[int], None]] = None,
    epoch_callback: Optional[Callable[[dict], None]] = None,
) -> Phase2Result:
    """Train the TokenBlock and head (and the embedding when not frozen) on cached contexts; see the module doc.

    ``train_ids`` / ``val_ids``: one id sequence or a list of documents (see :func:`newllm.training.context_cache.make_streams`
    for ``streams``). ``train_bytes`` / ``val_bytes``: UTF-8 bytes of the texts, for bits per byte.
    ``budget``: the machine's memory (default: probed). ``callback(info)`` runs after every optimizer step (and
    its checkpoint); ``epoch_callback(row)`` after every evaluated epoch with its history row (an exception
    raised there, e.g. an Optuna prune, ends the run; the checkpoint is already written). ``before_forward(tokens)`` runs before every forward pass (diagnostics; raising
    ``torch.cuda.OutOfMemoryError`` there exercises the backoff). The model runs on the device it is on.
    ``resume=True`` continues from ``checkpoint_path`` (a fresh start when no file exists yet; a finished run is
    returned as it ended, with its best weights loaded); only RESUMABLE_FIELDS of the config may differ.
    """
    device = next(model.parameters()).device
    rank, world = distributed_rank_world()
    progress = progress and rank == 0
    train_streams = make_streams(train_ids, streams)
    val_streams = make_streams(val_ids, streams)
    fingerprints = {"streams": streams, "train": train_streams.fingerprint(), "val": val_streams.fingerprint(),
                    "frozen_weights": frozen_fingerprint(model, phase2_trainable_parameters(model))}
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs checkpoint_path")

    flags = {id(p): p.requires_grad for p in model.parameters()}
    caches: dict[str, Union[ContextCache, StreamedContexts]] = {}
    try:
        trainable_ids = {id(p) for p in phase2_trainable_parameters(model)}
        for param in model.parameters():
            param.requires_grad_(id(param) in trainable_ids)
        named = [(name, p) for name, p in model.named_parameters(remove_duplicate=True) if id(p) in trainable_ids]
        optimizer = make_adam([p for _, p in named], cfg.lr)
        amp_dtype = autocast_dtype(device, cfg.amp)
        scaler = grad_scaler(device, amp_dtype)
        bundle = Bundle(model, named)
        state = initial_state(cfg, fingerprints)
        if resume:
            state.update(resumed_state(checkpoint_path, bundle, optimizer, scaler, cfg, fingerprints))

        if budget is None:
            budget = MemoryBudget.probe(device, cfg.cache_dir, resident_bytes=device_bytes(model, device))
        workload = Phase2Workload.from_model(model, train_streams.n_tokens, val_streams.n_tokens)
        plan_cfg = cfg if state["batch_size"] is None else dataclasses.replace(cfg, batch_size=state["batch_size"])
        plan = plan_phase2(workload, plan_cfg, budget, checkpointing=checkpoint_path is not None)
        if progress:
            print(plan)
        state["batch_size"] = plan.batch_size
        micro = OOMBackoff(state["micro_batch_size"] or plan.micro_batch_size, cfg.max_oom_halvings,
                           "training step", halvings=state["oom_halvings"], hint=OOM_HINT)

        model.context_block.eval()
        for name, token_streams in (("train", train_streams), ("val", val_streams)):
            if plan.placement == "stream":
                caches[name] = streamed_contexts(model, token_streams, cfg.stream_window, cfg.stream_burn_in,
                                                 cfg.cache_build_tol, plan.build_batch_tokens, device, name)
                continue
            caches[name] = build_context_cache(
                model, token_streams, dtype=plan.cache_dtype, placement=plan.placement, device=device,
                cache_dir=cfg.cache_dir, method=cfg.cache_build_method, tol=cfg.cache_build_tol,
                burn_in=cfg.cache_burn_in, segment_tokens=cfg.cache_segment_tokens,
                batch_tokens=plan.build_batch_tokens, name=name, progress=progress,
            )
        loop = _Loop(model, caches, cfg, plan, state, optimizer, scaler, bundle, micro, amp_dtype, tokenizer_name,
                     train_bytes, val_bytes, checkpoint_path, progress, callback, before_forward, epoch_callback)
        with tf32_matmuls(device):
            loop.run()
        if state["best_epoch"]:
            bundle.restore_best()
        state["finished"] = True
        if checkpoint_path is not None and rank == 0:
            save(checkpoint_path, bundle, optimizer, scaler, state)
        best = state["best_eval"]
        val = LMEval(**best) if best else evaluate(model, caches["val"], tokenizer_name, val_bytes,
                                                   plan.eval_batch_size, plan.ce_chunk_tokens, cfg.amp)
        return Phase2Result(
            history=pd.DataFrame(state["history"]), best_epoch=state["best_epoch"], val=val, plan=plan,
            cache={name: cache.info() for name, cache in caches.items()}, steps=state["global_step"],
            stop_reason=state["stop_reason"], micro_batch_size=micro.size, oom_halvings=micro.halvings,
        )
    finally:
        for cache in caches.values():
            cache.close()
        for param in model.parameters():
            param.requires_grad_(flags[id(param)])


class _Loop:
    """The epoch/step loop over one set of caches; all progress lives in ``state`` (checkpointed as JSON)."""

    def __init__(self, model, caches, cfg, plan, state, optimizer, scaler, bundle, micro, amp_dtype,
                 tokenizer_name, train_bytes, val_bytes, checkpoint_path, progress, callback, before_forward,
                 epoch_callback):
        self.model, self.caches, self.cfg, self.plan, self.state = model, caches, cfg, plan, state
        self.optimizer, self.scaler, self.bundle, self.micro = optimizer, scaler, bundle, micro
        self.amp_dtype, self.tokenizer_name = amp_dtype, tokenizer_name
        self.train_bytes, self.val_bytes, self.checkpoint_path = train_bytes, val_bytes, checkpoint_path
        self.progress, self.callback, self.before_forward = progress, callback, before_forward
        self.epoch_callback = epoch_callback
        n_train = len(caches["train"])
        self.steps_per_epoch = math.ceil(n_train / state["batch_size"])
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self.scheduler = lr_scheduler(optimizer, cfg.lr, self._lr_factor, start_step=state["global_step"])
        self.rank, self.world = distributed_rank_world()
        self.step_module = step_module(model, cfg.compile)

    def _lr_factor(self, step: int) -> float:
        return lr_factor(step, self.cfg.schedule, self.total_steps)

    def _last_lr(self) -> float:
        """The LR of the last optimizer step taken (the scheduler already holds the next one)."""
        return self.cfg.lr * self._lr_factor(self.state["global_step"] - 1)

    # ---- one optimizer step, redone with a halved micro-batch on OOM
    def _part_loss(self, total: int, part: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple]:
        if self.before_forward is not None:
            self.before_forward(int(part.numel()))
        source = self.caches["train"]
        device = next(self.model.parameters()).device
        empty = part.numel() == 0  # a rank without tokens in a short last batch still joins the all-reduce
        read = torch.zeros(1, dtype=torch.int64) if empty else part  # token 0, weighted 0
        windows = source.streams.windows(read, self.model.cfg.num_input_tokens).to(device)
        # the loss comes out already divided by the step's tokens (times the ranks: the all-reduce averages),
        # so backward needs no extra pass
        loss, hits = self.step_module(source.contexts(read, torch.float32), windows,
                                      source.streams.targets[read].to(device), min(self.plan.ce_chunk_tokens, size),
                                      self.amp_dtype, 0.0 if empty else self.world / total)
        return loss, (0.0 if empty else float(loss.detach()) * total / self.world, 0 if empty else int(hits))

    def _step(self, index: torch.Tensor) -> tuple[float, int]:
        local = index.tensor_split(self.world)[self.rank] if self.world > 1 else index
        no_sync = getattr(self.step_module, "no_sync", None)
        parts = train_step(self.micro, self.optimizer, local, lambda part, size: self._part_loss(index.numel(), part, size),
                           self.cfg.grad_clip, self.scaler, self.scheduler, no_sync)
        loss, correct = 0.0, 0
        for part_loss, part_correct in parts:
            loss, correct = loss + part_loss, correct + part_correct
        if self.world > 1:
            loss, correct = all_reduce_sum([loss, correct])
            correct = int(correct)
        return loss, correct

    def _checkpoint(self) -> None:
        if self.checkpoint_path is not None and self.rank == 0:
            self.state["micro_batch_size"] = self.micro.size
            self.state["oom_halvings"] = self.micro.halvings
            save(self.checkpoint_path, self.bundle, self.optimizer, self.scaler, self.state)

    # ---- epochs
    def _budget_spent(self) -> bool:
        return self.cfg.max_steps is not None and self.state["global_step"] >= self.cfg.max_steps

    def run(self) -> None:
        """Train from ``state``'s cursor to the end (epochs, early stopping or max_steps); sets stop_reason."""
        state, cfg = self.state, self.cfg
        if state["finished"]:
            return
        while state["epoch"] < cfg.epochs:
            epoch = state["epoch"]
            batches = epoch_batches(self.caches["train"], cfg.seed, epoch, cfg.shuffle, state["batch_size"])
            sums = state["sums"]
            bar = tqdm(total=len(batches), initial=state["step_in_epoch"], desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="step", disable=not self.progress, leave=False)
            for step in range(state["step_in_epoch"], len(batches)):
                if self._budget_spent():
                    break
                began = time.perf_counter()
                index = batches[step].sort().values  # ascending reads: locality for a disk cache
                self.model.train()
                loss, correct = self._step(index)
                sums["loss"] += loss
                sums["correct"] += correct
                sums["tokens"] += int(index.numel())
                sums["seconds"] += time.perf_counter() - began
                state["step_in_epoch"] = step + 1
                state["global_step"] += 1
                if cfg.checkpoint_every_steps and state["global_step"] % cfg.checkpoint_every_steps == 0:
                    self._checkpoint()
                bar.update(1)
                bar.set_postfix(loss=f"{loss / index.numel():.3f}")
                if self.callback is not None:
                    self.callback({"epoch": epoch + 1, "step": step + 1, "global_step": state["global_step"],
                                   "loss": loss / index.numel(), "lr": self._last_lr()})
            bar.close()
            early_stop = self._end_epoch(epoch, len(batches)) if sums["tokens"] else False
            if self._budget_spent():
                state["stop_reason"] = "max_steps"
                return
            if early_stop:
                state["stop_reason"] = "early_stopping"
                return
        state["stop_reason"] = "epochs"

    def _end_epoch(self, epoch: int, n_batches: int) -> bool:
        """Evaluate, record the epoch, update the best weights; True when early stopping says stop."""
        state, cfg = self.state, self.cfg
        sums = state["sums"]
        eval_began = time.perf_counter()
        val = evaluate(self.model, self.caches["val"], self.tokenizer_name, self.val_bytes, self.plan.eval_batch_size,
                       self.plan.ce_chunk_tokens, cfg.amp, cfg.max_oom_halvings)
        eval_seconds = time.perf_counter() - eval_began
        train_loss = sums["loss"] / sums["tokens"]
        complete = state["step_in_epoch"] == n_batches
        row = {
            "epoch": epoch + 1, "steps": state["step_in_epoch"], "complete": complete,
            "train_loss": train_loss, "train_ppl": math.exp(min(train_loss, 700.0)),
            "train_acc": sums["correct"] / sums["tokens"],
            "train_bpb": (train_loss * sums["tokens"] / (self.train_bytes * math.log(2))
                          if self.train_bytes and complete else None),
            "val_loss": val.loss, "val_ppl": val.perplexity, "val_acc": val.accuracy, "val_bpb": val.bits_per_byte,
            "lr": self._last_lr(), "train_seconds": sums["seconds"],
            "eval_seconds": eval_seconds, "seconds": sums["seconds"] + eval_seconds,
            "train_tokens_per_s": sums["tokens"] / max(sums["seconds"], 1e-9),
            "eval_tokens_per_s": val.tokens / max(eval_seconds, 1e-9), "tokenizer": val.label,
        }
        state["history"].append(row)
        stopper = EarlyStopping(cfg.patience, best=_inf_if_none(state["best_val_loss"]), wait=state["bad_epochs"])
        if stopper.update(val.loss):
            state["best_val_loss"] = val.loss
            state["best_epoch"] = epoch + 1
            state["best_eval"] = {k: getattr(val, k) for k in ("loss", "tokens", "correct", "tokenizer",
                                                                "vocab_size", "n_bytes")}
            self.bundle.keep_best()
        state["bad_epochs"] = stopper.wait
        state["epoch"] = epoch + 1
        state["step_in_epoch"] = 0
        state["sums"] = {"loss": 0.0, "correct": 0, "tokens": 0, "seconds": 0.0}
        if self.progress:
            print(f"epoch {epoch + 1}: train loss {train_loss:.4f} | val {val.summary()}")
        self._checkpoint()
        if self.epoch_callback is not None:
            self.epoch_callback(dict(row))
        return stopper.should_stop


def _inf_if_none(value: Optional[float]) -> float:
    return math.inf if value is None else value

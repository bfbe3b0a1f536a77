"""Phase 1: fixed-point context learning of the ContextBlock (seed-spec 4.4-4.6, 5.2).

Each iteration takes one Adam step on the ContextBlock only (embedding, TokenBlock and head are never touched):

    Y = ContextBlock(incoming, x)                   all tokens in one batch (chunked: see accumulate_phase1_gradients)
    L = (1 - w) * mean((Y - target)^2) + w * diversity(Y),   w = dist_reg_weight
    diversity "dispersion" = -||Y - mean(Y)||_F / n      (the original's; shrinks like 1/sqrt(n))
              "dispersion_rms" = -||Y - mean(Y)||_F / sqrt(n)   (RMS distance to the mean; size-invariant)

The solvers differ only in ``incoming``, the context each token receives:
- "sequential": the exact contexts under the current weights, shifted by one (token 0 of each stream gets the zero
  start context). The original's sequential trainer detached the incoming context at every token, so its loss and
  gradients are exactly those of this one batched step: exact semantics at the price of one no-grad evaluation
  of the recurrence (newllm.recurrence) plus one batched step.
- "parallel": the previous iteration's outputs shifted by one, plus optional Gaussian noise (the original's).
  ``sweeps_per_step`` k > 1 first refines them with k - 1 Jacobi sweeps under the current weights.

Iteration 0 produces the first contexts (exact recurrence, or N(0, 0.01^2) noise) and takes no step; it counts as
an iteration, as in the original logs ("1/40"). ``target``: "previous" = the last iteration's outputs, "fixed" =
iteration 0's. Convergence: share of tokens whose mean squared change against the previous iteration is below
``convergence_threshold``; stop early once it is >= ``min_converged_ratio`` and at least ``min_iterations`` ran.

Defaults that differ from the original, each with a field to restore the original's rule
(``Phase1Config.original("B" | "C")`` sets them all): token 0 receives the zero start context
(``first_context="wrap"``: the parallel trainer's wrap-around to the previous iteration's last context;
``"carry"``: the sequential trainer starting each pass from the previous pass's last context); with several
gradient-accumulation chunks the loss and gradients equal the unchunked ones (``diversity_scope="chunk"``: the
dispersion per chunk of ``chunk_size`` tokens, the loss the mean of the chunks' losses); the result contexts are the
exact recurrence under the final weights (``final_contexts="last"``: the last parallel outputs). A non-finite loss
or gradient raises ``FloatingPointError`` instead of being skipped (no option).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Union

import pandas as pd
import torch
from tqdm.auto import tqdm

from newllm.config.training import Phase1Config
from newllm.data.corpus import CorpusSplit
from newllm.data.streams import StreamsInput, TokenStreams, make_streams
from newllm.evaluation.context_metrics import ContextMetrics, context_metrics, convergence_rate, effective_rank
from newllm.models.cvfp import ContextBlock, CVFPModel
from newllm.models.era_b import EraBBlock
from newllm.recurrence import (
    EmbeddedStreams,
    RecurrenceResult,
    default_max_rows,
    evaluate_contexts,
    forgetting_tokens,
)
from newllm.training.common import OOMBackoff, step_optimizer

RANDOM_FIRST_PASS_STD = 0.01


class Phase1ConvergenceWarning(UserWarning):
    """Phase 1 ended at its iteration cap before the convergence target."""
PHASE1_OOM_HALVINGS = 6  # rows of the recurrence / tokens per chunk can fall to 1/64 before Phase 1 gives up
FORGETTING_PROBE_TOKENS = 256  # tokens of the first training stream the forgetting length is measured on


# ------------------------------------------------------------------------------------------ losses

def diversity_term(outputs: torch.Tensor, kind: str = "dispersion") -> torch.Tensor:
    """-||Y - mean(Y)||_F / n ("dispersion") or / sqrt(n) ("dispersion_rms") for Y [n, d]."""
    n = outputs.shape[0]
    spread = torch.linalg.vector_norm(outputs - outputs.mean(dim=0, keepdim=True))
    return -spread / _diversity_scale(n, kind)


def _diversity_scale(n: int, kind: str) -> float:
    if kind == "dispersion":
        return float(n)
    if kind == "dispersion_rms":
        return math.sqrt(n)
    raise ValueError(f"diversity={kind!r}: use 'dispersion' or 'dispersion_rms'")


def phase1_loss(
    outputs: torch.Tensor, target: torch.Tensor, weight: float, diversity: str = "dispersion"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, cvfp, diversity) with loss = (1 - weight) * mean((Y - target)^2) + weight * diversity(Y)."""
    cvfp = (outputs - target).pow(2).mean()
    div = diversity_term(outputs, diversity)
    return (1.0 - weight) * cvfp + weight * div, cvfp, div


@dataclass
class StepStats:
    """What one accumulated forward/backward produced (values of the whole, unchunked loss)."""

    loss: float
    cvfp: float
    diversity: float
    outputs: torch.Tensor  # Y [n, ctx_dim], detached


def block_outputs(
    block: ContextBlock, incoming: torch.Tensor, x: torch.Tensor, token_index: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Y = block(incoming, token inputs) for a batch of rows; with ``token_index`` [n], ``x`` holds distinct token
    inputs and row i uses x[token_index[i]] (each distinct row's projection is computed once)."""
    if token_index is None:
        return block(incoming, x)
    return block.step(incoming, [p[token_index] if p.dim() == 2 else p for p in block.token_projections(x)])[-1]


def accumulate_phase1_gradients(
    block: ContextBlock,
    incoming: torch.Tensor,
    x: torch.Tensor,
    target: torch.Tensor,
    weight: float,
    diversity: str = "dispersion",
    chunk_size: Optional[int] = None,
    token_index: Optional[torch.Tensor] = None,
    scope: str = "stream",
) -> StepStats:
    """Backpropagate the Phase-1 loss of Y = block(incoming, x) into the block's ``.grad`` (accumulating).

    ``token_index`` [n]: ``x`` holds the distinct token inputs and row i uses x[token_index[i]]; the token share
    of every projection (forward, and its weight gradient) then costs distinct rows, not tokens (4,000 WikiText-2
    tokens have ~1,100 distinct ones). The token projections are computed once and backpropagated once, after all
    chunks.

    Rows are independent given ``incoming``, so chunks of ``chunk_size`` rows bound memory. The CVFP term is a sum
    over rows; the dispersion is not, so with several chunks a first no-grad pass computes mean(Y) and
    ||Y - mean(Y)||_F, and each chunk then backpropagates the exact per-row gradient
    d(-||Y - mean||_F / s)/dy_i = -(y_i - mean) / (s ||Y - mean||_F) (the mean's own dependence cancels because
    the deviations sum to zero). Loss and gradients equal the unchunked ones at the cost of one more no-grad
    forward pass.

    ``scope="chunk"``: the original's rule instead: each chunk of ``chunk_size`` rows is a loss of its own (its
    CVFP mean and its own dispersion) and the step's loss is their mean over chunks.
    """
    n = incoming.shape[0]
    if n == 0:
        raise ValueError("Phase 1 needs at least one token")
    if token_index is not None and token_index.shape != (n,):
        raise ValueError(f"token_index must have shape [{n}], got {tuple(token_index.shape)}")
    projections = block.token_projections(x)
    # leaves that collect the gradient of every chunk; one backward through the projections at the end
    leaves = [p.detach().requires_grad_() if p.dim() == 2 else p for p in projections]
    chunk = n if chunk_size is None else max(1, int(chunk_size))
    bounds = [(start, min(n, start + chunk)) for start in range(0, n, chunk)]

    def forward(s: int, e: int) -> torch.Tensor:
        rows = slice(s, e) if token_index is None else token_index[s:e]
        return block.step(incoming[s:e], [leaf[rows] if leaf.dim() == 2 else leaf for leaf in leaves])[-1]

    if scope == "chunk" and len(bounds) > 1:
        parts, totals = [], torch.zeros(3, dtype=torch.float64)
        for s, e in bounds:
            y = forward(s, e)
            loss_c, cvfp_c, div_c = phase1_loss(y, target[s:e], weight, diversity)
            parts.append(y.detach())
            values = [float(v.detach()) for v in (loss_c, cvfp_c, div_c)]
            totals += torch.tensor(values, dtype=torch.float64) / len(bounds)
            if torch.isfinite(loss_c):
                (loss_c / len(bounds)).backward()
        outputs = torch.cat(parts)
        loss, cvfp, div = totals.unbind()
    elif len(bounds) == 1:
        y = forward(0, n)
        loss, cvfp, div = phase1_loss(y, target, weight, diversity)
        outputs = y.detach()
        if torch.isfinite(loss):
            loss.backward()
    else:
        with torch.no_grad():
            outputs = torch.cat([forward(s, e) for s, e in bounds])
            loss, cvfp, div = phase1_loss(outputs, target, weight, diversity)
            mean = outputs.mean(dim=0, keepdim=True)
            spread = float(torch.linalg.vector_norm(outputs - mean))
        denominator = _diversity_scale(n, diversity) * spread
        for s, e in bounds if torch.isfinite(loss) else []:
            y = forward(s, e)
            cvfp_part = (y - target[s:e]).pow(2).sum() / outputs.numel()
            if denominator > 0:
                div_part = -(y * ((outputs[s:e] - mean) / denominator)).sum()
            else:  # all outputs equal: the norm has no gradient there (as torch's norm backward at 0)
                div_part = y.sum() * 0.0
            ((1.0 - weight) * cvfp_part + weight * div_part).backward()
    pending = [(p, leaf.grad) for p, leaf in zip(projections, leaves) if p.dim() == 2 and leaf.grad is not None]
    if pending:
        torch.autograd.backward([p for p, _ in pending], [grad for _, grad in pending])
    return StepStats(float(loss.detach()), float(cvfp.detach()), float(div.detach()), outputs)


# ------------------------------------------------------------------------------------------ token streams

def prepare_streams(
    model: CVFPModel, ids_or_streams: Union[CorpusSplit, TokenStreams, StreamsInput], streams: str = "concat"
) -> EmbeddedStreams:
    """Token inputs for Phase 1: "concat" joins all samples into one stream (as the original); "per_sample" keeps
    each sample a stream of its own, starting from a zero context (the k-token input window restarts too).
    Every token is an input (Phase 1 predicts nothing)."""
    if not isinstance(ids_or_streams, TokenStreams):
        ids_or_streams = make_streams(ids_or_streams, streams, predict=False)
    return EmbeddedStreams.of(model, ids_or_streams)


def exact_contexts(
    block: ContextBlock, streams: EmbeddedStreams, cfg: Phase1Config, initial: Optional[torch.Tensor] = None,
    backoff: Optional[OOMBackoff] = None, start: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, RecurrenceResult]:
    """Carried contexts [N, ctx_dim] of the exact recurrence under the block's current weights (no gradients);
    ``initial`` [N, ctx_dim] is a guess (e.g. the previous iteration's) the parallel methods may start from;
    ``start`` [streams, ctx_dim] the context each stream starts from (zeros when None).
    ``backoff`` (see :func:`contexts_backoff`) halves the rows of each batched step on a device OOM."""
    guess = None if initial is None else streams.to_padded(initial)

    def run(max_rows: Optional[int]) -> RecurrenceResult:
        return evaluate_contexts(
            block, streams.token_inputs(block), start, method=cfg.recurrence, tol=cfg.tol, initial=guess,
            lengths=streams.padded_lengths(), all_layers=False, max_rows=max_rows,
        )

    result = run(None) if backoff is None else backoff.run(run, cleanup=lambda: None)
    return streams.to_flat(result.final), result


def contexts_backoff(device: torch.device) -> OOMBackoff:
    """The OOM backoff of the exact recurrence: rows per batched step, halved on a device OOM."""
    return OOMBackoff(default_max_rows(device.type), PHASE1_OOM_HALVINGS, what="Phase-1 exact recurrence",
                      unit="rows",
                      hint="Use Phase1Config.recurrence='segments' (batched windows) or train on fewer tokens.")


def last_contexts(streams: EmbeddedStreams, contexts: torch.Tensor) -> torch.Tensor:
    """Each stream's last context [streams, ctx_dim] of flat contexts [N, ctx_dim]."""
    ends = torch.cumsum(torch.tensor(streams.lengths, device=contexts.device), 0) - 1
    return contexts[ends]


def incoming_contexts(streams: EmbeddedStreams, contexts: torch.Tensor,
                      first: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Incoming contexts: row i gets row i-1 of its own stream; each stream's first token gets ``first``
    [streams, ctx_dim] (zeros when None)."""
    incoming = streams.shift(contexts)
    if first is not None:
        incoming[streams.streams.starts.to(contexts.device)] = first
    return incoming


def jacobi_sweep(block: ContextBlock, streams: EmbeddedStreams, contexts: torch.Tensor) -> torch.Tensor:
    """One parallel sweep (no gradients): every token from the given contexts shifted by one."""
    with torch.no_grad():
        return block_outputs(block, streams.shift(contexts), streams.distinct, streams.token_index)


# ------------------------------------------------------------------------------------------ the trainer

@dataclass
class Phase1Result:
    """What Phase 1 produced. ``history`` has one row per iteration (iteration 0 included)."""

    history: pd.DataFrame
    contexts: torch.Tensor  # [N, ctx_dim] final train contexts (Phase1Config.final_contexts), streams concatenated
    lengths: list[int]  # tokens per stream of ``contexts``
    iterations: int  # iterations run, iteration 0 included (the original's count)
    steps: int  # optimizer steps taken (iterations - 1)
    converged: bool  # the convergence criterion was met
    stopped_early: bool  # ... before max_iterations
    train_metrics: ContextMetrics
    val_metrics: Optional[ContextMetrics]
    val_contexts: Optional[torch.Tensor]
    # tokens until the trained map forgets its start context (to cfg.tol; see recurrence.forgetting_tokens),
    # measured on the first FORGETTING_PROBE_TOKENS tokens; None when it has not forgotten by then. Segment
    # burn-ins (recurrence "segments", the context cache) need about this many tokens.
    forgetting_tokens: Optional[int]
    seconds: float  # wall time of the whole call


def _check_model(model: CVFPModel) -> list[torch.nn.Parameter]:
    block = getattr(model, "context_block", None)
    if not isinstance(block, (ContextBlock, EraBBlock)):
        raise TypeError("train_phase1 needs a CVFP model (E-architecture or era-B, with a .context_block); build one "
                        "with build_cvfp_model")
    params = [p for p in model.context_block.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the ContextBlock has no trainable parameters (all requires_grad=False)")
    return params


def _non_finite_error(iteration: int, what: str, stats: Optional[StepStats], cfg: Phase1Config) -> FloatingPointError:
    detail = "" if stats is None else f" (loss={stats.loss}, cvfp={stats.cvfp}, diversity={stats.diversity})"
    return FloatingPointError(
        f"Phase 1 iteration {iteration}: non-finite {what}{detail}. The weights were left as they were before "
        f"this step. Lower lr (now {cfg.lr}), check the token inputs for NaN/inf, or lower dist_reg_weight "
        f"(now {cfg.dist_reg_weight})."
    )


def train_phase1(
    model: CVFPModel,
    ids_or_streams: Union[CorpusSplit, TokenStreams, StreamsInput],
    cfg: Phase1Config = Phase1Config(),
    val_ids: Optional[Union[CorpusSplit, TokenStreams, StreamsInput]] = None,
    progress: bool = True,
    callback: Optional[Callable[[dict], None]] = None,
) -> Phase1Result:
    """Train the model's ContextBlock with Phase 1 (see the module docstring); returns history, contexts, metrics.

    ``ids_or_streams``: a corpus split, one stream of token ids (1-D tensor / array / list) or a list of samples
    (with ``cfg.streams="per_sample"`` each sample or document is its own stream; with "concat" they are joined;
    see :func:`newllm.data.streams.make_streams`), or ready :class:`TokenStreams`. ``val_ids`` likewise;
    validation contexts always come from the exact recurrence under the final weights. ``callback(row)`` receives
    each history row as it is recorded.
    """
    began_call = time.perf_counter()
    params = _check_model(model)
    block = model.context_block
    streams = prepare_streams(model, ids_or_streams, cfg.streams)
    device = streams.x.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    sweeps_per_step = cfg.sweeps_per_step or 1
    # a device OOM halves the chunk of the gradient step or the rows of the recurrence and redoes it (the chunked
    # loss and gradients equal the unchunked ones); the halved sizes are kept for the iterations that follow
    step_backoff = OOMBackoff(cfg.chunk_size or streams.n_tokens, PHASE1_OOM_HALVINGS, what="Phase-1 step",
                              unit="tokens", hint="Lower Phase1Config.chunk_size or train on fewer tokens.")
    recurrence_backoff = contexts_backoff(device)
    rows: list[dict] = []
    bar = tqdm(total=cfg.max_iterations, desc=f"Phase 1 ({cfg.solver})", unit="it", disable=not progress)

    def record(row: dict, outputs: torch.Tensor, iteration: int) -> None:
        metric_began = time.perf_counter()
        wants_er = cfg.er_every > 0 and iteration % cfg.er_every == 0
        row["train_er_pct"] = (
            effective_rank(outputs, cfg.er_max_rows, cfg.seed, exact=False).er_pct if wants_er else float("nan")
        )
        row["metrics_seconds"] = time.perf_counter() - metric_began
        rows.append(row)
        bar.update(1)
        bar.set_postfix(
            loss=f"{row['loss']:.4g}", conv=f"{row['converged_ratio']:.3f}", er=f"{row['train_er_pct']:.1f}"
        )
        if callback is not None:
            callback(dict(row))

    try:
        # iteration 0: the first contexts, no step
        began = time.perf_counter()
        exact_now = cfg.first_pass == "exact"  # True while ``previous`` is the exact recurrence under current weights
        if exact_now:
            previous, info = exact_contexts(block, streams, cfg, backoff=recurrence_backoff)
            method, sweeps = info.method, info.sweeps
        else:
            previous = RANDOM_FIRST_PASS_STD * torch.randn(
                streams.n_tokens, block.ctx_dim, generator=generator, device=device, dtype=streams.x.dtype
            )
            method, sweeps = "random", 0
        fixed_target = previous if cfg.target == "fixed" else None
        with torch.no_grad():
            first_div = float(diversity_term(previous, cfg.diversity))
        record(_row(0, time.perf_counter() - began, math.nan, math.nan, first_div, math.nan, math.nan, method, sweeps),
               previous, 0)

        converged = False
        iteration = 0
        for iteration in range(1, cfg.max_iterations):
            began = time.perf_counter()
            # token 0's context: zero, or the previous pass's last ("carry", sequential; "wrap", parallel)
            first = None if cfg.first_context == "zero" else last_contexts(streams, previous)
            if cfg.solver == "sequential":
                if exact_now and first is None:
                    current = previous
                    method, sweeps = "reused", 0
                else:
                    current, info = exact_contexts(block, streams, cfg, initial=previous, backoff=recurrence_backoff,
                                                   start=first)
                    method, sweeps = info.method, info.sweeps
                incoming = incoming_contexts(streams, current, first)
            else:
                current = previous
                for _ in range(sweeps_per_step - 1):
                    current = jacobi_sweep(block, streams, current)
                method, sweeps = "parallel", sweeps_per_step
                incoming = incoming_contexts(streams, current, first)
                if cfg.noise_std > 0:
                    incoming = incoming + cfg.noise_std * torch.randn(
                        incoming.shape, generator=generator, device=device, dtype=incoming.dtype
                    )
            target = fixed_target if fixed_target is not None else previous
            optimizer.zero_grad(set_to_none=True)
            stats = step_backoff.run(
                lambda chunk: accumulate_phase1_gradients(
                    block, incoming, streams.distinct, target, cfg.dist_reg_weight, cfg.diversity,
                    cfg.chunk_size if cfg.diversity_scope == "chunk" else chunk, streams.token_index,
                    cfg.diversity_scope,
                ),
                cleanup=lambda: optimizer.zero_grad(set_to_none=True),
            )
            if not math.isfinite(stats.loss):
                optimizer.zero_grad(set_to_none=True)
                raise _non_finite_error(iteration, "loss", stats, cfg)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            if not math.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                raise _non_finite_error(iteration, "gradient norm", stats, cfg)
            step_optimizer(optimizer)
            exact_now = False
            ratio = convergence_rate(stats.outputs, previous, cfg.convergence_threshold)
            previous = stats.outputs
            seconds = time.perf_counter() - began
            row = _row(iteration, seconds, stats.loss, stats.cvfp, stats.diversity, ratio, grad_norm, method, sweeps)
            record(row, previous, iteration)
            if iteration + 1 >= cfg.min_iterations and ratio >= cfg.min_converged_ratio:
                converged = True
                break
    finally:
        bar.close()
    if not converged:
        last_ratio = rows[-1].get("converged_ratio", float("nan"))
        warnings.warn(
            f"Phase 1 stopped at its cap of {cfg.max_iterations} iterations unconverged: {last_ratio:.1%} of tokens "
            f"converged, the target is {cfg.min_converged_ratio:.0%}. Its contexts are not a fixed point: raise "
            "Phase1Config.max_iterations, or read the results as those of an unconverged Phase 1.",
            Phase1ConvergenceWarning, stacklevel=2,
        )

    if cfg.final_contexts == "exact":
        contexts, _ = exact_contexts(block, streams, cfg, initial=previous, backoff=recurrence_backoff)
    else:
        contexts = previous
    train_metrics = context_metrics(contexts, streams.lengths, max_rows=cfg.er_max_rows, seed=cfg.seed)
    val_contexts, val_metrics = None, None
    if val_ids is not None:
        val_streams = prepare_streams(model, val_ids, cfg.streams)
        val_contexts, _ = exact_contexts(block, val_streams, cfg, backoff=recurrence_backoff)
        val_metrics = context_metrics(val_contexts, val_streams.lengths, max_rows=cfg.er_max_rows, seed=cfg.seed)
    probe = streams.x[: min(FORGETTING_PROBE_TOKENS, streams.lengths[0])]
    forgetting = forgetting_tokens(block, probe, cfg.tol, seed=cfg.seed)
    iterations = iteration + 1
    return Phase1Result(
        history=pd.DataFrame(rows),
        contexts=contexts,
        lengths=streams.lengths,
        iterations=iterations,
        steps=iterations - 1,
        converged=converged,
        stopped_early=converged and iterations < cfg.max_iterations,
        train_metrics=train_metrics,
        val_metrics=val_metrics,
        val_contexts=val_contexts,
        forgetting_tokens=forgetting,
        seconds=time.perf_counter() - began_call,
    )


def _row(iteration, seconds, loss, cvfp, diversity, ratio, grad_norm, method, sweeps) -> dict:
    return {
        "iteration": iteration,
        "seconds": seconds,  # solver time of the iteration (exact evaluation / sweeps + the step); metrics excluded
        "loss": loss,
        "cvfp": cvfp,
        "diversity": diversity,
        "converged_ratio": ratio,
        "grad_norm": grad_norm,  # before clipping
        "eval_method": method,  # how the incoming contexts were obtained
        "eval_sweeps": sweeps,  # sweeps / segment rounds that took
    }

"""The recurrence solvers: (a) the token loop, (b) parallel sweeps, (c) burn-in segments, and the entry points
(:func:`evaluate_contexts`, :func:`evaluate_streams`) that pick one."""

from __future__ import annotations

import math
import time
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from newllm.models.cvfp import ContextBlock
from newllm.recurrence.inputs import (
    RecurrenceResult,
    TokenInputs,
    as_token_inputs,
    empty_result,
    pad_streams,
    stored_layers,
    valid_mask,
)
from newllm.recurrence.step import LayerPlan, WindowSteps, layer_step, plan_layers, run_rows

METHODS = ("auto", "loop", "sweeps", "segments")
DEFAULT_BURN_IN = 32
_STEP_TO_ROW_COST = {"cpu": 20.0, "cuda": 2000.0}  # a/c (see the package docstring): per-step cost in rows
_DEFAULT_MAX_ROWS = {"cpu": 128, "cuda": 1024}  # rows per batched step (bounds memory per window group)


# ------------------------------------------------------------------------------------------ (a) the loop

def token_loop(block: ContextBlock, x: torch.Tensor, context: torch.Tensor) -> list[torch.Tensor]:
    """Exact recurrence over x [B, T, token_dim] from ``context`` [B, ctx_dim].

    Returns every layer's output, a list of L tensors [B, T, dim_l]; the last one at position i is the context
    carried into token i+1. Gradients flow when called under autograd (full BPTT); without autograd (no_grad /
    inference_mode, or nothing requires grad) it takes the lean path.
    """
    inputs, context = as_token_inputs(block, x, context)
    needs_graph = torch.is_grad_enabled() and (
        x.requires_grad or context.requires_grad or any(p.requires_grad for p in block.parameters())
    )
    if not needs_graph or inputs.steps == 0:
        return _loop_result(block, inputs, context, all_layers=True).contexts
    return block.run(x, context)


def _loop_result(block: ContextBlock, inputs: TokenInputs, context: torch.Tensor, all_layers: bool) -> RecurrenceResult:
    store = stored_layers(block, all_layers)
    if inputs.steps == 0:
        return empty_result(block, inputs, store, "loop", None)
    outputs, _ = run_rows(plan_layers(block), inputs.span(), context, store)
    return RecurrenceResult([outputs[layer] for layer in store], "loop", 0, 0.0)


# ------------------------------------------------------------------------------------------ (b) sweeps

def _masked_max_abs(diff: torch.Tensor, mask: Optional[torch.Tensor]) -> float:
    if diff.numel() == 0:
        return 0.0
    per_token = diff.abs().amax(dim=-1)
    if mask is not None:
        per_token = per_token * mask
    return float(per_token.max())


def parallel_sweeps(
    block: ContextBlock,
    x: Union[torch.Tensor, TokenInputs],
    context: Optional[torch.Tensor],
    tol: float = 1e-5,
    max_sweeps: Optional[int] = None,
    initial: Optional[torch.Tensor] = None,
    *,
    fallback: bool = False,
    lengths: Optional[torch.Tensor] = None,
    all_layers: bool = True,
) -> RecurrenceResult:
    """Jacobi fixed-point iteration: every token per sweep, reading the previous sweep's contexts shifted by one.

    After m sweeps the first m tokens are exact, so at most T sweeps are ever needed (and each sweep skips the
    exact prefix); iteration stops when the max-abs change of the carried contexts is <= tol, or after
    ``max_sweeps`` (after T sweeps every token is exact, whatever the last change reported). ``initial``
    [B, T, ctx_dim] is the starting guess (zeros when None). ``fallback=True`` finishes
    with the token loop (method "sweeps+loop") once the extrapolated remaining sweeps would cost more than looping
    over the tokens not yet exact; both are timed on this call's own data. Run without autograd.
    """
    if not tol > 0:
        raise ValueError(f"tol={tol} must be > 0")
    if max_sweeps is not None and max_sweeps < 1:
        raise ValueError(f"max_sweeps={max_sweeps} must be >= 1 or None")
    inputs, context = as_token_inputs(block, x, context)
    batch, steps = inputs.batch, inputs.steps
    store = stored_layers(block, all_layers)
    if steps == 0:
        return empty_result(block, inputs, store, "sweeps", lengths)
    limit = steps if max_sweeps is None else min(max_sweeps, steps)
    plans = plan_layers(block)
    projections = inputs.span()
    mask = None if lengths is None else valid_mask(lengths, steps).to(inputs.dtype)
    buffers = {layer: context.new_empty(batch, steps, block.dims[layer]) for layer in store}
    last = block.num_layers - 1
    prev = initial.clone() if initial is not None else context.new_zeros(batch, steps, block.ctx_dim)
    loop_s_per_token = _time_loop_probe(plans, projections, context) if fallback else 0.0
    change, previous_change, sweeps = float("inf"), float("inf"), 0
    while sweeps < limit:
        start = sweeps  # tokens before `start` are exact already
        began = time.perf_counter()
        incoming = prev[:, start - 1 : steps - 1] if start > 0 else torch.cat([context[:, None], prev[:, :-1]], dim=1)
        c = incoming.reshape(-1, block.ctx_dim)
        new_final = None
        for layer, plan in enumerate(plans):
            proj = projections[layer]
            c = layer_step(plan, c, proj[:, start:].reshape(-1, proj.shape[-1]) if proj.dim() == 3 else proj)
            if layer in buffers:
                buffers[layer][:, start:] = c.view(batch, steps - start, -1)
            if layer == last:
                new_final = c.view(batch, steps - start, -1)
        change = _masked_max_abs(new_final - prev[:, start:], None if mask is None else mask[:, start:])
        prev[:, start:] = new_final
        sweeps += 1
        if change <= tol:
            break
        sweep_seconds = time.perf_counter() - began
        if fallback and sweeps >= 2 and sweeps < steps:
            remaining = _remaining_sweeps(change, previous_change, tol, steps - sweeps)
            if remaining * sweep_seconds > (steps - sweeps) * loop_s_per_token:
                tail, _ = run_rows(plans, [p[:, sweeps:] if p.dim() == 3 else p for p in projections],
                                    prev[:, sweeps - 1], store)
                for layer in store:
                    buffers[layer][:, sweeps:] = tail[layer]
                return RecurrenceResult([buffers[layer] for layer in store], "sweeps+loop", sweeps, 0.0, lengths)
        previous_change = change
    return RecurrenceResult([buffers[layer] for layer in store], "sweeps", sweeps, change, lengths)


def _remaining_sweeps(change: float, previous_change: float, tol: float, cap: int) -> int:
    """Sweeps still needed if the change keeps shrinking by the last observed ratio (the cap when it does not)."""
    ratio = change / previous_change if previous_change > 0 else 1.0
    if not 0 < ratio < 1:
        return cap
    return min(cap, max(1, math.ceil(math.log(tol / change) / math.log(ratio))))


def _time_loop_probe(plans: Sequence[LayerPlan], projections: Sequence[torch.Tensor], context: torch.Tensor) -> float:
    """Seconds per token of the token loop: the faster of two runs over the first few tokens (the first run also
    pays for cold caches), a small discarded cost."""
    probe = min(16, next((p.shape[1] for p in projections if p.dim() == 3), 1))
    head = [p[:, :probe] if p.dim() == 3 else p for p in projections]
    best = float("inf")
    for _ in range(2):
        _synchronize(context.device)  # CUDA kernels run asynchronously: time them, not their launch
        began = time.perf_counter()
        run_rows(plans, head, context, [])
        _synchronize(context.device)
        best = min(best, time.perf_counter() - began)
    return best / probe


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ (c) segments

def default_max_rows(device_type: str) -> int:
    """Rows per batched step of the segments method when not given (bounds the memory of one window group)."""
    return _DEFAULT_MAX_ROWS.get(device_type, _DEFAULT_MAX_ROWS["cpu"])


def auto_segment_len(tokens: int, burn_in: int, device_type: str = "cpu") -> int:
    """Segment length minimising (L + burn_in) * (a + c * tokens / L): L = sqrt(burn_in * tokens * c / a).

    Capped at 4 * burn_in: beyond it the burn-in overhead is <= 25 % and longer windows only cost memory (windows
    beyond ``max_rows`` run in successive groups at the same cost per token).
    """
    ratio = _STEP_TO_ROW_COST.get(device_type, _STEP_TO_ROW_COST["cpu"])
    best = math.ceil(math.sqrt(max(burn_in, 1) * tokens / ratio))
    return max(1, min(best, 4 * max(burn_in, 1)))


def segment_contexts(
    block: ContextBlock,
    x: Union[torch.Tensor, TokenInputs],
    context: Optional[torch.Tensor],
    tol: float = 1e-5,
    *,
    burn_in: int = DEFAULT_BURN_IN,
    segment_len: Optional[int] = None,
    max_rows: Optional[int] = None,
    initial: Optional[torch.Tensor] = None,
    lengths: Optional[torch.Tensor] = None,
    all_layers: bool = True,
    max_rounds: int = 2,
) -> RecurrenceResult:
    """Windows of each stream evaluated as one batch of token loops, then block-Jacobi rounds to tol.

    Window k covers positions [k*L, k*L + L + burn_in): window 0 starts from ``context`` and keeps all of them;
    window k >= 1 starts from a zero context (or ``initial[:, k*L - 1]``), uses its first ``burn_in`` tokens to
    forget that start and keeps the next L. The state it reached just before its kept segment is compared with
    the previous window's value there; windows whose max-abs mismatch exceeds tol are re-run from that value,
    all at once, for up to ``max_rounds`` rounds in all (``sweeps`` counts them, 1 = none needed). Windows still
    off after that (a map that forgets slower than burn_in) are finished one after the other in stream order,
    re-running only those whose start is off (method "segments+loop"); this never costs more than a token loop,
    where rounds alone could need as many rounds as windows. Run without autograd.
    """
    if not tol > 0:
        raise ValueError(f"tol={tol} must be > 0")
    if burn_in < 0:
        raise ValueError(f"burn_in={burn_in} must be >= 0")
    if segment_len is not None and segment_len < 1:
        raise ValueError(f"segment_len={segment_len} must be >= 1 or None (automatic)")
    if max_rounds < 1:
        raise ValueError(f"max_rounds={max_rounds} must be >= 1")
    inputs, context = as_token_inputs(block, x, context)
    batch, steps = inputs.batch, inputs.steps
    device_type = inputs.device.type
    max_rows = max_rows or default_max_rows(device_type)
    seg = segment_len or auto_segment_len(batch * steps, burn_in, device_type)
    width = seg + burn_in
    store = stored_layers(block, all_layers)
    plans = plan_layers(block)
    if steps == 0:
        return empty_result(block, inputs, store, "segments", lengths)
    if steps <= width:  # one window per stream: a plain batched loop, exact
        outputs, _ = run_rows(plans, inputs.span(), context, store)
        return RecurrenceResult([outputs[layer] for layer in store], "segments", 1, 0.0, lengths)

    windows = 1 + math.ceil((steps - width) / seg)
    padded = (windows - 1) * seg + width
    last = block.num_layers - 1
    keep = sorted(set(store) | {last})
    buffers = {layer: context.new_empty(batch, padded, block.dims[layer]) for layer in keep}
    assumed = context.new_zeros(batch, windows, block.ctx_dim)  # state each window assumed entering its segment
    group = max(1, max_rows // batch)
    for first in range(0, windows, group):
        stop = min(windows, first + group)
        count = stop - first
        span = inputs.span(first * seg, (stop - 1) * seg + width)
        window_steps = [p if p.dim() == 1 else WindowSteps(p, seg, count) for p in span]
        start = _window_starts(block, context, initial, first, stop, seg, batch)
        outputs, captured = run_rows(plans, window_steps, start, keep, steps=width, capture_step=burn_in - 1)
        for layer in keep:
            out = outputs[layer].view(batch, count, width, -1)
            if first == 0:
                buffers[layer][:, :width] = out[:, 0]
            later = max(first, 1)
            if later < stop:
                kept = out[:, later - first :, burn_in:].reshape(batch, -1, out.shape[-1])
                buffers[layer][:, later * seg + burn_in : stop * seg + burn_in] = kept
        assumed[:, first:stop] = captured.view(batch, count, -1)

    valid_window = None
    if lengths is not None:  # windows whose kept segment starts past a padded stream's end are never checked
        kept_start = torch.arange(windows, device=inputs.device) * seg + burn_in
        valid_window = kept_start[None, :] < lengths[:, None]
    rounds = 1
    mismatch = _boundary_mismatch(buffers[last], assumed, seg, burn_in, valid_window)
    rerun = _WindowRerun(plans, inputs, buffers, keep, last, seg, burn_in, max_rows)
    while bool((mismatch > tol).any()) and rounds < max_rounds:
        rows, ks = (mismatch > tol).nonzero(as_tuple=True)
        assumed[rows, ks] = rerun(rows, ks)
        rounds += 1
        mismatch = _boundary_mismatch(buffers[last], assumed, seg, burn_in, valid_window)
    method = "segments"
    if bool((mismatch > tol).any()):
        # what is still wrong needs chains of windows: finish window by window in stream order (all streams
        # together), re-running only windows whose start is off; this costs at most one token loop
        method = "segments+loop"
        for k in range(1, windows):
            rows = (mismatch[:, k] > tol).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            assumed[rows, k] = rerun(rows, torch.full_like(rows, k))
            mismatch[rows, k] = 0.0
            if k + 1 < windows:
                before = (k + 1) * seg + burn_in - 1
                change = (assumed[rows, k + 1] - buffers[last][rows, before]).abs().amax(dim=-1)
                mismatch[rows, k + 1] = change if valid_window is None else change * valid_window[rows, k + 1]
    residual = float(mismatch.max()) if mismatch.numel() else 0.0
    return RecurrenceResult([buffers[layer][:, :steps] for layer in store], method, rounds, residual, lengths)


class _WindowRerun:
    """Re-runs the kept segment of given (stream, window) pairs from the value just before it, in place."""

    def __init__(self, plans, inputs, buffers, keep, last, seg, burn_in, max_rows):
        self.plans, self.inputs, self.buffers = plans, inputs, buffers
        self.keep, self.last, self.seg, self.burn_in, self.max_rows = keep, last, seg, burn_in, max_rows

    def __call__(self, rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
        """Returns the start states used, [len(rows), ctx_dim]."""
        starts = ks * self.seg + self.burn_in
        used = []
        for chunk in range(0, rows.numel(), self.max_rows):
            r, s = rows[chunk : chunk + self.max_rows], starts[chunk : chunk + self.max_rows]
            positions = s[:, None] + torch.arange(self.seg, device=s.device)[None, :]
            state = self.buffers[self.last][r, s - 1]
            projections = self.inputs.gather(r, positions)
            outputs, _ = run_rows(self.plans, projections, state, self.keep)
            for layer in self.keep:
                self.buffers[layer][r[:, None], positions] = outputs[layer]
            used.append(state)
        return torch.cat(used)


def _window_starts(
    block: ContextBlock,
    context: torch.Tensor,
    initial: Optional[torch.Tensor],
    first: int,
    stop: int,
    seg: int,
    batch: int,
) -> torch.Tensor:
    """Start states [B * count, ctx_dim] for windows first..stop-1 (window 0 from ``context``)."""
    count = stop - first
    starts = context.new_zeros(batch, count, block.ctx_dim)
    if initial is not None:
        ks = torch.arange(max(first, 1), stop, device=context.device)
        starts[:, max(first, 1) - first :] = initial[:, ks * seg - 1]
    if first == 0:
        starts[:, 0] = context
    return starts.reshape(batch * count, block.ctx_dim)


def _boundary_mismatch(
    final: torch.Tensor, assumed: torch.Tensor, seg: int, burn_in: int, valid_window: Optional[torch.Tensor]
) -> torch.Tensor:
    """[B, windows] max-abs difference between the state window k assumed and the value before its segment."""
    windows = assumed.shape[1]
    mismatch = torch.zeros(assumed.shape[:2], dtype=assumed.dtype, device=assumed.device)
    if windows > 1:
        before = torch.arange(1, windows, device=final.device) * seg + burn_in - 1
        mismatch[:, 1:] = (assumed[:, 1:] - final[:, before]).abs().amax(dim=-1)
    if valid_window is not None:
        mismatch = mismatch * valid_window
    return mismatch


def forgetting_tokens(
    block: ContextBlock, x: torch.Tensor, tol: float = 1e-5, starts: int = 4, seed: int = 0
) -> Optional[int]:
    """Tokens until the context forgets where it started: the first position i of the stream x [T, token_dim] at
    which trajectories from a zero context and from ``starts`` random LayerNorm-ed contexts all agree to tol
    (max-abs); None when they still differ at the end of x. The burn-in a segment needs is about this long.
    """
    if x.dim() != 2:
        raise ValueError(f"forgetting_tokens expects one stream x of shape [tokens, token_dim], got {tuple(x.shape)}")
    generator = torch.Generator().manual_seed(seed)
    random_starts = torch.randn(starts, block.ctx_dim, generator=generator).to(x.device, x.dtype)
    state = torch.cat([x.new_zeros(1, block.ctx_dim), F.layer_norm(random_starts, (block.ctx_dim,))])
    rows = x[None].expand(starts + 1, -1, -1)
    with torch.no_grad():
        final = run_rows(plan_layers(block), block.token_projections(rows), state, [block.num_layers - 1])[0]
    spread = (final[block.num_layers - 1] - final[block.num_layers - 1][:1]).abs().amax(dim=(0, 2))
    settled = (spread <= tol).nonzero()
    return int(settled[0]) + 1 if settled.numel() else None


# ------------------------------------------------------------------------------------------ entry points

def evaluate_contexts(
    block: ContextBlock,
    x: Union[torch.Tensor, TokenInputs],
    context: Optional[torch.Tensor] = None,
    method: str = "auto",
    tol: float = 1e-5,
    max_sweeps: Optional[int] = None,
    *,
    initial: Optional[torch.Tensor] = None,
    lengths: Optional[torch.Tensor] = None,
    all_layers: bool = True,
    fallback: bool = True,
    burn_in: int = DEFAULT_BURN_IN,
    segment_len: Optional[int] = None,
    max_rows: Optional[int] = None,
    max_rounds: int = 2,
) -> RecurrenceResult:
    """Evaluate the recurrence without gradients over x [B, T, token_dim] (or a :class:`TokenInputs`) from
    ``context`` [B, ctx_dim] (zeros when None).

    method: "loop" (exact token loop), "sweeps" (parallel fixed-point iteration to ``tol``; with ``fallback`` it
    finishes with the loop when that is cheaper), "segments" (batched overlapping windows, fixed point to ``tol``)
    or "auto" (= "segments", see the module docstring). ``initial`` [B, T, ctx_dim]: a guess of the contexts (e.g.
    the previous iteration's) used as the sweeps' start or the windows' start states. ``lengths`` [B]: valid tokens
    per padded stream. ``all_layers=False`` keeps only the carried context (saves memory and copies).
    ``burn_in``, ``segment_len``, ``max_rows``, ``max_rounds``: see :func:`segment_contexts`.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {', '.join(repr(m) for m in METHODS)}")
    if not tol > 0:
        raise ValueError(f"tol={tol} must be > 0")
    with torch.no_grad():
        inputs, context = as_token_inputs(block, x, context)
        if method == "loop":
            result = _loop_result(block, inputs, context, all_layers)
        elif method == "sweeps":
            result = parallel_sweeps(
                block, inputs, context, tol=tol, max_sweeps=max_sweeps, initial=initial, fallback=fallback,
                lengths=lengths, all_layers=all_layers,
            )
        else:
            result = segment_contexts(
                block, inputs, context, tol=tol, burn_in=burn_in, segment_len=segment_len, max_rows=max_rows,
                initial=initial, lengths=lengths, all_layers=all_layers, max_rounds=max_rounds,
            )
    result.lengths = lengths
    return result


def evaluate_streams(
    block: ContextBlock, xs: Sequence[torch.Tensor], method: str = "auto", tol: float = 1e-5, **kwargs
) -> RecurrenceResult:
    """Independent streams [T_i, token_dim], each from a zero context, evaluated as one padded batch.

    Returns a result with ``lengths`` set; ``result.flat()`` gives the valid contexts concatenated [sum T_i, d].
    Keyword arguments go to :func:`evaluate_contexts`.
    """
    batch, lengths = pad_streams(xs)
    return evaluate_contexts(block, batch, None, method=method, tol=tol, lengths=lengths, **kwargs)

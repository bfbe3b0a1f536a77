"""Entry points: evaluate one or many streams with the chosen method."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from newllm.models.cvfp import ContextBlock
from newllm.recurrence.inputs import DEFAULT_BURN_IN, METHODS, RecurrenceResult, TokenInputs, _as_inputs, pad_streams
from newllm.recurrence.solvers import _loop_result, parallel_sweeps, segment_contexts

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
        inputs, context = _as_inputs(block, x, context)
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

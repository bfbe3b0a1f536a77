"""Evaluating the context recurrence c_i = ContextBlock(c_{i-1}, x_i) over token streams.

``token_loop`` is the reference: exact, token by token, with each layer's token share of the input projection
computed for all tokens at once (only the context share runs per token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from newllm.model import ContextBlock


def token_loop(block: ContextBlock, x: torch.Tensor, context: torch.Tensor) -> list[torch.Tensor]:
    """Exact recurrence over x [B, T, token_dim] from ``context`` [B, ctx_dim].

    Returns every layer's output, a list of L tensors [B, T, dim_l]; the last one at position i is the context
    carried into token i+1. Gradients flow when called under autograd (full BPTT).
    """
    if x.dim() != 3:
        raise ValueError(f"token_loop expects x of shape [batch, tokens, token_dim], got {tuple(x.shape)}")
    projections = block.token_projections(x)
    outputs: list[list[torch.Tensor]] = [[] for _ in range(block.num_layers)]
    c = context
    for i in range(x.shape[1]):
        step_proj = [p[:, i] if p.dim() == 3 else p for p in projections]
        layer_outputs = block.step(c, step_proj)
        for store, out in zip(outputs, layer_outputs):
            store.append(out)
        c = layer_outputs[-1]
    if x.shape[1] == 0:
        return [x.new_zeros(x.shape[0], 0, dim) for dim in block.dims]
    return [torch.stack(store, dim=1) for store in outputs]


@dataclass
class RecurrenceResult:
    """Per-layer contexts [B, T, dim_l] of a stream evaluation and how they were obtained."""

    contexts: list[torch.Tensor]
    method: str  # "loop" or "sweeps"
    sweeps: int  # parallel sweeps used (0 for the token loop)
    max_abs_change: float  # last sweep's max-abs change (0.0 for the token loop)

    @property
    def final(self) -> torch.Tensor:
        """The carried context after each token, [B, T, ctx_dim]."""
        return self.contexts[-1]


def parallel_sweeps(
    block: ContextBlock,
    x: torch.Tensor,
    context: torch.Tensor,
    tol: float = 1e-5,
    max_sweeps: Optional[int] = None,
    initial: Optional[torch.Tensor] = None,
) -> RecurrenceResult:
    """Jacobi fixed-point iteration: every token per sweep, reading the previous sweep's contexts shifted by one.

    After m sweeps the first m tokens are exact, so at most T sweeps are ever needed; iteration stops when the
    max-abs change of the carried contexts is <= tol.
    """
    if tol <= 0:
        raise ValueError(f"tol={tol} must be > 0")
    batch, steps, _ = x.shape
    limit = steps if max_sweeps is None else min(max_sweeps, steps)
    projections = block.token_projections(x)
    prev = initial if initial is not None else x.new_zeros(batch, steps, block.ctx_dim)
    outputs: list[torch.Tensor] = []
    change = float("inf")
    sweeps = 0
    while sweeps < max(limit, 1):
        incoming = torch.cat([context[:, None, :], prev[:, :-1]], dim=1)
        outputs = block.step(incoming, projections)
        change = float((outputs[-1] - prev).abs().max()) if steps else 0.0
        prev = outputs[-1]
        sweeps += 1
        if change <= tol:
            break
    return RecurrenceResult(outputs, "sweeps", sweeps, change)


def evaluate_contexts(
    block: ContextBlock,
    x: torch.Tensor,
    context: Optional[torch.Tensor] = None,
    method: str = "auto",
    tol: float = 1e-5,
    max_sweeps: Optional[int] = None,
) -> RecurrenceResult:
    """Evaluate the recurrence without gradients over x [B, T, token_dim] from ``context`` (zeros when None).

    method: "loop" (exact token loop), "sweeps" (parallel fixed-point iteration to ``tol``), or "auto".
    """
    if method not in ("auto", "loop", "sweeps"):
        raise ValueError(f"method={method!r}: use 'auto', 'loop' or 'sweeps'")
    if context is None:
        context = x.new_zeros(x.shape[0], block.ctx_dim)
    with torch.no_grad():
        if method == "sweeps" or (method == "auto" and x.device.type == "cuda"):
            return parallel_sweeps(block, x, context, tol=tol, max_sweeps=max_sweeps)
        return RecurrenceResult(token_loop(block, x, context), "loop", 0, 0.0)

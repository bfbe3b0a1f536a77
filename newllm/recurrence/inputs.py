"""Token inputs and the lean batched step the recurrence solvers share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from newllm.models.cvfp import ContextBlock

METHODS = ("auto", "loop", "sweeps", "segments")
DEFAULT_BURN_IN = 32
_STEP_TO_ROW_COST = {"cpu": 20.0, "cuda": 2000.0}  # a/c above: per-step fixed cost in units of one row's cost
_DEFAULT_MAX_ROWS = {"cpu": 128, "cuda": 1024}  # rows per batched step (bounds memory per window group)


@dataclass
class RecurrenceResult:
    """Per-layer contexts [B, T, dim_l] of a stream evaluation and how they were obtained."""

    contexts: list[torch.Tensor]  # every layer's output (only the last layer's when all_layers=False)
    method: str  # "loop", "sweeps", "sweeps+loop", "segments" or "segments+loop" (+loop: finished by the loop)
    sweeps: int  # parallel passes: Jacobi sweeps, or segment rounds (1 = no window re-run); 0 for the loop
    max_abs_change: float  # residual at the stop: last sweep's change / largest boundary mismatch; 0.0 for the loop
    lengths: Optional[torch.Tensor] = None  # valid tokens per stream when the streams were padded

    @property
    def final(self) -> torch.Tensor:
        """The carried context after each token, [B, T, ctx_dim]."""
        return self.contexts[-1]

    def flat(self, layer: int = -1) -> torch.Tensor:
        """One layer's outputs for the valid tokens of all streams, concatenated in stream order: [N, dim]."""
        out = self.contexts[layer]
        if self.lengths is None:
            return out.reshape(-1, out.shape[-1])
        return out[valid_mask(self.lengths, out.shape[1])]


def valid_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, steps] bool: True where position < the stream's length."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def pad_streams(xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-stream token inputs [T_i, d] into a zero-padded [B, T_max, d] batch and their lengths [B]."""
    if len(xs) == 0:
        raise ValueError("pad_streams needs at least one stream")
    if any(x.dim() != 2 for x in xs):
        raise ValueError("pad_streams expects per-stream token inputs of shape [tokens, token_dim]")
    lengths = torch.tensor([x.shape[0] for x in xs], device=xs[0].device)
    batch = xs[0].new_zeros(len(xs), int(lengths.max()), xs[0].shape[1])
    for row, x in enumerate(xs):
        batch[row, : x.shape[0]] = x
    return batch, lengths


# ------------------------------------------------------------------------------------------ the lean step

@dataclass(frozen=True)
class _LayerPlan:
    """One ContextLayer's weights laid out for repeated no-grad steps."""

    w_ctx_t: torch.Tensor  # context share of the input projection, transposed and contiguous: [in, out]
    residual_weight: Optional[torch.Tensor]  # None: identity residual
    residual_bias: Optional[torch.Tensor]
    norm_shape: tuple[int, ...]
    norm_weight: Optional[torch.Tensor]
    norm_bias: Optional[torch.Tensor]
    eps: float


def _plan(block: ContextBlock) -> list[_LayerPlan]:
    plans = []
    for layer in block.layers:
        weight = layer.linear.weight.detach()
        residual = layer.residual if isinstance(layer.residual, torch.nn.Linear) else None
        plans.append(
            _LayerPlan(
                w_ctx_t=weight[:, : layer.in_dim].t().contiguous(),
                residual_weight=None if residual is None else residual.weight.detach(),
                residual_bias=None if residual is None or residual.bias is None else residual.bias.detach(),
                norm_shape=tuple(layer.norm.normalized_shape),
                norm_weight=None if layer.norm.weight is None else layer.norm.weight.detach(),
                norm_bias=None if layer.norm.bias is None else layer.norm.bias.detach(),
                eps=layer.norm.eps,
            )
        )
    return plans


def _layer_step(plan: _LayerPlan, c: torch.Tensor, token_proj: torch.Tensor) -> torch.Tensor:
    """LN( R(c) + ReLU(W_c c + token_proj) ) for rows c [R, in] (no autograd)."""
    pre = torch.addmm(token_proj, c, plan.w_ctx_t)
    pre.relu_()
    if plan.residual_weight is None:
        pre.add_(c)
    else:
        pre.add_(F.linear(c, plan.residual_weight, plan.residual_bias))
    return F.layer_norm(pre, plan.norm_shape, plan.norm_weight, plan.norm_bias, plan.eps)


class _WindowSteps:
    """Token projections at one step of ``count`` windows spaced ``seg`` apart in proj [B, len, out]: [B*count, out].

    Window k's step r is position k*seg + r, so each step is a strided view (a copy only when B > 1): the
    projections of overlapping windows are computed once, not once per window.
    """

    def __init__(self, proj: torch.Tensor, seg: int, count: int):
        self.proj, self.seg, self.count = proj, seg, count

    def __getitem__(self, step: int) -> torch.Tensor:
        view = self.proj[:, step : step + (self.count - 1) * self.seg + 1 : self.seg]
        return view[0] if view.shape[0] == 1 else view.reshape(-1, view.shape[-1])


def _run_rows(
    plans: Sequence[_LayerPlan],
    projections: Sequence,
    state: torch.Tensor,
    store: Sequence[int],
    steps: Optional[int] = None,
    capture_step: Optional[int] = None,
) -> tuple[dict[int, torch.Tensor], Optional[torch.Tensor]]:
    """Token loops over R independent rows at once (no autograd).

    projections[l] is [R, W, out_l], a _WindowSteps, or a bias [out_l] (a layer without token input); state is
    [R, ctx_dim]. Returns the outputs [R, W, out_l] of the layers in ``store`` and the carried state after step
    ``capture_step`` (-1: the initial state).
    """
    if steps is None:
        steps = next(p.shape[1] for p in projections if isinstance(p, torch.Tensor) and p.dim() == 3)
    rows = state.shape[0]
    outputs = {layer: state.new_empty(rows, steps, plans[layer].w_ctx_t.shape[1]) for layer in store}
    out_steps = {layer: out.unbind(1) for layer, out in outputs.items()}
    proj_steps = [
        p if isinstance(p, _WindowSteps) else (p.unbind(1) if p.dim() == 3 else None) for p in projections
    ]
    captured = state if capture_step == -1 else None
    c = state
    for step in range(steps):
        for layer, plan in enumerate(plans):
            views = proj_steps[layer]
            c = _layer_step(plan, c, projections[layer] if views is None else views[step])
            if layer in out_steps:
                out_steps[layer][step].copy_(c)
        if step == capture_step:
            captured = c
    return outputs, captured


def _stored_layers(block: ContextBlock, all_layers: bool) -> list[int]:
    return list(range(block.num_layers)) if all_layers else [block.num_layers - 1]


class TokenInputs:
    """The token inputs of B streams of T tokens, as the recurrence reads them: per-layer token projections.

    ``TokenInputs(block, x)`` with x [B, T, token_dim]; or ``TokenInputs(block, rows, index)`` with the distinct
    inputs rows [U, token_dim] and index [B, T] (stream b's token i is rows[index[b, i]]): the token share of each
    layer's projection is then computed once per distinct row (4,000 WikiText-2 tokens have ~1,100 distinct ones).
    Positions at or beyond T, and index entries equal to U, read a zero input (padding).
    """

    def __init__(self, block: ContextBlock, x: torch.Tensor, index: Optional[torch.Tensor] = None):
        if index is None and x.dim() != 3:
            raise ValueError(f"expected token inputs x of shape [batch, tokens, token_dim], got {tuple(x.shape)}")
        if index is not None and (x.dim() != 2 or index.dim() != 2):
            raise ValueError(
                f"distinct inputs need rows [U, token_dim] and index [batch, tokens], got {tuple(x.shape)} and "
                f"{tuple(index.shape)}"
            )
        if x.shape[-1] != block.token_dim:
            raise ValueError(f"x has token_dim {x.shape[-1]} but the ContextBlock expects {block.token_dim}")
        self.block, self.x, self.index = block, x, index
        self.batch, self.steps = (x.shape[0], x.shape[1]) if index is None else tuple(index.shape)
        self.dtype, self.device = x.dtype, x.device
        self._row_projections = None
        if index is not None:  # the zero row at index U stands for positions past the end
            rows = torch.cat([x, x.new_zeros(1, x.shape[-1])])
            self._row_projections = block.token_projections(rows)

    def span(self, start: int = 0, stop: Optional[int] = None) -> list[torch.Tensor]:
        """Per layer, the projections of positions [start, stop) of every stream: [B, stop - start, out]."""
        stop = self.steps if stop is None else stop
        real = max(0, min(stop, self.steps) - start)
        pad = stop - start - real
        if self.index is None:
            x = self.x[:, start : start + real]
            return self.block.token_projections(F.pad(x, (0, 0, 0, pad)) if pad else x)
        index = self.index[:, start : start + real]
        if pad:
            index = F.pad(index, (0, pad), value=self.x.shape[0])
        return [p[index] if p.dim() == 2 else p for p in self._row_projections]

    def gather(self, rows: torch.Tensor, positions: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the projections at positions [R, L] of streams rows [R]: [R, L, out]."""
        past_end = positions >= self.steps
        clamped = positions.clamp(max=self.steps - 1)
        if self.index is None:
            x = self.x[rows[:, None], clamped]
            return self.block.token_projections(x.masked_fill(past_end[..., None], 0.0))
        index = self.index[rows[:, None], clamped].masked_fill(past_end, self.x.shape[0])
        return [p[index] if p.dim() == 2 else p for p in self._row_projections]


def _as_inputs(block: ContextBlock, x, context: Optional[torch.Tensor]) -> tuple[TokenInputs, torch.Tensor]:
    inputs = x if isinstance(x, TokenInputs) else TokenInputs(block, x)
    if context is None:
        context = torch.zeros(inputs.batch, block.ctx_dim, dtype=inputs.dtype, device=inputs.device)
    if tuple(context.shape) != (inputs.batch, block.ctx_dim):
        raise ValueError(
            f"context has shape {tuple(context.shape)}, expected [batch={inputs.batch}, ctx_dim={block.ctx_dim}]"
        )
    return inputs, context


def _empty(block: ContextBlock, inputs: TokenInputs, store: Sequence[int], method: str, lengths) -> RecurrenceResult:
    contexts = [torch.zeros(inputs.batch, 0, block.dims[layer], dtype=inputs.dtype, device=inputs.device)
                for layer in store]
    return RecurrenceResult(contexts, method, 0, 0.0, lengths)

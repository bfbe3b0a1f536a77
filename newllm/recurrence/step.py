"""The lean batched step of the recurrence (no autograd): R independent rows advanced token by token.

Each layer's weights are laid out once (:func:`plan_layers`: the context share of the input projection transposed
and contiguous), so a step is one ``addmm``, an in-place ReLU and residual, and a LayerNorm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from newllm.models.cvfp import ContextBlock


@dataclass(frozen=True)
class LayerPlan:
    """One ContextLayer's weights laid out for repeated no-grad steps."""

    w_ctx_t: torch.Tensor  # context share of the input projection, transposed and contiguous: [in, out]
    residual_weight: Optional[torch.Tensor]  # None: identity residual
    residual_bias: Optional[torch.Tensor]
    norm_shape: tuple[int, ...]
    norm_weight: Optional[torch.Tensor]
    norm_bias: Optional[torch.Tensor]
    eps: float

    @property
    def out_dim(self) -> int:
        return self.w_ctx_t.shape[1]


def plan_layers(block: ContextBlock) -> list[LayerPlan]:
    own = getattr(block, "lean_plans", None)
    if own is not None:  # a block of another layer kind steps its own layers (models/era_b.py)
        return own()
    plans = []
    for layer in block.layers:
        weight = layer.linear.weight.detach()
        residual = layer.residual if isinstance(layer.residual, torch.nn.Linear) else None
        plans.append(
            LayerPlan(
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


def layer_step(plan: LayerPlan, c: torch.Tensor, token_proj: torch.Tensor) -> torch.Tensor:
    """LN( R(c) + ReLU(W_c c + token_proj) ) for rows c [R, in] (no autograd)."""
    if not isinstance(plan, LayerPlan):
        return plan.step(c, token_proj)
    pre = torch.addmm(token_proj, c, plan.w_ctx_t)
    pre.relu_()
    if plan.residual_weight is None:
        pre.add_(c)
    else:
        pre.add_(F.linear(c, plan.residual_weight, plan.residual_bias))
    return F.layer_norm(pre, plan.norm_shape, plan.norm_weight, plan.norm_bias, plan.eps)


class WindowSteps:
    """Token projections at one step of ``count`` windows spaced ``seg`` apart in proj [B, len, out]: [B*count, out].

    Window k's step r is position k*seg + r, so each step is a strided view (a copy only when B > 1): the
    projections of overlapping windows are computed once, not once per window.
    """

    def __init__(self, proj: torch.Tensor, seg: int, count: int):
        self.proj, self.seg, self.count = proj, seg, count

    def __getitem__(self, step: int) -> torch.Tensor:
        view = self.proj[:, step : step + (self.count - 1) * self.seg + 1 : self.seg]
        return view[0] if view.shape[0] == 1 else view.reshape(-1, view.shape[-1])


def run_rows(
    plans: Sequence[LayerPlan],
    projections: Sequence,
    state: torch.Tensor,
    store: Sequence[int],
    steps: Optional[int] = None,
    capture_step: Optional[int] = None,
) -> tuple[dict[int, torch.Tensor], Optional[torch.Tensor]]:
    """Token loops over R independent rows at once (no autograd).

    projections[l] is [R, W, out_l], a WindowSteps, or a bias [out_l] (a layer without token input); state is
    [R, ctx_dim]. Returns the outputs [R, W, out_l] of the layers in ``store`` and the carried state after step
    ``capture_step`` (-1: the initial state).
    """
    if steps is None:
        steps = next(p.shape[1] for p in projections if isinstance(p, torch.Tensor) and p.dim() == 3)
    rows = state.shape[0]
    outputs = {layer: state.new_empty(rows, steps, plans[layer].out_dim) for layer in store}
    out_steps = {layer: out.unbind(1) for layer, out in outputs.items()}
    proj_steps = [
        p if isinstance(p, WindowSteps) else (p.unbind(1) if p.dim() == 3 else None) for p in projections
    ]
    captured = state if capture_step == -1 else None
    c = state
    for step in range(steps):
        for layer, plan in enumerate(plans):
            views = proj_steps[layer]
            c = layer_step(plan, c, projections[layer] if views is None else views[step])
            if layer in out_steps:
                out_steps[layer][step].copy_(c)
        if step == capture_step:
            captured = c
    return outputs, captured

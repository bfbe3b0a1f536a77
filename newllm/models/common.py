"""Helpers every model shares: parameter counting and weight initialisation."""

from __future__ import annotations

from torch import nn


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors, e.g. tied weights, counted once)."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) in seen or (trainable_only and not param.requires_grad):
            continue
        seen.add(id(param))
        total += param.numel()
    return total


def init_linear(linear: nn.Linear, weight_std: float, bias_std: float) -> None:
    nn.init.normal_(linear.weight, mean=0.0, std=weight_std)
    if linear.bias is not None:
        if bias_std > 0:
            nn.init.normal_(linear.bias, mean=0.0, std=bias_std)
        else:
            nn.init.zeros_(linear.bias)

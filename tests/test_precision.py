"""Low-precision parity on CPU: the chunked cross-entropy in fp16 and bf16 against an fp64 reference.

fp16 and bf16 matmuls exist on CPU in torch >= 2.x, so the arithmetic a T4 (fp16) or an A100/L4/H100 (bf16) does
in Phase 2's output layer is reproduced here; the scenario is the one that broke the first version: V = 50,257,
256 tokens, a step scale of 1/4096 (the mean over a 4,096-token optimizer step).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from newllm.training.chunked_ce import linear_cross_entropy

V, D, N, SCALE = 50257, 64, 256, 1 / 4096
# relative L2 error of each gradient against fp64: bf16 keeps 8 bits of mantissa, fp16 11
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _inputs():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(N, D, generator=gen)
    weight = torch.randn(V, D, generator=gen) * 0.02
    bias = torch.randn(V, generator=gen) * 0.01
    targets = torch.randint(0, V, (N,), generator=gen)
    return h, weight, bias, targets


def _reference(h, weight, bias, targets):
    h, weight, bias = (t.double().requires_grad_() for t in (h, weight, bias))
    loss = SCALE * F.cross_entropy(F.linear(h, weight, bias), targets, reduction="sum")
    loss.backward()
    return float(loss.detach()), h.grad, weight.grad, bias.grad


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_chunked_ce_in_low_precision_matches_fp64(dtype):
    h, weight, bias, targets = _inputs()
    ref_loss, ref_h, ref_w, ref_b = _reference(h, weight, bias, targets)
    h, weight, bias = (t.clone().requires_grad_() for t in (h, weight, bias))
    loss, _ = linear_cross_entropy(h, weight, bias, targets, chunk_tokens=128, compute_dtype=dtype, scale=SCALE)
    loss.backward()
    # every head row gets a gradient: a non-target token's row is p * h summed over the tokens, never exactly zero
    non_target = torch.ones(V, dtype=torch.bool)
    non_target[targets] = False
    zero_rows = (weight.grad[non_target] == 0).all(dim=1)
    assert int(zero_rows.sum()) == 0, f"{int(zero_rows.sum())} of {int(non_target.sum())} non-target rows are zero"
    assert abs(float(loss) - ref_loss) / ref_loss < TOLERANCE[dtype]
    for name, got, ref in (("h", h.grad, ref_h), ("weight", weight.grad, ref_w), ("bias", bias.grad, ref_b)):
        assert _relative(got, ref) < TOLERANCE[dtype], f"grad of {name} off by {_relative(got, ref):.2e}"


def test_accuracy_is_argmax_and_a_tie_is_a_miss():
    h = torch.ones(4, 3)
    zero_head = torch.zeros(5, 3)  # every logit equal: no prediction at all
    _, correct = linear_cross_entropy(h, zero_head, None, torch.tensor([0, 1, 2, 3]), 2)
    assert int(correct) == 0
    weight = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    h = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    _, correct = linear_cross_entropy(h, weight, None, torch.tensor([0, 1, 0]), 2)
    assert int(correct) == 1  # row 0 hit; row 1 is not the argmax; row 2 ties tokens 0 and 1

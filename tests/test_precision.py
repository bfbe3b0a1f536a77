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


# ------------------------------------------------------------------------------------------ whole training steps

# relative L2 error of each parameter's gradient against fp32 (bf16 keeps 8 mantissa bits, fp16 11). Phase 2's step
# is feed-forward; the gated LM backpropagates through its 16-token window, so rounding compounds over the steps
# (measured: bf16 4-9 %, fp16 2-5 % on every parameter alike). A precision bug looks different: an exactly zero or
# ~100 % wrong gradient on the parameters it touches.
PHASE2_TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 2e-2}
GATED_TOLERANCE = {torch.bfloat16: 1.5e-1, torch.float16: 8e-2}


def _grads(model, loss_fn, dtype):
    """Every trainable parameter's gradient of one step; fp16 goes through a GradScaler as the trainers do (a step
    whose scaled gradients overflow is skipped and the scale lowered, until one is finite)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16) if dtype == torch.float16 else None
    for _ in range(20):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(dtype)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        if scaler is None:
            break
        scaler.unscale_(optimizer)
        finite = all(bool(torch.isfinite(g).all()) for g in grads.values())
        scaler.step(optimizer)  # lr 0: only the scaler's bookkeeping
        scaler.update()
        if finite:
            break
    return float(loss.detach()), {n: g.clone() for n, g in grads.items()}


def _compare(model, loss_fn, dtype, tolerance):
    ref_loss, ref = _grads(model, loss_fn, None)
    loss, got = _grads(model, loss_fn, dtype)
    assert set(got) == set(ref) and ref
    assert loss == pytest.approx(ref_loss, rel=tolerance[dtype])
    for name, grad in got.items():
        assert torch.isfinite(grad).all(), name
        error = float((grad - ref[name]).norm() / ref[name].norm().clamp(min=1e-12))
        assert error < tolerance[dtype], f"{name}: gradient off by {error:.2e} in {dtype}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_phase2_step_in_low_precision_matches_fp32(dtype):
    from newllm.config.models import ModelConfig
    from newllm.models.cvfp import CVFPModel
    from newllm.training.phase2 import token_loss
    from newllm.training.planner import phase2_trainable_parameters

    torch.manual_seed(0)
    model = CVFPModel(ModelConfig(vocab_size=5000, ctx_dim=32, embed_dim=32, num_layers=2, embedding="random"))
    trainable = {id(p) for p in phase2_trainable_parameters(model)}
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable)
    torch.nn.init.normal_(model.head.weight, std=0.02)  # past the zero head of step 0
    ids = torch.randint(0, 5000, (256,))
    x = model.embed_tokens(ids).detach()
    contexts = [torch.randn(256, dim) for dim in model.context_block.dims]
    targets = torch.randint(0, 5000, (256,))
    _compare(model, lambda amp: token_loss(model, contexts, x, targets, 64, amp, scale=1 / 4096)[0], dtype,
             PHASE2_TOLERANCE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_gated_lm_step_in_low_precision_matches_fp32(dtype):
    from newllm.config.models import GatedLMConfig
    from newllm.models.gated import GatedContextLM
    from newllm.training.gated import _window_loss

    torch.manual_seed(0)
    model = GatedContextLM(GatedLMConfig(vocab_size=500, embed_dim=32, hidden_dim=64, ctx_dim=32, num_layers=2,
                                         dropout=0.0))
    inputs, targets = torch.randint(1, 500, (8, 16)), torch.randint(1, 500, (8, 16))

    def loss(amp):
        loss_sum, count, _ = _window_loss(model, inputs, targets, 0, amp)
        return loss_sum / count

    _compare(model, loss, dtype, GATED_TOLERANCE)


def test_every_accuracy_uses_the_same_top1_rule():
    from newllm.evaluation.lm_metrics import top1_hits

    gen = torch.Generator().manual_seed(5)
    h, weight = torch.randn(64, 8, generator=gen), torch.randn(30, 8, generator=gen)
    weight[7] = weight[3]  # two tokens whose logits always tie
    targets = torch.randint(0, 30, (64,), generator=gen)
    targets[:8] = torch.where(h[:8] @ weight[3] > 0, 3, 7)  # some of them are the target
    _, correct = linear_cross_entropy(h, weight, None, targets, 16)
    hits = top1_hits(h @ weight.t(), targets)
    assert int(correct) == int(hits.sum())
    assert not bool(hits[(targets == 3) | (targets == 7)].any())  # a tie is never a hit

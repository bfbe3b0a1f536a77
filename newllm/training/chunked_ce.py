"""Cross-entropy of a linear output layer computed in row chunks, so batch x vocabulary logits never exist at once.

``linear_cross_entropy(h, weight, bias, targets, chunk_tokens, scale=s)`` equals
``s * F.cross_entropy(F.linear(h, weight, bias), targets, reduction="sum")`` and its gradients, but holds at most
``chunk_tokens x V`` logits. When gradients are needed, each chunk's gradient (softmax - onehot) is pushed through
the two backward matmuls right away in the forward pass and kept until ``backward``: the same three matmuls as the
plain computation (no recompute) and one weight-sized gradient buffer, instead of a [batch, V] logits tensor plus
its softmax and gradient. Pass the step's 1/tokens as ``scale`` and call ``loss.backward()`` on the result: the
saved gradients are then returned as they are, without another pass over the weight-sized buffer.

Layout: the logits are computed transposed, [V, chunk] = weight @ h_chunk.T, so that every matmul has the
row-major weight as a plain operand (weight @ h.T, g.T @ weight, g @ h). On the 2-core AVX2 machine h @ weight.T
ran at 41 GFLOP per CPU-second against 69-84 for these (V=50257, d=768, chunk 512); the softmax then reduces over
dim 0, which costs about the same as over rows.
"""

from __future__ import annotations

from typing import Optional

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    """``scale`` x summed cross-entropy of ``h @ weight.T + bias`` against ``targets``; also the hit count (rows whose
    target logit is above every other logit: a tie is a miss)."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk_tokens, compute_dtype, scale, grad_enabled):
        # needs_input_grad stays True under torch.no_grad(), hence the caller's grad_enabled
        need_h = grad_enabled and ctx.needs_input_grad[0]
        need_w = grad_enabled and ctx.needs_input_grad[1]
        need_b = grad_enabled and bias is not None and ctx.needs_input_grad[2]
        any_grad = need_h or need_w or need_b
        mm_dtype = compute_dtype or h.dtype
        w_mm = weight.to(mm_dtype)
        bias_col = None if bias is None else bias.to(mm_dtype)[:, None]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w: Optional[torch.Tensor] = None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        loss = torch.zeros((), dtype=torch.float64, device=h.device)
        correct = torch.zeros((), dtype=torch.int64, device=h.device)
        for start in range(0, h.shape[0], chunk_tokens):
            h_c = h[start:start + chunk_tokens].to(mm_dtype)
            t_c = targets[start:start + chunk_tokens]
            h_t = h_c.t().contiguous()
            logits = (w_mm @ h_t if bias_col is None else torch.addmm(bias_col, w_mm, h_t)).float()  # [V, c]
            columns = torch.arange(t_c.shape[0], device=h.device)
            picked = logits[t_c, columns].clone()
            # the best other logit: one reduction gives both the softmax shift and an argmax test in which a tie
            # with another token is a miss (max-with-indices over dim 0 is ~10x slower on CPU)
            logits[t_c, columns] = float("-inf")
            others = logits.amax(dim=0)
            logits[t_c, columns] = picked
            correct += (picked > others).sum()
            top = torch.maximum(picked, others)
            probs = logits.sub_(top[None, :]).exp_()  # in place: the logits are not needed any more
            total = probs.sum(dim=0)
            loss += (top + total.log() - picked).sum().double()
            if not any_grad:
                continue
            # softmax - onehot, unscaled: |g| <= 1 keeps it clear of fp16's underflow (p / tokens is not); the
            # step's scale is applied in fp32 after each matmul
            probs.div_(total[None, :])
            probs[t_c, columns] -= 1.0
            g = probs.to(mm_dtype)
            if need_h:
                grad_h[start:start + chunk_tokens] = (g.t() @ w_mm).float().mul_(scale).to(h.dtype)
            if need_w:
                part = (g @ h_c).float()  # [V, d]
                grad_w = part.mul_(scale) if grad_w is None else grad_w.add_(part, alpha=scale)
            if need_b:
                grad_b += probs.sum(dim=1).mul_(scale)
        if need_w and grad_w is None:  # no rows
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.has = (need_h, need_w, need_b)
        ctx.dtypes = (h.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(correct)
        return (loss * scale).to(torch.float32), correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) if has else None for has in ctx.has]
        unit = float(grad_loss) == 1.0  # the usual case: loss.backward() on the scaled loss
        out = []
        for grad, dtype in zip(grads, ctx.dtypes):
            if grad is not None:
                grad = (grad if unit else grad * grad_loss).to(dtype)
            out.append(grad)
        return out[0], out[1], out[2], None, None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    chunk_tokens: int = 1024,
    compute_dtype: Optional[torch.dtype] = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` x the summed next-token cross-entropy of the output layer, ``chunk_tokens`` rows at a time.

    h [N, d], weight [V, d], bias [V] or None, targets [N] int64. Returns (a float32 scalar that backpropagates
    into h, weight and bias; the number of rows whose target logit is strictly above every other logit: argmax with
    ties counted as misses, so a constant head scores 0). ``compute_dtype`` (torch.bfloat16 or torch.float16 on a
    GPU) is the matmul precision; softmax, sums and the ``scale`` are always fp32, and the gradient of the logits
    enters the low-precision matmuls unscaled (|softmax - onehot| <= 1), so fp16 keeps every probability above
    ~6e-8 (fp16's smallest subnormal) instead of flushing p * scale to zero. For a mean over an
    optimizer step of n tokens, pass ``scale=1/n`` and call ``.backward()`` on the result.
    """
    if h.dim() != 2 or targets.dim() != 1 or h.shape[0] != targets.shape[0]:
        raise ValueError(
            f"linear_cross_entropy needs h [N, d] and targets [N], got {tuple(h.shape)} and {tuple(targets.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"weight must be [V, {h.shape[1]}], got {tuple(weight.shape)}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be >= 1")
    if not scale > 0:
        raise ValueError(f"scale={scale} must be > 0")
    return _LinearCrossEntropy.apply(h, weight, bias, targets, int(chunk_tokens), compute_dtype, float(scale),
                                     torch.is_grad_enabled())

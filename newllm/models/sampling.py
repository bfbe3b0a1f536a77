"""One sampling loop for every model: temperature, top-k, greedy."""

from __future__ import annotations

from typing import Optional

import torch


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: Optional[int], generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Sample one id per row from logits [B, V]; temperature 0 is argmax; top_k keeps the k largest logits."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 or None")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if generator is not None and generator.device != probs.device:
        # a seeded CPU generator drives sampling on any device: draw on its device, return on the logits'
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class Sampling:
    """``generate()`` for a model (a mixin for nn.Module subclasses) that defines ``sampling_start(prompt) ->
    (state, last logits)``, which runs the prompt, and ``sampling_step(state, ids so far) -> (state, next logits)``,
    which advances one token."""

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Continue ids [B, T] (or [T]) by ``max_new_tokens`` sampled tokens; temperature 0 is greedy, top_k keeps
        the k most likely; ``generator`` (on any device) makes the draw reproducible."""
        return generate_tokens(ids, max_new_tokens, temperature, top_k, generator, self.sampling_start,
                               self.sampling_step)


def generate_tokens(ids, max_new_tokens, temperature, top_k, generator, start, step) -> torch.Tensor:
    """The one sampling loop: ``start(prompt) -> (state, last logits)`` runs the prompt, then
    ``step(state, ids so far) -> (state, next logits)`` advances one token at a time."""
    squeeze = ids.dim() == 1
    if squeeze:
        ids = ids.unsqueeze(0)
    if ids.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token")
    state, logits = start(ids)
    for _ in range(max_new_tokens):
        next_id = sample_next(logits, temperature, top_k, generator)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        state, logits = step(state, ids)
    return ids[0] if squeeze else ids

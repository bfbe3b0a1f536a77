"""What the CVFP models share. Every context block (the E-architecture's ContextBlock, the era-B block) is a stack
of layers, each stepping the state of one token with its token projection (:class:`LayerStack`; Phase 1 and
``newllm.recurrence`` use this interface); every model embeds, runs its block and predicts (:class:`StackModel`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn


class LayerStack:
    """Mixin for an ``nn.Module`` with ``layers`` (each with ``token_projection(x)`` and ``step(state, proj)``)
    and ``dims`` (each layer's output width)."""

    layers: Sequence
    dims: list[int]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def token_projections(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the token share of its input projection for every token in ``x`` ([..., token_dim])."""
        return [layer.token_projection(x) for layer in self.layers]

    def step(self, c: torch.Tensor, projections: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One token: all layer outputs from the incoming context and the token projections."""
        outputs = []
        for layer, proj in zip(self.layers, projections):
            c = layer.step(c, proj)
            outputs.append(c)
        return outputs

    def forward(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The new context (last layer's output) for a batch of (incoming context, token input) pairs, all at once."""
        return self.step(c, self.token_projections(x))[-1]

    def forward_all(self, c: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output for a batch of (incoming context, token input) pairs."""
        return self.step(c, self.token_projections(x))

    def run(self, x: torch.Tensor, context: torch.Tensor) -> list[torch.Tensor]:
        """The recurrence token by token over x [B, T, token_dim] from ``context`` [B, ctx_dim], with autograd
        (full BPTT): every layer's output, L tensors [B, T, dim_l]. The reference that the lean no-grad solvers of
        ``newllm.recurrence`` are tested against."""
        if x.shape[1] == 0:
            return [x.new_zeros(x.shape[0], 0, dim) for dim in self.dims]
        projections = self.token_projections(x)
        per_layer: list[list[torch.Tensor]] = [[] for _ in range(self.num_layers)]
        c = context
        for i in range(x.shape[1]):
            for store, out in zip(per_layer, self.step(c, [p[:, i] if p.dim() == 3 else p for p in projections])):
                store.append(out)
            c = per_layer[-1][-1]
        return [torch.stack(store, dim=1) for store in per_layer]


@dataclass
class CVFPOutput:
    logits: torch.Tensor  # [B, T, V]: position i predicts token i+1
    context: torch.Tensor  # [B, ctx_dim]: the context carried after the last token
    contexts: list[torch.Tensor]  # per layer [B, T, dim_l]


class StackModel:
    """Mixin for the CVFP models (an ``nn.Module`` with ``cfg``, ``embedding``, ``context_block``, and
    ``embed_tokens(ids)`` / ``predict(per_layer, x)``): embedding setup, id checks, forward and sampling."""

    def init_embedding(self, cfg, embedding_weights: Optional[torch.Tensor]) -> None:
        """``self.embedding``: ``embedding_weights`` (vocab x embed_dim) when given, else N(0, embedding_init_std);
        frozen when ``cfg.freeze_embedding``."""
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        if embedding_weights is not None:
            if tuple(embedding_weights.shape) != (cfg.vocab_size, cfg.embed_dim):
                raise ValueError(
                    f"embedding_weights has shape {tuple(embedding_weights.shape)}, the config needs "
                    f"({cfg.vocab_size}, {cfg.embed_dim})"
                )
            with torch.no_grad():
                self.embedding.weight.copy_(embedding_weights)
        else:
            nn.init.normal_(self.embedding.weight, mean=0.0, std=cfg.embedding_init_std)
        self.embedding.weight.requires_grad_(not cfg.freeze_embedding)

    @property
    def ctx_dim(self) -> int:
        return self.cfg.ctx_dim

    def check_ids(self, ids: torch.Tensor) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ValueError(
                f"token ids range over [{int(ids.min())}, {int(ids.max())}] but the model's vocab_size is "
                f"{self.cfg.vocab_size}: use the tokenizer the model was built for (ModelConfig.vocab_size = "
                "tokenizer.vocab_size)"
            )

    def initial_context(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch, self.cfg.ctx_dim, device=device, dtype=dtype or self.embedding.weight.dtype)

    def forward(self, ids: torch.Tensor, context: Optional[torch.Tensor] = None) -> CVFPOutput:
        """Run a batch of sequences ids [B, T] (or one sequence [T]) from ``context`` (zeros when None)."""
        squeeze = ids.dim() == 1
        if squeeze:
            ids = ids.unsqueeze(0)
        x = self.embed_tokens(ids)
        if context is None:
            context = self.initial_context(ids.shape[0], ids.device, x.dtype)
        per_layer = self.context_block.run(x, context)
        logits = self.predict(per_layer, x)
        out = CVFPOutput(logits=logits, context=per_layer[-1][:, -1], contexts=per_layer)
        if squeeze:
            out = CVFPOutput(out.logits[0], out.context[0], [c[0] for c in out.contexts])
        return out

    # generate() comes from Sampling: the prompt runs once, then one recurrence step per token
    def sampling_start(self, prompt: torch.Tensor):
        out = self.forward(prompt)
        return out.context, out.logits[:, -1]

    def sampling_step(self, context: torch.Tensor, so_far: torch.Tensor):
        x = self.embed_tokens(so_far[:, -self.cfg.num_input_tokens:])[:, -1]
        per_layer = self.context_block.forward_all(context, x)
        return per_layer[-1], self.predict(per_layer, x)

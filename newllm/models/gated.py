"""The end-to-end gated context-vector LM of the WikiText-2 experiments (seed-spec 2.1)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from newllm.config.models import GatedLMConfig
from newllm.models.common import init_linear
from newllm.models.sampling import Sampling

# ------------------------------------------------------------------------------------------ gated LM

class GatedContextLM(Sampling, nn.Module):
    """The end-to-end gated context-vector LM of the WikiText-2 experiments (seed-spec 2.1)."""

    def __init__(self, cfg: GatedLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.first = nn.Linear(cfg.embed_dim + cfg.ctx_dim, cfg.hidden_dim)
        self.hidden = nn.ModuleList(nn.Linear(cfg.hidden_dim, cfg.hidden_dim) for _ in range(cfg.num_layers - 1))
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.hidden_dim, cfg.vocab_size)
        self.update = nn.Linear(cfg.hidden_dim, cfg.ctx_dim)
        self.forget_gate = nn.Linear(cfg.hidden_dim, cfg.ctx_dim)
        self.input_gate = nn.Linear(cfg.hidden_dim, cfg.ctx_dim)
        self.context_norm = nn.LayerNorm(cfg.ctx_dim)
        nn.init.normal_(self.embedding.weight, std=cfg.init_std)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear(module, cfg.init_std, 0.0)

    def initial_context(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch, self.cfg.ctx_dim, device=device, dtype=dtype or self.first.weight.dtype)

    def forward(self, ids: torch.Tensor, context: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, T] -> (logits [B, T, V], context after the last token [B, ctx_dim]); full BPTT over T."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ValueError(
                f"token ids range over [{int(ids.min())}, {int(ids.max())}] but vocab_size is {self.cfg.vocab_size}"
            )
        batch, steps = ids.shape
        e = self.embedding(ids)
        # the embedding share of the first layer does not depend on the context: one matmul for all steps
        e_proj = F.linear(e, self.first.weight[:, : self.cfg.embed_dim], self.first.bias)
        w_ctx = self.first.weight[:, self.cfg.embed_dim:]
        c = self.initial_context(batch, ids.device, e.dtype) if context is None else context
        hiddens = []
        for t in range(steps):
            h = self.dropout(F.relu(e_proj[:, t] + F.linear(c, w_ctx)))
            for layer in self.hidden:
                h = self.dropout(F.relu(layer(h)))
            hiddens.append(h)
            gated = torch.sigmoid(self.forget_gate(h)) * c + torch.sigmoid(self.input_gate(h)) * self.update(h)
            c = torch.clamp(self.context_norm(gated), -self.cfg.context_clip, self.cfg.context_clip)
        logits = self.output(torch.stack(hiddens, dim=1)) if hiddens else e.new_zeros(batch, 0, self.cfg.vocab_size)
        return logits, c

    # generate() comes from Sampling: the prompt runs once, then one step per token from the carried context
    def sampling_start(self, prompt: torch.Tensor):
        logits, context = self.forward(prompt)
        return context, logits[:, -1]

    def sampling_step(self, context: torch.Tensor, so_far: torch.Tensor):
        logits, context = self.forward(so_far[:, -1:], context)
        return context, logits[:, -1]

"""The era-B CVFP model of seeds 000 and 004 (seed-spec 4.2): a stack of CVFPLayers on two streams.

For token i with normalised embedding e_i and the carried context c_{i-1}, each layer l maps (c, e) to

    u = ReLU(W_l [c; e] + b_l)                    in R^{d_c + d_e}
    c' = c + u[:d_c],   e' = e + u[d_c:]
    c' <- (1 - m) c' + m LN_c(c'),   e' <- (1 - m) e' + m LN_e(e')      (m = layernorm_mix)

starting from (c_{i-1}, e_i); both streams run through every layer and c_i = c^(L) is carried to token i+1.
The head reads the context. Init: W ~ N(0, init_std), b ~ N(0, bias_std) (0.1 / 0.01 in the original).

The block speaks the ContextBlock interface Phase 1 and ``newllm.recurrence`` use (``token_projections``,
``step``, ``run``, ``dims``, ``lean_plans``). Between the layers of one token the state is [c; e] (d_c + d_e
wide); between tokens only c is carried, so the layer outputs are [c; e] for layers 1..L-1 and c for layer L
(``dims``). Layer 1's token projection is [W_1[:, d_c:] e + b_1 ; e] (its token share and the token stream's
start); later layers read the token only through the state, so their "projection" is just their bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from newllm.config.models import ModelConfig
from newllm.models.common import init_linear
from newllm.models.sampling import Sampling
from newllm.models.stack import LayerStack, StackModel


class EraBLayer(nn.Module):
    """One CVFPLayer; ``first`` takes the context alone (the token stream enters through the projection),
    ``last`` returns the context alone (what is carried to the next token)."""

    def __init__(self, ctx_dim: int, token_dim: int, cfg: ModelConfig, first: bool, last: bool):
        super().__init__()
        self.ctx_dim, self.token_dim, self.first, self.last = ctx_dim, token_dim, first, last
        self.hidden = ctx_dim + token_dim
        self.mix = float(cfg.layernorm_mix)
        self.in_dim = ctx_dim if first else self.hidden
        self.out_dim = ctx_dim if last else self.hidden
        self.linear = nn.Linear(self.hidden, self.hidden)
        self.norm_c = nn.LayerNorm(ctx_dim)
        self.norm_e = nn.LayerNorm(token_dim)
        init_linear(self.linear, cfg.init_std, cfg.bias_std)

    def token_projection(self, x: torch.Tensor) -> torch.Tensor:
        """First layer: [W[:, d_c:] x + b ; x] per token; later layers: the bias (the token is in the state)."""
        if not self.first:
            return self.linear.bias
        return torch.cat([F.linear(x, self.linear.weight[:, self.ctx_dim:], self.linear.bias), x], dim=-1)

    def step(self, state: torch.Tensor, token_proj: torch.Tensor) -> torch.Tensor:
        d = self.ctx_dim
        if self.first:
            u = F.relu(F.linear(state, self.linear.weight[:, :d]) + token_proj[..., : self.hidden])
            c, e = state + u[..., :d], token_proj[..., self.hidden:] + u[..., d:]
        else:
            u = F.relu(F.linear(state, self.linear.weight) + token_proj)
            c, e = state[..., :d] + u[..., :d], state[..., d:] + u[..., d:]
        c = self._mix(c, self.norm_c)
        if self.last:
            return c
        return torch.cat([c, self._mix(e, self.norm_e)], dim=-1)

    def _mix(self, v: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        if self.mix == 1.0:
            return norm(v)
        if self.mix == 0.0:
            return v
        return (1.0 - self.mix) * v + self.mix * norm(v)


@dataclass(frozen=True)
class EraBPlan:
    """An era-B layer as the recurrence's lean loop steps it (no autograd; the recurrence runs under no_grad)."""

    layer: EraBLayer

    @property
    def out_dim(self) -> int:
        return self.layer.out_dim

    def step(self, c: torch.Tensor, token_proj: torch.Tensor) -> torch.Tensor:
        return self.layer.step(c, token_proj)


class EraBBlock(LayerStack, nn.Module):
    """The era-B layer stack, ContextBlock-compatible (see the module docstring)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ctx_dim = cfg.ctx_dim
        self.token_dim = cfg.embed_dim
        last = cfg.num_layers - 1
        self.layers = nn.ModuleList(
            EraBLayer(cfg.ctx_dim, cfg.embed_dim, cfg, first=index == 0, last=index == last)
            for index in range(cfg.num_layers)
        )
        self.dims = [layer.out_dim for layer in self.layers]

    def lean_plans(self) -> list[EraBPlan]:
        """The layers as ``newllm.recurrence`` steps them (its hook for blocks of another layer kind)."""
        return [EraBPlan(layer) for layer in self.layers]


class EraBModel(StackModel, Sampling, nn.Module):
    """Embedding (frozen by default) + LayerNorm, the era-B block, and a Linear head on the context
    (seed-spec 4.2). 91,429,969 parameters at 6 x 768 with V = 50,257."""

    def __init__(self, cfg: ModelConfig, embedding_weights: Optional[torch.Tensor] = None):
        super().__init__()
        if cfg.architecture != "eraB":
            raise ValueError(f"EraBModel needs ModelConfig(architecture='eraB'), got {cfg.architecture!r}")
        self.cfg = cfg
        self.init_embedding(cfg, embedding_weights)
        self.embed_norm = nn.LayerNorm(cfg.embed_dim)
        self.context_block = EraBBlock(cfg)
        # zero-initialised like the E-architecture's head: Phase 1 never trains it
        self.head = nn.Linear(cfg.ctx_dim, cfg.vocab_size)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token inputs: the LayerNorm-ed embeddings, [..., T, embed_dim]."""
        self.check_ids(ids)
        return self.embed_norm(self.embedding(ids))

    def predict(self, contexts: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits from the carried context (the last layer's output)."""
        return self.head(contexts[-1])

"""The CVFP model (ContextBlock + TokenBlock, "E-architecture").

CVFP (seed-spec 5.1). For token i with input x_i (the concatenated, LayerNorm-ed embeddings of the last k tokens)
and the carried context c_{i-1}:

    c^(0) = c_{i-1};   c^(l) = ContextLayer_l(c^(l-1), x_i) = LN( R(c^(l-1)) + ReLU(W_l [c^(l-1); x_i] + b_l) )
    c_i = c^(L)                                   (the context carried to token i+1)
    s^(0) = x_i;       s^(l) = TokenLayer_l(c^(l), s^(l-1)) = LN( R(s^(l-1)) + ReLU(V_l [c^(l); s^(l-1)] + d_l) )
    logits_i = head(s^(L))                        (predicts token i+1)

TokenLayer l reads ContextBlock layer l. The token's share of each ContextLayer's projection, W_l[:, a:] x_i + b_l,
does not depend on the context, so it is computed for all tokens at once (``ContextBlock.token_projections``);
only the context share runs token by token.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from newllm.config.models import ModelConfig
from newllm.data.sources import hub_reachable
from newllm.models.common import init_linear
from newllm.models.embeddings import EmbeddingChoice, load_gpt2_embeddings, resolve_embedding
from newllm.models.era_b import EraBModel
from newllm.models.sampling import Sampling
from newllm.models.stack import CVFPOutput, LayerStack, StackModel  # noqa: F401 (CVFPOutput re-exported)

# ------------------------------------------------------------------------------------------ CVFP layers

class ContextLayer(nn.Module):
    """y = LN_out( R(c) + ReLU(W [c; x] + b) ); R is identity when in_dim == out_dim, else a Linear."""

    def __init__(self, in_dim: int, token_dim: int, out_dim: int, init_std: float = 0.1, bias_std: float = 0.01):
        super().__init__()
        self.in_dim, self.token_dim, self.out_dim = in_dim, token_dim, out_dim
        self.linear = nn.Linear(in_dim + token_dim, out_dim)
        self.residual: nn.Module = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)
        init_linear(self.linear, init_std, bias_std)
        if isinstance(self.residual, nn.Linear):
            init_linear(self.residual, init_std, bias_std)

    def token_projection(self, x: Optional[torch.Tensor]) -> torch.Tensor:
        """The context-independent share W[:, in:] x + b (just b for a layer without token input)."""
        if self.token_dim == 0:
            return self.linear.bias
        return F.linear(x, self.linear.weight[:, self.in_dim:], self.linear.bias)

    def step(self, c: torch.Tensor, token_proj: torch.Tensor) -> torch.Tensor:
        pre = F.linear(c, self.linear.weight[:, : self.in_dim]) + token_proj
        return self.norm(self.residual(c) + F.relu(pre))

    def forward(self, c: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.step(c, self.token_projection(x))


class TokenLayer(nn.Module):
    """z = LN_out( R(s) + ReLU(V [c; s] + d) ): the context c is read, never written."""

    def __init__(self, ctx_dim: int, in_dim: int, out_dim: int, init_std: float = 0.1, bias_std: float = 0.01):
        super().__init__()
        self.ctx_dim, self.in_dim, self.out_dim = ctx_dim, in_dim, out_dim
        self.linear = nn.Linear(ctx_dim + in_dim, out_dim)
        self.residual: nn.Module = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)
        init_linear(self.linear, init_std, bias_std)
        if isinstance(self.residual, nn.Linear):
            init_linear(self.residual, init_std, bias_std)

    def forward(self, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.norm(self.residual(s) + F.relu(self.linear(torch.cat([c, s], dim=-1))))


def context_layer_dims(cfg: ModelConfig) -> list[int]:
    """Output width of each ContextBlock layer.

    Token re-injection (default): every layer is ctx_dim wide. "Token only in layer 1" (the 11-28 "equal-decrease"
    design): widths fall linearly from ctx_dim + token_dim to ctx_dim, dim_l = (d_c + t) - floor(t * l / L).
    """
    if cfg.token_input_all_layers:
        return [cfg.ctx_dim] * cfg.num_layers
    t = cfg.token_input_dim
    return [cfg.ctx_dim + t - (t * layer) // cfg.num_layers for layer in range(1, cfg.num_layers + 1)]


def token_layer_dims(cfg: ModelConfig) -> list[int]:
    """Output width of each TokenBlock layer: falls linearly from k * embed_dim to embed_dim (constant for k = 1)."""
    extra = cfg.token_input_dim - cfg.embed_dim
    return [cfg.token_input_dim - (extra * layer) // cfg.num_layers for layer in range(1, cfg.num_layers + 1)]


class ContextBlock(LayerStack, nn.Module):
    """The stack of ContextLayers that updates the carried context, one token at a time (the shared interface:
    newllm.models.stack.LayerStack)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ctx_dim = cfg.ctx_dim
        self.token_dim = cfg.token_input_dim
        self.dims = context_layer_dims(cfg)
        layers = []
        in_dim = cfg.ctx_dim
        for index, out_dim in enumerate(self.dims):
            token_dim = cfg.token_input_dim if (cfg.token_input_all_layers or index == 0) else 0
            layers.append(ContextLayer(in_dim, token_dim, out_dim, cfg.init_std, cfg.bias_std))
            in_dim = out_dim
        self.layers = nn.ModuleList(layers)


class TokenBlock(nn.Module):
    """TokenLayer l reads ContextBlock layer l (E-architecture)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ctx_dims = context_layer_dims(cfg)
        self.dims = token_layer_dims(cfg)
        layers = []
        in_dim = cfg.token_input_dim
        for ctx_dim, out_dim in zip(ctx_dims, self.dims):
            layers.append(TokenLayer(ctx_dim, in_dim, out_dim, cfg.init_std, cfg.bias_std))
            in_dim = out_dim
        self.layers = nn.ModuleList(layers)

    def forward(self, contexts: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``contexts[l]`` is ContextBlock layer l's output for the same tokens as ``x``."""
        if len(contexts) != len(self.layers):
            raise ValueError(f"TokenBlock needs {len(self.layers)} per-layer contexts, got {len(contexts)}")
        s = x
        for layer, c in zip(self.layers, contexts):
            s = layer(c.to(s.dtype), s)
        return s


# ------------------------------------------------------------------------------------------ CVFP model

class CVFPModel(StackModel, Sampling, nn.Module):
    """ContextBlock + TokenBlock + output head, on (frozen by default) token embeddings followed by a LayerNorm.

    ``embedding_weights`` (vocab x embed_dim) are copied into the embedding when given; otherwise the embedding is
    N(0, embedding_init_std). Use :func:`build_cvfp_model` to resolve ``cfg.embedding`` ("auto"/"gpt2"/"random").
    """

    def __init__(self, cfg: ModelConfig, embedding_weights: Optional[torch.Tensor] = None):
        super().__init__()
        self.cfg = cfg
        self.init_embedding(cfg, embedding_weights)
        self.embed_norm = nn.LayerNorm(cfg.embed_dim)
        self.context_block = ContextBlock(cfg)
        self.token_block = TokenBlock(cfg)
        if cfg.weight_tying:
            self.head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
            self.head.weight = self.embedding.weight
        else:
            # zero-initialised as in the original: Phase 1 leaves it untouched, Phase 2 trains it
            self.head = nn.Linear(self.token_block.dims[-1], cfg.vocab_size)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token inputs x for ids [..., T]: the last k normalised embeddings concatenated, [..., T, k*embed_dim].

        Positions before the start of the sequence contribute zeros.
        """
        self.check_ids(ids)
        e = self.embed_norm(self.embedding(ids))
        k = self.cfg.num_input_tokens
        if k == 1:
            return e
        parts = []
        for back in range(k - 1, -1, -1):  # oldest first: [e_{i-k+1}; ...; e_i]
            if back == 0:
                parts.append(e)
            else:
                shifted = torch.zeros_like(e)
                shifted[..., back:, :] = e[..., :-back, :]
                parts.append(shifted)
        return torch.cat(parts, dim=-1)

    def predict(self, contexts: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits from per-layer contexts and token inputs (all positions at once)."""
        return self.head(self.token_block(contexts, x))


def model_class(cfg: ModelConfig) -> type:
    """The model class of ``cfg.architecture``: CVFPModel ("E") or EraBModel ("eraB")."""
    return EraBModel if cfg.architecture == "eraB" else CVFPModel


def build_cvfp_model(
    cfg: ModelConfig, loader=load_gpt2_embeddings, reachable: Callable[[], bool] = hub_reachable
) -> tuple[Union[CVFPModel, EraBModel], EmbeddingChoice]:
    """Build the model of ``cfg.architecture`` with ``cfg.embedding`` resolved; returns the model and which
    embedding it got."""
    weights, choice = resolve_embedding(cfg, loader, reachable)
    return model_class(cfg)(cfg, weights), choice

"""What the recurrence reads and returns: token inputs (views of token streams) and results.

- :class:`TokenInputs`: per-layer token projections of B padded streams, as the solvers read them.
- :class:`EmbeddedStreams`: a :class:`~newllm.data.streams.TokenStreams`' token inputs, flat in stream order and
  each distinct input once (Phase 1 steps on these rows; :meth:`EmbeddedStreams.token_inputs` gives the padded
  view the solvers take).
- :func:`token_inputs`: the token inputs of id windows (the context cache and Phase 2 embed batches this way).
- :class:`RecurrenceResult`: every layer's contexts per token, and how they were obtained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from newllm.data.streams import TokenStreams, valid_mask
from newllm.models.cvfp import ContextBlock, CVFPModel


@dataclass
class RecurrenceResult:
    """Per-layer contexts [B, T, dim_l] of a stream evaluation and how they were obtained."""

    contexts: list[torch.Tensor]  # every layer's output (only the last layer's when all_layers=False)
    method: str  # "loop", "sweeps", "sweeps+loop", "segments" or "segments+loop" (+loop: finished by the loop)
    sweeps: int  # parallel passes: Jacobi sweeps, or segment rounds (1 = no window re-run); 0 for the loop
    max_abs_change: float  # residual at the stop: last sweep's change / largest boundary mismatch; 0.0 for the loop
    lengths: Optional[torch.Tensor] = None  # valid tokens per stream when the streams were padded

    @property
    def final(self) -> torch.Tensor:
        """The carried context after each token, [B, T, ctx_dim]."""
        return self.contexts[-1]

    def flat(self, layer: int = -1) -> torch.Tensor:
        """One layer's outputs for the valid tokens of all streams, concatenated in stream order: [N, dim]."""
        out = self.contexts[layer]
        if self.lengths is None:
            return out.reshape(-1, out.shape[-1])
        return out[valid_mask(self.lengths, out.shape[1])]


def pad_streams(xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-stream token inputs [T_i, d] into a zero-padded [B, T_max, d] batch and their lengths [B]."""
    if len(xs) == 0:
        raise ValueError("pad_streams needs at least one stream")
    if any(x.dim() != 2 for x in xs):
        raise ValueError("pad_streams expects per-stream token inputs of shape [tokens, token_dim]")
    lengths = torch.tensor([x.shape[0] for x in xs], device=xs[0].device)
    batch = xs[0].new_zeros(len(xs), int(lengths.max()), xs[0].shape[1])
    for row, x in enumerate(xs):
        batch[row, : x.shape[0]] = x
    return batch, lengths


def stored_layers(block: ContextBlock, all_layers: bool) -> list[int]:
    return list(range(block.num_layers)) if all_layers else [block.num_layers - 1]


class TokenInputs:
    """The token inputs of B streams of T tokens, as the recurrence reads them: per-layer token projections.

    ``TokenInputs(block, x)`` with x [B, T, token_dim]; or ``TokenInputs(block, rows, index)`` with the distinct
    inputs rows [U, token_dim] and index [B, T] (stream b's token i is rows[index[b, i]]): the token share of each
    layer's projection is then computed once per distinct row (4,000 WikiText-2 tokens have ~1,100 distinct ones).
    Positions at or beyond T, and index entries equal to U, read a zero input (padding).
    """

    def __init__(self, block: ContextBlock, x: torch.Tensor, index: Optional[torch.Tensor] = None):
        if index is None and x.dim() != 3:
            raise ValueError(f"expected token inputs x of shape [batch, tokens, token_dim], got {tuple(x.shape)}")
        if index is not None and (x.dim() != 2 or index.dim() != 2):
            raise ValueError(
                f"distinct inputs need rows [U, token_dim] and index [batch, tokens], got {tuple(x.shape)} and "
                f"{tuple(index.shape)}"
            )
        if x.shape[-1] != block.token_dim:
            raise ValueError(f"x has token_dim {x.shape[-1]} but the ContextBlock expects {block.token_dim}")
        self.block, self.x, self.index = block, x, index
        self.batch, self.steps = (x.shape[0], x.shape[1]) if index is None else tuple(index.shape)
        self.dtype, self.device = x.dtype, x.device
        self._row_projections = None
        if index is not None:  # the zero row at index U stands for positions past the end
            rows = torch.cat([x, x.new_zeros(1, x.shape[-1])])
            self._row_projections = block.token_projections(rows)

    def span(self, start: int = 0, stop: Optional[int] = None) -> list[torch.Tensor]:
        """Per layer, the projections of positions [start, stop) of every stream: [B, stop - start, out]."""
        stop = self.steps if stop is None else stop
        real = max(0, min(stop, self.steps) - start)
        pad = stop - start - real
        if self.index is None:
            x = self.x[:, start : start + real]
            return self.block.token_projections(F.pad(x, (0, 0, 0, pad)) if pad else x)
        index = self.index[:, start : start + real]
        if pad:
            index = F.pad(index, (0, pad), value=self.x.shape[0])
        return [p[index] if p.dim() == 2 else p for p in self._row_projections]

    def gather(self, rows: torch.Tensor, positions: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the projections at positions [R, L] of streams rows [R]: [R, L, out]."""
        past_end = positions >= self.steps
        clamped = positions.clamp(max=self.steps - 1)
        if self.index is None:
            x = self.x[rows[:, None], clamped]
            return self.block.token_projections(x.masked_fill(past_end[..., None], 0.0))
        index = self.index[rows[:, None], clamped].masked_fill(past_end, self.x.shape[0])
        return [p[index] if p.dim() == 2 else p for p in self._row_projections]


def as_token_inputs(block: ContextBlock, x, context: Optional[torch.Tensor]) -> tuple[TokenInputs, torch.Tensor]:
    inputs = x if isinstance(x, TokenInputs) else TokenInputs(block, x)
    if context is None:
        context = torch.zeros(inputs.batch, block.ctx_dim, dtype=inputs.dtype, device=inputs.device)
    if tuple(context.shape) != (inputs.batch, block.ctx_dim):
        raise ValueError(
            f"context has shape {tuple(context.shape)}, expected [batch={inputs.batch}, ctx_dim={block.ctx_dim}]"
        )
    return inputs, context


def empty_result(
    block: ContextBlock, inputs: TokenInputs, store: Sequence[int], method: str, lengths
) -> RecurrenceResult:
    contexts = [torch.zeros(inputs.batch, 0, block.dims[layer], dtype=inputs.dtype, device=inputs.device)
                for layer in store]
    return RecurrenceResult(contexts, method, 0, 0.0, lengths)


def token_inputs(model: CVFPModel, window_ids: torch.Tensor) -> torch.Tensor:
    """Token inputs x [B, k * embed_dim] from window ids [B, k] (-1: before the stream start, zeros).

    Equals ``model.embed_tokens`` of the whole stream at those positions.
    """
    valid = window_ids >= 0
    e = model.embed_norm(model.embedding(window_ids.clamp(min=0)))
    if not bool(valid.all()):
        e = e * valid[..., None].to(e.dtype)
    return e.reshape(*window_ids.shape[:-1], -1)


@dataclass(frozen=True)
class EmbeddedStreams:
    """The token inputs of some :class:`TokenStreams`: flat [N, token_dim], and each distinct input once."""

    streams: TokenStreams
    x: torch.Tensor  # [N, token_dim], streams concatenated
    distinct: torch.Tensor  # [U, token_dim]: each distinct token input once
    token_index: torch.Tensor  # [N]: x[i] == distinct[token_index[i]]

    @classmethod
    def of(cls, model: CVFPModel, streams: TokenStreams) -> "EmbeddedStreams":
        """Embed every stream (from its own start) on the model's device, without gradients."""
        device = model.embedding.weight.device
        with torch.no_grad():
            parts = [model.embed_tokens(ids.to(device)) for ids in torch.split(streams.inputs, streams.lengths)]
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
        # a token's input is a function of its last k ids (-1 before its stream's start): group rows by them
        keys = streams.windows(torch.arange(streams.n_tokens), model.cfg.num_input_tokens).to(device)
        _, token_index = torch.unique(keys, dim=0, return_inverse=True)
        distinct = x.new_empty(int(token_index.max()) + 1, x.shape[-1])
        distinct[token_index] = x  # equal keys carry identical rows, so any writer wins
        return cls(streams, x, distinct, token_index)

    @property
    def n_tokens(self) -> int:
        return self.x.shape[0]

    @property
    def lengths(self) -> list[int]:
        return self.streams.lengths

    def shift(self, contexts: torch.Tensor) -> torch.Tensor:
        """Incoming contexts: row i gets row i-1 of its own stream; each stream's first token gets zeros."""
        incoming = torch.roll(contexts, shifts=1, dims=0)
        incoming[self.streams.starts.to(contexts.device)] = 0.0
        return incoming

    def padded_lengths(self) -> torch.Tensor:
        return torch.tensor(self.lengths, device=self.x.device)

    def token_inputs(self, block: ContextBlock) -> TokenInputs:
        """The streams as the recurrence reads them: a padded batch [B, T_max] whose projections are computed once
        per distinct input (index U, one past the last row, is a zero input past each stream's end)."""
        mask = self._mask()
        index = torch.full(mask.shape, self.distinct.shape[0], dtype=torch.long, device=self.x.device)
        index[mask] = self.token_index
        return TokenInputs(block, self.distinct, index)

    def to_padded(self, flat: torch.Tensor) -> torch.Tensor:
        """Flat rows [N, d] -> [B, T_max, d], zeros past each stream's end."""
        mask = self._mask()
        out = flat.new_zeros(*mask.shape, flat.shape[-1])
        out[mask] = flat
        return out

    def to_flat(self, padded: torch.Tensor) -> torch.Tensor:
        return padded[self._mask()]

    def _mask(self) -> torch.Tensor:
        return self.streams.padded_mask().to(self.x.device)

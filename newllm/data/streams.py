"""Token streams: the one type that Phase 1, the context cache (Phase 2) and the recurrence read.

``TokenStreams`` holds the input ids of one or more streams laid back to back, where each stream starts, and, for
next-token prediction, the id each input predicts. Build it with :func:`make_streams` from a corpus split, one id
sequence or a list of documents; every form of ids is normalised here (:func:`split_streams`): a 1-D tensor /
array / list of ints is one stream, a 2-D array its rows, a list of sequences its documents. Memory-mapped,
read-only corpora are copied into writable tensors; float ids are refused.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from newllm.data.corpus import CorpusSplit

TokenIds = Union[torch.Tensor, np.ndarray, Sequence[int]]
StreamsInput = Union[TokenIds, Sequence[TokenIds]]
MODES = ("concat", "per_sample")


def as_id_tensor(ids: TokenIds, what: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        array = np.asarray(ids)
        if array.size and array.dtype.kind not in "iu":
            raise ValueError(f"{what} must hold integer token ids, got dtype {array.dtype}")
        # memory-mapped corpora are read-only: copy into a writable array before handing them to torch
        ids = torch.from_numpy(array.astype(np.int64, copy=True))  # (an empty list arrives as float64)
    tensor = ids
    if tensor.dim() != 1:
        raise ValueError(f"{what} must be 1-D token ids, got shape {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise ValueError(f"{what} is empty: every stream needs at least one token")
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer token ids, got dtype {tensor.dtype}")
    return tensor.long()


def split_streams(ids_or_streams: StreamsInput) -> list[torch.Tensor]:
    """One stream (1-D ids) -> [stream]; a list of 1-D id sequences or a 2-D array [B, T] -> its rows."""
    if isinstance(ids_or_streams, (torch.Tensor, np.ndarray)):
        data = ids_or_streams
        if data.ndim == 1:
            return [as_id_tensor(data, "the token stream")]
        if data.ndim == 2:
            return [as_id_tensor(row, f"stream {i}") for i, row in enumerate(data)]
        raise ValueError(f"token ids must be 1-D (one stream) or 2-D (streams), got shape {tuple(data.shape)}")
    items = list(ids_or_streams)
    if not items:
        raise ValueError("no token streams given")
    if all(isinstance(item, (int, np.integer)) for item in items):
        return [as_id_tensor(items, "the token stream")]
    return [as_id_tensor(item, f"stream {i}") for i, item in enumerate(items)]


def valid_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, steps] bool: True where position < the stream's length."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


@dataclass(frozen=True)
class TokenStreams:
    """Input ids of one or more streams laid back to back; each stream starts from a zero context."""

    inputs: torch.Tensor  # [N] int64
    targets: Optional[torch.Tensor]  # [N] int64, the id each input predicts; None when nothing is predicted
    starts: torch.Tensor  # [S] int64, starts[0] == 0

    @property
    def n_tokens(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def n_streams(self) -> int:
        return int(self.starts.shape[0])

    @property
    def ends(self) -> torch.Tensor:
        return torch.cat([self.starts[1:], torch.tensor([self.n_tokens])])

    @property
    def lengths(self) -> list[int]:
        """Tokens per stream."""
        return (self.ends - self.starts).tolist()

    def fingerprint(self) -> str:
        """A checksum of ids and stream layout (a resumed run must see the same data)."""
        crc = 0
        for tensor in (self.inputs, self.targets, self.starts):
            if tensor is not None:
                crc = zlib.crc32(tensor.numpy().astype(np.int64).tobytes(), crc)
        return f"{self.n_tokens}:{self.n_streams}:{crc:08x}"

    def windows(self, index: torch.Tensor, k: int) -> torch.Tensor:
        """Ids of the last k inputs up to each indexed token, oldest first, [B, k]; -1 before its stream starts."""
        if k == 1:
            return self.inputs[index][:, None]
        stream_start = self.starts[torch.searchsorted(self.starts, index, right=True) - 1]
        back = torch.arange(k - 1, -1, -1)
        pos = index[:, None] - back[None, :]
        valid = pos >= stream_start[:, None]
        return torch.where(valid, self.inputs[pos.clamp(min=0)], torch.full_like(pos, -1))

    def stream(self, i: int) -> torch.Tensor:
        """The input ids of stream i."""
        return self.inputs[int(self.starts[i]) : int(self.ends[i])]

    def padded_mask(self) -> torch.Tensor:
        """[S, longest stream] bool: True at the positions that hold a token."""
        lengths = self.ends - self.starts
        return valid_mask(lengths, int(lengths.max()))


def make_streams(
    ids: Union[CorpusSplit, StreamsInput], streams: str = "concat", predict: bool = True
) -> TokenStreams:
    """Token streams from a corpus split, one id sequence or a list of documents.

    ``streams="concat"``: all documents joined into one stream; the context runs on across document boundaries.
    ``"per_sample"``: every document (of a corpus split: every document it holds) is its own stream from a zero
    context. ``predict=True`` (next-token prediction, Phase 2): a stream of n+1 ids has inputs ids[:n] and
    targets ids[1:], so no target crosses a stream boundary and streams under 2 ids are dropped. ``predict=False``
    (Phase 1, which learns contexts only): every id is an input and there are no targets.
    To split a flat id tensor at document offsets, pass ``torch.tensor_split(ids, offsets)``.
    """
    if streams not in MODES:
        raise ValueError(f"streams={streams!r}: use 'concat' or 'per_sample'")
    if isinstance(ids, CorpusSplit):
        ids = ids.documents() if streams == "per_sample" else ids.ids
    docs = split_streams(ids)
    if streams == "concat":
        docs = [torch.cat(docs)]
    if predict:
        docs = [d for d in docs if d.numel() >= 2]
        if not docs:
            raise ValueError("no stream has 2 or more token ids: nothing to predict")
    inputs = [d[:-1] for d in docs] if predict else docs
    lengths = torch.tensor([d.numel() for d in inputs])
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)[:-1]])
    targets = torch.cat([d[1:] for d in docs]) if predict else None
    return TokenStreams(torch.cat(inputs), targets, starts)

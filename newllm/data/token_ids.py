"""Token ids in, 1-D int64 tensors out: the one place that normalises "one stream or a list of documents".

Accepts a 1-D tensor / array / list of ints (one stream), a 2-D array (its rows), or a list of such sequences
(documents). Memory-mapped, read-only corpora are copied into writable tensors; float ids are refused.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

TokenIds = Union[torch.Tensor, np.ndarray, Sequence[int]]
StreamsInput = Union[TokenIds, Sequence[TokenIds]]


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

"""The Phase-2 context cache: every token's per-layer ContextBlock outputs, built once, read by batches.

What is stored (per token i of a stream): the L layer outputs c^(1..L) the ContextBlock produced for token i, as
one row of sum(dims) values, plus the input id and the target id. The token inputs x are NOT stored: with a frozen
embedding they are a pure function of the ids (a gather and a LayerNorm per batch, well under 1% of a Phase-2
step), so caching them (768k fp32 values per token: 1.7 GiB at 529k tokens in the original) buys nothing.

Where: ``placement`` "gpu" (a device tensor), "cpu" (host RAM) or "disk" (an ``np.memmap`` file; bfloat16 kept as
its uint16 bit pattern). Dtype: float32, bfloat16 or float16. The build writes chunk by chunk, so no full fp32
[N, sum(dims)] tensor ever exists.

How it is built: streams are cut into pieces of at most ``batch_tokens`` tokens and evaluated by
``newllm.recurrence.evaluate_contexts`` as padded batches of independent streams; a long piece is itself cut into
overlapping windows evaluated as one batch (its "segments" method: burn-in from a zero context, then checked and
re-run at every window join until the contexts agree within ``tol``). That batching is what makes the build fast:
the per-token loop then runs over a [rows, d] matrix instead of one vector. A stream's next piece starts from the
context its previous piece carried out, so pieces join exactly.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from newllm.data.streams import TokenStreams, valid_mask
from newllm.recurrence import evaluate_contexts, token_inputs
from newllm.training.common import OOMBackoff

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NUMPY_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # bf16: bit pattern
_FLOAT16_MAX = 65504.0


# ---------------------------------------------------------------------------------------------- the cache

class ContextCache:
    """Per-layer contexts of every token of some streams, one row of sum(dims) values per token.

    Rows are read with :meth:`rows` (any index order; returned on ``device`` in ``compute_dtype``) and split per
    layer with :meth:`split`. Call :meth:`close` to release memory and delete a disk file the cache created.
    """

    def __init__(
        self,
        streams: TokenStreams,
        dims: Sequence[int],
        dtype: str = "float32",
        placement: str = "cpu",
        device: Union[str, torch.device] = "cpu",
        cache_dir: Optional[str] = None,
        name: str = "contexts",
    ):
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"cache dtype={dtype!r}: use one of {sorted(TORCH_DTYPES)}")
        if placement not in ("gpu", "cpu", "disk"):
            raise ValueError(f"cache placement={placement!r}: use 'gpu', 'cpu' or 'disk'")
        self.device = torch.device(device)
        if placement == "gpu" and self.device.type != "cuda":
            raise ValueError("cache placement='gpu' needs a CUDA compute device; use 'cpu' or 'disk'")
        self.streams = streams
        self.dims = [int(d) for d in dims]
        self.width = sum(self.dims)
        self.dtype = dtype
        self.placement = placement
        self.path: Optional[Path] = None
        self._owned_dir: Optional[Path] = None
        self.build_info: dict = {}
        shape = (streams.n_tokens, self.width)
        if placement == "disk":
            folder = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="newllm-cache-"))
            if cache_dir is None:
                self._owned_dir = folder
            folder.mkdir(parents=True, exist_ok=True)
            fd, file_name = tempfile.mkstemp(prefix=f"{name}-", suffix=f".{dtype}.bin", dir=folder)
            os.close(fd)
            self.path = Path(file_name)
            self._store = np.memmap(self.path, dtype=_NUMPY_STORAGE[dtype], mode="w+", shape=shape)
        else:
            where = self.device if placement == "gpu" else torch.device("cpu")
            self._store = torch.empty(shape, dtype=TORCH_DTYPES[dtype], device=where)

    # ---- sizes and bookkeeping
    def __len__(self) -> int:
        return self.streams.n_tokens

    @property
    def nbytes(self) -> int:
        return len(self) * self.width * TORCH_DTYPES[self.dtype].itemsize

    def info(self) -> dict:
        """Placement, dtype, size and how the cache was built (JSON-able)."""
        return {"placement": self.placement, "dtype": self.dtype, "tokens": len(self),
                "streams": self.streams.n_streams, "row_values": self.width, "bytes": self.nbytes,
                "path": str(self.path) if self.path else None, **self.build_info}

    def close(self) -> None:
        """Free the store; delete the disk file (and its temporary folder) when the cache made them."""
        store, self._store = self._store, None
        if isinstance(store, np.memmap):
            store._mmap.close()  # release the mapping before unlinking
        del store
        if self.path is not None and self.path.exists():
            self.path.unlink()
        if self._owned_dir is not None and self._owned_dir.exists():
            try:
                self._owned_dir.rmdir()
            except OSError:
                pass

    # ---- writing (during the build)
    def write(self, start: int, per_layer: Sequence[torch.Tensor]) -> None:
        """Store every layer's contexts [n, dim_l] (any float dtype) for tokens start .. start+n-1.

        Written layer by layer into the row block's columns: no concatenated copy of the rows is made.
        """
        if self._store is None:
            raise RuntimeError("this cache was closed")
        if len(per_layer) != len(self.dims):
            raise ValueError(f"write needs {len(self.dims)} per-layer tensors, got {len(per_layer)}")
        target = TORCH_DTYPES[self.dtype]
        stop = start + per_layer[0].shape[0]
        offset = 0
        for values, dim in zip(per_layer, self.dims):
            if target == torch.float16 and values.numel() and float(values.abs().max()) > _FLOAT16_MAX:
                raise ValueError(
                    "context values exceed the float16 range (65504); use cache_dtype='bfloat16' or 'float32'"
                )
            converted = values.to(target)
            if isinstance(self._store, np.memmap):
                data = converted.cpu()
                array = data.view(torch.uint16).numpy() if target == torch.bfloat16 else data.numpy()
                self._store[start:stop, offset:offset + dim] = array
            else:
                self._store[start:stop, offset:offset + dim] = converted
            offset += dim

    def flush(self) -> None:
        if isinstance(self._store, np.memmap):
            self._store.flush()

    # ---- reading (training, evaluation)
    def rows(self, index: Union[torch.Tensor, slice], compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows at ``index`` (a LongTensor or a slice) as [B, width] on the cache's device in ``compute_dtype``."""
        if self._store is None:
            raise RuntimeError("this cache was closed")
        if isinstance(self._store, np.memmap):
            key = index if isinstance(index, slice) else index.cpu().numpy()
            data = torch.from_numpy(np.ascontiguousarray(self._store[key]))
            if self.dtype == "bfloat16":
                data = data.view(torch.bfloat16)
            return data.to(self.device).to(compute_dtype)  # pageable rows: the copy is synchronous anyway
        key = index if isinstance(index, slice) else index.to(self._store.device)
        if self._store.device.type == "cpu" and self.device.type == "cuda":
            # gathered straight into page-locked memory, so the copy to the GPU runs asynchronously (the caching
            # host allocator keeps a staging block until its copy has finished)
            rows = self._store[key] if isinstance(key, slice) else None
            n = rows.shape[0] if rows is not None else key.shape[0]
            staging = torch.empty((n, self._store.shape[1]), dtype=self._store.dtype, pin_memory=True)
            if rows is not None:
                staging.copy_(rows)
            else:
                torch.index_select(self._store, 0, key, out=staging)
            return staging.to(self.device, non_blocking=True).to(compute_dtype)
        return self._store[key].to(compute_dtype)

    def split(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer views [B, dim_l] of rows [B, width]."""
        return list(torch.split(rows, self.dims, dim=-1))

    def contexts(self, index: Union[torch.Tensor, slice], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """Per-layer contexts [B, dim_l] of the tokens at ``index``."""
        return self.split(self.rows(index, dtype))


# ---------------------------------------------------------------------------------------------- building

def _pieces(streams: TokenStreams, piece_tokens: int) -> list[list[tuple[int, int, int]]]:
    """Rounds of (stream, begin, end) pieces: round r holds piece r of every stream long enough to have one."""
    rounds: list[list[tuple[int, int, int]]] = []
    for s, (start, end) in enumerate(zip(streams.starts.tolist(), streams.ends.tolist())):
        for r, begin in enumerate(range(start, end, piece_tokens)):
            if r == len(rounds):
                rounds.append([])
            rounds[r].append((s, begin, min(begin + piece_tokens, end)))
    return rounds


def _groups(pieces: list[tuple[int, int, int]], batch_tokens: int) -> list[list[tuple[int, int, int]]]:
    """Pack pieces, longest first, into groups of at most ``batch_tokens`` padded tokens."""
    groups: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    for piece in sorted(pieces, key=lambda p: p[1] - p[2]):
        longest = current[0][2] - current[0][1] if current else piece[2] - piece[1]
        if current and longest * (len(current) + 1) > batch_tokens:
            groups.append(current)
            current = []
        current.append(piece)
    if current:
        groups.append(current)
    return groups


BUILD_OOM_HALVINGS = 6


def build_context_cache(
    model,
    streams: TokenStreams,
    dtype: str = "float32",
    placement: str = "cpu",
    device: Union[str, torch.device, None] = None,
    cache_dir: Optional[str] = None,
    method: str = "auto",
    tol: float = 1e-5,
    burn_in: Optional[int] = None,
    segment_tokens: Optional[int] = None,
    batch_tokens: int = 16384,
    name: str = "contexts",
    progress: bool = True,
) -> ContextCache:
    """Run the (frozen) ContextBlock over ``streams`` and store every token's per-layer contexts.

    Streams are cut into pieces of at most ``batch_tokens`` tokens. Pieces are evaluated round by round: round r
    holds piece r of every stream, each starting from the context its stream carried out of piece r-1 (zero for
    the first), packed into padded batches of at most ``batch_tokens`` tokens and handed to
    :func:`newllm.recurrence.evaluate_contexts` (``method``, ``tol``, ``burn_in``, ``segment_tokens`` are passed
    through; its "segments" method batches the windows of a long piece). Each batch's rows are converted to the
    cache dtype and written at once, so at most one batch of fp32 contexts exists at a time.
    ``device``: where the recurrence runs (default: the model's device).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.check_ids(streams.inputs)
    cache = ContextCache(streams, model.context_block.dims, dtype, placement, device, cache_dir, name)
    started = time.perf_counter()
    # a device OOM halves the tokens evaluated together and refills the cache from the start
    backoff = OOMBackoff(batch_tokens, BUILD_OOM_HALVINGS, what="context cache build", unit="tokens",
                         hint="Pass a smaller batch_tokens, or place the cache on the CPU (Phase2Config.cache_placement).")
    try:
        info = backoff.run(
            lambda size: _fill(model, cache, streams, device, method, tol, burn_in, segment_tokens, size, progress),
            cleanup=lambda: None,
        )
    except BaseException:
        cache.close()
        raise
    batch_tokens = backoff.size
    cache.flush()
    seconds = time.perf_counter() - started
    info.update(build_seconds=seconds, build_us_per_token=1e6 * seconds / max(1, streams.n_tokens), tol=tol,
                batch_tokens=batch_tokens)
    cache.build_info = info
    return cache


def _fill(model, cache, streams, device, method, tol, burn_in, segment_tokens, batch_tokens, progress) -> dict:
    k = model.cfg.num_input_tokens
    weight_dtype = model.context_block.layers[0].linear.weight.dtype
    carried = torch.zeros(streams.n_streams, model.cfg.ctx_dim, device=device, dtype=weight_dtype)
    extra = {} if burn_in is None else {"burn_in": burn_in}
    if segment_tokens is not None:
        extra["segment_len"] = segment_tokens
    methods, passes, residual = set(), 0, 0.0
    with tqdm(total=streams.n_tokens, desc="context cache", unit="tok", disable=not progress) as bar:
        for pieces in _pieces(streams, batch_tokens):
            for group in _groups(pieces, batch_tokens):
                lengths = torch.tensor([end - begin for _, begin, end in group])
                steps = int(lengths.max())
                pos = torch.tensor([begin for _, begin, _ in group])[:, None] + torch.arange(steps)[None, :]
                valid = valid_mask(lengths, steps)
                flat = pos.clamp(max=streams.n_tokens - 1).reshape(-1)
                windows = streams.windows(flat, k).reshape(len(group), steps, k)
                windows = torch.where(valid[..., None], windows, torch.full_like(windows, -1))
                stream_ids = torch.tensor([s for s, _, _ in group], device=device)
                with torch.no_grad():
                    x = token_inputs(model, windows.to(device)).to(weight_dtype)
                    result = evaluate_contexts(model.context_block, x, context=carried[stream_ids], method=method,
                                               tol=tol, lengths=lengths.to(device), **extra)
                methods.add(result.method)
                passes = max(passes, result.sweeps)
                residual = max(residual, result.max_abs_change)
                lengths_dev = lengths.to(device)
                carried[stream_ids] = result.final[torch.arange(len(group), device=device), lengths_dev - 1]
                for row, (_, begin, end) in enumerate(group):
                    cache.write(begin, [c[row, : end - begin] for c in result.contexts])
                del result, x
                bar.update(int(lengths.sum()))
    return {"recurrence_method": "+".join(sorted(methods)), "recurrence_passes": passes,
            "recurrence_residual": residual}

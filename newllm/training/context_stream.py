"""The Phase-2 streaming tier: every batch's contexts recomputed by the frozen ContextBlock, none stored.

A cache costs sum(dims) values per token (18.4 KB in fp32 at 6 x 768), so its memory grows with the corpus;
recomputing a token's contexts costs one ContextBlock forward (a few percent of a Phase-2 step). Streaming keeps
memory flat at any corpus size.

How: each stream is cut into windows of ``window`` tokens, aligned to the stream start. A window's contexts are
computed from a zero context ``2 * burn_in`` tokens before it (or from the stream start, which is exact), and the
burn-in is checked the way the recurrence's segments check their joins: the state reached from ``burn_in`` tokens
before must agree with it within ``tol`` (max-abs); where it does not, the burn-in doubles until they agree or it
reaches the stream start or ``max_burn_in`` (then the window keeps its longest burn-in's state and is counted in
``stats["unsettled"]``, with the largest disagreement in ``stats["max_start_gap"]``). A map that forgets slowly
costs more; one that forgets more slowly than ``max_burn_in`` is approximated, and the info says by how much:
for such a map the cache is the exact tier.

Training shuffles at the level of windows (:meth:`StreamedContexts.epoch_batches`); windows are computed in
blocks of ``block_tokens`` tokens along the epoch's order (one batched token loop over all of a block's windows,
which is what keeps the recurrence fast), and a block is dropped once no batch needs it. Blocks lie on a fixed
grid of the order, so a resumed run computes exactly the same blocks.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from newllm.data.streams import TokenStreams, valid_mask
from newllm.recurrence import token_inputs
from newllm.recurrence.inputs import TokenInputs
from newllm.recurrence.step import plan_layers, run_rows
from newllm.training.common import epoch_order

DEFAULT_WINDOW = 128
DEFAULT_STREAM_BURN_IN = 16
DEFAULT_BLOCK_TOKENS = 16384
DEFAULT_MAX_BURN_IN = 512


def stream_cost(window: int, burn_in: int) -> float:
    """ContextBlock token steps per kept token: the window plus its two burn-ins (``b`` and ``2b``, the check)."""
    return (window + 3 * burn_in) / window


def stream_costs(work, window: Optional[int], burn_in: Optional[int], block_tokens: int) -> dict:
    """What streaming costs for a :class:`~newllm.training.planner.Phase2Workload`: ContextBlock steps and FLOPs
    per training token against those of a training step (TokenBlock + head, forward and backward = 3 x forward)."""
    window = window or DEFAULT_WINDOW
    burn_in = DEFAULT_STREAM_BURN_IN if burn_in is None else burn_in
    steps = stream_cost(window, burn_in)
    dims = work.context_dims
    context = steps * sum(2 * (prev + work.token_dim) * dim for prev, dim in zip((dims[0],) + dims[:-1], dims))
    step = 3 * (sum(2 * (c + i) * o for c, i, o in work.token_layers) + 2 * work.token_layers[-1][2] * work.vocab_size)
    return {"window": window, "burn_in": burn_in, "block_tokens": block_tokens, "steps_per_token": steps,
            "context_mflop_per_token": context / 1e6, "step_mflop_per_token": step / 1e6, "overhead": context / step}


class StreamedContexts:
    """Per-layer contexts of ``streams`` computed on demand; reads like a :class:`ContextCache`.

    ``contexts(index)`` returns [B, dim_l] per layer for any token positions; ``epoch_batches`` gives an epoch's
    token batches with whole windows shuffled.
    """

    placement = "stream"

    def __init__(
        self,
        model,
        streams: TokenStreams,
        window: int = DEFAULT_WINDOW,
        burn_in: int = DEFAULT_STREAM_BURN_IN,
        tol: float = 1e-5,
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
        device: Union[str, torch.device, None] = None,
        name: str = "contexts",
        max_burn_in: int = DEFAULT_MAX_BURN_IN,
    ):
        if window < 1 or burn_in < 0 or block_tokens < 1 or not tol > 0:
            raise ValueError(f"streamed contexts need window >= 1, burn_in >= 0, block_tokens >= 1 and tol > 0; got "
                             f"window={window}, burn_in={burn_in}, block_tokens={block_tokens}, tol={tol}")
        model.check_ids(streams.inputs)
        self.model, self.streams, self.name = model, streams, name
        self.window, self.burn_in, self.tol = int(window), int(burn_in), float(tol)
        self.max_burn_in = max(int(max_burn_in), 2 * self.burn_in)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dims = list(model.context_block.dims)
        self.dtype = "float32"
        begins, stream_of = [], []
        for s, (start, end) in enumerate(zip(streams.starts.tolist(), streams.ends.tolist())):
            for begin in range(start, end, self.window):
                begins.append(begin)
                stream_of.append(s)
        self.begins = torch.tensor(begins, dtype=torch.int64)
        self.ends = torch.minimum(self.begins + self.window, streams.ends[torch.tensor(stream_of)])
        self.stream_starts = streams.starts[torch.tensor(stream_of)]
        self.block_windows = max(1, block_tokens // self.window)
        self._order = torch.arange(self.n_windows)
        self._rank = torch.arange(self.n_windows)  # window -> its place in the order
        self._blocks: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self.stats = {"blocks": 0, "windows": 0, "burn_in_extended": 0, "unsettled": 0, "max_start_gap": 0.0}

    # ---- sizes and bookkeeping (as ContextCache)
    def __len__(self) -> int:
        return self.streams.n_tokens

    @property
    def n_windows(self) -> int:
        return int(self.begins.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the contexts held at most at once: two blocks in fp32."""
        return 2 * self.block_windows * self.window * sum(self.dims) * 4

    def info(self) -> dict:
        return {"placement": "stream", "dtype": self.dtype, "tokens": len(self), "streams": self.streams.n_streams,
                "row_values": sum(self.dims), "bytes": self.nbytes, "path": None, "window": self.window,
                "burn_in": self.burn_in, "tol": self.tol, "block_windows": self.block_windows,
                "steps_per_token": stream_cost(self.window, self.burn_in), **self.stats}

    def close(self) -> None:
        self._blocks.clear()

    # ---- order
    def set_order(self, order: torch.Tensor) -> None:
        """The order in which windows will be read (a permutation of range(n_windows)); drops computed blocks."""
        if order.shape != (self.n_windows,):
            raise ValueError(f"a window order needs {self.n_windows} entries, got {tuple(order.shape)}")
        self._order = order.to(torch.int64)
        self._rank = torch.empty_like(self._order)
        self._rank[self._order] = torch.arange(self.n_windows)
        self._blocks.clear()

    def epoch_batches(self, seed: int, epoch: int, shuffle: bool, batch_size: int) -> list[torch.Tensor]:
        """The epoch's token batches: windows in the (seed, epoch) order, their tokens cut into batches."""
        self.set_order(epoch_order(self.n_windows, seed, epoch, shuffle))
        lengths = (self.ends - self.begins)[self._order]
        offsets = torch.repeat_interleave(self.begins[self._order] - torch.cumsum(lengths, 0) + lengths, lengths)
        return list((torch.arange(int(lengths.sum())) + offsets).split(batch_size))

    # ---- reading
    def contexts(self, index: Union[torch.Tensor, slice], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """Per-layer contexts [B, dim_l] of the tokens at ``index``, on the compute device."""
        positions = torch.arange(index.start, index.stop) if isinstance(index, slice) else index.cpu()
        windows = torch.searchsorted(self.begins, positions, right=True) - 1
        needed = set((self._rank[windows] // self.block_windows).unique().tolist())
        for block in list(self._blocks):
            if block not in needed:
                del self._blocks[block]
        for block in sorted(needed - set(self._blocks)):
            self._blocks[block] = self._compute(self._order[block * self.block_windows:
                                                            (block + 1) * self.block_windows])
        slot = torch.full((self.n_windows,), -1, dtype=torch.int64)  # window -> (block, row) of its contexts
        owner = torch.full((self.n_windows,), -1, dtype=torch.int64)
        for block in needed:
            ids = self._blocks[block][0]
            slot[ids], owner[ids] = torch.arange(ids.shape[0]), block
        rows_of, offsets = slot[windows], positions - self.begins[windows]
        out = []
        for layer in range(len(self.dims)):
            values = torch.empty(positions.shape[0], self.dims[layer], device=self.device)
            for block in needed:
                mask = owner[windows] == block
                values[mask.to(self.device)] = self._blocks[block][1][layer][
                    rows_of[mask].to(self.device), offsets[mask].to(self.device)]
            out.append(values.to(dtype))
        return out

    # ---- computing
    @torch.no_grad()
    def _run(self, begins: torch.Tensor, lengths: torch.Tensor, state: torch.Tensor, store) -> dict:
        """Token loops over rows starting at ``begins`` for ``lengths`` tokens (padded), from ``state``."""
        steps = int(lengths.max())
        pos = begins[:, None] + torch.arange(steps)[None, :]
        windows = self.streams.windows(pos.clamp(max=self.streams.n_tokens - 1).reshape(-1),
                                       self.model.cfg.num_input_tokens)
        windows[~valid_mask(lengths, steps).reshape(-1)] = -1
        # each distinct input is embedded and projected once (a block repeats few distinct token windows)
        key = torch.zeros(windows.shape[0], dtype=torch.int64)
        for column in windows.unbind(1):  # one integer per window of ids (ids >= -1)
            key = key * (self.model.cfg.vocab_size + 1) + column + 1
        keys, index = torch.unique(key, return_inverse=True)
        distinct = windows.new_empty(keys.shape[0], windows.shape[1])
        distinct[index] = windows
        weight_dtype = self.model.context_block.layers[0].linear.weight.dtype
        rows = token_inputs(self.model, distinct.to(self.device)).to(weight_dtype)
        inputs = TokenInputs(self.model.context_block, rows, index.reshape(len(begins), steps).to(self.device))
        outputs, _ = run_rows(plan_layers(self.model.context_block), inputs.span(), state, store)
        return outputs

    @torch.no_grad()
    def _start_states(self, ids: torch.Tensor) -> torch.Tensor:
        """The state entering each window's first kept token, from a checked burn-in ([W, ctx_dim]).

        Each window runs from a zero context ``b`` and ``2b`` tokens before it; when the two states agree within
        tol the longer one is kept, else ``b`` doubles. A burn-in that reaches the stream start is exact.
        """
        last = self.model.context_block.num_layers - 1
        begins, stream_starts = self.begins[ids], self.stream_starts[ids]
        states = torch.zeros(ids.shape[0], self.model.cfg.ctx_dim, device=self.device)
        todo, burn = torch.arange(ids.shape[0]), self.burn_in
        while todo.numel():
            short = torch.maximum(begins[todo] - burn, stream_starts[todo])
            long = torch.maximum(begins[todo] - 2 * burn, stream_starts[todo])
            exact = long == stream_starts[todo]
            run = begins[todo] > long  # a window at its stream start enters with the zero context
            unsettled = todo[:0]
            if bool(run.any()):
                n = int(run.sum())
                firsts = torch.cat([long[run], short[run]])
                lengths = begins[todo][run].repeat(2) - firsts
                state = torch.zeros(2 * n, self.model.cfg.ctx_dim, device=self.device)
                final = self._run(firsts, lengths.clamp(min=1), state, [last])[last]
                at = final[torch.arange(2 * n, device=self.device), (lengths - 1).clamp(min=0).to(self.device)]
                at[n:][lengths[n:].to(self.device) == 0] = 0.0  # short burn-in of length 0: the zero start
                states[todo[run].to(self.device)] = at[:n]
                gap = (at[:n] - at[n:]).abs().amax(dim=-1).cpu()
                checked = exact[run] | (gap <= self.tol) | (2 * burn >= self.max_burn_in)
                self.stats["unsettled"] += int((~exact[run] & (gap > self.tol) & (2 * burn >= self.max_burn_in)).sum())
                accepted = checked & ~exact[run]  # the residual of every state kept (exact ones have none)
                if bool(accepted.any()):
                    self.stats["max_start_gap"] = max(self.stats["max_start_gap"], float(gap[accepted].max()))
                unsettled = todo[run][~checked]
            self.stats["burn_in_extended"] += int(unsettled.numel())
            todo, burn = unsettled, 2 * burn
        return states

    @torch.no_grad()
    def _compute(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Every layer's contexts of windows ``ids``: [W, window, dim_l] per layer (padded past a short window)."""
        states = self._start_states(ids)
        lengths = self.ends[ids] - self.begins[ids]
        outputs = self._run(self.begins[ids], lengths, states, list(range(len(self.dims))))
        self.stats["blocks"] += 1
        self.stats["windows"] += int(ids.shape[0])
        return ids, [outputs[layer] for layer in range(len(self.dims))]


def epoch_batches(source, seed: int, epoch: int, shuffle: bool, batch_size: int) -> list[torch.Tensor]:
    """An epoch's token batches of a context cache (tokens shuffled) or of streamed contexts (windows shuffled)."""
    if isinstance(source, StreamedContexts):
        return source.epoch_batches(seed, epoch, shuffle, batch_size)
    return list(epoch_order(len(source), seed, epoch, shuffle).split(batch_size))


def streamed_contexts(model, streams: TokenStreams, window: Optional[int], burn_in: Optional[int], tol: float,
                      block_tokens: Optional[int], device=None, name: str = "contexts") -> StreamedContexts:
    """A :class:`StreamedContexts` with the defaults filled in for the None settings."""
    return StreamedContexts(model, streams, window or DEFAULT_WINDOW,
                            DEFAULT_STREAM_BURN_IN if burn_in is None else burn_in, tol,
                            block_tokens or DEFAULT_BLOCK_TOKENS, device, name)

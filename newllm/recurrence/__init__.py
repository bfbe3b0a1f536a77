"""Evaluating the context recurrence c_i = ContextBlock(c_{i-1}, x_i) over token streams.

Every method starts each stream from a given context and returns every layer's output per token
(``RecurrenceResult``), with the parallel passes it used:

- ``"loop"`` (:func:`token_loop`): the reference, token by token. Each layer's token share of its input projection
  is computed for all tokens at once; only the context share runs per token. Without autograd it runs a lean path
  (transposed contiguous weights, ``addmm``, in-place ReLU/residual, preallocated outputs).
- ``"sweeps"`` (:func:`parallel_sweeps`): Jacobi fixed-point iteration. Each sweep evaluates every token at once
  from the previous sweep's contexts shifted by one, until the max-abs change is <= tol. After m sweeps the first
  m tokens are exact, so it always terminates (and later sweeps skip that exact prefix). With ``fallback=True`` it
  hands the rest of the stream to the token loop once the remaining sweeps, extrapolated from the observed
  geometric decay of the change, would cost more than looping over the tokens not yet exact.
- ``"segments"`` (:func:`segment_contexts`): each stream is cut into windows evaluated as one batch of token
  loops. Window k starts ``burn_in`` tokens before its own segment from a zero context (or a guess), so it has
  forgotten that start by the time its segment begins (the map forgets about 2x per token on trained and fresh
  maps alike). Each window's state at the end of its burn-in is then checked against the previous window's value
  there; windows whose mismatch exceeds tol are re-run from that value (a batched block-Jacobi round, then, for
  maps that forget slowly, window by window in order). The result is a fixed point of the recurrence to tol at
  every segment boundary and exact token loops in between.
- ``"auto"``: ``"segments"``. Cost model (2-core CPU, 6 layers x 768): a step over R rows costs about a + c*R with
  a/c ~ 20 (one row reads the whole weight matrix); the loop pays a per token, a sweep c per token but needs ~20
  sweeps, segments pay (1 + burn_in/L)(a/R + c) per token: 4-6x fewer than the loop on one stream. On a GPU a is
  launch overhead and the same trade favours many short windows.

Independent streams (per-sample evaluation) are the batch dimension: pad them with :func:`pad_streams` (padding
goes at the end, so it never affects a stream's own tokens) and pass ``lengths``.

Modules: ``step`` (the lean batched step), ``inputs`` (token inputs, their views of token streams, results),
``solvers`` (the three methods and the entry points).
"""

from newllm.data.streams import valid_mask
from newllm.recurrence.inputs import EmbeddedStreams, RecurrenceResult, TokenInputs, pad_streams, token_inputs
from newllm.recurrence.solvers import (
    DEFAULT_BURN_IN,
    METHODS,
    auto_segment_len,
    default_max_rows,
    evaluate_contexts,
    evaluate_streams,
    forgetting_tokens,
    parallel_sweeps,
    segment_contexts,
    token_loop,
)

__all__ = ['evaluate_contexts', 'evaluate_streams', 'METHODS', 'DEFAULT_BURN_IN', 'RecurrenceResult', 'TokenInputs',
           'EmbeddedStreams', 'token_inputs', 'pad_streams', 'valid_mask', 'token_loop', 'parallel_sweeps',
           'segment_contexts', 'auto_segment_len', 'forgetting_tokens', 'default_max_rows']

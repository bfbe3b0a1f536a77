"""Context metrics (seed-spec 4.6), with every definition stated. Language-model metrics are in lm_metrics.py.

- Effective rank, exactly as the original: singular values s of the *uncentred* context matrix (fp64 SVD; no
  squaring), p_k = s_k / sum(s), ER = exp(-sum p_k ln(p_k + 1e-10)), reported as a share of the context width.
  ``centred=True`` subtracts the row mean first (then ER measures spread around the mean, not the mean direction).
  Matrices with more than ``max_rows`` rows use a seeded, deterministic row subsample; the row count is recorded
  because ER depends on it.
  ``exact=False`` (Phase 1's per-iteration tracking) takes the singular values from the fp32 Gram matrix X^T X on
  the contexts' device and an fp64 eigensolver on the CPU: no fp64 SVD every iteration (slow on GPUs with little
  fp64), ER within ~1e-6 relative of the SVD's on full-rank contexts, ~3e-4 on nearly rank-deficient ones.
- Actual rank: #{s_k > 1e-6}.
- Convergence rate: share of tokens whose mean squared change over dims is below the threshold.
- Identity mapping (one definition; the original had two that disagreed): the map is "identity" when the context
  it outputs is, on the stream itself, nearly the context it received: mean cos(c_{i-1}, c_i) > 0.95 over
  consecutive tokens of a stream. Why this one: F(c, x) ~ c is the trivial solution of the CVFP objective (every
  stream is a fixed point and the context records nothing about the tokens); measuring it on the contexts the map
  actually produces needs no extra forward pass, while the original's random N(0, I) probes were off the data's
  distribution, and its norm/deviation test duplicated the zero-solution and attractor flags below. A global
  attractor also reads as identity here (every context equal); the flags are reported side by side.
- Global attractor: mean pairwise L2 < 0.1 and mean pairwise cosine > 0.99 on a seeded row subsample.
- Zero solution: mean row norm < 0.1. Low diversity: ER < 30 % of the width. Sparsity: share of |value| < 0.01.

Memory: statistics over all N rows (identity, norm, sparsity) stream over blocks of ``BLOCK_ROWS`` rows in the
contexts' own dtype and accumulate in fp64 scalars, so no N x d copy is made; the ER and pairwise subsamples are at
most ``max_rows`` / ``pair_max_rows`` rows (:func:`context_metrics_bytes` gives the bound the memory planner uses).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

ER_LOG_EPS = 1e-10
RANK_TOL = 1e-6
IDENTITY_COSINE = 0.95
ATTRACTOR_L2 = 0.1
ATTRACTOR_COSINE = 0.99
ZERO_NORM = 0.1
LOW_DIVERSITY_PCT = 30.0
SPARSE_ABS = 0.01
BLOCK_ROWS = 16384  # rows per block of the streamed statistics (bounds their temporaries)


def _as_matrix(contexts: torch.Tensor) -> torch.Tensor:
    if contexts.dim() != 2:
        raise ValueError(f"expected a context matrix [tokens, ctx_dim], got shape {tuple(contexts.shape)}")
    if contexts.shape[0] == 0:
        raise ValueError("the context matrix has no rows: evaluate at least one token")
    return contexts.detach()


def subsample_rows(contexts: torch.Tensor, max_rows: int, seed: int = 0) -> torch.Tensor:
    """At most ``max_rows`` rows, chosen uniformly without replacement by a generator seeded with ``seed``
    (kept in their original order); all rows when there are no more than that."""
    if max_rows < 1:
        raise ValueError(f"max_rows={max_rows} must be >= 1")
    if contexts.shape[0] <= max_rows:
        return contexts
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(contexts.shape[0], generator=generator)[:max_rows].sort().values
    return contexts[index.to(contexts.device)]


@dataclass(frozen=True)
class EffectiveRank:
    er: float  # exp(entropy of the normalised singular values)
    er_pct: float  # er as % of dim
    actual_rank: int  # singular values > 1e-6
    rows: int  # rows the SVD used
    total_rows: int  # rows before subsampling
    dim: int
    centred: bool


def _singular_values(sample: torch.Tensor, exact: bool) -> torch.Tensor:
    if exact:
        return torch.linalg.svdvals(sample.to(torch.float64))
    sample = sample.float()
    gram = (sample.t() @ sample).cpu().to(torch.float64)
    return torch.linalg.eigvalsh(gram).clamp(min=0.0).sqrt().flip(0)


def effective_rank(
    contexts: torch.Tensor, max_rows: int = 10000, seed: int = 0, centred: bool = False, exact: bool = True
) -> EffectiveRank:
    """Effective rank of contexts [N, d] (see the module docstring), on at most ``max_rows`` seeded rows;
    ``exact=False``: from the Gram matrix's eigenvalues instead of an fp64 SVD (per-iteration tracking)."""
    matrix = _as_matrix(contexts)
    sample = subsample_rows(matrix, max_rows, seed)
    if centred:
        sample = sample - sample.mean(dim=0, keepdim=True)
    singular = _singular_values(sample, exact)
    total = float(singular.sum())
    if total == 0.0 or not math.isfinite(total):
        er = 0.0 if total == 0.0 else float("nan")
    else:
        p = singular / total
        er = float(torch.exp(-(p * torch.log(p + ER_LOG_EPS)).sum()))
    dim = matrix.shape[1]
    return EffectiveRank(
        er=er,
        er_pct=100.0 * er / dim,
        actual_rank=int((singular > RANK_TOL).sum()),
        rows=sample.shape[0],
        total_rows=matrix.shape[0],
        dim=dim,
        centred=centred,
    )


def per_token_mse(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Mean over dims of the squared change, per token: [N]."""
    if new.shape != old.shape:
        raise ValueError(f"context shapes differ: {tuple(new.shape)} vs {tuple(old.shape)}")
    return (new.detach() - old.detach()).pow(2).mean(dim=-1)


def convergence_rate(new: torch.Tensor, old: torch.Tensor, threshold: float) -> float:
    """Share of tokens whose mean squared change (over dims) is < threshold."""
    if not threshold > 0:
        raise ValueError(f"threshold={threshold} must be > 0")
    return float((per_token_mse(new, old) < threshold).to(torch.float64).mean())


@dataclass(frozen=True)
class IdentityCheck:
    mean_cosine: float  # mean cos(c_{i-1}, c_i) over consecutive tokens within streams (NaN: no pairs)
    pairs: int
    threshold: float
    is_identity: bool


def identity_mapping(
    contexts: torch.Tensor, lengths: Optional[Sequence[int]] = None, threshold: float = IDENTITY_COSINE
) -> IdentityCheck:
    """Is the context map (nearly) the identity on this stream? See the module docstring for the definition.

    ``contexts`` [N, d] are the exact carried contexts of one stream, or of several concatenated streams with
    ``lengths`` (pairs never cross a stream boundary).
    """
    matrix = _as_matrix(contexts)
    lengths = [matrix.shape[0]] if lengths is None else [int(n) for n in lengths]
    if sum(lengths) != matrix.shape[0]:
        raise ValueError(f"lengths sum to {sum(lengths)} but there are {matrix.shape[0]} context rows")
    # pair (i, i+1) counts unless row i is the last of its stream
    last_rows = torch.tensor(lengths, dtype=torch.long).cumsum(0) - 1
    keep = torch.ones(matrix.shape[0], dtype=torch.bool)
    keep[last_rows[last_rows >= 0]] = False
    total, pairs = 0.0, 0
    for start in range(0, matrix.shape[0] - 1, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, matrix.shape[0] - 1)
        a = torch.nn.functional.normalize(matrix[start:stop].float(), dim=-1)
        b = torch.nn.functional.normalize(matrix[start + 1 : stop + 1].float(), dim=-1)
        mask = keep[start:stop].to(a.device)
        total += float((a * b).sum(dim=-1)[mask].sum(dtype=torch.float64))
        pairs += int(mask.sum())
    if pairs == 0:
        return IdentityCheck(float("nan"), 0, threshold, False)
    mean = total / pairs
    return IdentityCheck(mean, pairs, threshold, mean > threshold)


def _row_statistics(matrix: torch.Tensor) -> tuple[float, float]:
    """Mean row norm and the share of |value| < SPARSE_ABS, over row blocks (no N x d copy)."""
    norm_sum, small = 0.0, 0
    for start in range(0, matrix.shape[0], BLOCK_ROWS):
        block = matrix[start : start + BLOCK_ROWS].float()
        norm_sum += float(block.norm(dim=-1).sum(dtype=torch.float64))
        small += int((block.abs() < SPARSE_ABS).sum())
    return norm_sum / matrix.shape[0], small / matrix.numel()


def context_metrics_bytes(dim: int, max_rows: int = 10000, pair_max_rows: int = 2000,
                          element_bytes: int = 4) -> int:
    """An upper bound of the memory :func:`context_metrics` allocates for contexts of width ``dim`` (besides the
    contexts themselves): the fp64 ER sample and its SVD workspace, the pairwise sample and one cdist block, and the
    streamed statistics' row-block temporaries."""
    er = 3 * max_rows * dim * 8 + 4 * dim * dim * 8
    pairwise = pair_max_rows * dim * 8 + 1024 * pair_max_rows * 8
    blocks = 4 * BLOCK_ROWS * dim * max(element_bytes, 4)
    return er + pairwise + blocks


def mean_pairwise_l2(rows: torch.Tensor, block: int = 1024) -> float:
    """Mean Euclidean distance over all pairs i != j (fp64, in blocks to bound memory)."""
    n = rows.shape[0]
    if n < 2:
        return float("nan")
    rows = rows.to(torch.float64)
    total = 0.0
    for start in range(0, n, block):
        total += float(torch.cdist(rows[start : start + block], rows).sum())
    return total / (n * (n - 1))


def mean_pairwise_cosine(rows: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs i != j, exactly, in O(n d): (|sum u|^2 - sum |u|^2) / (n (n-1))."""
    n = rows.shape[0]
    if n < 2:
        return float("nan")
    unit = torch.nn.functional.normalize(rows.to(torch.float64), dim=-1)  # zero rows stay zero
    pair_sum = float(unit.sum(dim=0).pow(2).sum() - unit.pow(2).sum())
    return pair_sum / (n * (n - 1))


@dataclass(frozen=True)
class ContextMetrics:
    """Everything seed-spec 4.6 reports about a context matrix (see the module docstring)."""

    tokens: int
    dim: int
    er: float
    er_pct: float
    er_rows: int
    er_centred: bool
    actual_rank: int
    mean_norm: float
    mean_pairwise_l2: float
    mean_pairwise_cosine: float
    pair_rows: int
    sparsity: float
    identity_mean_cosine: float
    is_identity: bool
    global_attractor: bool
    zero_solution: bool
    low_diversity: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def context_metrics(
    contexts: torch.Tensor,
    lengths: Optional[Sequence[int]] = None,
    *,
    max_rows: int = 10000,
    pair_max_rows: int = 2000,
    seed: int = 0,
    centred: bool = False,
) -> ContextMetrics:
    """All context metrics of contexts [N, d] (streams concatenated, with ``lengths`` when several).

    ER uses at most ``max_rows`` rows; the pairwise statistics use at most ``pair_max_rows`` (the original used
    5,000; 2,000 rows already give ~2M pairs for a mean). Both subsamples are seeded with ``seed``.
    """
    matrix = _as_matrix(contexts)
    rank = effective_rank(matrix, max_rows=max_rows, seed=seed, centred=centred)
    pairs = subsample_rows(matrix, pair_max_rows, seed)
    l2 = mean_pairwise_l2(pairs)
    cosine = mean_pairwise_cosine(pairs)
    identity = identity_mapping(matrix, lengths)
    mean_norm, sparsity = _row_statistics(matrix)
    return ContextMetrics(
        tokens=matrix.shape[0],
        dim=matrix.shape[1],
        er=rank.er,
        er_pct=rank.er_pct,
        er_rows=rank.rows,
        er_centred=centred,
        actual_rank=rank.actual_rank,
        mean_norm=mean_norm,
        mean_pairwise_l2=l2,
        mean_pairwise_cosine=cosine,
        pair_rows=pairs.shape[0],
        sparsity=sparsity,
        identity_mean_cosine=identity.mean_cosine,
        is_identity=identity.is_identity,
        global_attractor=bool(l2 < ATTRACTOR_L2 and cosine > ATTRACTOR_COSINE),
        zero_solution=mean_norm < ZERO_NORM,
        low_diversity=rank.er_pct < LOW_DIVERSITY_PCT,
    )

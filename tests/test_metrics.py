"""Context metrics: the original's definitions, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from newllm.evaluation.context_metrics import (
    context_metrics,
    convergence_rate,
    effective_rank,
    identity_mapping,
    mean_pairwise_cosine,
    mean_pairwise_l2,
    per_token_mse,
    subsample_rows,
)


def numpy_er(matrix: np.ndarray) -> float:
    s = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p + 1e-10)).sum()))


def test_effective_rank_matches_numpy_on_a_random_matrix():
    x = torch.randn(300, 24, generator=torch.Generator().manual_seed(0))
    result = effective_rank(x)
    assert result.er == pytest.approx(numpy_er(x.numpy()), rel=1e-9)
    assert result.er_pct == pytest.approx(100 * result.er / 24)
    assert result.actual_rank == 24 and result.rows == 300 and result.total_rows == 300 and not result.centred


def test_effective_rank_extremes():
    rank_one = torch.outer(torch.arange(1.0, 51.0), torch.ones(16))
    one = effective_rank(rank_one)
    assert one.er == pytest.approx(1.0, abs=1e-6) and one.actual_rank == 1
    flat_spectrum = effective_rank(torch.eye(16) * 3.0)
    assert flat_spectrum.er == pytest.approx(16.0, rel=1e-7)  # rel: the 1e-10 inside the log
    assert flat_spectrum.er_pct == pytest.approx(100.0)
    assert effective_rank(torch.zeros(5, 4)).er == 0.0


def test_centred_option_removes_the_mean_direction():
    generator = torch.Generator().manual_seed(1)
    x = 10.0 + 0.1 * torch.randn(400, 20, generator=generator)  # one big common direction plus small noise
    uncentred = effective_rank(x)
    centred = effective_rank(x, centred=True)
    assert uncentred.er < 3.0 < centred.er
    assert centred.er == pytest.approx(numpy_er((x - x.mean(0)).numpy()), rel=1e-6)


def test_row_subsample_is_deterministic_and_recorded():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(2))
    a = effective_rank(x, max_rows=100, seed=7)
    b = effective_rank(x, max_rows=100, seed=7)
    c = effective_rank(x, max_rows=100, seed=8)
    assert a == b and a.rows == 100 and a.total_rows == 500
    assert a.er != c.er
    rows = subsample_rows(x, 100, seed=7)
    assert torch.equal(rows, subsample_rows(x, 100, seed=7))
    kept = [int(np.where((x == row).all(dim=1).numpy())[0][0]) for row in rows]
    assert kept == sorted(kept)  # original order preserved
    assert subsample_rows(x, 1000) is x


def test_convergence_rate_counts_tokens_below_the_threshold():
    old = torch.zeros(4, 3)
    new = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.1, 0.1], [1.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    assert per_token_mse(new, old).tolist() == pytest.approx([0.0, 0.01, 1 / 3, 4.0])
    assert convergence_rate(new, old, 0.03) == 0.5
    assert convergence_rate(new, old, 1.0) == 0.75
    with pytest.raises(ValueError):
        convergence_rate(new, old, 0.0)
    with pytest.raises(ValueError):
        convergence_rate(new, old[:3], 0.1)


def test_identity_mapping_on_a_still_and_a_moving_stream():
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(1, 16, generator=generator)
    still = base + 0.01 * torch.randn(50, 16, generator=generator)
    moving = torch.randn(50, 16, generator=generator)
    assert identity_mapping(still).is_identity
    check = identity_mapping(moving)
    assert not check.is_identity and check.pairs == 49 and abs(check.mean_cosine) < 0.3


def test_identity_pairs_never_cross_stream_boundaries():
    a = torch.ones(3, 4)
    b = -torch.ones(2, 4)  # cos(a, b) = -1: only a pair across the boundary would see it
    joined = torch.cat([a, b])
    assert identity_mapping(joined).mean_cosine < 1.0
    separate = identity_mapping(joined, lengths=[3, 2])
    assert separate.pairs == 3 and separate.mean_cosine == pytest.approx(1.0)
    with pytest.raises(ValueError, match="lengths"):
        identity_mapping(joined, lengths=[3, 3])
    assert math.isnan(identity_mapping(joined, lengths=[1, 1, 1, 1, 1]).mean_cosine)


def test_pairwise_statistics_match_brute_force():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    n = x.shape[0]
    distances = [float((x[i] - x[j]).norm()) for i in range(n) for j in range(n) if i != j]
    unit = x / x.norm(dim=1, keepdim=True)
    cosines = [float(unit[i] @ unit[j]) for i in range(n) for j in range(n) if i != j]
    assert mean_pairwise_l2(x, block=7) == pytest.approx(np.mean(distances), rel=1e-9)
    assert mean_pairwise_cosine(x) == pytest.approx(np.mean(cosines), abs=1e-12)


def test_flags_for_attractor_zero_solution_and_healthy_contexts():
    same = torch.ones(100, 8) * 2.0
    attractor = context_metrics(same)
    assert attractor.global_attractor and not attractor.zero_solution and attractor.is_identity
    assert attractor.low_diversity  # ER = 1 of 8
    zeros = context_metrics(torch.zeros(100, 8) + 1e-3)
    assert zeros.zero_solution
    healthy = context_metrics(torch.randn(300, 8, generator=torch.Generator().manual_seed(5)))
    assert not (healthy.global_attractor or healthy.zero_solution or healthy.is_identity or healthy.low_diversity)
    assert healthy.tokens == 300 and healthy.er_rows == 300 and healthy.pair_rows == 300
    assert 0.0 <= healthy.sparsity < 0.05
    assert set(healthy.to_dict()) >= {"er_pct", "actual_rank", "global_attractor", "zero_solution", "is_identity"}


def test_bad_context_matrices_raise():
    with pytest.raises(ValueError, match="tokens, ctx_dim"):
        effective_rank(torch.ones(5))
    with pytest.raises(ValueError, match="no rows"):
        context_metrics(torch.ones(0, 4))
    with pytest.raises(ValueError, match="max_rows"):
        subsample_rows(torch.ones(3, 2), 0)

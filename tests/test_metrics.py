"""Context metrics: the original's definitions, checked against independent computations."""

from __future__ import annotations

import math
from pathlib import Path

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


def test_streamed_statistics_equal_the_whole_matrix_computation(monkeypatch):
    import newllm.evaluation.context_metrics as cm

    torch.manual_seed(1)
    contexts = torch.randn(50, 6)
    lengths = [20, 1, 0, 29]
    whole = cm.context_metrics(contexts, lengths)
    monkeypatch.setattr(cm, "BLOCK_ROWS", 7)  # blocks that cut streams and pairs at odd places
    blocked = cm.context_metrics(contexts, lengths)
    assert blocked.identity_mean_cosine == pytest.approx(whole.identity_mean_cosine, rel=1e-6)
    assert blocked.mean_norm == pytest.approx(whole.mean_norm, rel=1e-6)
    assert blocked.sparsity == whole.sparsity
    # against a direct fp64 reference: consecutive pairs within each stream only
    unit = torch.nn.functional.normalize(contexts.double(), dim=-1)
    pairs = [(unit[i] * unit[i + 1]).sum() for s, n in ((0, 20), (21, 29)) for i in range(s, s + n - 1)]
    assert blocked.identity_mean_cosine == pytest.approx(float(torch.stack(pairs).mean()), rel=1e-6)
    assert blocked.mean_norm == pytest.approx(float(contexts.double().norm(dim=-1).mean()), rel=1e-6)


def test_gram_effective_rank_tracks_the_svd():
    torch.manual_seed(2)
    full = torch.nn.functional.layer_norm(torch.randn(3000, 64) @ torch.randn(64, 64), (64,))
    low = torch.randn(3000, 5) @ torch.randn(5, 64) + 0.01 * torch.randn(3000, 64)
    for contexts, rel in ((full, 1e-5), (low, 1e-3)):
        exact = effective_rank(contexts)
        fast = effective_rank(contexts, exact=False)
        assert fast.er == pytest.approx(exact.er, rel=rel) and fast.rows == exact.rows


def test_context_metrics_make_no_full_size_copies(tmp_path):
    # in a fresh process, the peak RSS that context_metrics adds on top of a 400 MB context matrix: the first
    # version made about three fp64 copies of it (~2.4 GB); streamed, it needs well under the matrix's own size
    script = tmp_path / "peak.py"
    script.write_text(
        "import resource, torch\n"
        "from newllm.evaluation.context_metrics import context_metrics, context_metrics_bytes\n"
        "torch.set_num_threads(1)\n"
        "x = torch.randn(400_000, 256)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "context_metrics(x, [200_000, 200_000], max_rows=4000)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print(after - before, x.numel() * 4, context_metrics_bytes(256, max_rows=4000))\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    added, matrix_bytes, bound = (int(v) for v in out.stdout.split())
    assert added < 0.5 * matrix_bytes, f"metrics added {added / 2**20:.0f} MiB over a {matrix_bytes / 2**20:.0f} MiB matrix"
    assert added < bound + 64 * 2**20

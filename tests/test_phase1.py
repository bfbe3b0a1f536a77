"""Phase 1: the batched solvers against token-by-token references, losses, stopping and settings."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from newllm.config.models import ModelConfig
from newllm.config.training import Phase1Config
from newllm.data.streams import split_streams
from newllm.experiments.phase1_grid import phase1_grid
from newllm.models.cvfp import CVFPModel
from newllm.recurrence import evaluate_contexts, forgetting_tokens
from newllm.training.phase1 import (
    FORGETTING_PROBE_TOKENS,
    accumulate_phase1_gradients,
    diversity_term,
    phase1_loss,
    prepare_streams,
    train_phase1,
)

VOCAB = 80


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed: int = 0, dims: int = 32, layers: int = 2) -> CVFPModel:
    torch.manual_seed(seed)
    return CVFPModel(ModelConfig(vocab_size=VOCAB, ctx_dim=dims, embed_dim=dims, num_layers=layers, embedding="random"))


def token_ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def cfg(**changes) -> Phase1Config:
    return dataclasses.replace(Phase1Config(dist_reg_weight=0.7, lr=0.005), **changes)


def grads(block) -> list[torch.Tensor]:
    return [p.grad.clone() for p in block.parameters()]


def per_token_outputs(block, x: torch.Tensor) -> torch.Tensor:
    """The original sequential trainer's forward: token by token, incoming context detached at every token."""
    c = x.new_zeros(1, block.ctx_dim)
    outputs = []
    for i in range(x.shape[0]):
        y = block(c.detach(), x[i : i + 1])
        outputs.append(y)
        c = y
    return torch.cat(outputs)


def reference_sequential_trainer(model, ids, config: Phase1Config, iterations: int):
    """A plain token-by-token implementation of the sequential solver (target = previous iteration)."""
    block = model.context_block
    with torch.no_grad():
        x = model.embed_tokens(ids)
        previous = per_token_outputs(block, x)
    optimizer = torch.optim.Adam(block.parameters(), lr=config.lr)
    losses = []
    for _ in range(1, iterations):
        outputs = per_token_outputs(block, x)
        loss, _, _ = phase1_loss(outputs, previous, config.dist_reg_weight, config.diversity)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(block.parameters(), config.grad_clip)
        optimizer.step()
        previous = outputs.detach()
        losses.append(float(loss.detach()))
    return losses, previous


@pytest.mark.parametrize("diversity", ["dispersion", "dispersion_rms"])
def test_batched_step_gradients_equal_the_token_by_token_reference(diversity):
    model = make_model()
    block = model.context_block
    with torch.no_grad():
        x = model.embed_tokens(token_ids(150))
    target = torch.randn(150, 32, generator=torch.Generator().manual_seed(5))

    block.zero_grad()
    ref_loss, _, _ = phase1_loss(per_token_outputs(block, x), target, 0.6, diversity)
    ref_loss.backward()
    ref_grads = grads(block)

    exact = evaluate_contexts(block, x[None], tol=1e-6).final[0]
    incoming = torch.cat([torch.zeros(1, 32), exact[:-1]])
    block.zero_grad()
    stats = accumulate_phase1_gradients(block, incoming, x, target, 0.6, diversity)
    assert stats.loss == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    for got, want in zip(grads(block), ref_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("diversity", ["dispersion", "dispersion_rms"])
def test_chunked_accumulation_equals_the_unchunked_loss_and_gradients(diversity):
    model = make_model(layers=3)
    block = model.context_block
    generator = torch.Generator().manual_seed(6)
    incoming, target = torch.randn(97, 32, generator=generator), torch.randn(97, 32, generator=generator)
    with torch.no_grad():
        x = model.embed_tokens(token_ids(97))
    block.zero_grad()
    whole = accumulate_phase1_gradients(block, incoming, x, target, 0.8, diversity, chunk_size=None)
    whole_grads = grads(block)
    block.zero_grad()
    chunked = accumulate_phase1_gradients(block, incoming, x, target, 0.8, diversity, chunk_size=20)
    assert chunked.loss == pytest.approx(whole.loss, rel=1e-6)
    assert chunked.cvfp == pytest.approx(whole.cvfp, rel=1e-6)
    assert chunked.diversity == pytest.approx(whole.diversity, rel=1e-6)
    assert torch.allclose(chunked.outputs, whole.outputs, atol=1e-6)
    for got, want in zip(grads(block), whole_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("k", [1, 2])
def test_distinct_token_inputs_reproduce_every_token(k):
    torch.manual_seed(0)
    model = CVFPModel(ModelConfig(vocab_size=12, ctx_dim=16, embed_dim=16, num_layers=2, embedding="random",
                                  num_input_tokens=k))
    samples = [torch.randint(0, 12, (n,), generator=torch.Generator().manual_seed(n)) for n in (40, 3, 25)]
    streams = prepare_streams(model, samples, "per_sample")
    assert streams.distinct.shape[0] < streams.n_tokens  # 12 ids (k-grams) repeat in 68 tokens
    assert torch.equal(streams.distinct[streams.token_index], streams.x)


def test_distinct_inputs_give_the_same_loss_and_gradients():
    model = make_model(layers=3)
    block = model.context_block
    streams = prepare_streams(model, token_ids(300))
    generator = torch.Generator().manual_seed(8)
    incoming, target = torch.randn(300, 32, generator=generator), torch.randn(300, 32, generator=generator)
    block.zero_grad()
    dense = accumulate_phase1_gradients(block, incoming, streams.x, target, 0.6, chunk_size=70)
    dense_grads = grads(block)
    block.zero_grad()
    indexed = accumulate_phase1_gradients(block, incoming, streams.distinct, target, 0.6, chunk_size=70,
                                          token_index=streams.token_index)
    assert indexed.loss == pytest.approx(dense.loss, rel=1e-6)
    assert torch.allclose(indexed.outputs, dense.outputs, atol=1e-6)
    for got, want in zip(grads(block), dense_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_sequential_solver_reproduces_a_token_by_token_trainer():
    # float64 with a tight tolerance: in float32, Adam's first steps (about lr * sign(g)) turn rounding noise in
    # near-zero gradient entries into ~lr weight differences, between any two orderings of the same sums
    ids = token_ids(120)
    config = cfg(solver="sequential", max_iterations=4, min_iterations=4, final_contexts="last", tol=1e-12)
    reference_model = make_model().double()
    ref_losses, ref_last = reference_sequential_trainer(reference_model, ids, config, iterations=4)
    model = make_model().double()
    result = train_phase1(model, ids, config, progress=False)
    assert result.iterations == 4 and result.steps == 3 and not result.converged
    assert result.history["loss"].iloc[1:].tolist() == pytest.approx(ref_losses, rel=1e-9, abs=1e-12)
    assert float((result.contexts - ref_last).abs().max()) <= 1e-9
    for got, want in zip(model.context_block.parameters(), reference_model.context_block.parameters()):
        assert torch.allclose(got, want, atol=1e-10)


def test_parallel_solver_is_deterministic_and_touches_only_the_context_block():
    ids = token_ids(200)
    config = cfg(solver="parallel", max_iterations=4, min_iterations=4)
    model = make_model()
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("context_block")}
    before = [p.detach().clone() for p in model.context_block.parameters()]
    first = train_phase1(model, ids, config, progress=False)
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(before, model.context_block.parameters()))
    second = train_phase1(make_model(), ids, config, progress=False)
    assert first.history["loss"].tolist()[1:] == second.history["loss"].tolist()[1:]
    assert (first.history["eval_method"].iloc[1:] == "parallel").all()


def test_parallel_noise_changes_the_inputs_and_sweeps_per_step_refines_them():
    ids = token_ids(150)
    quiet = train_phase1(make_model(), ids, cfg(noise_std=0.0, max_iterations=3, min_iterations=3), progress=False)
    noisy = train_phase1(make_model(), ids, cfg(noise_std=0.5, max_iterations=3, min_iterations=3), progress=False)
    assert quiet.history["cvfp"].iloc[1] < 1e-10 < noisy.history["cvfp"].iloc[1]  # iteration 1 reads exact contexts
    swept = train_phase1(make_model(), ids, cfg(sweeps_per_step=3, max_iterations=3, min_iterations=3), progress=False)
    assert swept.history["eval_sweeps"].iloc[1:].tolist() == [3, 3]


def test_history_columns_callback_and_metrics():
    seen = []
    result = train_phase1(make_model(), token_ids(100), cfg(max_iterations=3, min_iterations=3),
                          val_ids=token_ids(60, 9), progress=False, callback=seen.append)
    history = result.history
    for column in ("iteration", "seconds", "loss", "cvfp", "diversity", "converged_ratio", "train_er_pct",
                   "grad_norm", "eval_method", "eval_sweeps", "metrics_seconds"):
        assert column in history.columns
    assert history["iteration"].tolist() == [0, 1, 2]
    assert [row["iteration"] for row in seen] == [0, 1, 2]
    assert np.isnan(history["loss"].iloc[0]) and np.isfinite(history["loss"].iloc[1:]).all()
    assert result.contexts.shape == (100, 32) and result.lengths == [100]
    assert result.val_contexts.shape == (60, 32) and result.val_metrics.tokens == 60
    assert 0 < result.train_metrics.er_pct <= 100


def test_final_contexts_exact_are_the_recurrence_under_the_final_weights():
    model = make_model()
    ids = token_ids(90)
    result = train_phase1(model, ids, cfg(solver="parallel", max_iterations=3, min_iterations=3), progress=False)
    with torch.no_grad():
        expected = evaluate_contexts(model.context_block, model.embed_tokens(ids)[None], method="loop").final[0]
    assert float((result.contexts - expected).abs().max()) <= 1e-4


def test_fixed_target_is_the_iteration_zero_output():
    model = make_model()
    ids = token_ids(80)
    with torch.no_grad():
        first = evaluate_contexts(model.context_block, model.embed_tokens(ids)[None], method="loop").final[0]
    result = train_phase1(model, ids, cfg(solver="sequential", target="fixed", final_contexts="last", max_iterations=4,
                                          min_iterations=4), progress=False)
    assert result.history["cvfp"].iloc[-1] == pytest.approx(float((result.contexts - first).pow(2).mean()), rel=1e-4)


def test_random_first_pass():
    result = train_phase1(make_model(), token_ids(80), cfg(first_pass="random", max_iterations=2, min_iterations=2),
                          progress=False)
    assert result.history["eval_method"].iloc[0] == "random"
    assert result.history["cvfp"].iloc[1] > 0.5  # the targets were N(0, 0.01^2), the outputs are LayerNorm-ed


def test_early_stopping_and_the_same_stop_for_larger_budgets():
    ids = token_ids(100)
    # a vanishing learning rate leaves the map unchanged, so every token has converged from iteration 1 on
    still = cfg(solver="sequential", lr=1e-12, min_iterations=3)
    for max_iterations in (5, 8):
        result = train_phase1(make_model(), ids, dataclasses.replace(still, max_iterations=max_iterations),
                              progress=False)
        assert result.converged and result.stopped_early
        assert result.iterations == 3 and result.steps == 2
        assert result.history["converged_ratio"].iloc[-1] == 1.0
    never = train_phase1(make_model(), ids, cfg(min_converged_ratio=1.01, max_iterations=4, min_iterations=2),
                         progress=False)
    assert never.iterations == 4 and not never.converged and not never.stopped_early


def test_non_finite_loss_stops_with_a_clear_error():
    model = make_model()
    with torch.no_grad():
        model.context_block.layers[0].linear.weight[0, 0] = float("nan")
    weights = [p.detach().clone() for p in model.context_block.parameters()]
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train_phase1(model, token_ids(50), cfg(first_pass="random", max_iterations=3, min_iterations=3),
                     progress=False)
    for before, after in zip(weights, model.context_block.parameters()):
        assert torch.equal(before.isnan(), after.isnan())
        assert torch.equal(before.nan_to_num(), after.nan_to_num())  # no step was taken


def test_per_sample_streams():
    samples = [token_ids(n, seed=20 + i) for i, n in enumerate([30, 7, 45, 1])]
    model = make_model()
    result = train_phase1(model, samples, cfg(solver="sequential", streams="per_sample", max_iterations=3,
                                              min_iterations=3), val_ids=samples[:2], progress=False)
    assert result.lengths == [30, 7, 45, 1] and result.contexts.shape == (83, 32)
    with torch.no_grad():
        expected = torch.cat([
            evaluate_contexts(model.context_block, model.embed_tokens(s)[None], method="loop").final[0] for s in samples
        ])
    assert float((result.contexts - expected).abs().max()) <= 1e-4
    assert result.val_contexts.shape == (37, 32)
    concat = train_phase1(make_model(), samples, cfg(max_iterations=2, min_iterations=2), progress=False)
    assert concat.lengths == [83]


def test_stream_inputs_are_parsed_and_checked():
    assert [s.tolist() for s in split_streams([1, 2, 3])] == [[1, 2, 3]]
    assert len(split_streams(np.zeros((3, 4), dtype=np.int64))) == 3
    assert [len(s) for s in split_streams([[1, 2], np.array([3])])] == [2, 1]
    with pytest.raises(ValueError, match="empty"):
        split_streams([[1], []])
    with pytest.raises(ValueError, match="integer"):
        split_streams(torch.ones(4))
    model = make_model()
    with pytest.raises(ValueError, match="vocab_size"):
        prepare_streams(model, torch.tensor([0, VOCAB]))
    with pytest.raises(ValueError, match="streams="):
        prepare_streams(model, token_ids(5), "both")


def test_diversity_terms_and_their_size_dependence():
    y = torch.randn(50, 8, generator=torch.Generator().manual_seed(7))
    doubled = torch.cat([y, y])
    spread = float((y - y.mean(0)).norm())
    assert float(diversity_term(y, "dispersion")) == pytest.approx(-spread / 50)
    assert float(diversity_term(y, "dispersion_rms")) == pytest.approx(-spread / 50**0.5)
    # the rms variant is size-invariant, the original shrinks like 1 / sqrt(n)
    assert float(diversity_term(doubled, "dispersion_rms")) == pytest.approx(float(diversity_term(y, "dispersion_rms")))
    ratio = float(diversity_term(doubled, "dispersion")) / float(diversity_term(y, "dispersion"))
    assert ratio == pytest.approx(2**-0.5)


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"dist_reg_weight": 1.5}, "dist_reg_weight"),
        ({"dist_reg_weight": -0.1}, "dist_reg_weight"),
        ({"tol": 0.0}, "tol"),
        ({"tol": -1e-5}, "tol"),
        ({"max_iterations": 3, "min_iterations": 5}, "max_iterations"),
        ({"solver": "sequential", "sweeps_per_step": 2}, "sweeps_per_step"),
        ({"recurrence": "magic"}, "recurrence"),
        ({"final_contexts": "best"}, "final_contexts"),
        ({"solver": "jacobi"}, "solver"),
    ],
)
def test_bad_settings_raise_clear_errors(changes, field):
    with pytest.raises(ValueError, match=f"Phase1Config.{field}="):
        Phase1Config(**changes)


def test_grid_records_the_iterations_actually_run():
    table = phase1_grid(
        make_model, token_ids(80), token_ids(40, 3), iterations=[2, 3], weights=[0.5],
        solvers=["sequential", "parallel"], base_cfg=cfg(min_iterations=2), progress=False,
    )
    assert len(table) == 4
    assert set(table.columns) >= {"solver", "max_iterations", "iterations_run", "dist_reg_weight", "seconds",
                                  "train_er_pct", "val_er_pct", "converged_ratio", "stopped_early"}
    assert (table["iterations_run"] <= table["max_iterations"]).all()
    assert table["val_er_pct"].between(0, 100).all()


def test_phase1_reports_the_trained_maps_forgetting_length():
    model = make_model()
    ids = token_ids(400)
    result = train_phase1(model, ids, cfg(max_iterations=2, min_iterations=2), progress=False)
    x = model.embed_tokens(ids[:FORGETTING_PROBE_TOKENS]).detach()
    assert result.forgetting_tokens == forgetting_tokens(model.context_block, x, cfg().tol, seed=cfg().seed)
    assert result.forgetting_tokens is None or 1 <= result.forgetting_tokens <= FORGETTING_PROBE_TOKENS


def test_phase1_backs_off_a_device_oom_in_the_step_and_the_recurrence(monkeypatch):
    import newllm.training.phase1 as phase1_module

    torch.manual_seed(0)
    model = CVFPModel(ModelConfig(vocab_size=50, ctx_dim=16, embed_dim=16, num_layers=2, embedding="random"))
    ids = torch.randint(0, 50, (120,))
    cfg = Phase1Config(solver="sequential", max_iterations=3, min_iterations=3, chunk_size=64, recurrence="loop")
    reference = train_phase1(copy.deepcopy(model), ids, cfg, progress=False)

    real_step, real_eval = phase1_module.accumulate_phase1_gradients, phase1_module.evaluate_contexts
    chunks, rows = [], []

    def step(*args):
        chunks.append(args[6])
        if args[6] > 32:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_step(*args)

    def evaluate(*args, **kwargs):
        rows.append(kwargs["max_rows"])
        if kwargs["max_rows"] > 32:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasSgemm`")
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(phase1_module, "accumulate_phase1_gradients", step)
    monkeypatch.setattr(phase1_module, "evaluate_contexts", evaluate)
    with pytest.warns(RuntimeWarning, match="out of device memory"):
        result = train_phase1(copy.deepcopy(model), ids, cfg, progress=False)
    assert chunks[:2] == [64, 32] and set(chunks[2:]) == {32}  # halved once, then kept
    assert rows[:3] == [128, 64, 32] and set(rows[3:]) == {32}
    # chunked gradients and batched rows are exact: the first step's loss and gradient are those without the OOMs
    # (later iterations differ by rounding that Adam's sign-like first update amplifies to ~lr)
    for column in ("loss", "grad_norm", "cvfp", "diversity"):
        assert result.history[column].iloc[1] == pytest.approx(reference.history[column].iloc[1], rel=1e-5)
    assert result.iterations == reference.iterations

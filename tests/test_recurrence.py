"""Every way of evaluating the context recurrence against the plainest token-by-token reference."""

from __future__ import annotations

import pytest
import torch

from newllm.config.models import ModelConfig
from newllm.config.training import Phase1Config
from newllm.models.cvfp import ContextBlock, CVFPModel
from newllm.recurrence import (
    RecurrenceResult,
    TokenInputs,
    auto_segment_len,
    evaluate_contexts,
    evaluate_streams,
    forgetting_tokens,
    pad_streams,
    parallel_sweeps,
    segment_contexts,
    token_loop,
)
from newllm.training.phase1 import train_phase1

TOL = 1e-5
EXACT = 1e-4  # max-abs agreement required of every method with the reference (fp32)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_block(seed: int = 0, dims: int = 32, layers: int = 2, all_layers: bool = True) -> ContextBlock:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=50, ctx_dim=dims, embed_dim=dims, num_layers=layers, embedding="random",
                      token_input_all_layers=all_layers)
    return ContextBlock(cfg)


def token_inputs(batch: int, steps: int, dims: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.layer_norm(torch.randn(batch, steps, dims, generator=generator), (dims,))


def reference(block: ContextBlock, x: torch.Tensor, context: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The plainest recurrence: block.forward_all one token at a time."""
    c = torch.zeros(x.shape[0], block.ctx_dim) if context is None else context
    per_layer = [[] for _ in range(block.num_layers)]
    with torch.no_grad():
        for i in range(x.shape[1]):
            outs = block.forward_all(c, x[:, i])
            for store, out in zip(per_layer, outs):
                store.append(out)
            c = outs[-1]
    return [torch.stack(store, dim=1) for store in per_layer]


def max_diff(result: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    assert len(result) == len(ref)
    return max(float((a - b).abs().max()) for a, b in zip(result, ref))


@pytest.fixture(scope="module")
def trained_block() -> ContextBlock:
    """A map after a few Phase-1 steps (the recurrence of a trained map may forget differently)."""
    torch.manual_seed(3)
    model = CVFPModel(ModelConfig(vocab_size=60, ctx_dim=32, embed_dim=32, num_layers=3, embedding="random"))
    ids = torch.randint(0, 60, (160,), generator=torch.Generator().manual_seed(4))
    cfg = Phase1Config(solver="parallel", max_iterations=4, min_iterations=4, dist_reg_weight=0.9, lr=0.01)
    train_phase1(model, ids, cfg, progress=False)
    return model.context_block


def test_fast_loop_equals_autograd_loop_and_reference():
    block = make_block()
    x = token_inputs(2, 60, 32)
    context = torch.randn(2, 32)
    ref = reference(block, x, context)
    with torch.no_grad():
        fast = token_loop(block, x, context)
    graph = token_loop(block, x, context)  # parameters require grad: the autograd path
    assert graph[-1].requires_grad
    assert max_diff(fast, ref) <= 1e-5
    assert max_diff([g.detach() for g in graph], ref) <= 1e-5


def test_autograd_loop_backpropagates_through_time():
    block = make_block()
    x = token_inputs(1, 12, 32)
    out = token_loop(block, x, torch.zeros(1, 32))
    (out[-1][:, -1] * torch.arange(32.0)).sum().backward()  # a plain sum of a LayerNorm output has no gradient
    grad = block.layers[0].linear.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


@pytest.mark.parametrize("which", ["random", "trained"])
def test_pure_sweeps_converge_to_the_loop(which, trained_block):
    block = make_block() if which == "random" else trained_block
    x = token_inputs(1, 120, 32)
    ref = reference(block, x)
    with torch.no_grad():
        result = parallel_sweeps(block, x, torch.zeros(1, 32), tol=TOL)
    assert result.method == "sweeps"
    assert 1 <= result.sweeps <= 120
    assert result.max_abs_change <= TOL or result.sweeps == 120  # T sweeps: exact whatever the last change
    assert max_diff(result.contexts, ref) <= EXACT


def test_after_m_sweeps_the_first_m_tokens_are_exact():
    block = make_block()
    x = token_inputs(1, 50, 32)
    ref = reference(block, x)[-1]
    with torch.no_grad():
        result = parallel_sweeps(block, x, torch.zeros(1, 32), tol=1e-12, max_sweeps=7)
    assert result.sweeps == 7
    assert float((result.final[:, :7] - ref[:, :7]).abs().max()) <= 1e-5
    assert float((result.final[:, 7:] - ref[:, 7:]).abs().max()) > 1e-3  # the rest is not converged yet


def test_sweeps_with_fallback_are_exact_and_report_the_method():
    block = make_block()
    x = token_inputs(1, 80, 32)
    ref = reference(block, x)
    result = evaluate_contexts(block, x, method="sweeps", tol=TOL)
    assert result.method in ("sweeps", "sweeps+loop")
    assert result.sweeps >= 1
    assert max_diff(result.contexts, ref) <= EXACT


@pytest.mark.parametrize("burn_in,segment_len", [(32, None), (8, 10), (0, 16), (4, 200)])
@pytest.mark.parametrize("which", ["random", "trained"])
def test_segments_match_the_loop(which, burn_in, segment_len, trained_block):
    block = make_block() if which == "random" else trained_block
    x = token_inputs(1, 150, 32)
    ref = reference(block, x)
    with torch.no_grad():
        result = segment_contexts(block, x, torch.zeros(1, 32), tol=TOL, burn_in=burn_in, segment_len=segment_len)
    assert result.method in ("segments", "segments+loop")
    assert result.sweeps >= 1
    assert result.max_abs_change <= TOL
    assert max_diff(result.contexts, ref) <= EXACT


def test_segments_without_burn_in_need_rounds_and_an_exact_guess_needs_none():
    block = make_block()
    x = token_inputs(1, 120, 32)
    ref = reference(block, x)
    with torch.no_grad():
        cold = segment_contexts(block, x, torch.zeros(1, 32), tol=TOL, burn_in=0, segment_len=10)
        warm = segment_contexts(block, x, torch.zeros(1, 32), tol=TOL, burn_in=0, segment_len=10, initial=ref[-1])
    assert cold.sweeps > 1  # zero start states are wrong: windows had to be re-run
    assert warm.sweeps == 1 and warm.method == "segments"  # exact start states: no window re-run
    assert max_diff(cold.contexts, ref) <= EXACT
    assert max_diff(warm.contexts, ref) <= EXACT


@pytest.mark.parametrize("max_rounds", [1, 2, 50])
def test_segments_finish_window_by_window_when_rounds_run_out(max_rounds):
    block = make_block()  # a 32-dim map forgets slowly: a 2-token burn-in leaves most windows off
    x = token_inputs(2, 130, 32)
    ref = reference(block, x)
    with torch.no_grad():
        result = segment_contexts(block, x, torch.zeros(2, 32), tol=TOL, burn_in=2, segment_len=9,
                                  max_rounds=max_rounds)
    assert result.sweeps <= max_rounds
    if max_rounds == 1:
        assert result.method == "segments+loop"
    assert result.max_abs_change <= TOL
    assert max_diff(result.contexts, ref) <= EXACT


def test_segments_on_several_streams_with_small_row_groups():
    block = make_block(layers=3)
    x = token_inputs(3, 90, 32)
    context = torch.randn(3, 32)
    ref = reference(block, x, context)
    with torch.no_grad():
        result = segment_contexts(block, x, context, tol=TOL, burn_in=6, segment_len=12, max_rows=4)
    assert max_diff(result.contexts, ref) <= EXACT


@pytest.mark.parametrize("method", ["loop", "sweeps", "segments", "auto"])
def test_per_sample_streams_match_separate_loops(method, trained_block):
    lengths = [37, 5, 64, 1, 50]
    xs = [token_inputs(1, n, 32, seed=10 + i)[0] for i, n in enumerate(lengths)]
    result = evaluate_streams(trained_block, xs, method=method, tol=TOL, segment_len=9, burn_in=6)
    assert result.lengths.tolist() == lengths
    flat = result.flat()
    assert flat.shape == (sum(lengths), 32)
    expected = torch.cat([reference(trained_block, x[None])[-1][0] for x in xs])
    assert float((flat - expected).abs().max()) <= EXACT
    for layer in range(trained_block.num_layers):
        expected_layer = torch.cat([reference(trained_block, x[None])[layer][0] for x in xs])
        assert float((result.flat(layer) - expected_layer).abs().max()) <= EXACT


def test_layers_without_token_input_and_projected_residuals():
    block = make_block(dims=24, layers=3, all_layers=False)  # widths fall 48 -> 40 -> 32 -> 24: residual Linears
    assert block.dims != [24, 24, 24]
    x = token_inputs(2, 70, 24)
    ref = reference(block, x)
    for method in ("loop", "sweeps", "segments"):
        result = evaluate_contexts(block, x, method=method, tol=TOL, segment_len=11, burn_in=5)
        assert [c.shape[-1] for c in result.contexts] == block.dims
        assert max_diff(result.contexts, ref) <= EXACT, method


def test_all_layers_false_keeps_only_the_carried_context():
    block = make_block(layers=3)
    x = token_inputs(1, 40, 32)
    full = evaluate_contexts(block, x, method="segments", segment_len=8, burn_in=4)
    final_only = evaluate_contexts(block, x, method="segments", segment_len=8, burn_in=4, all_layers=False)
    assert len(full.contexts) == 3 and len(final_only.contexts) == 1
    assert torch.equal(full.final, final_only.final)


def test_empty_and_tiny_streams():
    block = make_block()
    for method in ("loop", "sweeps", "segments"):
        empty = evaluate_contexts(block, token_inputs(1, 0, 32), method=method)
        assert empty.final.shape == (1, 0, 32)
        one = evaluate_contexts(block, token_inputs(1, 1, 32), method=method)
        assert max_diff(one.contexts, reference(block, token_inputs(1, 1, 32))) <= 1e-6


def test_results_are_plain_tensors_usable_under_autograd():
    block = make_block()
    x = token_inputs(1, 30, 32)
    result = evaluate_contexts(block, x)
    assert isinstance(result, RecurrenceResult) and not result.final.requires_grad
    out = block(result.final[0], x[0])  # feeding evaluated contexts to a training step must work
    out.sum().backward()


def test_bad_arguments_raise_clear_errors():
    block = make_block()
    x = token_inputs(1, 10, 32)
    with pytest.raises(ValueError, match="method="):
        evaluate_contexts(block, x, method="jacobi")
    with pytest.raises(ValueError, match="tol="):
        evaluate_contexts(block, x, tol=0.0)
    with pytest.raises(ValueError, match="token_dim"):
        evaluate_contexts(block, token_inputs(1, 10, 16))
    with pytest.raises(ValueError, match="context has shape"):
        evaluate_contexts(block, x, torch.zeros(2, 32))
    with pytest.raises(ValueError, match="burn_in"):
        evaluate_contexts(block, x, method="segments", burn_in=-1)
    with pytest.raises(ValueError, match="shape"):
        token_loop(block, x[0], torch.zeros(1, 32))


def test_pad_streams_and_auto_segment_len():
    batch, lengths = pad_streams([torch.ones(3, 4), torch.ones(1, 4)])
    assert batch.shape == (2, 3, 4) and lengths.tolist() == [3, 1]
    assert float(batch[1, 1:].abs().sum()) == 0.0
    assert auto_segment_len(4000, 32) == 80  # sqrt(32 * 4000 / 20)
    assert auto_segment_len(10**7, 32) == 128  # capped at 4 * burn_in
    with pytest.raises(ValueError):
        pad_streams([])


def test_forgetting_tokens_is_where_two_starts_meet():
    block = make_block(dims=32, layers=3)
    x = token_inputs(1, 200, 32)[0]
    n = forgetting_tokens(block, x, tol=1e-4, starts=1, seed=5)
    start = torch.nn.functional.layer_norm(torch.randn(1, 32, generator=torch.Generator().manual_seed(5)), (32,))
    spread = (reference(block, x[None], start)[-1] - reference(block, x[None])[-1]).abs().amax(dim=(0, 2))
    expected = int((spread <= 1e-4).nonzero()[0]) + 1
    assert abs(n - expected) <= 1  # fp32 rounding of two implementations may move the crossing by a token
    assert forgetting_tokens(block, x[:3], tol=1e-12) is None  # three tokens are not enough to forget


@pytest.mark.parametrize("method", ["loop", "sweeps", "segments"])
def test_distinct_row_inputs_equal_dense_inputs(method):
    block = make_block(layers=3)
    rows = token_inputs(1, 10, 32)[0]  # 10 distinct token inputs
    index = torch.randint(0, 10, (2, 70), generator=torch.Generator().manual_seed(2))
    index[1, 50:] = 10  # one past the last row: a zero input (padding)
    dense = torch.cat([rows, torch.zeros(1, 32)])[index]
    options = dict(method=method, tol=TOL, segment_len=9, burn_in=6, max_rounds=1)
    want = evaluate_contexts(block, dense, **options)
    got = evaluate_contexts(block, TokenInputs(block, rows, index), **options)
    assert got.method == want.method
    assert max_diff(got.contexts, want.contexts) <= 1e-5
    assert max_diff(got.contexts, reference(block, dense)) <= EXACT


def test_token_inputs_check_their_shapes():
    block = make_block()
    with pytest.raises(ValueError, match="distinct inputs"):
        TokenInputs(block, torch.zeros(5, 32), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="token_dim"):
        TokenInputs(block, torch.zeros(5, 16), torch.zeros(1, 5, dtype=torch.long))


def test_fallback_extrapolates_the_remaining_sweeps():
    from newllm.recurrence.solvers import _remaining_sweeps

    assert _remaining_sweeps(1e-3, 2e-3, 1e-5, cap=100) == 7  # halving: log(1e-2) / log(0.5) = 6.6
    assert _remaining_sweeps(1e-3, 5e-4, 1e-5, cap=100) == 100  # growing change: assume the worst (the cap)
    assert _remaining_sweeps(1e-3, 2e-3, 1e-5, cap=4) == 4

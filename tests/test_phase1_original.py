"""The "original" Phase-1 mode against a plain implementation of the original's rules (seed-spec 4.4 b / c, 5.2),
written here token by token, in fp64: losses, gradient norms, convergence and the weights after every step."""

from __future__ import annotations

import copy

import pytest
import torch

from newllm.config.models import ModelConfig
from newllm.config.training import Phase1Config
from newllm.models.cvfp import build_cvfp_model
from newllm.training.phase1 import train_phase1

N, CHUNK, ITERATIONS = 37, 10, 4


def model_of(architecture: str):
    torch.manual_seed(5)
    cfg = ModelConfig(architecture=architecture, embedding="random", vocab_size=30, ctx_dim=8, embed_dim=8,
                      num_layers=2)
    return build_cvfp_model(cfg)[0].double()


def chunked_loss(y, target, w, chunk):
    """The original's step loss: per chunk (1-w) MSE + w * (-||Y_c - mean(Y_c)||_F / n_c), averaged over chunks."""
    losses = []
    for s in range(0, y.shape[0], chunk):
        yc, tc = y[s:s + chunk], target[s:s + chunk]
        div = -torch.linalg.vector_norm(yc - yc.mean(dim=0, keepdim=True)) / yc.shape[0]
        losses.append((1 - w) * ((yc - tc) ** 2).mean() + w * div)
    return sum(losses) / len(losses)


def sequential_pass(block, e, c):
    """One no-grad pass token by token from the context c."""
    out = []
    with torch.no_grad():
        for i in range(e.shape[0]):
            c = block(c[None], e[i][None])[0]
            out.append(c)
    return torch.stack(out)


def plain_original(model, ids, solver, target_rule, w, thr, lr):
    """The original's trainer, written plainly; returns per-iteration (loss, grad_norm, rate) and the weights."""
    block = model.context_block
    params = [p for p in block.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    with torch.no_grad():
        e = model.embed_tokens(ids)
    ctx = torch.zeros(block.ctx_dim, dtype=torch.float64)
    previous = sequential_pass(block, e, ctx)  # iteration 0: from c = 0, no step
    fixed = previous.clone()
    rows = []
    for _ in range(1, ITERATIONS):
        if solver == "parallel":  # (c): previous iteration shifted by one, token 0 wraps around to P[N-1]
            incoming = torch.cat([previous[-1:], previous[:-1]])
            y = block(incoming, e)
        else:  # (b): each pass from the previous pass's last context, the incoming context detached per token
            c = previous[-1]
            outs = []
            for i in range(N):
                y_i = block(c.detach()[None], e[i][None])[0]
                outs.append(y_i)
                c = y_i
            y = torch.stack(outs)
        target = fixed if target_rule == "fixed" else previous
        loss = chunked_loss(y, target, w, CHUNK)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        optimizer.step()
        rate = float(((y.detach() - previous) ** 2).mean(dim=1).lt(thr).double().mean())
        rows.append((float(loss), grad_norm, rate))
        previous = y.detach()
    return rows, [p.detach().clone() for p in params]


@pytest.mark.parametrize("architecture", ["E", "eraB"])
@pytest.mark.parametrize("solver,target", [("parallel", "fixed"), ("parallel", "previous"), ("sequential", "fixed")])
def test_original_mode_equals_the_plain_trainer(architecture, solver, target):
    model = model_of(architecture)
    reference_model = copy.deepcopy(model)
    ids = torch.randint(0, 30, (N,), generator=torch.Generator().manual_seed(7))
    cfg = Phase1Config.original(
        "B", solver=solver, first_context="wrap" if solver == "parallel" else "carry", target=target,
        chunk_size=CHUNK, max_iterations=ITERATIONS, min_converged_ratio=1.01, convergence_threshold=0.05,
        dist_reg_weight=0.7, recurrence="loop", er_every=0,
    )
    result = train_phase1(model, ids, cfg, progress=False)
    want, weights = plain_original(reference_model, ids, solver, target, 0.7, 0.05, cfg.lr)
    history = result.history.iloc[1:]
    assert len(history) == len(want) == ITERATIONS - 1
    for (_, row), (loss, grad_norm, rate) in zip(history.iterrows(), want):
        assert abs(row["loss"] - loss) < 1e-6
        assert abs(row["grad_norm"] - grad_norm) < 1e-6
        assert row["converged_ratio"] == rate
    got = [p.detach() for p in model.context_block.parameters() if p.requires_grad]
    assert max(float((a - b).abs().max()) for a, b in zip(got, weights)) < 1e-6
    # the train contexts are the last parallel / sequential outputs, as the original returned them
    assert result.contexts.shape == (N, 8)


def test_kit_defaults_differ_from_the_original_where_documented():
    """The kit's defaults (zero token-0 context, dispersion over the whole stream) give another loss."""
    model = model_of("E")
    ids = torch.randint(0, 30, (N,), generator=torch.Generator().manual_seed(7))
    base = dict(chunk_size=CHUNK, max_iterations=2, min_iterations=1, recurrence="loop", er_every=0, noise_std=0.0)
    kit = train_phase1(copy.deepcopy(model), ids, Phase1Config(**base), progress=False)
    original = train_phase1(copy.deepcopy(model), ids, Phase1Config(**base, first_context="wrap",
                                                                    diversity_scope="chunk"), progress=False)
    assert abs(kit.history["loss"].iloc[1] - original.history["loss"].iloc[1]) > 1e-6


@pytest.mark.parametrize("bad", [dict(solver="sequential", first_context="wrap"),
                                 dict(solver="parallel", first_context="carry"), dict(first_context="last"),
                                 dict(diversity_scope="batch")])
def test_config_refuses(bad):
    with pytest.raises(ValueError):
        Phase1Config(**bad)


def test_original_presets():
    b = Phase1Config.original("B")
    assert (b.target, b.noise_std, b.convergence_threshold, b.max_iterations, b.first_context) == (
        "fixed", 0.0, 0.1, 10, "wrap")
    c = Phase1Config.original("C")
    assert (c.target, c.noise_std, c.convergence_threshold, c.diversity_scope) == ("previous", 0.1, 0.03, "chunk")
    with pytest.raises(ValueError):
        Phase1Config.original("A")

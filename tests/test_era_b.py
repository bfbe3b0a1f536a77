"""The era-B model (seed-spec 4.2): parameter count, its layer written out plainly, the recurrence and Phase 1 on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from newllm.config.models import ModelConfig
from newllm.config.training import Phase1Config
from newllm.models.common import parameter_count
from newllm.models.cvfp import CVFPModel, build_cvfp_model, model_class
from newllm.models.era_b import EraBModel
from newllm.notebook.widgets import count_parameters
from newllm.recurrence import evaluate_contexts, forgetting_tokens
from newllm.training.phase1 import train_phase1


def small_cfg(**kw) -> ModelConfig:
    base = dict(architecture="eraB", embedding="random", vocab_size=40, ctx_dim=8, embed_dim=6, num_layers=3)
    return ModelConfig(**{**base, **kw})


def test_parameter_count_is_the_originals():
    cfg = ModelConfig(architecture="eraB", embedding="random")
    with torch.device("meta"):
        model = EraBModel(cfg)
    assert parameter_count(model) == 91_429_969
    # per layer: Linear 1536 x 1536 + bias, two LayerNorms of 768
    assert parameter_count(model.context_block.layers[0]) == 2_363_904
    assert count_parameters("cvfp", 768, 6, 50257, 768, architecture="eraB") == 91_429_969
    # equal to the E-architecture's whenever ctx_dim == embed_dim (both 4 d^2 + 6 d per layer); not otherwise
    assert count_parameters("cvfp", 64, 2, 1000, 32, architecture="eraB") == (
        parameter_count(EraBModel(small_cfg(vocab_size=1000, ctx_dim=64, embed_dim=32, num_layers=2))))
    assert count_parameters("cvfp", 64, 2, 1000, 32, architecture="eraB") != count_parameters("cvfp", 64, 2, 1000, 32)


def test_build_dispatches_on_architecture():
    model, _ = build_cvfp_model(small_cfg())
    assert isinstance(model, EraBModel) and model_class(small_cfg()) is EraBModel
    assert isinstance(build_cvfp_model(small_cfg(architecture="E"))[0], CVFPModel)
    assert not model.embedding.weight.requires_grad


@pytest.mark.parametrize("bad", [dict(architecture="eraC"), dict(layernorm_mix=1.5), dict(num_input_tokens=2)])
def test_config_refuses(bad):
    with pytest.raises(ValueError):
        small_cfg(**bad)


def plain_layer(layer, c, e, mix):
    """The CVFPLayer as seed-spec 4.2 writes it."""
    d = c.shape[-1]
    u = F.relu(layer.linear(torch.cat([c, e], dim=-1)))
    c2, e2 = c + u[..., :d], e + u[..., d:]
    c2 = (1 - mix) * c2 + mix * layer.norm_c(c2)
    e2 = (1 - mix) * e2 + mix * layer.norm_e(e2)
    return c2, e2


@pytest.mark.parametrize("mix", [1.0, 0.3, 0.0])
def test_block_equals_the_layer_written_plainly(mix):
    torch.manual_seed(0)
    model = EraBModel(small_cfg(layernorm_mix=mix)).double()
    ids = torch.randint(0, 40, (2, 9))
    x = model.embed_tokens(ids)
    got = model.context_block.run(x, torch.zeros(2, 8, dtype=torch.float64))[-1]
    c = torch.zeros(2, 8, dtype=torch.float64)
    for i in range(9):
        e = x[:, i]
        for layer in model.context_block.layers:
            c, e = plain_layer(layer, c, e, mix)
        assert torch.allclose(got[:, i], c, atol=1e-12)


@pytest.mark.parametrize("method", ["loop", "sweeps", "segments"])
def test_recurrence_solvers_match_the_reference_loop(method):
    torch.manual_seed(1)
    model = EraBModel(small_cfg()).double()
    x = model.embed_tokens(torch.randint(0, 40, (2, 30)))
    reference = model.context_block.run(x, torch.zeros(2, 8, dtype=torch.float64))
    result = evaluate_contexts(model.context_block, x, None, method=method, tol=1e-12, segment_len=6, burn_in=4)
    for got, want in zip(result.contexts, reference):
        assert got.shape == want.shape
        assert (got - want).abs().max() < 1e-10
    assert reference[-1].shape[-1] == 8 and reference[0].shape[-1] == 14  # [c; e] between layers, c at the end


def test_phase1_trains_the_era_b_block_only():
    torch.manual_seed(2)
    model, _ = build_cvfp_model(small_cfg())
    head_before = model.head.weight.clone()
    layer_before = model.context_block.layers[1].linear.weight.clone()
    ids = torch.randint(0, 40, (60,))
    result = train_phase1(model, ids, Phase1Config(max_iterations=3, min_iterations=3), val_ids=ids[:20],
                          progress=False)
    assert result.iterations == 3 and result.contexts.shape == (60, 8)
    assert 0 < result.train_metrics.er_pct <= 100 and 0 < result.val_metrics.er_pct <= 100
    assert not torch.equal(model.context_block.layers[1].linear.weight, layer_before)
    assert torch.equal(model.head.weight, head_before)
    forgetting = forgetting_tokens(model.context_block, model.embed_tokens(ids).detach(), tol=1e-3)
    assert forgetting is None or 1 <= forgetting <= 60


def test_generate_runs():
    torch.manual_seed(3)
    model = EraBModel(small_cfg())
    out = model.generate(torch.randint(0, 40, (1, 4)), 3)
    assert out.shape == (1, 7)

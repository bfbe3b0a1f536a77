"""int8 post-training quantization: closeness to fp32, size, backends, inference-only guard, the comparison."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from newllm.config.models import GatedLMConfig, ModelConfig, TransformerConfig
from newllm.evaluation.quantize import (
    Int8Linear,
    compare_int8,
    is_quantized,
    quantize_int8,
    resolve_backend,
    serialized_size,
    sliced_linear_names,
)
from newllm.models.baselines import build_baseline
from newllm.models.cvfp import CVFPModel
from newllm.models.gated import GatedContextLM
from newllm.training.lm_baseline import evaluate_lm, train_lm_baseline

V = 100
BACKENDS = ["dynamic", "weight_only"]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _cvfp(**changes) -> CVFPModel:
    torch.manual_seed(0)
    settings = dict(vocab_size=V, ctx_dim=32, embed_dim=16, num_layers=2, embedding="random")
    cfg = ModelConfig(**{**settings, **changes})
    model = CVFPModel(cfg)
    if not cfg.weight_tying:
        nn.init.normal_(model.head.weight, std=0.2)  # zero at init: give the logits something to compare
    return model.eval()


def _gated(hidden: int = 64) -> GatedContextLM:
    torch.manual_seed(0)
    cfg = GatedLMConfig(vocab_size=V, embed_dim=16, hidden_dim=hidden, ctx_dim=32, num_layers=3, dropout=0.0,
                        init_std=0.1)
    return GatedContextLM(cfg).eval()


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out.logits if isinstance(model, CVFPModel) else out[0]


def test_int8_linear_quantizes_per_output_channel():
    torch.manual_seed(0)
    linear = nn.Linear(48, 24)
    with torch.no_grad():
        linear.weight[3] *= 50  # one large row must not coarsen the others
    layer = Int8Linear.from_linear(linear)
    assert layer.weight_int8.dtype == torch.int8 and layer.weight_scale.shape == (24,)
    error = (layer.weight - linear.weight).abs()
    assert bool((error <= layer.weight_scale[:, None] / 2 + 1e-7).all())
    x = torch.randn(5, 48)
    assert _rel_err(layer(x), linear(x).detach()) < 0.01
    assert set(layer.state_dict()) == {"weight_int8", "weight_scale", "bias"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make,bound", [
    (lambda: _cvfp(), 0.05),
    (lambda: _cvfp(num_input_tokens=2, token_input_all_layers=False), 0.05),
    (lambda: _gated(), 0.1),  # errors compound through the gated recurrence
])
def test_quantized_outputs_stay_close_to_fp32(backend, make, bound):
    model = make()
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    reference = _logits(model, ids)
    qmodel, name = quantize_int8(model, backend)
    assert name == backend and is_quantized(qmodel) and not is_quantized(model)
    error = _rel_err(_logits(qmodel, ids), reference)
    assert 0 < error < bound
    torch.testing.assert_close(_logits(model, ids), reference)  # the fp32 model is untouched
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in sliced_linear_names(model))


def test_sliced_layers_get_int8_linear_and_called_layers_the_backend():
    qmodel, _ = quantize_int8(_cvfp(), "dynamic")
    for layer in qmodel.context_block.layers:
        assert isinstance(layer.linear, Int8Linear)
    dynamic_linear = torch.ao.nn.quantized.dynamic.Linear
    assert isinstance(qmodel.head, dynamic_linear)
    assert all(isinstance(layer.linear, dynamic_linear) for layer in qmodel.token_block.layers)
    assert isinstance(qmodel.embedding, nn.Embedding) and qmodel.embedding.weight.dtype == torch.float32


def test_tied_head_stays_shared_with_the_embedding():
    qmodel, _ = quantize_int8(_cvfp(ctx_dim=16, weight_tying=True), "weight_only")
    assert qmodel.head.weight is qmodel.embedding.weight
    assert isinstance(qmodel.token_block.layers[0].linear, Int8Linear)


@pytest.mark.parametrize("backend", BACKENDS)
def test_serialized_size_shrinks_for_a_linear_dominated_model(backend):
    model = _gated(hidden=256)
    qmodel, _ = quantize_int8(model, backend)
    fp32_bytes, fp32_format = serialized_size(model)
    int8_bytes, int8_format = serialized_size(qmodel)
    assert fp32_format == "safetensors"
    assert int8_format == ("torch.save" if backend == "dynamic" else "safetensors")
    assert 3.0 < fp32_bytes / int8_bytes < 4.2


def test_backend_errors_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="weight_only"):
        quantize_int8(_gated(), "int4")
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if torchao were not installed
    with pytest.raises(RuntimeError, match="torchao is not installed"):
        resolve_backend("torchao")
    assert resolve_backend("auto") == "dynamic"
    qmodel, _ = quantize_int8(_gated(), "weight_only")
    with pytest.raises(ValueError, match="already"):
        quantize_int8(qmodel, "weight_only")


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_a_quantized_model_is_refused(backend):
    qmodel, _ = quantize_int8(_cvfp(), backend)
    assert not any(p.requires_grad for p in qmodel.parameters())
    ids = torch.randint(0, V, (1, 6))
    qmodel.train()
    with pytest.raises(RuntimeError, match="inference only"):
        qmodel(ids)
    with pytest.raises(RuntimeError, match="inference only"):
        qmodel.head(torch.randn(2, 16))
    qmodel.eval()
    assert qmodel(ids).logits.shape == (1, 6, V)


def test_baseline_trainer_refuses_a_quantized_model():
    model = build_baseline(TransformerConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2, max_seq_len=16))
    qmodel, _ = quantize_int8(model, "dynamic")
    ids = torch.randint(0, V, (200,))
    with pytest.raises(ValueError, match="int8-quantized"):
        train_lm_baseline(qmodel, ids, ids, 100, tokenizer="t", seq_len=16, progress=False)


def test_compare_int8_reports_size_quality_and_speed():
    model = _gated(hidden=256)
    val = torch.randint(0, V, (97,), generator=torch.Generator().manual_seed(2))
    table = compare_int8(model, lambda m: evaluate_lm(m, val, tokenizer="synthetic", seq_len=16),
                         torch.randint(0, V, (2, 16)), repeats=2, backend="auto")
    assert table.index.tolist() == ["fp32", "int8"]
    for column in ("backend", "format", "size_mb", "val_loss", "val_ppl", "val_accuracy", "tokens_per_s"):
        assert column in table.columns
    fp32, int8 = table.loc["fp32"], table.loc["int8"]
    assert int8["backend"] in ("torchao", "dynamic", "weight_only") and fp32["backend"] == "fp32"
    assert fp32["size_mb"] / int8["size_mb"] > 3
    assert abs(int8["val_loss"] - fp32["val_loss"]) < 0.02 * fp32["val_loss"]
    assert fp32["val_loss"] != int8["val_loss"]
    assert (table["tokens_per_s"] > 0).all()
    assert isinstance(model.first, nn.Linear)  # compare works on copies


def test_compare_int8_accepts_a_float_loss_and_rejects_other_results():
    model = _gated()
    sample = torch.randint(0, V, (1, 8))
    table = compare_int8(model, lambda m: 1.5, sample, repeats=1, backend="weight_only")
    assert table["val_loss"].tolist() == [1.5, 1.5] and table["val_accuracy"].isna().all()
    with pytest.raises(TypeError, match="LMEval or a float"):
        compare_int8(model, lambda m: "bad", sample, repeats=1, backend="weight_only")

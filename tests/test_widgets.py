"""Size controls: counts without weights, memory estimates, slider state (moved / applied), the ipywidgets box."""

import pytest
import torch

from newllm.config.models import GatedLMConfig
from newllm.config.training import Phase2Config
from newllm.models.common import parameter_count
from newllm.models.cvfp import CVFPModel
from newllm.models.gated import GatedContextLM
from newllm.notebook.widgets import (
    SizeControls,
    SizeEstimate,
    count_parameters,
    cvfp_model_config,
    estimate_size,
    notebook_controls,
    size_controls,
)
from newllm.training.planner import GiB, MemoryBudget, Phase2Workload, gated_training_bytes, plan_phase2

CPU_8G = MemoryBudget.simulated(None, host_gib=8.0)


def test_gated_counts_are_the_seed_spec_figures():
    # seed-spec 2.1: "Baseline" ctx 256 / 6 layers and seed 001's "Advanced" ctx 512 / 12 layers, V = 1000
    assert count_parameters("gated", 256, 6, 1000) == 2_739_432
    assert count_parameters("gated", 512, 12, 1000) == 4_840_936


def test_cvfp_count_matches_a_built_model_and_the_original():
    built = CVFPModel(cvfp_model_config(48, 3, 300))
    assert count_parameters("cvfp", 48, 3, 300) == parameter_count(built)
    assert count_parameters("cvfp", 768, 6, 50257, embed_dim=768) == 91_429_969


def test_counting_allocates_no_weights(monkeypatch):
    devices = []
    original = GatedContextLM.__init__

    def spy(self, cfg):
        original(self, cfg)
        devices.append(self.first.weight.device.type)

    monkeypatch.setattr(GatedContextLM, "__init__", spy)
    count_parameters("gated", 64, 2, 500)
    assert devices == ["meta"]


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="family='lstm' is unknown"):
        count_parameters("lstm", 64, 2, 100)


def test_cvfp_estimate_is_the_phase2_plan_peak():
    budget = MemoryBudget.simulated(22.2, host_gib=50.0)
    estimate = estimate_size("cvfp", 768, 6, vocab_size=50257, embed_dim=768, budget=budget,
                             train_tokens=529_173, val_tokens=58_797)
    work = Phase2Workload.from_config(cvfp_model_config(768, 6, 50257, 768), 529_173, 58_797)
    plan = plan_phase2(work, Phase2Config(), budget)
    assert estimate.where == "GPU" and estimate.fits
    assert estimate.peak_bytes == plan.peak("device") and estimate.limit_bytes == plan.limits["device"]
    assert estimate.parameters == 91_429_969


def test_cvfp_estimate_reports_when_nothing_fits():
    estimate = estimate_size("cvfp", 768, 6, vocab_size=50257, embed_dim=768,
                             budget=MemoryBudget.simulated(0.5, host_gib=1.0, disk_gib=0.1),
                             train_tokens=529_173, val_tokens=58_797)
    assert not estimate.fits and estimate.peak_bytes is None
    assert "does NOT fit" in estimate.text()


def test_gated_bytes_count_weights_adam_and_grow_with_the_batch():
    cfg = GatedLMConfig(ctx_dim=64, num_layers=2, vocab_size=400)
    params = count_parameters("gated", 64, 2, 400)
    small = gated_training_bytes(cfg, batch_size=8, window=64, parameters=params)
    large = gated_training_bytes(cfg, batch_size=32, window=64, parameters=params, train_windows=100)
    assert small["weights"] == small["gradients"] == 4 * params and small["Adam moments"] == 8 * params
    assert large["activations (one batch)"] == 4 * small["activations (one batch)"]
    assert small["training windows"] == 0 and large["training windows"] == 16 * 100 * 64


def test_gated_estimate_fits_against_the_budget():
    fits = estimate_size("gated", 64, 2, vocab_size=400, budget=CPU_8G)
    too_big = estimate_size("gated", 2048, 24, vocab_size=50000, budget=MemoryBudget.simulated(None, 0.05),
                            batch_size=512)
    assert fits.fits and fits.where == "host RAM" and fits.peak_bytes < 0.1 * GiB
    assert not too_big.fits and too_big.peak_bytes > too_big.limit_bytes


def _fake_estimator(calls):
    def estimator(values):
        calls.append(dict(values))
        return SizeEstimate(values["ctx_dim"] * values["layers"], 1, 2, "host RAM", "fake", True)

    return estimator


def test_controls_track_moved_sliders_and_apply_only_those():
    calls = []
    controls = SizeControls({"ctx_dim": 64, "layers": 2, "samples": 10}, _fake_estimator(calls),
                            applied=("ctx_dim", "layers"))
    values = {"ctx_dim": 64, "layers": 2, "samples": [5, 10], "seed": 1}
    assert controls.moved == {} and controls.apply(values) is values
    assert controls.estimate.parameters == 128
    controls.set("layers", 4)
    controls.set("samples", 99)  # estimate only: not in applied
    assert controls.moved == {"layers": 4, "samples": 99}
    assert controls.estimate.parameters == 256 and calls[-1] == {"ctx_dim": 64, "layers": 4, "samples": 99}
    applied = controls.apply(values)
    assert applied == {**values, "layers": 4, "sliders": {"layers": 4}}
    controls.set("layers", 2)  # moved back: nothing to apply
    assert controls.apply(values) is values
    with pytest.raises(ValueError, match="no slider named 'width'"):
        controls.set("width", 3)


def test_the_widget_box_drives_the_state_and_label():
    box, controls = size_controls({"ctx_dim": 64, "layers": 2}, _fake_estimator([]))
    ctx_slider, layer_slider, label = box.children
    assert ctx_slider.value == 64 and "128" in label.value
    layer_slider.value = 3
    assert controls.current == {"ctx_dim": 64, "layers": 3} and "192" in label.value
    assert "moved: layers" in controls.summary()


def test_notebook_controls_apply_a_single_size_but_not_a_sweep():
    common = dict(vocab_size=300, tokens_per_sample=1000.0, val_tokens=2000, budget=CPU_8G)
    box, sweep = notebook_controls("cvfp", {"ctx_dim": 32, "layers": 2, "samples": [2, 8]}, **common)
    assert sweep.initial == {"ctx_dim": 32, "layers": 2, "samples": 8}
    assert "estimate only" in box.children[2].description
    assert "8,000 + 2,000 tokens" in sweep.estimate.detail
    sweep.set("samples", 20)
    assert sweep.apply({"samples": [2, 8]}) == {"samples": [2, 8]}
    _, single = notebook_controls("cvfp", {"ctx_dim": 32, "layers": 2, "samples": 4}, **common)
    single.set("samples", 6)
    assert single.apply({"ctx_dim": 32, "samples": 4})["samples"] == 6
    _, gated = notebook_controls("gated", {"ctx_dim": 32, "layers": 2, "samples": 4}, vocab_size=300,
                                 batch_size=16, budget=CPU_8G)
    assert set(gated.initial) == {"ctx_dim", "layers"}
    assert "batch 16" in gated.estimate.detail
    assert gated.estimate.parameters == count_parameters("gated", 32, 2, 300)
    assert torch.get_default_device().type == "cpu"  # counting left the default device alone

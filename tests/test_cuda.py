"""Every CUDA path of the kit, end to end on a real GPU. Skipped without one (here and in CI); run on a GPU machine
by ``python bench/gpu_check.py`` (or ``python -m pytest -m cuda tests``).
"""

from __future__ import annotations

import pytest
import torch

from newllm.config.models import GatedLMConfig, ModelConfig
from newllm.config.training import GatedTrainConfig, Phase1Config, Phase2Config
from newllm.data.streams import make_streams
from newllm.models.cvfp import CVFPModel
from newllm.recurrence import evaluate_contexts
from newllm.training.chunked_ce import linear_cross_entropy
from newllm.training.common import OOMBackoff, TrainingMemoryError
from newllm.training.context_cache import build_context_cache
from newllm.training.phase1 import train_phase1
from newllm.training.phase2 import train_phase2
from newllm.utils.runtime import seed_everything

pytestmark = pytest.mark.cuda
VOCAB = 64


def _model(seed: int = 0, device: str = "cuda") -> CVFPModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, ctx_dim=32, embed_dim=32, num_layers=2, embedding="random")
    return CVFPModel(cfg).to(device)


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def _phase2(model, amp: str, **changes):
    cfg = Phase2Config(epochs=2, batch_size=128, cache_build_method="loop", seed=3, amp=amp, **changes)
    return train_phase2(model, _ids(2000), _ids(500, seed=2), cfg, tokenizer_name="ids", progress=False)


def test_exact_recurrence_on_cuda_matches_the_cpu_loop():
    model = _model()
    x = model.embed_tokens(_ids(600).cuda()[None]).detach()
    reference = model.context_block.cpu().run(x.cpu(), torch.zeros(1, 32))[-1]
    model.cuda()
    for method in ("loop", "sweeps", "segments"):
        result = evaluate_contexts(model.context_block, x, method=method, tol=1e-6)
        assert (result.final.cpu() - reference).abs().max() < 1e-4, method


def test_phase1_on_cuda_matches_phase1_on_cpu():
    cfg = Phase1Config(solver="sequential", max_iterations=3, min_iterations=3, recurrence="loop")
    on_gpu = train_phase1(_model(), _ids(800), cfg, progress=False)
    on_cpu = train_phase1(_model(device="cpu"), _ids(800), cfg, progress=False)
    assert on_gpu.history["loss"].iloc[1] == pytest.approx(on_cpu.history["loss"].iloc[1], rel=1e-4)


@pytest.mark.parametrize("placement", ["gpu", "cpu", "disk"])
def test_cache_placements_on_a_cuda_device_hold_the_same_rows(placement, tmp_path):
    model = _model()
    streams = make_streams(_ids(700))
    reference = build_context_cache(model.cpu(), streams, placement="cpu", device="cpu", method="loop",
                                    progress=False)
    model.cuda()
    cache = build_context_cache(model, streams, placement=placement, device="cuda", method="loop",
                                cache_dir=str(tmp_path), progress=False)
    index = torch.randperm(streams.n_tokens)[:256]
    rows = cache.rows(index)  # "cpu": gathered into page-locked memory, copied asynchronously
    assert rows.device.type == "cuda"
    torch.cuda.synchronize()
    assert torch.allclose(rows.cpu(), reference.rows(index), atol=1e-5)
    cache.close()
    reference.close()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_phase2_in_low_precision_tracks_fp32(amp):
    fp32 = _phase2(_model(), "off")
    low = _phase2(_model(), amp)
    assert low.history["val_loss"].notna().all()
    assert low.val.loss == pytest.approx(fp32.val.loss, rel=5e-2)


def test_chunked_ce_in_fp16_on_cuda_keeps_every_head_row():
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(256, 64, device="cuda", generator=gen)
    weight = (torch.randn(50257, 64, device="cuda", generator=gen) * 0.02).requires_grad_()
    targets = torch.randint(0, 50257, (256,), device="cuda", generator=gen)
    loss, _ = linear_cross_entropy(h, weight, None, targets, 128, torch.float16, scale=1 / 4096)
    loss.backward()
    assert int((weight.grad == 0).all(dim=1).sum()) <= 256  # only rows that no softmax reached (none here)


def test_the_gated_lm_trains_with_amp(tmp_path):
    from newllm.data.wikitext import make_windows
    from newllm.training.gated import train_gated_lm

    gen = torch.Generator().manual_seed(0)
    paragraphs = [[2] + torch.randint(4, 200, (int(n),), generator=gen).tolist() + [3]
                  for n in torch.randint(5, 40, (40,), generator=gen)]
    train_cfg = GatedTrainConfig(window=12, stride=6, batch_size=16, epochs=2, checkpoint_every=100)
    train = make_windows(paragraphs[:32], train_cfg.window, train_cfg.stride)
    val = make_windows(paragraphs[32:], train_cfg.window, train_cfg.stride, targets="once")
    model_cfg = GatedLMConfig(vocab_size=200, embed_dim=32, hidden_dim=32, ctx_dim=32, num_layers=1)
    for amp in ("bf16", "fp16"):
        result = train_gated_lm(model_cfg, train_cfg.__class__(**{**train_cfg.to_dict(), "amp": amp}), train, val,
                                tmp_path / amp, name=amp, device="cuda", progress=False)
        assert torch.isfinite(torch.tensor(result.history["val_loss"].values)).all(), amp


def test_a_real_oom_is_backed_off():
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(int(free * 0.9) // 4, dtype=torch.float32, device="cuda")  # most of the free memory
    try:
        left, _ = torch.cuda.mem_get_info()

        def step(size):  # needs `size` x 1/8 of what is left
            block = torch.empty(int(left * size / 8) // 4, dtype=torch.float32, device="cuda")
            return block.numel()

        with pytest.warns(RuntimeWarning, match="out of device memory"):
            backoff = OOMBackoff(32, max_halvings=6, what="oom probe", unit="parts")
            backoff.run(step, cleanup=lambda: None)
        assert backoff.halvings >= 2 and backoff.size <= 8
        with pytest.raises(TrainingMemoryError):
            OOMBackoff(32, max_halvings=0, what="oom probe").run(step, cleanup=lambda: None)
    finally:
        del hog
        torch.cuda.empty_cache()


def test_the_deterministic_switch_repeats_a_phase2_run_bit_for_bit():
    runs = []
    try:
        for _ in range(2):
            seed_everything(5, deterministic=True)
            runs.append(_phase2(_model(), "bf16").history["train_loss"].tolist())
    finally:
        seed_everything(5)
    assert runs[0] == runs[1]

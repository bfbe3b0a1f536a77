"""Phase 2's streaming tier: contexts recomputed per batch equal the cached ones; training learns and resumes.
And the compiled step (Phase2Config.compile) trains like the eager one."""

import pytest
import torch

from newllm.config.models import ModelConfig
from newllm.config.training import Phase2Config
from newllm.data.streams import make_streams
from newllm.models.cvfp import CVFPModel
from newllm.recurrence import evaluate_contexts, forgetting_tokens, token_inputs
from newllm.training.context_cache import build_context_cache
from newllm.training.context_stream import StreamedContexts
from newllm.training.common import compiled
from newllm.training.phase2 import Phase2Step, train_phase2
from newllm.training.planner import MemoryBudget, Phase2Workload, phase2_trainable_parameters, plan_phase2

VOCAB = 200
TOL = 1e-5
BUDGET = MemoryBudget.simulated(None, host_gib=8, disk_gib=8)
METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "val_ppl"]

pytestmark = pytest.mark.usefixtures("one_thread")


def forgetting_model(seed: int = 0, token_scale: float = 6.0) -> CVFPModel:
    """A small model whose context forgets its start within ~10-20 tokens, as trained maps do (an untrained
    identity-residual map barely forgets); ``token_scale`` weighs the token input against the carried context."""
    torch.manual_seed(seed)
    model = CVFPModel(ModelConfig(vocab_size=VOCAB, ctx_dim=24, embed_dim=16, num_layers=2, embedding="random"))
    with torch.no_grad():
        for layer in model.context_block.layers:
            layer.linear.weight[:, layer.in_dim:] *= token_scale
    return model


def documents(seed: int = 3, lengths=(700, 45, 1300, 9)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator) for n in lengths]


def exact_contexts(model, streams) -> list[torch.Tensor]:
    """Every layer's contexts by the plain token loop, stream by stream."""
    out = []
    for s in range(streams.n_streams):
        start, end = int(streams.starts[s]), int(streams.ends[s])
        x = token_inputs(model, streams.windows(torch.arange(start, end), model.cfg.num_input_tokens))[None]
        out.append(evaluate_contexts(model.context_block, x, method="loop").contexts)
    return [torch.cat([o[layer][0] for o in out]) for layer in range(model.cfg.num_layers)]


@pytest.mark.parametrize("streams_mode", ["per_sample", "concat"])
def test_streamed_contexts_equal_the_cached_ones(streams_mode):
    model = forgetting_model()
    streams = make_streams(documents(), streams_mode)
    x = token_inputs(model, streams.windows(torch.arange(300), 1))
    assert 4 <= forgetting_tokens(model.context_block, x, tol=TOL) <= 40  # the burn-in has work to do
    cache = build_context_cache(model, streams, method="segments", tol=TOL, progress=False)
    source = StreamedContexts(model, streams, window=32, burn_in=8, tol=TOL, block_tokens=256)
    exact = exact_contexts(model, streams)
    everything = torch.arange(len(source))
    for got in (source.contexts(slice(0, len(source))), cache.contexts(everything)):
        assert max(float((g - e).abs().max()) for g, e in zip(got, exact)) <= TOL
    # shuffled batches of whole windows read the same values as the cache
    batches = source.epoch_batches(seed=1, epoch=0, shuffle=True, batch_size=100)
    assert torch.equal(torch.cat(batches).sort().values, everything)  # every token once per epoch
    for batch in batches[:5]:
        streamed, cached = source.contexts(batch), cache.contexts(batch)
        assert max(float((a - b).abs().max()) for a, b in zip(streamed, cached)) <= 2 * TOL
    assert source.stats["burn_in_extended"] > 0  # the 8-token burn-in was too short for some windows: doubled
    cache.close()


def test_windows_are_the_unit_of_shuffling():
    model = forgetting_model()
    source = StreamedContexts(model, make_streams(documents(), "per_sample"), window=32, burn_in=8)
    batch = source.epoch_batches(seed=1, epoch=0, shuffle=True, batch_size=10**6)[0]
    runs = (batch[1:] - batch[:-1] != 1).nonzero().numel() + 1
    assert runs <= source.n_windows  # contiguous runs of a window's tokens
    again = source.epoch_batches(seed=1, epoch=0, shuffle=True, batch_size=10**6)[0]
    assert torch.equal(batch, again)
    assert not torch.equal(batch, source.epoch_batches(seed=1, epoch=1, shuffle=True, batch_size=10**6)[0])
    in_order = source.epoch_batches(seed=1, epoch=0, shuffle=False, batch_size=10**6)[0]
    assert torch.equal(in_order, torch.arange(len(source)))


def test_a_window_that_never_settles_is_computed_from_its_stream_start():
    model = forgetting_model(token_scale=1.0)  # an untrained map: it does not forget within the stream
    streams = make_streams(documents(lengths=(400,)), "per_sample")
    source = StreamedContexts(model, streams, window=64, burn_in=4, tol=1e-7)
    got = source.contexts(slice(0, len(source)))
    exact = exact_contexts(model, streams)
    assert max(float((g - e).abs().max()) for g, e in zip(got, exact)) <= 1e-5


def test_planner_streams_on_request_or_when_no_cache_fits():
    work = Phase2Workload.from_config(ModelConfig(vocab_size=50257, ctx_dim=768, embed_dim=768, num_layers=6,
                                                  embedding="random"), 5_000_000, 100_000)
    small = MemoryBudget.simulated(None, host_gib=24, disk_gib=20)
    plan = plan_phase2(work, Phase2Config(), small)  # 5M tokens x 18 KB: neither RAM nor the disk holds it
    assert plan.placement == "stream" and "no cache placement fits" in str(plan)
    assert "streaming cost" in str(plan) and 0 < plan.stream["overhead"] < 0.2
    assert plan.host_peak < 8 * 2**30  # flat: no item grows with the corpus but the ids
    big = MemoryBudget.simulated(None, host_gib=512, disk_gib=20)
    assert plan_phase2(work, Phase2Config(), big).placement == "cpu"
    assert plan_phase2(work, Phase2Config(context_source="stream"), big).placement == "stream"
    with pytest.raises(Exception, match="does not fit"):
        plan_phase2(work, Phase2Config(context_source="cache"), small)
    with pytest.raises(ValueError, match="context_source"):
        Phase2Config(context_source="stream", cache_placement="disk")


def learnable(n_train=640, n_val=160, seed=3):
    generator = torch.Generator().manual_seed(seed)
    pattern = torch.randint(0, 30, (17,), generator=generator)
    ids = pattern.repeat((n_train + n_val) // 17 + 1)[: n_train + n_val].clone()
    return ids[:n_train], ids[n_train:]


def stream_config(**changes):
    base = dict(epochs=3, batch_size=64, patience=5, seed=7, context_source="stream", stream_window=32,
                stream_burn_in=8, stream_block_tokens=128)
    base.update(changes)
    return Phase2Config(**base)


def run(model, cfg, **kwargs):
    train, val = learnable()
    return train_phase2(model, train, val, cfg, tokenizer_name="test-ids", progress=False, budget=BUDGET, **kwargs)


def test_training_on_streamed_contexts_learns_and_matches_the_cache():
    streamed = run(forgetting_model(), stream_config())
    assert streamed.plan.placement == "stream" and streamed.cache["train"]["placement"] == "stream"
    losses = streamed.history["val_loss"].tolist()
    assert losses[-1] < losses[0] - 0.3
    assert streamed.history["train_loss"].iloc[-1] < streamed.history["train_loss"].iloc[0]
    # the same run in stream order on a cache: same batches, contexts equal to tol, so the same losses nearly
    ordered = run(forgetting_model(), stream_config(shuffle=False))
    cached = run(forgetting_model(), stream_config(shuffle=False, context_source="cache", cache_build_method="loop"))
    assert ordered.history["val_loss"].values == pytest.approx(cached.history["val_loss"].values, abs=1e-4)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at", [4, 10])  # mid-epoch (mid-block), and right at an epoch's last step
def test_streamed_run_resumes_exactly(tmp_path, stop_at):
    unbroken_model = forgetting_model()
    unbroken = run(unbroken_model, stream_config(checkpoint_every_steps=1), checkpoint_path=tmp_path / "a.st")
    path = tmp_path / "b.st"

    def stop(info):
        if info["global_step"] == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(forgetting_model(), stream_config(checkpoint_every_steps=1), checkpoint_path=path, callback=stop)
    resumed_model = forgetting_model()
    with torch.no_grad():
        for param in phase2_trainable_parameters(resumed_model):
            param.normal_()
    resumed = run(resumed_model, stream_config(checkpoint_every_steps=1), checkpoint_path=path, resume=True)
    assert resumed.steps == unbroken.steps
    assert resumed.history[METRICS].values == pytest.approx(unbroken.history[METRICS].values, abs=1e-6)
    for key, value in unbroken_model.state_dict().items():
        assert torch.allclose(resumed_model.state_dict()[key], value, atol=1e-6), key


# ------------------------------------------------------------------------------------------- torch.compile

def test_compiled_is_the_module_itself_when_off():
    step = Phase2Step(forgetting_model())
    assert compiled(step, False) is step
    assert compiled(step, True) is not step and compiled(step, True)._orig_mod is step


def test_a_compiled_phase2_step_trains_like_the_eager_one(monkeypatch):
    # traced by dynamo and AOT autograd without inductor's C++ code generation (minutes on a busy 2-core CPU);
    # bench/phase2.py --scale --compile measures inductor itself
    import newllm.training.phase2 as phase2

    monkeypatch.setattr(phase2, "compiled",
                        lambda module, enabled: torch.compile(module, backend="aot_eager") if enabled else module)
    train, val = learnable(n_train=256, n_val=64)
    budget = MemoryBudget.simulated(None, host_gib=8, disk_gib=8)
    results = []
    for compile_step in (False, True):
        cfg = Phase2Config(epochs=1, batch_size=64, micro_batch_size=64, ce_chunk_tokens=64, seed=7,
                           context_source="cache", cache_build_method="loop", compile=compile_step)
        try:
            results.append(train_phase2(forgetting_model(), train, val, cfg, progress=False, budget=budget))
        except Exception as error:  # no C++ compiler for inductor on this machine
            if compile_step and "compil" in str(error).lower():
                pytest.skip(f"torch.compile is not usable here: {error}")
            raise
    eager, compiled_run = results
    assert compiled_run.history["train_loss"].values == pytest.approx(eager.history["train_loss"].values, abs=1e-5)
    assert compiled_run.val.loss == pytest.approx(eager.val.loss, abs=1e-5)

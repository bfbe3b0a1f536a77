"""The context cache: streams, token inputs, equality with freshly computed contexts, placements, dtypes, chunks."""

import numpy as np
import pytest
import torch

from newllm.config.models import ModelConfig
from newllm.data.streams import make_streams
from newllm.models.cvfp import CVFPModel
from newllm.recurrence import token_inputs, token_loop
from newllm.training.context_cache import ContextCache, build_context_cache

# max-abs tolerance per cache dtype: the recurrence's own tolerance plus the dtype's rounding of values up to ~5
TOLERANCE = {"float32": 1e-4, "float16": 5 * 2**-11 + 1e-4, "bfloat16": 5 * 2**-8 + 1e-4}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(k: int = 1, all_layers: bool = True, seed: int = 0) -> CVFPModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=200, ctx_dim=24, embed_dim=16, num_layers=2, embedding="random", init_std=0.05,
                      num_input_tokens=k, token_input_all_layers=all_layers)
    return CVFPModel(cfg).eval()


def documents(seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 200, (n,), generator=generator) for n in (150, 17, 60, 2, 1, 90)]


def fresh_rows(model: CVFPModel, stream_ids: torch.Tensor) -> torch.Tensor:
    """Every layer's contexts of one stream by the reference token loop, [T, sum(dims)]."""
    with torch.no_grad():
        per_layer = token_loop(model.context_block, model.embed_tokens(stream_ids[None]),
                               torch.zeros(1, model.cfg.ctx_dim))
    return torch.cat([c[0] for c in per_layer], dim=-1)


# ------------------------------------------------------------------------------------------- streams

def test_concat_streams_are_one_stream_like_the_original():
    docs = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    streams = make_streams(docs, "concat")
    assert streams.inputs.tolist() == [1, 2, 3, 4] and streams.targets.tolist() == [2, 3, 4, 5]
    assert streams.starts.tolist() == [0] and streams.n_tokens == 4


def test_per_sample_streams_never_cross_documents():
    docs = [torch.tensor([1, 2, 3]), torch.tensor([9]), torch.tensor([4, 5])]
    streams = make_streams(docs, "per_sample")
    assert streams.inputs.tolist() == [1, 2, 4] and streams.targets.tolist() == [2, 3, 5]
    assert streams.starts.tolist() == [0, 2] and streams.ends.tolist() == [2, 3]


def test_stream_inputs_accept_flat_ids_and_reject_bad_shapes():
    assert make_streams([5, 6, 7]).targets.tolist() == [6, 7]
    assert make_streams(np.array([5, 6, 7])).inputs.tolist() == [5, 6]
    assert make_streams(torch.arange(6).reshape(2, 3), "per_sample").targets.tolist() == [1, 2, 4, 5]  # rows
    with pytest.raises(ValueError, match="1-D"):
        make_streams(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="nothing to predict"):
        make_streams([torch.tensor([1])], "per_sample")
    with pytest.raises(ValueError, match="streams="):
        make_streams([1, 2], "documents")


def test_fingerprint_changes_with_the_data():
    a = make_streams(documents(), "per_sample").fingerprint()
    assert a == make_streams(documents(), "per_sample").fingerprint()
    assert a != make_streams(documents(), "concat").fingerprint()
    assert a != make_streams(documents(seed=2), "per_sample").fingerprint()


@pytest.mark.parametrize("k", [1, 3])
def test_token_inputs_from_windows_equal_embed_tokens(k):
    model = tiny_model(k=k)
    streams = make_streams(documents(), "per_sample")
    index = torch.arange(streams.n_tokens)
    with torch.no_grad():
        got = token_inputs(model, streams.windows(index, k))
        expected = torch.cat([model.embed_tokens(streams.inputs[s:e][None])[0]
                              for s, e in zip(streams.starts.tolist(), streams.ends.tolist())])
    assert torch.allclose(got, expected, atol=1e-6)
    if k > 1:  # the first token of the second stream sees nothing of the first one
        first = int(streams.starts[1])
        assert streams.windows(torch.tensor([first]), k)[0, :-1].tolist() == [-1] * (k - 1)


# ------------------------------------------------------------------------------------------- equality

@pytest.mark.parametrize("placement,dtype", [("cpu", "float32"), ("cpu", "float16"), ("disk", "float32"),
                                             ("disk", "float16"), ("disk", "bfloat16"), ("cpu", "bfloat16")])
@pytest.mark.parametrize("mode", ["concat", "per_sample"])
def test_cache_equals_freshly_computed_contexts(tmp_path, placement, dtype, mode):
    model = tiny_model()
    streams = make_streams(documents(), mode)
    # 64-token batches: long streams are split into pieces that must join exactly, short ones share batches
    cache = build_context_cache(model, streams, dtype=dtype, placement=placement, cache_dir=str(tmp_path),
                                method="loop", batch_tokens=64, progress=False)
    try:
        for start, end in zip(streams.starts.tolist(), streams.ends.tolist()):
            expected = fresh_rows(model, streams.inputs[start:end])
            got = cache.rows(slice(start, end))
            assert got.dtype == torch.float32
            assert (got - expected).abs().max() <= TOLERANCE[dtype]
        if dtype == "float32":
            index = torch.tensor([5, 0, 77])
            assert torch.equal(cache.rows(index), cache.rows(slice(0, len(cache)))[index])
        assert cache.info()["placement"] == placement and cache.info()["tokens"] == streams.n_tokens
    finally:
        cache.close()


@pytest.mark.parametrize("method", ["auto", "sweeps"])
def test_fast_recurrence_methods_match_the_loop(method):
    model = tiny_model(k=2, all_layers=False)  # layer widths differ: 40, 32
    streams = make_streams(documents(), "concat")
    cache = build_context_cache(model, streams, method=method, tol=1e-6, progress=False)
    expected = fresh_rows(model, streams.inputs)
    assert cache.split(cache.rows(slice(0, 3)))[0].shape == (3, 40)
    assert (cache.rows(slice(0, len(cache))) - expected).abs().max() <= TOLERANCE["float32"]
    assert cache.info()["recurrence_method"]
    cache.close()


def test_build_writes_in_chunks_never_the_whole_stream(monkeypatch):
    model = tiny_model()
    streams = make_streams(documents(), "concat")
    sizes = []
    original = ContextCache.write

    def spy(self, start, per_layer):
        sizes.append(per_layer[0].shape[0])
        original(self, start, per_layer)

    monkeypatch.setattr(ContextCache, "write", spy)
    build_context_cache(model, streams, method="loop", batch_tokens=50, progress=False).close()
    assert len(sizes) >= streams.n_tokens // 50 and max(sizes) <= 50 and sum(sizes) == streams.n_tokens


def test_build_backs_off_a_device_oom_and_fills_the_same_cache(monkeypatch):
    model = tiny_model()
    streams = make_streams(documents(), "concat")
    reference = build_context_cache(model, streams, method="loop", batch_tokens=64, progress=False)
    expected = reference.rows(slice(None)).clone()
    reference.close()
    original, sizes = ContextCache.write, []

    def failing(self, start, per_layer):
        sizes.append(per_layer[0].shape[0])
        if per_layer[0].shape[0] > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        original(self, start, per_layer)

    monkeypatch.setattr(ContextCache, "write", failing)
    with pytest.warns(RuntimeWarning, match="context cache build: out of device memory, retrying with (32|16) tokens"):
        cache = build_context_cache(model, streams, method="loop", batch_tokens=64, progress=False)
    assert cache.build_info["batch_tokens"] == 16 and max(sizes[2:]) <= 16
    assert torch.allclose(cache.rows(slice(None)), expected, atol=1e-6)
    cache.close()


# ------------------------------------------------------------------------------------------- storage

def test_disk_cache_file_lifecycle(tmp_path):
    model = tiny_model()
    streams = make_streams(documents(), "concat")
    cache = build_context_cache(model, streams, dtype="bfloat16", placement="disk", cache_dir=str(tmp_path),
                                method="loop", progress=False)
    path = cache.path
    assert path.parent == tmp_path and path.stat().st_size == cache.nbytes
    # bf16 is stored as its bit pattern: reading gives exactly the bf16 rounding of the fp32 contexts
    expected = fresh_rows(model, streams.inputs)
    assert torch.equal(cache.rows(slice(0, 10)), expected[:10].to(torch.bfloat16).float())
    cache.close()
    assert not path.exists()
    temporary = build_context_cache(model, streams, placement="disk", method="loop", progress=False)
    folder = temporary.path.parent
    temporary.close()
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="closed"):
        cache.rows(slice(0, 1))


def test_float16_overflow_is_refused():
    streams = make_streams([1, 2, 3])
    cache = ContextCache(streams, [4], dtype="float16")
    with pytest.raises(ValueError, match="float16 range"):
        cache.write(0, [torch.full((1, 4), 1e6)])
    cache.close()


def test_bad_placements_are_clear_errors():
    streams = make_streams([1, 2, 3])
    with pytest.raises(ValueError, match="needs a CUDA"):
        ContextCache(streams, [4], placement="gpu")
    with pytest.raises(ValueError, match="placement"):
        ContextCache(streams, [4], placement="tape")
    with pytest.raises(ValueError, match="dtype"):
        ContextCache(streams, [4], dtype="int8")
    with pytest.raises(ValueError, match="vocab_size"):
        build_context_cache(tiny_model(), make_streams([1, 500, 2]), progress=False)

import dataclasses
import json

import pytest

from newllm.config.data import DataConfig
from newllm.config.models import GatedLMConfig, ModelConfig
from newllm.config.training import GatedTrainConfig, Phase1Config, Phase2Config

ALL = [ModelConfig, GatedLMConfig, DataConfig, Phase1Config, Phase2Config, GatedTrainConfig]


@pytest.mark.parametrize("cls", ALL)
def test_defaults_round_trip_through_json(cls, tmp_path):
    cfg = cls()
    assert cls.from_json(cfg.to_json()) == cfg
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    assert cls.from_json(path) == cfg
    assert json.loads(path.read_text())  # valid JSON on disk


@pytest.mark.parametrize(
    "cls, field, value, fragment",
    [
        (ModelConfig, "ctx_dim", 0, "ctx_dim=0"),
        (ModelConfig, "ctx_dim", -5, "integer >= 1"),
        (ModelConfig, "num_layers", 0, "num_layers"),
        (ModelConfig, "num_input_tokens", 0, "num_input_tokens"),
        (ModelConfig, "embedding", "bert", "'auto', 'gpt2', 'random'"),
        (ModelConfig, "vocab_size", 1, "vocab_size"),
        (GatedLMConfig, "vocab_size", 4, "vocab_size"),
        (GatedLMConfig, "dropout", 1.0, "[0, 1)"),
        (Phase1Config, "dist_reg_weight", 1.5, "[0.0, 1.0]"),
        (Phase1Config, "dist_reg_weight", -0.1, "dist_reg_weight"),
        (Phase1Config, "tol", 0.0, "tol"),
        (Phase1Config, "solver", "magic", "'sequential', 'parallel'"),
        (Phase2Config, "cache_dtype", "int4", "cache_dtype"),
        (Phase2Config, "lr", float("nan"), "finite"),
        (GatedTrainConfig, "window", 1, "window"),
        (GatedTrainConfig, "stride", 0, "stride"),
        (GatedTrainConfig, "grad_clip", "sometimes", "adaptive"),
        (DataConfig, "samples", 0, "samples"),
        (DataConfig, "tokenizer", "spacy", "tokenizer"),
    ],
)
def test_bad_values_name_field_value_and_allowed(cls, field, value, fragment):
    with pytest.raises(ValueError) as info:
        cls(**{field: value})
    message = str(info.value)
    assert f"{cls.__name__}.{field}" in message
    assert fragment in message


def test_booleans_are_not_integers():
    with pytest.raises(ValueError):
        ModelConfig(num_layers=True)


def test_max_iterations_below_min_iterations_is_rejected():
    with pytest.raises(ValueError, match="min_iterations"):
        Phase1Config(min_iterations=10, max_iterations=5)


def test_weight_tying_needs_matching_dims():
    with pytest.raises(ValueError, match="weight_tying"):
        ModelConfig(ctx_dim=512, embed_dim=768, weight_tying=True)
    assert ModelConfig(weight_tying=True).weight_tying


def test_gpt2_embedding_needs_gpt2_shape():
    with pytest.raises(ValueError, match="gpt2"):
        ModelConfig(embedding="gpt2", vocab_size=1000)


def test_configs_are_frozen_and_replace_validates():
    cfg = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ctx_dim = 3  # type: ignore[misc]
    assert dataclasses.replace(cfg, ctx_dim=512).ctx_dim == 512
    with pytest.raises(ValueError):
        dataclasses.replace(cfg, ctx_dim=-1)


def test_unknown_keys_and_malformed_json_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        ModelConfig.from_dict({"ctx_dim": 8, "ctx_dims": 9})
    bad = tmp_path / "bad.json"
    bad.write_text('{"ctx_dim": 8,')
    with pytest.raises(ValueError, match="malformed JSON"):
        ModelConfig.from_json(bad)
    with pytest.raises(ValueError, match="no such file"):
        ModelConfig.from_json(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="JSON object"):
        ModelConfig.from_dict([1, 2])  # type: ignore[arg-type]


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "cfg.json"
    ModelConfig(ctx_dim=8).to_json(path)
    before = path.read_text()

    import newllm.utils.io as io

    def broken_write(self, data):  # simulate a crash half-way through writing
        raise OSError("disk full")

    monkeypatch.setattr(io.Path, "write_bytes", broken_write)
    with pytest.raises(OSError):
        ModelConfig(ctx_dim=16).to_json(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.json"]  # no temporary file left behind

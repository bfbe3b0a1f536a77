import random

import numpy as np
import pytest
import torch

from newllm.config.models import ModelConfig
from newllm.models.cvfp import CVFPModel
from newllm.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def make(tied=False):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, ctx_dim=8, embed_dim=8, num_layers=2, embedding="random",
                      weight_tying=tied, freeze_embedding=False)
    model = CVFPModel(cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return model, opt


def train_step(model, opt, seed):
    torch.manual_seed(seed)
    ids = torch.randint(0, 40, (2, 6))
    loss = torch.nn.functional.cross_entropy(model(ids).logits[:, :-1].reshape(-1, 40), ids[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_restores_weights_optimizer_rng_and_state(tmp_path, tied):
    model, opt = make(tied)
    train_step(model, opt, 1)
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, opt, state={"epoch": 2, "cursor": [1, 5]})
    expected = (torch.rand(3), np.random.rand(), random.random())

    model2, opt2 = make(tied)
    state = load_checkpoint(path, model2, opt2)
    assert state == {"epoch": 2, "cursor": [1, 5]}
    assert (torch.rand(3).tolist(), np.random.rand(), random.random()) == (expected[0].tolist(), *expected[1:])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    if tied:
        assert model2.head.weight is model2.embedding.weight
    # continuing from the restored state gives bit-identical weights
    train_step(model, opt, 2)
    train_step(model2, opt2, 2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_truncated_checkpoint_is_reported_and_previous_good_is_kept(tmp_path):
    model, opt = make()
    good = save_checkpoint(tmp_path / "good.safetensors", model, opt)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(bad, model)
    load_checkpoint(good, make()[0])  # still loads


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = make()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, opt, state={"epoch": 1})
    before = path.read_bytes()

    import newllm.utils.checkpoint as ckpt

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, opt, state={"epoch": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]


def test_mismatched_model_and_missing_file_are_clear(tmp_path):
    model, _ = make()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model)
    other = CVFPModel(ModelConfig(vocab_size=40, ctx_dim=8, embed_dim=8, num_layers=3, embedding="random"))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_checkpoint(path, other)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors", model)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, model, torch.optim.Adam(model.parameters()))


def test_non_json_state_is_rejected_before_writing(tmp_path):
    model, _ = make()
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "c.safetensors", model, state={"obj": object()})
    assert not list(tmp_path.iterdir())


def test_flipped_tensor_bytes_are_refused(tmp_path):
    import json
    import struct

    model = torch.nn.Linear(8, 4)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, state={"epoch": 1})
    data = bytearray(path.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    entry = json.loads(data[8:8 + header])["model.weight"]
    start = 8 + header + entry["data_offsets"][0]
    data[start + 5] ^= 0x10  # one bit of one weight: safetensors itself loads this without complaint
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted: its tensors no longer match the content hash"):
        load_checkpoint(path, torch.nn.Linear(8, 4))

"""Phase 2: chunked cross-entropy, training on cached contexts, OOM backoff, checkpoint/resume, evaluation."""

import math

import pytest
import torch
import torch.nn.functional as F

import newllm.training.phase2_checkpoint as phase2_checkpoint
from newllm.config.models import ModelConfig
from newllm.config.training import Phase2Config
from newllm.data.streams import make_streams
from newllm.models.cvfp import CVFPModel
from newllm.training.chunked_ce import linear_cross_entropy
from newllm.training.common import OOMBackoff, TrainingMemoryError, epoch_order, lr_factor
from newllm.training.context_cache import build_context_cache
from newllm.training.phase2 import evaluate, train_phase2
from newllm.training.phase2_checkpoint import previous_checkpoint_path
from newllm.training.planner import MemoryBudget, phase2_trainable_parameters
from newllm.utils.checkpoint import CheckpointError, read_checkpoint

VOCAB = 200
BUDGET = MemoryBudget.simulated(None, host_gib=8, disk_gib=8)  # a fixed machine: plans do not depend on the host
METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "val_ppl"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, **overrides) -> CVFPModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, ctx_dim=24, embed_dim=16, num_layers=2, embedding="random",
                      init_std=0.05, **overrides)
    return CVFPModel(cfg)


def token_data(n_train: int = 320, n_val: int = 96, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable stream: a noisy repeating pattern over 30 ids (so validation loss can improve)."""
    generator = torch.Generator().manual_seed(seed)
    pattern = torch.randint(0, 30, (17,), generator=generator)
    ids = pattern.repeat((n_train + n_val) // 17 + 1)[: n_train + n_val].clone()
    noise = torch.rand(ids.shape, generator=generator) < 0.1
    ids[noise] = torch.randint(0, VOCAB, (int(noise.sum()),), generator=generator)
    return ids[:n_train], ids[n_train:]


def config(**changes) -> Phase2Config:
    base = dict(epochs=3, batch_size=64, patience=5, cache_build_method="loop", seed=7)
    base.update(changes)
    return Phase2Config(**base)


def run(model, cfg, **kwargs):
    train, val = token_data()
    return train_phase2(model, train, val, cfg, tokenizer_name="test-ids", progress=False, budget=BUDGET, **kwargs)


def trainable_state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("context_block", "embedding"))}


# ------------------------------------------------------------------------------------------- chunked CE

@pytest.mark.parametrize("chunk", [1, 7, 37, 1000])
@pytest.mark.parametrize("with_bias", [True, False])
def test_chunked_cross_entropy_equals_the_plain_computation(chunk, with_bias):
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(300, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 300, (37,))
    loss, correct = linear_cross_entropy(h, weight, bias, targets, chunk, scale=1 / 37)
    loss.backward()
    got = [h.grad.clone(), weight.grad.clone()] + ([bias.grad.clone()] if with_bias else [])
    for tensor in [h, weight] + ([bias] if with_bias else []):
        tensor.grad = None
    logits = F.linear(h, weight, bias)
    reference = F.cross_entropy(logits, targets)
    reference.backward()
    expected = [h.grad, weight.grad] + ([bias.grad] if with_bias else [])
    assert abs(float(loss.detach()) - float(reference.detach())) <= 1e-5
    for a, b in zip(got, expected):
        assert (a - b).abs().max() <= 1e-5
    assert int(correct) == int((logits.argmax(1) == targets).sum())


def test_chunked_cross_entropy_float32_and_no_grad():
    torch.manual_seed(1)
    h = torch.randn(64, 32, requires_grad=True)
    weight = (0.1 * torch.randn(500, 32)).requires_grad_()
    targets = torch.randint(0, 500, (64,))
    with torch.no_grad():
        loss, _ = linear_cross_entropy(h, weight, None, targets, 10)
    assert loss.grad_fn is None
    with torch.no_grad():
        expected = F.cross_entropy(h @ weight.t(), targets, reduction="sum")
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(h, weight, None, targets[:3], 10)


def test_chunked_cross_entropy_scales_gradients_by_the_incoming_gradient():
    torch.manual_seed(2)
    h = torch.randn(20, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (20,))
    loss, _ = linear_cross_entropy(h, weight, None, targets, 6, scale=0.5)
    (3.0 * loss).backward()
    expected_h = torch.autograd.grad(1.5 * F.cross_entropy(h @ weight.t(), targets, reduction="sum"), h)[0]
    assert (h.grad - expected_h).abs().max() <= 1e-5  # softmax runs in fp32
    with pytest.raises(ValueError, match="scale"):
        linear_cross_entropy(h, weight, None, targets, 6, scale=0.0)


# ------------------------------------------------------------------------------------------- training

def test_training_improves_validation_and_freezes_the_context_block():
    model = tiny_model()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("context_block")}
    before = trainable_state(model)
    result = run(model, config(epochs=4, lr=1e-2))
    history = result.history
    assert list(history.epoch) == [1, 2, 3, 4] and history.complete.all()
    assert history.val_loss.iloc[-1] < history.val_loss.iloc[0] < math.log(VOCAB)
    assert result.val.tokenizer == "test-ids" and result.val.vocab_size == VOCAB and "V=200" in history.tokenizer[0]
    assert result.stop_reason == "epochs" and result.steps == 4 * 5
    for key, value in model.state_dict().items():
        if key.startswith("context_block"):
            assert torch.equal(value, frozen[key])
    assert not torch.equal(model.head.weight, before["head.weight"])
    assert all(p.requires_grad for p in model.context_block.parameters())  # the caller's flags are restored
    assert result.cache["train"]["placement"] == "cpu" and result.plan.cache_dtype == "float32"


def test_best_weights_are_restored_not_the_last():
    model = tiny_model()
    # random validation ids: the model overfits, so validation loss is best early and then rises
    train, _ = token_data()
    val = torch.randint(0, VOCAB, (96,), generator=torch.Generator().manual_seed(9))
    result = train_phase2(model, train, val, config(epochs=6, lr=3e-2, patience=2), progress=False, budget=BUDGET)
    history = result.history
    assert result.best_epoch == int(history.val_loss.idxmin()) + 1 < len(history)
    assert result.stop_reason == "early_stopping"
    cache = build_context_cache(model, make_streams(val), method="loop", progress=False)
    again = evaluate(model, cache, "test-ids")
    cache.close()
    assert again.loss == pytest.approx(history.val_loss.min(), abs=1e-6)
    assert result.val.loss == pytest.approx(again.loss, abs=1e-6)


def test_evaluate_matches_the_full_model_forward():
    model = tiny_model(num_input_tokens=2, token_input_all_layers=False)
    run(model, config(epochs=1, lr=1e-2))  # a trained head, so the check is not trivial
    _, val = token_data()
    cache = build_context_cache(model, make_streams(val), method="loop", progress=False)
    result = evaluate(model, cache, "test-ids", n_bytes=500, batch_size=10, ce_chunk_tokens=7)
    cache.close()
    with torch.no_grad():
        logits = model(val[None]).logits[0, :-1]
    expected = F.cross_entropy(logits, val[1:])
    assert result.loss == pytest.approx(float(expected), abs=1e-5)
    assert result.correct == int((logits.argmax(1) == val[1:]).sum()) and result.tokens == len(val) - 1
    assert result.bits_per_byte == pytest.approx(result.loss * result.tokens / (500 * math.log(2)))


def test_placements_and_streams_modes_train():
    a = run(tiny_model(), config(epochs=1))
    b = run(tiny_model(), config(epochs=1, cache_placement="disk", cache_dtype="float32"))
    assert b.cache["train"]["placement"] == "disk"
    assert a.history.val_loss.item() == pytest.approx(b.history.val_loss.item(), abs=1e-6)
    c = run(tiny_model(), config(epochs=1, cache_dtype="bfloat16", cache_build_method="auto"))
    assert abs(c.history.val_loss.item() - a.history.val_loss.item()) < 1e-2
    train, val = token_data()
    docs = list(torch.split(train, 40))
    d = train_phase2(tiny_model(), docs, list(torch.split(val, 30)), config(epochs=1), streams="per_sample",
                     progress=False, budget=BUDGET)
    assert d.cache["train"]["streams"] == 8 and d.cache["train"]["tokens"] == 8 * 39


def test_schedule_and_order_helpers():
    cfg = config(schedule="cosine", lr=1e-3)
    assert cfg.lr * lr_factor(0, cfg.schedule, 10) == pytest.approx(1e-3)
    assert cfg.lr * lr_factor(5, cfg.schedule, 10) == pytest.approx(5e-4)
    assert cfg.lr * lr_factor(10, cfg.schedule, 10) == pytest.approx(0.0, abs=1e-12)
    assert epoch_order(5, cfg.seed, 3, shuffle=False).tolist() == [0, 1, 2, 3, 4]
    first, second = epoch_order(50, cfg.seed, 0, cfg.shuffle), epoch_order(50, cfg.seed, 1, cfg.shuffle)
    assert sorted(first.tolist()) == list(range(50)) and not torch.equal(first, second)
    assert torch.equal(first, epoch_order(50, cfg.seed, 0, cfg.shuffle))


def test_max_steps_stops_and_still_evaluates():
    rows = []
    result = run(tiny_model(), config(epochs=5, max_steps=7), epoch_callback=rows.append)
    assert result.steps == 7 and result.stop_reason == "max_steps"
    assert list(result.history.steps) == [5, 2] and not result.history.complete.iloc[-1]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["val_loss"] == result.history.val_loss.iloc[1]
    assert (result.history.seconds >= result.history.train_seconds).all()


# ------------------------------------------------------------------------------------------- OOM

def test_oom_backoff_halves_redoes_the_step_and_matches_an_unbroken_run():
    reference = tiny_model()
    expected = run(reference, config(epochs=2))
    calls = {"n": 0}

    def flaky(tokens: int) -> None:  # every pass over 16 tokens fails, and one 16-token pass fails once
        calls["n"] += 1
        if tokens > 16 or calls["n"] == 9:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    model = tiny_model()
    with pytest.warns(RuntimeWarning, match="retrying"):
        result = run(model, config(epochs=2, max_oom_halvings=3), before_forward=flaky)
    assert result.oom_halvings == 3 and result.micro_batch_size == 8 and result.steps == expected.steps
    # a corrupted step (gradients counted twice, or an extra optimizer step) would change the weights
    for key, value in trainable_state(reference).items():
        assert torch.allclose(trainable_state(model)[key], value, atol=1e-5), key
    assert result.history[METRICS].values == pytest.approx(expected.history[METRICS].values, abs=1e-5)


def test_oom_after_the_last_halving_stops_with_a_clear_message(tmp_path):
    path = tmp_path / "ckpt.safetensors"

    def always(tokens: int) -> None:
        if always.steps_ok <= 0:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    always.steps_ok = 1
    model = tiny_model()

    def after_step(info):
        always.steps_ok -= 1

    with pytest.warns(RuntimeWarning), pytest.raises(TrainingMemoryError, match="after 3 halving") as error:
        run(model, config(checkpoint_every_steps=1), checkpoint_path=path, before_forward=always, callback=after_step)
    assert "micro_batch_size" in str(error.value) and "optimizer did not step" in str(error.value)
    _, meta = read_checkpoint(path)  # the one finished step is safe in the checkpoint
    assert meta["state"]["global_step"] == 1


def test_oom_backoff_unit():
    backoff = OOMBackoff(64, max_halvings=2, what="unit")
    cleaned = []
    seen = []

    def fn(size):
        seen.append(size)
        if size > 20:
            raise torch.cuda.OutOfMemoryError("injected")
        return size

    with pytest.warns(RuntimeWarning):
        assert backoff.run(fn, cleanup=lambda: cleaned.append(1)) == 16
    assert seen == [64, 32, 16] and len(cleaned) == 2 and backoff.size == 16
    with pytest.raises(TrainingMemoryError, match="tried 16"):
        OOMBackoff(16, max_halvings=0, what="unit").run(lambda s: fn(100), cleanup=lambda: None)


# ------------------------------------------------------------------------------------------- checkpoints

class Interrupt(Exception):
    pass


def interrupted_run(path, stop_at: int, **changes):
    def stop(info):
        if info["global_step"] == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tiny_model(), config(checkpoint_every_steps=1, **changes), checkpoint_path=path, callback=stop)


@pytest.mark.parametrize("stop_at", [3, 5])  # mid-epoch, and right at an epoch's last step
def test_resume_ends_with_the_same_metrics_as_an_unbroken_run(tmp_path, stop_at):
    unbroken_model = tiny_model()
    unbroken = run(unbroken_model, config(checkpoint_every_steps=1), checkpoint_path=tmp_path / "a.safetensors")
    path = tmp_path / "b.safetensors"
    interrupted_run(path, stop_at)
    resumed_model = tiny_model()  # the same frozen weights (Phase 1's), scrambled trainable ones: those must come
    with torch.no_grad():  # from the checkpoint
        for param in phase2_trainable_parameters(resumed_model):
            param.normal_()
    resumed = run(resumed_model, config(checkpoint_every_steps=1), checkpoint_path=path, resume=True)
    assert resumed.steps == unbroken.steps and resumed.best_epoch == unbroken.best_epoch
    assert resumed.history[METRICS].values == pytest.approx(unbroken.history[METRICS].values, abs=1e-6)
    assert resumed.val.loss == pytest.approx(unbroken.val.loss, abs=1e-6)
    for key, value in unbroken_model.state_dict().items():
        assert torch.allclose(resumed_model.state_dict()[key], value, atol=1e-6), key


def test_checkpoints_hold_the_trained_weights_and_only_a_fingerprint_of_the_frozen_ones(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    interrupted_run(path, 3)
    tensors, meta = read_checkpoint(path)
    names = {key.split(".", 1)[1] for key in tensors if key.startswith("model.")}
    frozen = [n for n, _ in tiny_model().named_parameters() if n.startswith(("context_block", "embedding."))]
    assert frozen and not any(name.endswith(n.replace(".", "__")) for name in names for n in frozen)
    assert all(name.startswith(("trainable.", "best.")) for name in names)
    summary = meta["state"]["data"]["frozen_weights"]
    assert set(frozen) <= set(summary) and all(len(v) == 3 for v in summary.values())
    other = tiny_model(seed=123)  # another Phase 1 / embedding: refused, not silently mixed
    with pytest.raises(CheckpointError, match="frozen weights"):
        run(other, config(checkpoint_every_steps=1), checkpoint_path=path, resume=True)


def test_truncated_checkpoint_is_a_clear_error_and_the_previous_one_is_kept(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    interrupted_run(path, 3)
    previous = previous_checkpoint_path(path)
    assert previous.exists()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted") as error:
        run(tiny_model(), config(checkpoint_every_steps=1), checkpoint_path=path, resume=True)
    assert str(previous) in str(error.value)
    result = run(tiny_model(), config(checkpoint_every_steps=1), checkpoint_path=previous, resume=True)
    assert result.steps == 15


def test_a_failed_save_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    interrupted_run(path, 2)
    good = path.read_bytes()

    def failing_save(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(phase2_checkpoint, "save_checkpoint", failing_save)
    with pytest.raises(OSError, match="disk full"):
        run(tiny_model(), config(checkpoint_every_steps=1), checkpoint_path=path, resume=True)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert run(tiny_model(), config(checkpoint_every_steps=1), checkpoint_path=path, resume=True).steps == 15


def test_resume_refuses_a_different_config_or_data(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    interrupted_run(path, 2)
    with pytest.raises(CheckpointError, match="lr"):
        run(tiny_model(), config(checkpoint_every_steps=1, lr=0.5), checkpoint_path=path, resume=True)
    train, val = token_data(seed=4)
    with pytest.raises(CheckpointError, match="token streams differ"):
        train_phase2(tiny_model(), train, val, config(), checkpoint_path=path, resume=True, progress=False,
                     budget=BUDGET)
    with pytest.raises(ValueError, match="checkpoint_path"):
        run(tiny_model(), config(), resume=True)


def test_a_checkpoint_with_flipped_bytes_is_refused_and_the_previous_one_offered(tmp_path):
    import json
    import struct

    path = tmp_path / "ckpt.safetensors"
    interrupted_run(path, 3)
    data = bytearray(path.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    name = next(k for k in json.loads(data[8:8 + header]) if k.startswith("model.trainable"))
    start = 8 + header + json.loads(data[8:8 + header])[name]["data_offsets"][0]
    data[start + 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="content hash") as error:
        run(tiny_model(), config(checkpoint_every_steps=1), checkpoint_path=path, resume=True)
    assert str(previous_checkpoint_path(path)) in str(error.value)

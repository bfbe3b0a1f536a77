"""End-to-end gated-LM training: schedules, early stopping, token-weighted metrics, files, exact resume, sweeps."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import newllm.utils.checkpoint as checkpoint_module
from newllm.config.models import GatedLMConfig
from newllm.config.training import GatedTrainConfig
from newllm.data.wikitext import make_windows
from newllm.experiments.gated_wikitext import run_wikitext
from newllm.experiments.sweeps import SEED002_CTX_SWEEP, sweep_gated
from newllm.models.common import parameter_count
from newllm.models.gated import GatedContextLM
from newllm.training.common import EarlyStopping, lr_factor
from newllm.training.gated import (
    base_learning_rate,
    choose_batch_size,
    clip_norm_for_epoch,
    evaluate_windows,
    experiment_name,
    train_gated_lm,
)
from newllm.utils.checkpoint import CheckpointError, load_checkpoint

MODEL = GatedLMConfig(vocab_size=48, embed_dim=16, hidden_dim=32, ctx_dim=16, num_layers=2, dropout=0.1)
# periodic checkpoints (and curves) only where a test needs them: drawing a figure costs more than an epoch here
TRAIN = GatedTrainConfig(window=12, stride=6, batch_size=8, lr=3e-3, epochs=4, checkpoint_every=100, patience=10)
NAME = experiment_name(MODEL)


def synthetic_paragraphs(n: int, seed: int) -> list[list[int]]:
    """BOS ... EOS paragraphs from a noisy cycle over ids 4..47: learnable, so the loss falls."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        token = rng.randrange(4, 48)
        body = []
        for _ in range(rng.randint(3, 30)):
            body.append(token)
            token = 4 + (token - 4 + 1) % 44 if rng.random() < 0.8 else rng.randrange(4, 48)
        out.append([2] + body + [3])
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def windows():
    train = make_windows(synthetic_paragraphs(16, 0), TRAIN.window, TRAIN.stride)
    val = make_windows(synthetic_paragraphs(4, 1), TRAIN.window, TRAIN.stride, targets="once")
    return train, val


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b, tol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=tol, rtol=0), key


LOSS_COLUMNS = ["epoch", "updates", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "grad_clip"]


# ----------------------------------------------------------------------------------------- schedules

def test_adaptive_clipping_schedule_by_epoch_and_fixed_norm():
    assert [clip_norm_for_epoch("adaptive", e) for e in (0, 9, 10, 29, 30, 149)] == [0.5, 0.5, 1.0, 1.0, 2.0, 2.0]
    assert [clip_norm_for_epoch(0.7, e) for e in (0, 10, 30)] == [0.7, 0.7, 0.7]
    with pytest.raises(ValueError, match="adaptive"):
        clip_norm_for_epoch("sometimes", 0)


def test_trainer_applies_the_clip_norm_of_each_epoch(windows, tmp_path, monkeypatch):
    seen = []
    original = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        seen.append(max_norm)
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    train, val = windows
    small = make_windows(synthetic_paragraphs(3, 5), TRAIN.window, TRAIN.stride)
    cfg = replace(TRAIN, epochs=11, batch_size=len(small), patience=100)  # one update per epoch
    result = train_gated_lm(MODEL, cfg, small, val, tmp_path, progress=False)
    assert seen == [0.5] * 10 + [1.0]
    assert result.history["grad_clip"].tolist() == seen


def test_learning_rate_rules():
    assert base_learning_rate(GatedTrainConfig(lr=1e-4, lr_scaling="sqrt"), 2048) == pytest.approx(8e-4)
    assert base_learning_rate(GatedTrainConfig(lr=1e-4, lr_scaling="sqrt"), 32) == pytest.approx(1e-4)
    assert base_learning_rate(GatedTrainConfig(lr=1e-4), 2048) == 1e-4
    assert lr_factor(50, "constant", 100) == 1.0
    assert [lr_factor(u, "cosine", 100) for u in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0])


def test_cosine_schedule_reaches_the_optimizer(windows, tmp_path):
    train, val = windows
    cfg = replace(TRAIN, epochs=2, schedule="cosine", lr_scaling="sqrt", batch_size=16)
    result = train_gated_lm(MODEL, cfg, train, val, tmp_path, progress=False)
    base = cfg.lr * math.sqrt(16 / 32)
    assert result.lr == pytest.approx(base)
    total = result.updates
    assert result.history["lr"].tolist() == pytest.approx(
        [base * lr_factor(total // 2 - 1, "cosine", total), base * lr_factor(total - 1, "cosine", total)])


def test_early_stopping_rule():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    assert [stopper.update(x) for x in (5.0, 4.95, 4.85, 4.80)] == [True, False, True, False]
    assert not stopper.should_stop
    assert stopper.update(4.9) is False and stopper.should_stop


def test_trainer_stops_early_and_says_so(windows, tmp_path):
    train, val = windows
    cfg = replace(TRAIN, epochs=20, lr=1e-9, min_delta=0.5, patience=2)  # nothing improves by 0.5 nats
    result = train_gated_lm(MODEL, cfg, train, val, tmp_path, progress=False)
    assert result.stopped_early and len(result.history) == 3
    progress = json.loads(result.paths["progress"].read_text())
    assert progress["stopped_early"] is True and progress["current_epoch"] == 3 and progress["total_epochs"] == 20


def test_cpu_batch_size_default():
    assert choose_batch_size(GatedContextLM(MODEL), 64, "cpu") == 32


# ------------------------------------------------------------------------------------------- metrics

def test_evaluation_is_token_weighted_over_non_pad_targets(windows):
    _, val = windows
    torch.manual_seed(0)
    model = GatedContextLM(replace(MODEL, init_std=0.5))  # far from uniform predictions: losses differ per token
    result = evaluate_windows(model, val, batch_size=3, tokenizer_name="word")
    model.eval()
    with torch.no_grad():
        logits, _ = model(val.inputs)
    flat_logits, flat_targets = logits.reshape(-1, MODEL.vocab_size), val.targets.reshape(-1)
    keep = flat_targets != 0
    expected = F.cross_entropy(flat_logits[keep], flat_targets[keep]).item()
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.tokens == val.n_targets
    assert result.correct == int((flat_logits[keep].argmax(-1) == flat_targets[keep]).sum())
    assert result.label == "word (V=48)"
    # the original's unweighted mean of batch means is a different number on these uneven batches
    batch_means = [F.cross_entropy(logits[i:i + 3].reshape(-1, 48), val.targets[i:i + 3].reshape(-1),
                                   ignore_index=0).item() for i in range(0, len(val), 3)]
    assert abs(sum(batch_means) / len(batch_means) - expected) > 1e-4


# --------------------------------------------------------------------------------------- outputs

def test_run_writes_every_output_and_the_best_checkpoint_is_the_best(windows, tmp_path):
    train, val = windows
    calls = []
    result = train_gated_lm(MODEL, replace(TRAIN, checkpoint_every=2), train, val, tmp_path, progress=False,
                            callback=lambda history: calls.append(len(history)))
    ckpts = tmp_path / "checkpoints"
    for path in (ckpts / f"best_{NAME}.safetensors", ckpts / f"{NAME}_epoch_2.safetensors",
                 ckpts / f"{NAME}_epoch_4.safetensors", ckpts / f"{NAME}_final.safetensors",
                 tmp_path / f"{NAME}_progress.json", tmp_path / f"{NAME}_history.csv",
                 tmp_path / f"{NAME}_training_curves.png"):
        assert path.is_file() and path.stat().st_size > 0, path
    assert NAME == "new_llm_wikitext_ctx16_layers2"
    assert calls == [1, 2, 3, 4]
    history = result.history
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]  # it learns
    assert history["val_ppl"].tolist() == pytest.approx([math.exp(x) for x in history["val_loss"]])
    progress = json.loads((tmp_path / f"{NAME}_progress.json").read_text())
    assert progress["model_name"] == NAME and progress["current_epoch"] == 4 and progress["stopped_early"] is False
    assert progress["val_losses"] == pytest.approx(history["val_loss"].tolist())
    assert progress["best_val_loss"] == pytest.approx(history["val_loss"].min())
    assert progress["config"]["model"] == MODEL.to_dict() and progress["ppl_tokenizer"] == "word (V=48)"
    assert pd.read_csv(tmp_path / f"{NAME}_history.csv")["val_loss"].tolist() == pytest.approx(
        history["val_loss"].tolist())
    # the best checkpoint holds the weights that scored the best validation loss
    best_model = GatedContextLM(MODEL)
    state = load_checkpoint(ckpts / f"best_{NAME}.safetensors", best_model, restore_rng=False)
    assert evaluate_windows(best_model, val, 8, "word").loss == pytest.approx(result.best_val_loss, rel=1e-5)
    assert state["best_epoch"] == result.best_epoch == history.loc[history["val_loss"].idxmin(), "epoch"]
    assert result.parameters == parameter_count(GatedContextLM(MODEL))


def test_callback_can_stop_the_run(windows, tmp_path):
    train, val = windows
    result = train_gated_lm(MODEL, TRAIN, train, val, tmp_path, progress=False, callback=lambda h: len(h) == 2)
    assert len(result.history) == 2 and not result.stopped_early
    assert (tmp_path / "checkpoints" / f"{NAME}_final.safetensors").is_file()


def test_budgeted_run_stops_after_max_updates_mid_epoch(windows, tmp_path):
    train, val = windows
    per_epoch = math.ceil(len(train) / TRAIN.batch_size)
    cfg = replace(TRAIN, max_updates=per_epoch + 2)
    result = train_gated_lm(MODEL, cfg, train, val, tmp_path, progress=False)
    assert result.updates == per_epoch + 2
    assert result.history["epoch"].tolist() == pytest.approx([1, 1 + 2 / per_epoch])
    assert (tmp_path / "checkpoints" / f"best_{NAME}.safetensors").is_file()


# ---------------------------------------------------------------------------------------- resume

def test_resume_after_two_epochs_equals_four_epochs_directly(windows, tmp_path):
    train, val = windows
    direct = train_gated_lm(MODEL, TRAIN, train, val, tmp_path / "direct", progress=False)
    first = train_gated_lm(MODEL, replace(TRAIN, epochs=2), train, val, tmp_path / "resumed", progress=False)
    resumed = train_gated_lm(MODEL, TRAIN, train, val, tmp_path / "resumed", progress=False,
                             resume_from=first.paths["final"])
    assert_same_weights(weights(direct.model), weights(resumed.model))
    pd.testing.assert_frame_equal(direct.history[LOSS_COLUMNS], resumed.history[LOSS_COLUMNS], atol=1e-6, rtol=0)
    assert (resumed.best_val_loss, resumed.best_epoch, resumed.updates) == pytest.approx(
        (direct.best_val_loss, direct.best_epoch, direct.updates))


def test_resume_from_a_periodic_checkpoint_of_an_interrupted_cosine_run(windows, tmp_path):
    train, val = windows
    cfg = replace(TRAIN, schedule="cosine", checkpoint_every=2)
    direct = train_gated_lm(MODEL, cfg, train, val, tmp_path / "direct", progress=False)
    # a run that dies after epoch 3: only its periodic (epoch 2) checkpoint is used
    train_gated_lm(MODEL, cfg, train, val, tmp_path / "crashed", progress=False, callback=lambda h: len(h) == 3)
    resumed = train_gated_lm(MODEL, cfg, train, val, tmp_path / "crashed", progress=False,
                             resume_from=tmp_path / "crashed" / "checkpoints" / f"{NAME}_epoch_2.safetensors")
    assert_same_weights(weights(direct.model), weights(resumed.model))
    pd.testing.assert_frame_equal(direct.history[LOSS_COLUMNS], resumed.history[LOSS_COLUMNS], atol=1e-6, rtol=0)


def test_resuming_a_budgeted_run_mid_epoch_continues_the_same_updates(windows, tmp_path):
    train, val = windows
    direct = train_gated_lm(MODEL, replace(TRAIN, max_updates=7), train, val, tmp_path / "a", progress=False)
    first = train_gated_lm(MODEL, replace(TRAIN, max_updates=3), train, val, tmp_path / "b", progress=False)
    resumed = train_gated_lm(MODEL, replace(TRAIN, max_updates=7), train, val, tmp_path / "b", progress=False,
                             resume_from=first.paths["final"])
    assert resumed.updates == 7
    assert_same_weights(weights(direct.model), weights(resumed.model))
    assert resumed.history["train_loss"].iloc[-1] == pytest.approx(direct.history["train_loss"].iloc[-1], abs=1e-6)


def test_resume_with_another_model_config_is_refused(windows, tmp_path):
    train, val = windows
    first = train_gated_lm(MODEL, replace(TRAIN, epochs=1), train, val, tmp_path, progress=False)
    with pytest.raises(ValueError, match="was trained with model config"):
        train_gated_lm(replace(MODEL, ctx_dim=8), TRAIN, train, val, tmp_path, progress=False,
                       resume_from=first.paths["final"])


def test_truncated_checkpoint_is_reported_and_a_failed_save_keeps_the_previous_file(windows, tmp_path, monkeypatch):
    train, val = windows
    first = train_gated_lm(MODEL, replace(TRAIN, epochs=1), train, val, tmp_path, progress=False)
    final = first.paths["final"]
    good = final.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        train_gated_lm(MODEL, TRAIN, train, val, tmp_path / "other", progress=False, resume_from=truncated)

    def dying_save(tensors, filename, metadata=None):  # a crash half-way through writing
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 100)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(checkpoint_module, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_gated_lm(MODEL, TRAIN, train, val, tmp_path, progress=False, resume_from=final)
    assert final.read_bytes() == good  # the previous checkpoint is intact and still loads
    assert load_checkpoint(final, GatedContextLM(MODEL), restore_rng=False)["epoch"] == 1
    assert not list(final.parent.glob("*.tmp"))


def test_window_size_mismatch_is_an_error(windows, tmp_path):
    train, val = windows
    with pytest.raises(ValueError, match="train_cfg.window=16"):
        train_gated_lm(MODEL, replace(TRAIN, window=16, stride=8), train, val, tmp_path, progress=False)


# ------------------------------------------------------------------------------------ one call, sweep

def test_single_call_budgeted_run_on_local_files(tmp_path):
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    folder = tmp_path / "wt2"
    folder.mkdir()
    for split, n in (("train", 60), ("valid", 10)):
        text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(n))
        (folder / f"{split}.txt").write_text(text + "\n", encoding="utf-8")
    model_cfg = GatedLMConfig(vocab_size=30, embed_dim=16, hidden_dim=32, ctx_dim=16, num_layers=2)
    train_cfg = GatedTrainConfig(window=16, stride=8, epochs=50, max_updates=5, batch_size=None)
    result, data = run_wikitext(tmp_path / "run", model_cfg, train_cfg, source=str(folder), device="cpu",
                                progress=False)
    assert result.updates == 5 and result.batch_size == 32 and data.tokenizer.vocab_size == 30
    for key in ("best", "final", "progress", "history", "curves", "tokenizer"):
        assert result.paths[key].is_file(), key
    progress = json.loads(result.paths["progress"].read_text())
    assert "local files" in progress["config"]["data_source"]
    assert progress["config"]["data_stats"]["val_targets"] == data.val.n_targets


def test_sweep_returns_one_row_per_point_and_skips_finished_points(windows, tmp_path, monkeypatch):
    train, val = windows
    cfg = replace(TRAIN, epochs=1)
    points = [(8, 1), (16, 2)]
    table = sweep_gated(points, MODEL, cfg, train, val, tmp_path, progress=False)
    assert list(table[["ctx_dim", "layers"]].itertuples(index=False, name=None)) == points
    for row in table.itertuples():
        assert row.parameters == parameter_count(GatedContextLM(replace(MODEL, ctx_dim=row.ctx_dim,
                                                                        num_layers=row.layers)))
        assert row.best_val_ppl == pytest.approx(math.exp(row.best_val_loss))
        assert row.best_epoch == 1 and row.time_s > 0
        assert (tmp_path / row.run_name / f"{row.run_name}_progress.json").is_file()
    assert len(pd.read_csv(tmp_path / "sweep.csv")) == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr("newllm.experiments.sweeps.train_gated_lm", no_training)
    again = sweep_gated(points, MODEL, cfg, train, val, tmp_path, progress=False)
    assert again["best_val_loss"].tolist() == pytest.approx(table["best_val_loss"].tolist())
    assert SEED002_CTX_SWEEP == ((256, 6), (512, 6), (1024, 6))
    with pytest.raises(ValueError, match="GatedLMConfig.ctx_dim=0"):
        sweep_gated([(0, 2)], MODEL, cfg, train, val, tmp_path, progress=False)


def test_training_curves_have_loss_and_log_scale_ppl_panels(tmp_path):
    from newllm.plotting import plot_training_curves

    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [4.0, 3.5, 3.2], "val_loss": [4.1, 3.7, 3.6]})
    fig = plot_training_curves(history, title="run", path=tmp_path / "curves.png")
    loss_ax, ppl_ax = fig.axes
    assert loss_ax.get_yscale() == "linear" and ppl_ax.get_yscale() == "log"
    assert ppl_ax.lines[1].get_ydata().tolist() == pytest.approx([math.exp(x) for x in (4.1, 3.7, 3.6)])
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="val_loss"):
        plot_training_curves(history.drop(columns="val_loss"))


def test_evaluation_backs_off_a_device_oom(windows, monkeypatch):
    import newllm.training.gated as gated_module

    _, val = windows
    model = GatedContextLM(MODEL)
    expected = evaluate_windows(model, val, 64, "word")
    real, sizes = gated_module._window_loss, []

    def flaky(model_, inputs, *args):
        sizes.append(inputs.shape[0])
        if inputs.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(model_, inputs, *args)

    monkeypatch.setattr(gated_module, "_window_loss", flaky)
    with pytest.warns(RuntimeWarning, match="gated LM evaluation: out of device memory"):
        got = evaluate_windows(model, val, 16, "word")
    assert max(sizes[2:]) <= 4 and got.tokens == expected.tokens
    assert got.loss == pytest.approx(expected.loss, rel=1e-5) and got.correct == expected.correct

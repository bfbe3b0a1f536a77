"""LSTM / Transformer baselines: closed-form counts, parameter matching, causality, training, shared evaluation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from newllm.config.models import GatedLMConfig, LSTMConfig, ModelConfig, TransformerConfig
from newllm.models.baselines import (
    LSTMLM,
    TransformerLM,
    baseline_parameter_count,
    build_baseline,
    build_matched_baseline,
    count_for_match,
    non_embedding_parameter_count,
    target_parameter_count,
)
from newllm.models.common import parameter_count
from newllm.models.cvfp import CVFPModel
from newllm.models.gated import GatedContextLM
from newllm.training.lm_baseline import evaluate_lm, train_lm_baseline

V = 100
SMALL_CVFP = ModelConfig(vocab_size=V, ctx_dim=32, embed_dim=16, num_layers=2, embedding="random")
SMALL_GATED = GatedLMConfig(vocab_size=V, embed_dim=16, hidden_dim=64, ctx_dim=32, num_layers=3, dropout=0.0,
                            init_std=0.3)


@pytest.mark.parametrize("cfg", [
    LSTMConfig(vocab_size=V, embed_dim=16, hidden_dim=24, num_layers=1),
    LSTMConfig(vocab_size=V, embed_dim=8, hidden_dim=16, num_layers=3),
    TransformerConfig(vocab_size=V, d_model=16, num_layers=2, num_heads=2, max_seq_len=32),
    TransformerConfig(vocab_size=V, d_model=24, num_layers=1, num_heads=4, max_seq_len=8, embed_dim=16, mlp_ratio=2),
])
def test_closed_form_counts_match_built_models(cfg):
    model = build_baseline(cfg)
    assert baseline_parameter_count(cfg, "total") == parameter_count(model)
    assert baseline_parameter_count(cfg, "non_embedding") == non_embedding_parameter_count(model)


def test_non_embedding_count_leaves_out_embeddings_and_head():
    model = CVFPModel(SMALL_CVFP)
    embedding = SMALL_CVFP.vocab_size * SMALL_CVFP.embed_dim
    head = model.head.weight.numel() + model.head.bias.numel()
    assert non_embedding_parameter_count(model) == parameter_count(model) - embedding - head
    gated = GatedContextLM(SMALL_GATED)
    out = gated.output.weight.numel() + gated.output.bias.numel()
    assert non_embedding_parameter_count(gated) == parameter_count(gated) - V * SMALL_GATED.embed_dim - out


@pytest.mark.parametrize("kind,target,match", [
    ("lstm", 20_000, "total"),
    ("transformer", 20_000, "total"),
    ("lstm", SMALL_GATED, "total"),
    ("transformer", SMALL_CVFP, "non_embedding"),
    ("transformer", 300_000, "non_embedding"),
])
def test_matching_lands_within_tolerance(kind, target, match):
    tolerance = 0.05
    model, info = build_matched_baseline(kind, target, V, tolerance=tolerance, match=match, width_multiple=4)
    if isinstance(target, int):
        expected = target
    else:
        built = CVFPModel(target) if isinstance(target, ModelConfig) else GatedContextLM(target)
        expected = count_for_match(built, match)
    assert info.target_params == expected
    assert info.matched_params == count_for_match(model, match)
    assert abs(info.matched_params - expected) / expected <= tolerance
    assert info.rel_diff == pytest.approx((info.matched_params - expected) / expected)
    assert info.total_params == parameter_count(model)
    assert isinstance(model, LSTMLM if kind == "lstm" else TransformerLM)
    assert (info.num_layers, info.width) == (info.config.num_layers,
                                             info.config.hidden_dim if kind == "lstm" else info.config.d_model)


def test_target_from_config_counts_like_parameter_count():
    assert target_parameter_count(SMALL_CVFP) == parameter_count(CVFPModel(SMALL_CVFP))
    assert target_parameter_count(CVFPModel(SMALL_CVFP), "non_embedding") == non_embedding_parameter_count(
        CVFPModel(SMALL_CVFP))


def test_fixed_depth_and_fixed_embedding_are_respected():
    model, info = build_matched_baseline("transformer", 50_000, V, num_layers=3, embed_dim=16, num_heads=2)
    assert info.num_layers == 3 and model.cfg.num_layers == 3 and model.cfg.num_heads == 2
    assert model.embedding.weight.shape == (V, 16)
    assert info.width % 8 == 0


def test_unreachable_target_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="closest"):
        build_matched_baseline("transformer", 10, V)
    with pytest.raises(ValueError, match="kind"):
        build_matched_baseline("gru", 20_000, V)
    with pytest.raises(ValueError, match="unknown option"):
        build_matched_baseline("lstm", 20_000, V, num_heads=2)
    with pytest.raises(ValueError, match="match"):
        build_matched_baseline("lstm", 20_000, V, match="embedding")
    with pytest.raises(ValueError, match="same tokenizer"):
        build_matched_baseline("lstm", SMALL_CVFP, 2 * V)
    with pytest.raises(ValueError, match="num_heads"):
        TransformerConfig(vocab_size=V, d_model=30, num_heads=4)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_future_tokens_do_not_change_earlier_logits(kind):
    torch.manual_seed(0)
    cfg = (LSTMConfig(vocab_size=V, embed_dim=16, hidden_dim=16, num_layers=2) if kind == "lstm"
           else TransformerConfig(vocab_size=V, d_model=16, num_layers=2, num_heads=2, max_seq_len=32))
    model = build_baseline(cfg).eval()
    ids = torch.randint(0, V, (2, 20))
    changed = ids.clone()
    changed[:, 12] = (changed[:, 12] + 1) % V
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 20, V)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-4


def test_inputs_are_checked():
    model = build_baseline(TransformerConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2, max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 4), V))


def _stream(period: int = 11, repeats: int = 200) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, V, (period,), generator=generator).repeat(repeats)


@pytest.mark.parametrize("kind,lr", [("lstm", 3e-2), ("transformer", 1e-2)])
def test_training_on_a_repetitive_stream_learns_it(kind, lr):
    stream = _stream()
    train, val = stream[:1500], stream[1500:1800]
    options = {"max_seq_len": 16} if kind == "transformer" else {}
    model, _ = build_matched_baseline(kind, 25_000, V, num_layers=1, width_multiple=4, **options)
    history, final = train_lm_baseline(model, train, val, 8000, tokenizer="synthetic", seq_len=16, batch_size=16,
                                       lr=lr, eval_every=16, n_bytes=900, progress=False)
    assert list(history.columns) == ["step", "tokens", "lr", "train_loss", "val_loss", "val_ppl"]
    assert history["step"].tolist() == [16, 32] and history["tokens"].iloc[-1] == 8000
    assert final.loss < 0.5 * math.log(V)
    assert final.loss == pytest.approx(history["val_loss"].iloc[-1])
    assert (final.tokenizer, final.vocab_size, final.tokens) == ("synthetic", V, len(val) - 1)
    assert final.bits_per_byte == pytest.approx(final.loss * final.tokens / (900 * math.log(2)))
    assert 0.0 <= final.accuracy <= 1.0


def test_training_is_seeded():
    stream = _stream()
    runs = []
    for _ in range(2):
        model, _ = build_matched_baseline("transformer", 20_000, V, width_multiple=4, max_seq_len=16, seed=3)
        history, _ = train_lm_baseline(model, stream[:600], stream[600:700], 1024, tokenizer="synthetic", seq_len=16,
                                       batch_size=8, seed=5, progress=False)
        runs.append(history)
    assert runs[0].equals(runs[1])


def test_training_rejects_bad_inputs():
    model = build_baseline(TransformerConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2, max_seq_len=16))
    stream = _stream()
    with pytest.raises(ValueError, match="token_budget"):
        train_lm_baseline(model, stream, stream, 0, tokenizer="t", progress=False)
    with pytest.raises(ValueError, match="train_ids"):
        train_lm_baseline(model, stream[:10], stream, 100, tokenizer="t", seq_len=16, progress=False)
    with pytest.raises(ValueError, match="vocab_size"):
        train_lm_baseline(model, stream + V, stream, 100, tokenizer="t", seq_len=16, progress=False)


def test_windows_evaluation_scores_every_target_once():
    torch.manual_seed(0)
    model = build_baseline(TransformerConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2, max_seq_len=8)).eval()
    ids = torch.randint(0, V, (23,))
    result = evaluate_lm(model, ids, tokenizer="t", seq_len=5, batch_size=2)
    losses, correct = [], 0
    with torch.no_grad():
        for start in range(0, 22, 5):
            end = min(start + 5, 22)
            logits = model(ids[None, start:end])[0]
            losses.append(F.cross_entropy(logits, ids[start + 1:end + 1], reduction="sum"))
            correct += int((logits.argmax(-1) == ids[start + 1:end + 1]).sum())
    assert result.tokens == 22 and result.correct == correct
    assert result.loss == pytest.approx(float(sum(losses)) / 22, rel=1e-5)


@pytest.mark.parametrize("family", ["cvfp", "gated"])
def test_stream_evaluation_carries_the_context(family):
    torch.manual_seed(0)
    model = CVFPModel(SMALL_CVFP) if family == "cvfp" else GatedContextLM(SMALL_GATED)
    if family == "cvfp":
        torch.nn.init.normal_(model.head.weight, std=0.3)  # the head starts at zero
    model.eval()
    ids = torch.randint(0, V, (30,))
    with torch.no_grad():
        out = model(ids[None, :-1])
        logits = (out.logits if family == "cvfp" else out[0])[0]
    full = float(F.cross_entropy(logits, ids[1:]))
    stream = evaluate_lm(model, ids, tokenizer="t", seq_len=7, mode="stream")
    windows = evaluate_lm(model, ids, tokenizer="t", seq_len=7, mode="windows")
    assert stream.loss == pytest.approx(full, rel=1e-5)
    assert windows.loss != pytest.approx(full, rel=1e-5)  # each window restarts from a zero context
    with pytest.raises(ValueError, match="carries no state"):
        evaluate_lm(build_baseline(LSTMConfig(vocab_size=V, embed_dim=8, hidden_dim=8, num_layers=1)), ids,
                    tokenizer="t", mode="stream")

"""One sampling loop for every model: the CVFP model, the gated LM and both baselines generate through it."""

from __future__ import annotations

import pytest
import torch

from newllm.config.models import GatedLMConfig, LSTMConfig, ModelConfig, TransformerConfig
from newllm.models.baselines import LSTMLM, TransformerLM
from newllm.models.cvfp import CVFPModel
from newllm.models.gated import GatedContextLM
from newllm.models.sampling import sample_next

V = 40


def _models():
    torch.manual_seed(0)
    cvfp = CVFPModel(ModelConfig(vocab_size=V, ctx_dim=16, embed_dim=16, num_layers=2, embedding="random"))
    torch.nn.init.normal_(cvfp.head.weight, std=0.5)  # the head starts at zero: give greedy decoding a preference
    return {
        "cvfp": cvfp,
        "gated": GatedContextLM(GatedLMConfig(vocab_size=V, embed_dim=16, hidden_dim=16, ctx_dim=16, num_layers=1)),
        "lstm": LSTMLM(LSTMConfig(vocab_size=V, embed_dim=16, hidden_dim=16, num_layers=1)),
        "transformer": TransformerLM(TransformerConfig(vocab_size=V, d_model=16, num_heads=2, num_layers=1,
                                                       max_seq_len=8)),
    }


def _last_logits(name, model, ids):
    out = model(ids)
    logits = out.logits if name == "cvfp" else out[0] if name == "gated" else out
    return logits[:, -1]


@pytest.mark.parametrize("name", ["cvfp", "gated", "lstm", "transformer"])
def test_every_model_generates_reproducibly_and_greedy_is_argmax(name):
    model = _models()[name].eval()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = model.generate(prompt, 10, temperature=0.9, top_k=7, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 10, temperature=0.9, top_k=7, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 13) and torch.equal(a, b) and torch.equal(a[:, :3], prompt)
    assert int(a.min()) >= 0 and int(a.max()) < V
    greedy = model.generate(prompt, 3, temperature=0)
    for step in range(3):  # each greedy token is the argmax of a fresh forward over everything before it
        so_far = greedy[:, : 3 + step]
        if name == "transformer":
            so_far = so_far[:, -8:]
        with torch.no_grad():
            expected = _last_logits(name, model, so_far).argmax(-1)
        assert torch.equal(greedy[:, 3 + step], expected)


def test_the_transformer_generates_past_its_context_length():
    model = _models()["transformer"].eval()
    out = model.generate(torch.tensor([1, 2, 3]), 12, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (15,)


def test_top_k_one_is_greedy_and_bad_arguments_are_refused():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    assert sample_next(logits, 1.0, 1, torch.Generator().manual_seed(0)).tolist() == [1, 0]
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, -1.0, None)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, 1.0, 0)


@pytest.mark.cuda
def test_generate_on_cuda_with_a_cpu_generator():
    model = _models()["cvfp"].cuda().eval()
    prompt = torch.tensor([[1, 2, 3]], device="cuda")
    a = model.generate(prompt, 5, temperature=0.8, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 5, temperature=0.8, generator=torch.Generator().manual_seed(1))
    assert a.device.type == "cuda" and torch.equal(a, b)

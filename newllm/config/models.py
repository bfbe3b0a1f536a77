"""Model configs: the CVFP model, the gated LM and the baselines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from newllm.config.base import ConfigBase

# ----------------------------------------------------------------------------------------------- model

EMBEDDINGS = ("auto", "gpt2", "random")
ARCHITECTURES = ("E", "eraB")


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """The CVFP model: the E-architecture (seed-spec 5.1) or the era-B model (4.2).

    Defaults are the original's last configuration: 6 layers, 768 dims, one input token, the token re-injected
    into every ContextBlock layer, GPT-2 vocabulary and frozen GPT-2 embeddings, no weight tying.
    ``architecture="eraB"``: the era-B CVFPLayer stack of seeds 000 / 004 (newllm/models/era_b.py): context and
    token streams threaded through every layer, LayerNorm mixed in by ``layernorm_mix``, the head on the context;
    it takes one input token and no weight tying (``token_input_all_layers`` does not apply).
    """

    vocab_size: int = 50257
    ctx_dim: int = 768
    embed_dim: int = 768
    num_layers: int = 6
    num_input_tokens: int = 1
    token_input_all_layers: bool = True
    weight_tying: bool = False
    embedding: str = "auto"  # "gpt2": GPT-2 wte (error if unavailable); "random"; "auto": gpt2 when loadable
    freeze_embedding: bool = True
    init_std: float = 0.1
    bias_std: float = 0.01
    embedding_init_std: float = 0.02
    architecture: str = "E"  # "E": ContextBlock + TokenBlock; "eraB": the era-B CVFPLayer model (seeds 000, 004)
    layernorm_mix: float = 1.0  # eraB only: m in c' <- (1 - m) c' + m LN(c') (1.0 in every reported run)

    def __post_init__(self) -> None:
        self._choice("architecture", ARCHITECTURES)
        self._in_range("layernorm_mix", 0.0, 1.0)
        if self.architecture == "eraB":
            self._require("num_input_tokens", self.num_input_tokens == 1,
                          "1 with architecture='eraB' (its token stream starts from one token's embedding)")
            self._require("weight_tying", not self.weight_tying,
                          "False with architecture='eraB' (its head is a separate Linear on the context)")
        self._positive_int("vocab_size", 2)
        self._positive_int("ctx_dim")
        self._positive_int("embed_dim")
        self._positive_int("num_layers")
        self._positive_int("num_input_tokens")
        self._choice("embedding", EMBEDDINGS)
        self._positive_float("init_std")
        self._positive_float("bias_std", allow_zero=True)
        self._positive_float("embedding_init_std")
        if self.weight_tying:
            self._require(
                "weight_tying",
                self.ctx_dim == self.embed_dim and self.num_input_tokens == 1,
                "True only when ctx_dim == embed_dim and num_input_tokens == 1 (the head reads a state of "
                f"size embed_dim; got ctx_dim={self.ctx_dim}, embed_dim={self.embed_dim}, k={self.num_input_tokens})",
            )
        if self.embedding == "gpt2":
            self._require(
                "embedding",
                self.embed_dim == 768 and self.vocab_size == 50257,
                "'gpt2' needs embed_dim=768 and vocab_size=50257 (GPT-2's wte); use 'random' for other sizes",
            )

    @property
    def token_input_dim(self) -> int:
        return self.embed_dim * self.num_input_tokens


@dataclass(frozen=True)
class GatedLMConfig(ConfigBase):
    """The end-to-end gated context-vector LM of the WikiText-2 era (seed-spec 2.1)."""

    vocab_size: int = 1000
    embed_dim: int = 256
    hidden_dim: int = 512
    ctx_dim: int = 256
    num_layers: int = 6
    dropout: float = 0.1
    context_clip: float = 10.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self._positive_int("vocab_size", 5)
        self._positive_int("embed_dim")
        self._positive_int("hidden_dim")
        self._positive_int("ctx_dim")
        self._positive_int("num_layers")
        self._require("dropout", isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "a number in [0, 1)")
        self._positive_float("context_clip")
        self._positive_float("init_std")


# ------------------------------------------------------------------------------------------- baselines

@dataclass(frozen=True)
class LSTMConfig(ConfigBase):
    """The LSTM baseline LM (newllm/baselines.py): embedding -> stacked LSTM -> linear head."""

    vocab_size: int = 1000
    embed_dim: int = 256
    hidden_dim: int = 256
    num_layers: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self._positive_int("vocab_size", 2)
        self._positive_int("embed_dim")
        self._positive_int("hidden_dim")
        self._positive_int("num_layers")
        self._require("dropout", isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "a number in [0, 1)")


@dataclass(frozen=True)
class TransformerConfig(ConfigBase):
    """The causal Transformer baseline LM (newllm/baselines.py): pre-LN blocks, learned positions, GELU MLP.

    ``embed_dim`` None: the token embedding is d_model wide; otherwise it is projected to d_model.
    """

    vocab_size: int = 1000
    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 4
    max_seq_len: int = 256
    embed_dim: Optional[int] = None
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self._positive_int("vocab_size", 2)
        self._positive_int("d_model")
        self._positive_int("num_layers")
        self._positive_int("num_heads")
        self._require(
            "num_heads", self.d_model % self.num_heads == 0,
            f"a divisor of d_model={self.d_model} (each head gets d_model / num_heads dims)",
        )
        self._positive_int("max_seq_len")
        self._optional_positive_int("embed_dim")
        self._positive_int("mlp_ratio")
        self._require("dropout", isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "a number in [0, 1)")

"""Frozen, validated dataclass configs for every step; ``from newllm.config import ModelConfig`` etc."""

from __future__ import annotations

from newllm.config.base import (
    ConfigBase,
    T,
)
from newllm.config.data import (
    HUB_DATASETS,
    TOKENIZERS,
    DataConfig,
)
from newllm.config.experiments import (
    ScalingConfig,
    StudyConfig,
)
from newllm.config.models import (
    EMBEDDINGS,
    GatedLMConfig,
    LSTMConfig,
    ModelConfig,
    TransformerConfig,
)
from newllm.config.training import (
    GatedTrainConfig,
    Phase1Config,
    Phase2Config,
)

__all__ = [
    "T",
    "ConfigBase",
    "EMBEDDINGS",
    "ModelConfig",
    "GatedLMConfig",
    "LSTMConfig",
    "TransformerConfig",
    "TOKENIZERS",
    "HUB_DATASETS",
    "DataConfig",
    "Phase1Config",
    "Phase2Config",
    "GatedTrainConfig",
    "ScalingConfig",
    "StudyConfig",
]

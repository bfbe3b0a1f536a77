"""newllm: a notebook-first research kit for New-LLM / CVFP (Context Vector Fixed-Point) recurrent language models.

Data flows one way: config -> data (token ids) -> model -> Phase 1 -> contexts (cache) -> Phase 2 -> metrics -> results.
"""

from newllm.config import (
    DataConfig,
    GatedLMConfig,
    GatedTrainConfig,
    ModelConfig,
    Phase1Config,
    Phase2Config,
    RunConfig,
)
from newllm.model import CVFPModel, GatedContextLM, build_cvfp_model, parameter_count

__version__ = "0.1.0"

__all__ = [
    "DataConfig",
    "GatedLMConfig",
    "GatedTrainConfig",
    "ModelConfig",
    "Phase1Config",
    "Phase2Config",
    "RunConfig",
    "CVFPModel",
    "GatedContextLM",
    "build_cvfp_model",
    "parameter_count",
]

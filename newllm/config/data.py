"""DataConfig: which corpus, tokenizer and sizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from newllm.config.base import ConfigBase

# ------------------------------------------------------------------------------------------------ data

TOKENIZERS = ("auto", "gpt2", "word", "bpe")
HUB_DATASETS = ("ultrachat", "wikitext2")  # datasets fetched through `datasets.load_dataset`


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Where the token streams come from.

    ``dataset``: "auto" (the hub dataset when reachable, else the built-in corpus), "builtin", "wikitext2",
    "ultrachat", or a path to a local text file or folder.
    ``samples``: the first N training documents; validation is a fixed held-out set of ``val_samples`` documents
    that never overlaps training and does not depend on ``samples``.
    """

    dataset: str = "auto"
    hub_dataset: str = "ultrachat"  # what "auto" means when the hub is reachable
    tokenizer: str = "auto"  # "auto": gpt2 for hub data (bpe when gpt2 cannot be loaded), word for builtin
    tokenizer_path: Optional[str] = None  # a local GPT-2 tokenizer folder (vocab.json + merges.txt ...)
    vocab_size: Optional[int] = None  # for "word" (default 1000) and "bpe" (default 8192)
    samples: int = 50
    val_samples: int = 20
    cache_dir: Optional[str] = None  # None: $NEWLLM_CACHE or ~/.cache/newllm
    seed: int = 42

    def __post_init__(self) -> None:
        self._require("dataset", isinstance(self.dataset, str) and self.dataset != "", "a dataset name or a path")
        self._choice("hub_dataset", HUB_DATASETS)
        self._choice("tokenizer", TOKENIZERS)
        self._optional_positive_int("vocab_size", 5)
        self._positive_int("samples")
        self._positive_int("val_samples")
        self._positive_int("seed", 0)

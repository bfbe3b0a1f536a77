"""DataConfig: which corpus, tokenizer and sizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from newllm.config.base import ConfigBase

# ------------------------------------------------------------------------------------------------ data

TOKENIZERS = ("auto", "gpt2", "word", "bpe", "char", "byte")
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
    # "auto": gpt2 for text (bpe when gpt2 cannot be loaded), word for builtin; "char": one id per character of
    # the training text (+ UNK); "byte": the 256 UTF-8 byte values
    tokenizer: str = "auto"
    tokenizer_path: Optional[str] = None  # a local GPT-2 tokenizer folder (vocab.json + merges.txt ...)
    vocab_size: Optional[int] = None  # "word" (default 1000), "bpe" (8192), "char" (every character); "byte": 256
    samples: int = 50
    val_samples: int = 20
    cache_dir: Optional[str] = None  # None: $NEWLLM_CACHE or ~/.cache/newllm
    seed: int = 42

    def __post_init__(self) -> None:
        self._require("dataset", isinstance(self.dataset, str) and self.dataset != "", "a dataset name or a path")
        self._choice("hub_dataset", HUB_DATASETS)
        self._choice("tokenizer", TOKENIZERS)
        self._optional_positive_int("vocab_size", 5)
        if self.tokenizer == "byte":
            self._require("vocab_size", self.vocab_size in (None, 256), "None or 256 with tokenizer='byte'")
        self._positive_int("samples")
        self._positive_int("val_samples")
        self._positive_int("seed", 0)

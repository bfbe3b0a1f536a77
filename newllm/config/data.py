"""DataConfig: which corpus, tokenizer and sizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from newllm.config.base import ConfigBase

# ------------------------------------------------------------------------------------------------ data

TOKENIZERS = ("auto", "gpt2", "word", "bpe", "char", "byte")
HUB_DATASETS = ("ultrachat", "wikitext2")  # datasets fetched through `datasets.load_dataset`
SPLITS = ("auto", "fraction", "document", "blocks")  # how local text becomes training / validation text


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Where the token streams come from.

    ``dataset``: "auto" (the hub dataset when reachable, else the built-in corpus), "builtin", "wikitext2",
    "ultrachat", or a path to a local text file or folder.
    ``samples``: the first N training documents; validation is a fixed held-out set of ``val_samples`` documents
    that never overlaps training and does not depend on ``samples``. None: 50 and 20 for the built-in corpus, the
    hub datasets and ``split="blocks"``; every document for local text.
    ``split`` (local text, always read verbatim except under "blocks"; see ``newllm.data.sources``):
    "fraction" (one contiguous text, the last ``val_fraction`` of its characters is validation, nanoGPT's 90/10),
    "document" (pieces of text ending at ``separator``, kept; None: each file is one document), "blocks" (blank-line
    separated paragraphs, stripped: the WikiText convention) or "auto" (with samples and val_samples None:
    "fraction" for a file or a folder of ``*.txt``, each split file whole for a folder with train / valid files;
    with either given: "blocks").
    """

    dataset: str = "auto"
    hub_dataset: str = "ultrachat"  # what "auto" means when the hub is reachable
    # "auto": gpt2 for text (bpe when gpt2 cannot be loaded), word for builtin; "char": one id per character of
    # the training text (+ UNK); "byte": the 256 UTF-8 byte values
    tokenizer: str = "auto"
    tokenizer_path: Optional[str] = None  # a local GPT-2 tokenizer folder (vocab.json + merges.txt ...)
    vocab_size: Optional[int] = None  # "word" (default 1000), "bpe" (8192), "char" (every character); "byte": 256
    samples: Optional[int] = None
    val_samples: Optional[int] = None
    split: str = "auto"
    separator: Optional[str] = "\n\n"  # split="document": where a document ends (kept with it)
    val_fraction: float = 0.1  # split="fraction" (and "document" on one file without val_samples)
    cache_dir: Optional[str] = None  # None: $NEWLLM_CACHE or ~/.cache/newllm
    seed: int = 42

    def __post_init__(self) -> None:
        self._require("dataset", isinstance(self.dataset, str) and self.dataset != "", "a dataset name or a path")
        self._choice("hub_dataset", HUB_DATASETS)
        self._choice("tokenizer", TOKENIZERS)
        self._optional_positive_int("vocab_size", 5)
        if self.tokenizer == "byte":
            self._require("vocab_size", self.vocab_size in (None, 256), "None or 256 with tokenizer='byte'")
        self._optional_positive_int("samples")
        self._optional_positive_int("val_samples")
        self._choice("split", SPLITS)
        self._require("separator", self.separator is None or (isinstance(self.separator, str) and self.separator != ""),
                      "a non-empty string, or None (each file is one document)")
        ok = isinstance(self.val_fraction, float) and 0.0 < self.val_fraction < 1.0
        self._require("val_fraction", ok, "a float strictly between 0 and 1")
        if self.split == "fraction":
            for name in ("samples", "val_samples"):
                self._require(name, getattr(self, name) is None,
                              "None with split='fraction' (one contiguous text, not documents): use split='document' "
                              "to count documents")
        self._positive_int("seed", 0)

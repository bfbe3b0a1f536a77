"""The era-A data pipeline (seed-spec 2.2): WikiText-2 paragraphs -> BOS ... EOS word ids -> fixed-length windows.

Steps:
1. Lines of WikiText-2 (``datasets`` ``wikitext-2-raw-v1`` on Colab, local ``train.txt``/``valid.txt`` files, or the
   kit's built-in offline corpus). Each non-empty line is a paragraph; paragraphs with fewer than ``min_words``
   whitespace words are skipped.
2. The word-level tokenizer (newllm.data.tokenizers; fitted on the training paragraphs) encodes each paragraph and wraps it
   as BOS ... EOS.
3. Each paragraph is cut into windows of ``window`` tokens with ``stride`` (no window crosses a paragraph boundary, so
   no target is ever predicted from another paragraph). A window's input is its tokens[:-1], its target tokens[1:];
   short windows are right-padded with PAD, and PAD targets are ignored by the loss.

Which targets a window scores (a target position is the index of the predicted token in its paragraph):
- Overlapping windows (stride < window - 1) predict some positions twice. ``targets="all"`` scores every target of
  every regular window, as the original trained (the overlap is trained on twice, with different left context);
  ``targets="once"`` scores each position only in the first window that reaches it, so every target counts exactly
  once while still being predicted with at least ``window - 1 - stride`` tokens of left context. Validation always
  uses "once", so a validation loss is a plain mean over every validation target.
- The tail: the original dropped whatever a paragraph had past its last full stride window. ``tail="keep"`` adds a
  final window aligned to the paragraph's end that scores only the positions no earlier window scored, so no target
  is lost and none is counted twice; ``tail="drop"`` reproduces the original.
Targets that are not scored are set to PAD in ``Windows.targets``; the inputs keep the real tokens (they are context).

Measured on WikiText-2 (window 64, stride 32, min 5 words, V=1000): ``tail="drop"`` gives exactly the original's
51,026 training and 5,272 validation windows; ``tail="keep"`` gives 63,549 and 6,576, and scores all 216,063
validation targets once, where dropping the tail leaves 9.3 % of them (20,174) unscored.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from newllm.config.training import GatedTrainConfig
from newllm.data.sources import TextSplits, read_wikitext2_hub, read_wikitext2_local, wikitext2_local_dir
from newllm.data.tokenizers import DEFAULT_WORD_VOCAB, WordTokenizer

PAD_ID = 0  # the word tokenizer's PAD id


@dataclass(frozen=True)
class Windows:
    """Fixed-length training or evaluation windows.

    ``inputs``/``targets``: [N, window - 1] int64; a target equal to ``pad_id`` is not scored.
    ``paragraph``/``start``: [N] the source paragraph of each window and the window's offset in it.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    paragraph: torch.Tensor
    start: torch.Tensor
    pad_id: int = PAD_ID

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def window(self) -> int:
        return int(self.inputs.shape[1]) + 1

    @property
    def n_targets(self) -> int:
        """Scored (non-PAD) targets."""
        return int((self.targets != self.pad_id).sum())


def split_paragraphs(lines: Iterable[str], min_words: int = 5) -> list[str]:
    """Non-empty lines, stripped, with at least ``min_words`` whitespace-separated words."""
    if not isinstance(min_words, int) or min_words < 0:
        raise ValueError(f"min_words={min_words!r} must be an integer >= 0")
    paragraphs = []
    for line in lines:
        text = line.strip()
        if text and len(text.split()) >= min_words:
            paragraphs.append(text)
    return paragraphs


def window_starts(length: int, window: int, stride: int, tail: str = "keep") -> tuple[list[int], bool]:
    """Offsets of the windows cut from a sequence of ``length`` tokens, and whether the last one is a tail window.

    Regular windows start at 0, stride, 2*stride, ... while they fit; with ``tail="keep"`` a final window aligned to
    the sequence's end is added when the regular ones stop short of it.
    """
    if length <= window:
        return ([0] if length >= 2 else []), False
    starts = list(range(0, length - window + 1, stride))
    if tail == "keep" and starts[-1] + window < length:
        return starts + [length - window], True
    return starts, False


def _check_window_settings(window: int, stride: int, tail: str, targets: str, pad_id: int) -> None:
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"window={window!r} must be an integer >= 2 (input = tokens[:-1], target = tokens[1:])")
    if not isinstance(stride, int) or not 1 <= stride <= window - 1:
        raise ValueError(
            f"stride={stride!r} must be an integer in [1, window - 1 = {window - 1}]: a window of {window} tokens "
            f"holds {window - 1} targets, so a longer stride would leave targets unscored"
        )
    if tail not in ("keep", "drop"):
        raise ValueError(f"tail={tail!r} must be 'keep' or 'drop'")
    if targets not in ("all", "once"):
        raise ValueError(f"targets={targets!r} must be 'all' or 'once'")
    if not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pad_id={pad_id!r} must be an integer >= 0")


def make_windows(
    sequences: Sequence[Sequence[int]],
    window: int = 64,
    stride: int = 32,
    tail: str = "keep",
    targets: str = "all",
    pad_id: int = PAD_ID,
) -> Windows:
    """Cut each sequence (one paragraph, BOS ... EOS) into windows; see the module docstring for the rules.

    Sequences shorter than 2 tokens have no target and give no window. A sequence containing ``pad_id`` is an error
    (its targets would silently be ignored).
    """
    _check_window_settings(window, stride, tail, targets, pad_id)
    rows: list[np.ndarray] = []
    scored: list[np.ndarray] = []
    paragraph_ids: list[int] = []
    starts_out: list[int] = []
    for index, sequence in enumerate(sequences):
        tokens = np.asarray(sequence, dtype=np.int64)
        if tokens.ndim != 1:
            raise ValueError(f"sequence {index} must be a flat list of token ids, got shape {tokens.shape}")
        if (tokens == pad_id).any():
            raise ValueError(
                f"sequence {index} contains the PAD id {pad_id}, which is reserved for padding; encode with the "
                "tokenizer whose PAD id this is"
            )
        length = len(tokens)
        starts, has_tail = window_starts(length, window, stride, tail)
        scored_until = 0  # the last target position scored so far (position 0 is never a target)
        for number, start in enumerate(starts):
            row = np.full(window, pad_id, dtype=np.int64)
            chunk = tokens[start:start + window]
            row[: len(chunk)] = chunk
            positions = np.arange(start + 1, start + window)  # the paragraph position each target predicts
            is_tail = has_tail and number == len(starts) - 1
            keep = positions < length
            if targets == "once" or is_tail:
                keep &= positions > scored_until
            scored_until = max(scored_until, min(start + window, length) - 1)
            rows.append(row)
            scored.append(keep)
            paragraph_ids.append(index)
            starts_out.append(start)
    if not rows:
        empty = torch.zeros(0, window - 1, dtype=torch.long)
        return Windows(empty, empty.clone(), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), pad_id)
    matrix = torch.from_numpy(np.stack(rows))
    keep_mask = torch.from_numpy(np.stack(scored))
    inputs = matrix[:, :-1].contiguous()
    target_ids = matrix[:, 1:].masked_fill(~keep_mask, pad_id).contiguous()
    return Windows(
        inputs=inputs,
        targets=target_ids,
        paragraph=torch.tensor(paragraph_ids, dtype=torch.long),
        start=torch.tensor(starts_out, dtype=torch.long),
        pad_id=pad_id,
    )


# ------------------------------------------------------------------------------------------ sources

SOURCES = ("auto", "hub", "local", "builtin")


def _read_builtin(documents: tuple[int, int], seed: int, progress: bool) -> TextSplits:
    from newllm.data.builtin_corpus import generate_documents

    n_train, n_valid = documents
    train = [d.text for d in generate_documents(seed, "train", 0, n_train, progress=progress)]
    valid = [d.text for d in generate_documents(seed, "val", 0, n_valid, progress=progress)]
    return TextSplits(train, valid, f"built-in synthetic corpus (seed {seed}, {n_train} + {n_valid} documents, "
                                    "one paragraph each)")


def _read_hub() -> TextSplits:
    try:
        return read_wikitext2_hub()
    except Exception as exc:  # any hub failure becomes one message saying what to do
        raise RuntimeError(
            f"WikiText-2 could not be loaded from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]}). "
            "Offline, pass source=<a folder with train.txt and valid.txt> or source='builtin'."
        ) from exc


def load_wikitext2_lines(
    source: str = "auto", builtin_documents: tuple[int, int] = (200, 20), seed: int = 42, progress: bool = False
) -> TextSplits:
    """Lines of WikiText-2's train and validation splits.

    ``source``: "hub" (``datasets.load_dataset("wikitext", "wikitext-2-raw-v1")``, needs the internet), "local"
    (:func:`newllm.data.sources.wikitext2_local_dir`), a path to a folder with train.txt/valid.txt (or wiki.{train,valid}.{raw,tokens}),
    "builtin" (the kit's offline synthetic corpus: ``builtin_documents`` = (train, validation) documents from
    ``seed``, one paragraph per document), or "auto": the local folder when present, else the hub, else the built-in
    corpus with a warning. The local copy in this project is the tokenised v1 variant, whose perplexities are not
    those of the raw variant the original used.
    """
    if source == "builtin":
        return _read_builtin(builtin_documents, seed, progress)
    if source == "hub":
        return _read_hub()
    if source == "local":
        folder = wikitext2_local_dir()
        if folder is None:
            raise ValueError("source='local' but no ../shared/data/wikitext-2 folder is beside the repo; pass a path")
        return read_wikitext2_local(folder)
    if source == "auto":
        folder = wikitext2_local_dir()
        if folder is not None:
            return read_wikitext2_local(folder)
        try:
            return _read_hub()
        except RuntimeError as exc:
            warnings.warn(f"source='auto': using the built-in corpus ({exc})", stacklevel=2)
            return _read_builtin(builtin_documents, seed, progress)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise ValueError(f"source={source!r} is neither one of {SOURCES} nor an existing folder")
    return read_wikitext2_local(folder)


# ------------------------------------------------------------------------------------------ pipeline

@dataclass(frozen=True)
class WikiTextData:
    """Everything the trainer needs: the fitted tokenizer, training and validation windows, and counts."""

    tokenizer: WordTokenizer
    train: Windows
    val: Windows
    source: str
    stats: dict

    @property
    def tokenizer_label(self) -> str:
        return self.tokenizer.name

    def summary(self) -> str:
        s = self.stats
        return (f"{self.source}\n"
                f"train: {s['train_paragraphs']:,} paragraphs -> {s['train_windows']:,} windows, "
                f"{s['train_targets']:,} scored targets ({s['train_tokens']:,} tokens)\n"
                f"val:   {s['val_paragraphs']:,} paragraphs -> {s['val_windows']:,} windows, "
                f"{s['val_targets']:,} scored targets, each once\n"
                f"tokenizer: word, V={self.tokenizer.vocab_size:,}, UNK {100 * s['val_unk_rate']:.1f}% of val targets")


def encode_paragraphs(paragraphs: Sequence[str], tokenizer: WordTokenizer) -> list[list[int]]:
    """BOS + word ids + EOS for each paragraph."""
    return [tokenizer.encode_document(text) for text in paragraphs]


def prepare_wikitext(
    cfg: GatedTrainConfig = GatedTrainConfig(),
    source: str = "auto",
    vocab_size: int = DEFAULT_WORD_VOCAB,
    builtin_documents: tuple[int, int] = (200, 20),
    progress: bool = False,
) -> WikiTextData:
    """Load, split into paragraphs, fit the word tokenizer on the training paragraphs, encode and window.

    Training windows score targets per ``cfg.train_targets``; validation windows score each target once.
    """
    if not isinstance(vocab_size, int) or vocab_size < 5:
        raise ValueError(
            f"vocab_size={vocab_size!r} must be an integer >= 5 (PAD, UNK, BOS, EOS and at least one word)"
        )
    splits = load_wikitext2_lines(source, builtin_documents, cfg.seed, progress)
    train_paragraphs = split_paragraphs(splits.train, cfg.min_words)
    val_paragraphs = split_paragraphs(splits.valid, cfg.min_words)
    if not train_paragraphs or not val_paragraphs:
        raise ValueError(
            f"{splits.source}: no paragraph with >= {cfg.min_words} words in the "
            f"{'training' if not train_paragraphs else 'validation'} split; lower min_words or check the data"
        )
    tokenizer = WordTokenizer.train(train_paragraphs, vocab_size)
    train_ids = encode_paragraphs(train_paragraphs, tokenizer)
    val_ids = encode_paragraphs(val_paragraphs, tokenizer)
    train = make_windows(train_ids, cfg.window, cfg.stride, cfg.tail, cfg.train_targets, tokenizer.pad_id)
    val = make_windows(val_ids, cfg.window, cfg.stride, cfg.tail, "once", tokenizer.pad_id)
    val_scored = val.targets[val.targets != tokenizer.pad_id]
    stats = {
        "train_paragraphs": len(train_paragraphs), "val_paragraphs": len(val_paragraphs),
        "train_tokens": sum(len(s) for s in train_ids), "val_tokens": sum(len(s) for s in val_ids),
        "train_windows": len(train), "val_windows": len(val),
        "train_targets": train.n_targets, "val_targets": val.n_targets,
        "val_unk_rate": float((val_scored == tokenizer.unk_id).float().mean()),
        "vocab_size": tokenizer.vocab_size,
    }
    return WikiTextData(tokenizer, train, val, splits.source, stats)

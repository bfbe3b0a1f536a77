"""Pre-tokenized corpora in nanoGPT's format: ``train.bin`` / ``val.bin`` (/ ``test.bin``) plus ``meta.json``.

Each ``.bin`` is the split's token ids back to back as raw little-endian uint16 (nanoGPT's
``np.array(ids, dtype=np.uint16).tofile(...)``) or uint32, read here as a memory map: no copy, no cache. The
stream has no document boundaries (one document per split). ``meta.json`` (JSON, never a pickle) describes them:

``vocab_size`` (required, every id is below it); ``tokenizer`` (its name, e.g. "char", "gpt2", "byte"; default
"unknown"); ``dtype`` ("uint16" or "uint32"; default uint16 when the vocabulary fits, else uint32);
``tokenizer_file`` (optional, relative to the folder: a tokenizer saved by newllm's ``.save()``, so samples can be
decoded); for bits per byte either ``bytes`` (``{"train": n, "val": n, "test": n}``, the UTF-8 bytes of the text
each split encodes, exact) or ``bytes_per_token`` (a mean, e.g. 1.0 for bytes, about 4.5 for GPT-2 on English).
Without either, bits per byte is not reported.

``write_pretokenized`` writes such a folder from token splits (e.g. ``corpus.train`` / ``corpus.val`` of a text
corpus), exact byte counts included. nanoGPT's ``meta.pkl`` is not read (unpickling runs code): write a meta.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from newllm.data.tokenizers import (
    ByteTokenizer,
    GPT2_VOCAB_SIZE,
    GPT2Tokenizer,
    IdsOnlyTokenizer,
    Tokenizer,
    check_token_ids,
    find_gpt2_tokenizer_dir,
    load_tokenizer,
)
from newllm.utils.io import atomic_path, atomic_write_json

META_FILE = "meta.json"
SPLITS = ("train", "val", "test")
DTYPES = ("uint16", "uint32")


def is_pretokenized(path: Path) -> bool:
    """A folder holding ``train.bin``."""
    return path.is_dir() and (path / "train.bin").is_file()


@dataclass(frozen=True)
class PretokenizedSplit:
    ids: np.ndarray  # read-only memory map
    n_bytes: int  # 0 when unknown


@dataclass(frozen=True)
class Pretokenized:
    splits: dict[str, PretokenizedSplit]  # "train", "val" and, when present, "test"
    tokenizer: Tokenizer
    meta: dict[str, Any]


def _meta_error(folder: Path, problem: str) -> ValueError:
    return ValueError(
        f"{str(folder / META_FILE)!r}: {problem}. A pre-tokenized folder needs a meta.json such as "
        '{"vocab_size": 65, "tokenizer": "char", "dtype": "uint16", "bytes_per_token": 1.0} beside train.bin / val.bin'
    )


def read_meta(folder: Path) -> dict[str, Any]:
    """``meta.json`` checked, with ``dtype`` filled in."""
    path = folder / META_FILE
    if not path.is_file():
        hint = " (nanoGPT's meta.pkl is not read: unpickling runs code)" if (folder / "meta.pkl").is_file() else ""
        raise _meta_error(folder, f"missing{hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _meta_error(folder, f"unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise _meta_error(folder, "not a JSON object")
    vocab = meta.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 2:
        raise _meta_error(folder, f"vocab_size={vocab!r} must be an integer >= 2")
    dtype = meta.setdefault("dtype", "uint16" if vocab <= 2**16 else "uint32")
    if dtype not in DTYPES:
        raise _meta_error(folder, f"dtype={dtype!r} must be one of {DTYPES}")
    if vocab > np.iinfo(dtype).max + 1:
        raise _meta_error(folder, f"vocab_size={vocab} does not fit in {dtype}; use uint32")
    meta.setdefault("tokenizer", "unknown")
    per_token, counts = meta.get("bytes_per_token"), meta.get("bytes", {})
    if per_token is not None and (not isinstance(per_token, (int, float)) or per_token <= 0):
        raise _meta_error(folder, f"bytes_per_token={per_token!r} must be a number > 0")
    if not isinstance(counts, dict) or any(not isinstance(v, int) or v < 0 for v in counts.values()):
        raise _meta_error(folder, f"bytes={counts!r} must map split names to byte counts")
    return meta


def _tokenizer(folder: Path, meta: dict[str, Any]) -> Tokenizer:
    name, vocab = str(meta["tokenizer"]), int(meta["vocab_size"])
    if meta.get("tokenizer_file"):
        tokenizer = load_tokenizer(folder / str(meta["tokenizer_file"]))
    elif name == "byte":
        tokenizer = ByteTokenizer()
    elif name == "gpt2" and vocab == GPT2_VOCAB_SIZE and find_gpt2_tokenizer_dir() is not None:
        tokenizer = GPT2Tokenizer(find_gpt2_tokenizer_dir())  # local files only: loading never reaches the hub
    else:
        return IdsOnlyTokenizer(name, vocab)
    if tokenizer.vocab_size != vocab or tokenizer.name != name:
        raise _meta_error(folder, f"the tokenizer found ({tokenizer.name}, V={tokenizer.vocab_size}) is not the one "
                                  f"it names ({name}, V={vocab})")
    return tokenizer


def _read_split(folder: Path, split: str, meta: dict[str, Any]) -> PretokenizedSplit:
    path = folder / f"{split}.bin"
    dtype = np.dtype(meta["dtype"])
    size = path.stat().st_size
    if size % dtype.itemsize or size < 2 * dtype.itemsize:
        raise ValueError(f"{str(path)!r} holds {size} bytes: not a whole number of {dtype} ids, or fewer than 2 "
                         f"(is meta.json's dtype={dtype.name} right?)")
    ids = np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r")
    check_token_ids(ids, int(meta["vocab_size"]), f"{path} (meta.json's vocab_size)")
    if split in meta.get("bytes", {}):
        n_bytes = int(meta["bytes"][split])
    elif meta.get("bytes_per_token") is not None:
        n_bytes = round(len(ids) * float(meta["bytes_per_token"]))
    else:
        n_bytes = 0
    return PretokenizedSplit(ids, n_bytes)


def read_pretokenized(folder: Union[str, Path]) -> Pretokenized:
    """The memory-mapped splits, the tokenizer (or an ids-only stand-in) and the meta of a ``.bin`` folder."""
    folder = Path(folder)
    if not (folder / "val.bin").is_file():
        raise ValueError(f"{str(folder)!r} has train.bin but no val.bin; write the validation ids there (nanoGPT's "
                         "layout) so that training and validation never overlap")
    meta = read_meta(folder)
    splits = {s: _read_split(folder, s, meta) for s in SPLITS if (folder / f"{s}.bin").is_file()}
    return Pretokenized(splits, _tokenizer(folder, meta), meta)


def write_pretokenized(folder: Union[str, Path], splits: dict[str, Any], tokenizer: Tokenizer) -> Path:
    """Write ``{"train": s, "val": s[, "test": s]}`` (objects with ``ids`` and ``n_bytes``) in nanoGPT's layout.

    The tokenizer is saved beside them when it can be (``tokenizer.json``); ``meta.json`` is written last.
    """
    folder = Path(folder)
    missing = {"train", "val"} - set(splits)
    if missing or set(splits) - set(SPLITS):
        raise ValueError(f"splits must be train and val (and optionally test), got {sorted(splits)}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32).newbyteorder("<")
    for name, split in splits.items():
        ids = np.asarray(split.ids)
        check_token_ids(ids, tokenizer.vocab_size, f"{name} ids")
        with atomic_path(folder / f"{name}.bin") as tmp:
            ids.astype(dtype).tofile(tmp)
    meta: dict[str, Any] = {"vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.name, "dtype": dtype.name,
                            "bytes": {name: int(split.n_bytes) for name, split in splits.items() if split.n_bytes}}
    if hasattr(tokenizer, "save"):
        tokenizer.save(folder / "tokenizer.json")
        meta["tokenizer_file"] = "tokenizer.json"
    atomic_write_json(folder / META_FILE, meta)
    return folder

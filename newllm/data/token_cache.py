"""The token cache: tokenized corpora stored once as ``.npy`` arrays and read back memory-mapped.

An entry is a folder ``<root>/corpora/<dataset>/<tokenizer tag>-<content hash prefix>/`` holding one ``.npy``
file per array (ids as uint16 when the vocabulary fits, else int32; document offsets as int64; optional float64
log-probabilities), an optional ``tokenizer.json`` (trained tokenizers) and ``meta.json``. ``meta.json`` is
written last and records the cache format version, the key (dataset, tokenizer tag, full content hash, tokenizer
fingerprint) and every file's byte size, dtype, shape and SHA-256; it is the entry's commit marker.

Reading checks all of that (and that offsets are consistent with the ids). Anything off (a version bump, another
content hash or tokenizer, a missing, truncated or altered file, a damaged ``.npy`` header) makes the entry stale: ``load_entry`` says why in the log
and returns None, and the caller rebuilds it. Every file is written atomically (newllm.utils.io); a failed build removes
what it wrote, so no partial entry is left behind.

Root: ``DataConfig.cache_dir``, else ``$NEWLLM_CACHE``, else ``~/.cache/newllm``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from newllm.utils.io import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: every file's SHA-256 in meta.json
CACHE_ENV = "NEWLLM_CACHE"
META = "meta.json"
TOKENIZER_FILE = "tokenizer.json"


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """``cache_dir``, else $NEWLLM_CACHE, else ~/.cache/newllm."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "newllm"


def content_hash(parts: Iterable[str]) -> str:
    """sha256 over the parts, each length-prefixed so that different splits of the same text differ."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


@dataclass(frozen=True)
class CacheKey:
    dataset: str  # resolved dataset name
    tokenizer: str  # tokenizer tag, e.g. "gpt2", "word1000", "bpe8192"
    content_hash: str  # of the documents (or of what determines them)

    def folder(self, root: Path) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.dataset).strip("_")[-80:] or "dataset"
        return root / "corpora" / slug / f"{self.tokenizer}-{self.content_hash[:20]}"

    def as_dict(self) -> dict[str, str]:
        return {"dataset": self.dataset, "tokenizer": self.tokenizer, "content_hash": self.content_hash}


@dataclass(frozen=True)
class CacheEntry:
    arrays: dict[str, np.ndarray]  # read-only memory maps
    meta: dict[str, Any]  # the "extra" dict given to save_entry, plus the bookkeeping
    tokenizer_path: Optional[Path]  # tokenizer.json when the entry has one
    tokenizer_fingerprint: str  # of the tokenizer the ids were made with


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _stale(folder: Path, reason: str) -> None:
    logger.info("token cache %s is stale (%s); rebuilding", folder, reason)


def load_entry(folder: Path, key: CacheKey, tokenizer_fingerprint: Optional[str] = None) -> Optional[CacheEntry]:
    """The entry in ``folder`` if complete and matching ``key`` (and the fingerprint, when given), else None."""
    meta_path = folder / META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _stale(folder, f"unreadable {META}: {exc}")
        return None
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        _stale(folder, f"cache format version {meta.get('version') if isinstance(meta, dict) else None} != {CACHE_VERSION}")
        return None
    if meta.get("key") != key.as_dict():
        _stale(folder, f"key {meta.get('key')} != {key.as_dict()}")
        return None
    if tokenizer_fingerprint is not None and meta.get("tokenizer_fingerprint") != tokenizer_fingerprint:
        _stale(folder, "the tokenizer's vocabulary differs from the one the ids were made with")
        return None
    arrays = {}
    for name, spec in meta.get("files", {}).items():
        path = folder / f"{name}.npy"
        if not path.is_file() or path.stat().st_size != spec["bytes"]:
            _stale(folder, f"{path.name} is missing or has the wrong size (truncated?)")
            return None
        if file_sha256(path) != spec.get("sha256"):
            _stale(folder, f"{path.name} changed since it was written (its SHA-256 differs)")
            return None
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # a damaged header raises whatever numpy's header parser hits (even TokenError)
            _stale(folder, f"{path.name} cannot be read: {type(exc).__name__}: {exc}")
            return None
        if str(array.dtype) != spec["dtype"] or list(array.shape) != spec["shape"]:
            _stale(folder, f"{path.name} has dtype/shape {array.dtype}/{array.shape}, expected {spec}")
            return None
        arrays[name] = array
    tokenizer_path = folder / TOKENIZER_FILE if meta.get("has_tokenizer") else None
    if tokenizer_path is not None and not tokenizer_path.is_file():
        _stale(folder, f"{TOKENIZER_FILE} is missing")
        return None
    return CacheEntry(arrays, meta.get("extra", {}), tokenizer_path, str(meta.get("tokenizer_fingerprint")))


def save_entry(
    folder: Path, key: CacheKey, arrays: dict[str, np.ndarray], extra: dict[str, Any],
    tokenizer_fingerprint: str, tokenizer: Any = None,
) -> None:
    """Write an entry (``tokenizer``: an object with ``save(path)``, for trained tokenizers). All or nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META).unlink(missing_ok=True)  # invalidate first: a crash below leaves no usable-looking entry
    written: list[Path] = []
    try:
        files = {}
        for name, array in arrays.items():
            path = folder / f"{name}.npy"
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
            written.append(path)
            files[name] = {"bytes": path.stat().st_size, "dtype": str(array.dtype), "shape": list(array.shape),
                           "sha256": file_sha256(path)}
        if tokenizer is not None:
            tokenizer.save(folder / TOKENIZER_FILE)
            written.append(folder / TOKENIZER_FILE)
        meta = {
            "version": CACHE_VERSION, "key": key.as_dict(), "tokenizer_fingerprint": tokenizer_fingerprint,
            "files": files, "has_tokenizer": tokenizer is not None, "extra": extra,
        }
        atomic_write_json(folder / META, meta)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if not any(folder.iterdir()):
            folder.rmdir()
        raise

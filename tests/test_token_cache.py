"""The token cache: memory-mapped round trip, stale entries detected, all-or-nothing writes, cache root."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from newllm.data import token_cache as tc
from newllm.data.token_cache import CacheKey, load_entry, save_entry

KEY = CacheKey("local:/data/my corpus", "word1000", tc.content_hash(["a", "b"]))


def _arrays():
    return {"train_ids": np.arange(10, dtype=np.uint16), "train_offsets": np.array([0, 4, 10], dtype=np.int64)}


def _save(folder: Path, **kw):
    save_entry(folder, KEY, _arrays(), {"train_bytes": 42}, "fp", **kw)


def test_round_trip_is_memory_mapped_and_read_only(tmp_path):
    folder = KEY.folder(tmp_path)
    assert folder.parent.parent == tmp_path / "corpora" and " " not in folder.parent.name
    _save(folder)
    entry = load_entry(folder, KEY, "fp")
    assert entry is not None and entry.meta == {"train_bytes": 42} and entry.tokenizer_path is None
    ids = entry.arrays["train_ids"]
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16 and not ids.flags.writeable
    np.testing.assert_array_equal(ids, np.arange(10))


def test_content_hash_separates_parts():
    assert tc.content_hash(["ab", "c"]) != tc.content_hash(["a", "bc"])
    assert tc.content_hash(["x"]) == tc.content_hash(["x"])


@pytest.mark.parametrize("change", ["version", "key", "fingerprint", "truncated", "missing", "meta", "one_id",
                                    "one_offset", "header"])
def test_stale_entries_are_detected(tmp_path, change):
    folder = tmp_path / "entry"
    _save(folder)
    meta_path = folder / tc.META
    meta = json.loads(meta_path.read_text())
    fingerprint, key = "fp", KEY
    if change == "version":
        meta["version"] = tc.CACHE_VERSION + 1
    elif change == "key":
        key = CacheKey(KEY.dataset, KEY.tokenizer, tc.content_hash(["other"]))
    elif change == "fingerprint":
        fingerprint = "another vocabulary"
    elif change == "truncated":
        data = (folder / "train_ids.npy").read_bytes()
        (folder / "train_ids.npy").write_bytes(data[:-4])
    elif change == "missing":
        (folder / "train_offsets.npy").unlink()
    elif change in ("one_id", "one_offset"):  # same size, one value changed: only the content hash can tell
        name = "train_ids" if change == "one_id" else "train_offsets"
        data = bytearray((folder / f"{name}.npy").read_bytes())
        data[-1 if change == "one_id" else -9] ^= 0x01
        (folder / f"{name}.npy").write_bytes(bytes(data))
    elif change == "header":  # a damaged .npy header (numpy raised tokenize.TokenError on this once)
        data = bytearray((folder / "train_ids.npy").read_bytes())
        data[20:26] = b"\"'((("
        (folder / "train_ids.npy").write_bytes(bytes(data))
    meta_path.write_text("{broken" if change == "meta" else json.dumps(meta))
    assert load_entry(folder, key, fingerprint) is None
    _save(folder)  # a rebuild over the stale entry is valid again
    assert load_entry(folder, KEY, "fp") is not None


def test_a_failed_write_leaves_no_file_behind(tmp_path):
    class FailingTokenizer:
        def save(self, path):
            raise OSError("disk full")

    folder = tmp_path / "entry"
    with pytest.raises(OSError, match="disk full"):
        _save(folder, tokenizer=FailingTokenizer())
    assert not folder.exists()
    _save(folder)
    with pytest.raises(OSError):
        _save(folder, tokenizer=FailingTokenizer())  # a failed rebuild also invalidates the old entry
    assert load_entry(folder, KEY, "fp") is None and not list(folder.glob("*.npy"))


def test_ids_dtype_fits_the_vocabulary():
    assert tc.ids_dtype(50257) == np.uint16 and tc.ids_dtype(65536) == np.uint16 and tc.ids_dtype(65537) == np.int32


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(tc.CACHE_ENV, str(tmp_path / "env"))
    assert tc.cache_root(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert tc.cache_root(None) == tmp_path / "env"
    monkeypatch.delenv(tc.CACHE_ENV)
    assert tc.cache_root(None) == Path.home() / ".cache" / "newllm"

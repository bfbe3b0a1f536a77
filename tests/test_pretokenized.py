"""Pre-tokenized input in nanoGPT's format (train.bin / val.bin + meta.json): loading, checks, and runs through
run_cvfp and run_baseline at tiny sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from newllm.config.data import DataConfig
from newllm.config.models import ModelConfig
from newllm.config.training import Phase1Config, Phase2Config
from newllm.data.corpus import load_corpus
from newllm.data.pretokenized import read_pretokenized, write_pretokenized
from newllm.data.tokenizers import CharTokenizer, IdsOnlyTokenizer
from newllm.experiments.cvfp import CVFPSettings, run_baseline, run_cvfp

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 6


def _never_called():
    raise AssertionError("the hub probe must not be called")


def _nanogpt_folder(folder: Path, dtype=np.uint16, meta=None) -> tuple[Path, CharTokenizer]:
    """What nanoGPT's shakespeare_char/prepare.py writes, with a JSON meta instead of its pickle."""
    tok = CharTokenizer.train([TEXT])
    ids = np.array(tok.encode(TEXT), dtype=dtype)
    cut = int(len(ids) * 0.9)
    folder.mkdir(parents=True, exist_ok=True)
    ids[:cut].tofile(folder / "train.bin")
    ids[cut:].tofile(folder / "val.bin")
    meta = {"vocab_size": tok.vocab_size, "tokenizer": "char", "bytes_per_token": 1.0} if meta is None else meta
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder, tok


def _cfg(folder: Path, **kw) -> DataConfig:
    return DataConfig(dataset=str(folder), **kw)


def test_bin_folder_loads_memory_mapped_with_bytes_from_the_meta(tmp_path):
    folder, tok = _nanogpt_folder(tmp_path / "shakespeare_char")
    corpus = load_corpus(_cfg(folder), progress=False, hub_probe=_never_called)
    cut = int(len(TEXT) * 0.9)
    assert isinstance(corpus.train.ids, np.memmap) and corpus.train.ids.dtype == np.uint16
    assert corpus.train.n_tokens == cut and corpus.val.n_tokens == len(TEXT) - cut
    assert corpus.train.n_bytes + corpus.val.n_bytes == len(TEXT.encode())  # ASCII: 1 byte per char token
    assert corpus.info["split"] == "pretokenized" and corpus.info["vocab_size"] == tok.vocab_size
    assert isinstance(corpus.tokenizer, IdsOnlyTokenizer) and corpus.tokenizer.name == "char"
    assert corpus.test is None and corpus.tokenizer.decode(corpus.train.ids[:2]) == "".join(
        f"<{i}>" for i in tok.encode(TEXT[:2]))


def test_uint32_exact_bytes_test_split_and_a_saved_tokenizer(tmp_path):
    tok = CharTokenizer.train([TEXT])
    folder, _ = _nanogpt_folder(tmp_path / "d", np.uint32, {
        "vocab_size": tok.vocab_size, "tokenizer": "char", "dtype": "uint32", "tokenizer_file": "tok.json",
        "bytes": {"train": 1000, "val": 77, "test": 5}})
    tok.save(folder / "tok.json")
    np.array(tok.encode("to be"), dtype=np.uint32).tofile(folder / "test.bin")
    corpus = load_corpus(_cfg(folder, tokenizer="char"), progress=False)
    assert corpus.train.ids.dtype == np.uint32 and (corpus.train.n_bytes, corpus.val.n_bytes) == (1000, 77)
    assert corpus.test is not None and corpus.info["test_tokens"] == 5 and corpus.info["test_bytes"] == 5
    assert corpus.tokenizer.decode(corpus.test.ids) == "to be"


def test_write_pretokenized_round_trips_a_text_corpus(tmp_path):
    text_file = tmp_path / "input.txt"
    text_file.write_text(TEXT + "café ☃\n", encoding="utf-8")
    text = load_corpus(DataConfig(dataset=str(text_file), tokenizer="char", cache_dir=str(tmp_path / "c")),
                       progress=False, hub_probe=_never_called)
    folder = write_pretokenized(tmp_path / "bin", {"train": text.train, "val": text.val}, text.tokenizer)
    again = load_corpus(_cfg(folder), progress=False, hub_probe=_never_called)
    assert np.array_equal(again.train.ids, text.train.ids) and np.array_equal(again.val.ids, text.val.ids)
    assert (again.train.n_bytes, again.val.n_bytes) == (text.train.n_bytes, text.val.n_bytes)
    assert again.train.n_bytes + again.val.n_bytes == text_file.stat().st_size
    assert again.tokenizer.fingerprint() == text.tokenizer.fingerprint()


def test_bad_folders_and_settings_are_clear_errors(tmp_path):
    folder, tok = _nanogpt_folder(tmp_path / "a")
    with pytest.raises(ValueError, match="not documents"):
        load_corpus(_cfg(folder, samples=10), progress=False)
    with pytest.raises(ValueError, match="tokenized with 'char'"):
        load_corpus(_cfg(folder, tokenizer="gpt2"), progress=False)
    (folder / "meta.json").write_text(json.dumps({"vocab_size": 5}))
    with pytest.raises(ValueError, match="outside a vocabulary of size 5"):
        load_corpus(_cfg(folder), progress=False)
    (folder / "meta.json").unlink()
    (folder / "meta.pkl").write_bytes(b"\x80")
    with pytest.raises(ValueError, match="meta.pkl is not read"):
        load_corpus(_cfg(folder), progress=False)
    (folder / "meta.json").write_text(json.dumps({"vocab_size": tok.vocab_size, "dtype": "uint32"}))
    (folder / "val.bin").write_bytes(b"\x01\x00\x02\x00\x03\x00")  # 6 bytes: not whole uint32 ids
    with pytest.raises(ValueError, match="whole number"):
        read_pretokenized(folder)
    (folder / "val.bin").unlink()
    with pytest.raises(ValueError, match="no val.bin"):
        read_pretokenized(folder)


def _settings(folder: Path) -> CVFPSettings:
    return CVFPSettings(
        data=_cfg(folder),
        model=ModelConfig(ctx_dim=32, embed_dim=32, num_layers=2, embedding="random"),
        phase1=Phase1Config(max_iterations=5),
        phase2=Phase2Config(epochs=1),
        device="cpu",
    )


def test_bin_input_through_run_cvfp_and_run_baseline(tmp_path):
    folder, tok = _nanogpt_folder(tmp_path / "shakespeare_char")
    settings = _settings(folder)
    run = run_cvfp(settings, progress=False)
    row = run.row
    assert row["tokenizer"] == "char" and row["vocab_size"] == tok.vocab_size and row["samples"] is None
    assert row["train_tokens"] == int(len(TEXT) * 0.9) and math.isfinite(row["val_loss"])
    # bits per byte over the val.bin bytes (1 per char token): the mean loss in bits, a token more or less
    assert row["val_bits_per_byte"] == pytest.approx(row["val_loss"] / math.log(2), rel=0.05)
    corpus = load_corpus(settings.data, progress=False)
    for kind in ("lstm", "transformer"):
        base = run_baseline(kind, settings, corpus, progress=False)
        assert base["tokenizer"] == "char" and base["vocab_size"] == tok.vocab_size
        assert math.isfinite(base["val_loss"]) and base["val_bits_per_byte"] is not None

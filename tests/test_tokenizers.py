"""Tokenizers: GPT-2 from local files, word level, trained byte-level BPE, char and byte level, save/load, checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from newllm.data import tokenizers as tk
from newllm.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    WordTokenizer,
    check_token_ids,
    load_tokenizer,
)

GPT2_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer"
needs_gpt2 = pytest.mark.skipif(not GPT2_DIR.is_dir(), reason=f"GPT-2 tokenizer files not found at {GPT2_DIR}")

TEXTS = [
    "The cat sat on the mat. The dog sat on the log.",
    "A naïve café serves crème brûlée; the cat watches the dog.",
    "Numbers 3.14 and 2,718 appear\nacross lines, with  double  spaces.",
] * 5


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    if not GPT2_DIR.is_dir():
        pytest.skip(f"GPT-2 tokenizer files not found at {GPT2_DIR}")
    return GPT2Tokenizer(GPT2_DIR)


@needs_gpt2
def test_gpt2_hello_world_and_specials(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50257 and gpt2.eos_id == 50256 and gpt2.bos_id is None
    assert gpt2.encode_document("Hello world") == [15496, 995, 50256]
    assert gpt2.encode_batch(["Hello world", "Hello"]) == [[15496, 995], [15496]]
    for text in TEXTS[:3]:
        assert gpt2.decode(gpt2.encode(text)) == text


@needs_gpt2
def test_gpt2_from_vocab_and_merges_only(tmp_path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(GPT2_DIR / name, tmp_path / name)
    tok = GPT2Tokenizer(tmp_path)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.fingerprint() == GPT2Tokenizer(GPT2_DIR).fingerprint()


def test_gpt2_from_a_folder_without_files_is_an_error_not_an_empty_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="only 1 tokens|could not load"):
        GPT2Tokenizer(tmp_path)


def test_find_gpt2_dir_env_var_then_shared(tmp_path, monkeypatch):
    monkeypatch.delenv(tk.GPT2_ENV, raising=False)
    assert tk.find_gpt2_tokenizer_dir() == (GPT2_DIR if GPT2_DIR.is_dir() else None)
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    monkeypatch.setenv(tk.GPT2_ENV, str(tmp_path))
    assert tk.find_gpt2_tokenizer_dir() == tmp_path
    monkeypatch.setenv(tk.GPT2_ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=tk.GPT2_ENV):
        tk.find_gpt2_tokenizer_dir()


def test_locate_gpt2_prefers_path_then_local_then_hub(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="tokenizer_path"):
        tk.locate_gpt2_tokenizer(str(tmp_path), lambda: True)
    monkeypatch.setattr(tk, "find_gpt2_tokenizer_dir", lambda: None)
    assert tk.locate_gpt2_tokenizer(None, lambda: True) == "gpt2"
    assert tk.locate_gpt2_tokenizer(None, lambda: False) is None
    monkeypatch.setattr(tk, "find_gpt2_tokenizer_dir", lambda: tmp_path)
    assert tk.locate_gpt2_tokenizer(None, lambda: False) == str(tmp_path)


def test_word_tokenizer_specials_frequency_order_ties_and_oov():
    tok = WordTokenizer.train(["b a c", "A b d", "e"], vocab_size=7)
    assert tok.special_ids == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert tok.words == ["a", "b", "c"]  # a and b twice (case folded), then c, d, e once: alphabetical
    assert tok.vocab_size == 7
    assert tok.encode("A B zebra c") == [4, 5, 1, 6]
    assert tok.encode_document("a e") == [2, 4, 1, 3]
    assert tok.encode("<unk> <bos>") == [1, 2]  # special strings are never ordinary words
    assert tok.decode([2, 4, 5, 1, 3]) == "<bos> a b <unk> <eos>"


def test_word_tokenizer_vocab_below_specials_and_empty_text():
    with pytest.raises(ValueError, match="no room for words"):
        WordTokenizer.train(["a b"], vocab_size=4)
    with pytest.raises(ValueError, match="no words"):
        WordTokenizer.train(["   ", ""], vocab_size=10)
    with pytest.raises(ValueError, match="lower-case"):
        WordTokenizer(["Hello"])


def test_word_tokenizer_save_load(tmp_path):
    tok = WordTokenizer.train(TEXTS, vocab_size=20)
    tok.save(tmp_path / "word.json")
    loaded = load_tokenizer(tmp_path / "word.json")
    assert isinstance(loaded, WordTokenizer)
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode(TEXTS[1]) == tok.encode(TEXTS[1])


def test_bpe_round_trip_determinism_and_save_load(tmp_path):
    tok = BPETokenizer.train(TEXTS, vocab_size=300)
    assert tok.eos_id == 0 and 257 <= tok.vocab_size <= 300
    for text in TEXTS[:3] + ["unseen ☃ text"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_document("cat") == tok.encode("cat") + [0]
    assert BPETokenizer.train(TEXTS, vocab_size=300).fingerprint() == tok.fingerprint()
    tok.save(tmp_path / "bpe.json")
    loaded = load_tokenizer(tmp_path / "bpe.json")
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode_batch(TEXTS[:2]) == tok.encode_batch(TEXTS[:2])


def test_bpe_vocab_below_bytes_is_an_error():
    with pytest.raises(ValueError, match="257"):
        BPETokenizer.train(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="empty"):
        BPETokenizer.train(["", "  "], vocab_size=300)


def test_ids_outside_the_vocabulary_are_a_clear_error():
    tok = WordTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="outside a vocabulary of size 6"):
        tok.decode([2, 4, 6])
    with pytest.raises(ValueError, match="different tokenizer"):
        check_token_ids([0, 50256], 1000)
    check_token_ids([0, 999], 1000)  # in range: no error


def test_load_tokenizer_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad JSON"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"type": "sentencepiece"}')
    with pytest.raises(ValueError, match="not a saved newllm tokenizer"):
        load_tokenizer(tmp_path / "other.json")


def test_char_tokenizer_round_trip_unk_and_save_load(tmp_path):
    tok = CharTokenizer.train(TEXTS)
    alphabet = sorted(set("".join(TEXTS)))
    assert tok.chars == alphabet and tok.vocab_size == len(alphabet) + 1 and tok.unk_id == 0
    assert tok.special_ids == {"unk": 0} and tok.encode_document("cat") == tok.encode("cat")
    for text in TEXTS[:3]:
        ids = tok.encode(text)
        assert len(ids) == len(text) and 0 not in ids
        assert tok.decode(ids) == text
    # a character never seen in training is UNK, and decodes to the replacement character
    assert tok.encode("c☃t") == [tok.encode("c")[0], 0, tok.encode("t")[0]]
    assert tok.decode(tok.encode("c☃t")) == "c\ufffdt"
    tok.save(tmp_path / "char.json")
    loaded = load_tokenizer(tmp_path / "char.json")
    assert isinstance(loaded, CharTokenizer) and loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode(TEXTS[1]) == tok.encode(TEXTS[1])
    assert CharTokenizer.train(["ba"]).fingerprint() != CharTokenizer.train(["bc"]).fingerprint()


def test_char_tokenizer_vocab_size_keeps_the_most_frequent():
    tok = CharTokenizer.train(["aaabbc"], vocab_size=3)
    assert tok.chars == ["a", "b"] and tok.encode("abc") == [1, 2, 0]
    with pytest.raises(ValueError, match="no room"):
        CharTokenizer.train(["abc"], vocab_size=1)
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.train(["", ""])
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab"])


def test_byte_tokenizer_round_trip_any_text_and_save_load(tmp_path):
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 and tok.special_ids == {}
    for text in TEXTS[:3] + ["unseen ☃ text\r\n", ""]:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text
    assert tok.decode([0xE2, 0x98]) == "\ufffd"  # a cut UTF-8 sequence decodes without an error
    tok.save(tmp_path / "byte.json")
    assert isinstance(load_tokenizer(tmp_path / "byte.json"), ByteTokenizer)
    with pytest.raises(ValueError, match="outside a vocabulary of size 256"):
        tok.decode([256])

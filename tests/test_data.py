"""load_corpus end to end (offline): splits, optimum perplexity, caching, auto fallbacks, errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from newllm.config.data import DataConfig
from newllm.data import corpus as data
from newllm.data import sources
from newllm.data import tokenizers as tk
from newllm.data.builtin_corpus import BuiltinGrammar
from newllm.data.corpus import CorpusSplit, load_corpus
from newllm.data.token_cache import META

GPT2_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer"


def offline():
    return False


def _never_called():
    raise AssertionError("the hub probe must not be called")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in sources.OFFLINE_ENV + (tk.GPT2_ENV,):
        monkeypatch.delenv(name, raising=False)


def _builtin(tmp_path, **kw) -> DataConfig:
    return DataConfig(dataset="builtin", samples=kw.pop("samples", 3), val_samples=kw.pop("val_samples", 2),
                      cache_dir=str(tmp_path / "cache"), **kw)


def _texts(corpus, stream) -> set[str]:
    return {corpus.tokenizer.decode(doc) for doc in stream.documents()}


def test_builtin_corpus_streams_and_info(tmp_path):
    corpus = load_corpus(_builtin(tmp_path), progress=False, hub_probe=_never_called)
    info = corpus.info
    assert info["dataset"] == "builtin" and info["tokenizer"] == "word" and not info["offline_fallback"]
    assert info["vocab_size"] == len(BuiltinGrammar().vocabulary()) + 4
    assert corpus.train.n_docs == 3 and corpus.val.n_docs == 2
    assert info["train_tokens"] == corpus.train.n_tokens == int(corpus.train.doc_offsets[-1])
    assert corpus.train.doc_offsets.dtype == np.int64
    for doc in corpus.train.documents():
        assert doc[0] == corpus.tokenizer.bos_id and doc[-1] == corpus.tokenizer.eos_id
        assert corpus.tokenizer.unk_id not in doc
    n_bytes = sum(len(corpus.tokenizer.decode(d[1:-1]).encode()) for d in corpus.val.documents())
    assert info["val_bytes"] == corpus.val.n_bytes == n_bytes


def test_optimum_ppl_matches_an_independent_rescoring(tmp_path):
    corpus = load_corpus(_builtin(tmp_path), progress=False)
    grammar, total, predicted = BuiltinGrammar(), 0.0, corpus.val.n_tokens - 1
    for doc in corpus.val.documents():
        word_logprobs, end_logprob = grammar.score(corpus.tokenizer.decode(doc[1:-1]).split())
        total += word_logprobs.sum() + end_logprob
    assert corpus.val.logprobs[corpus.val.doc_offsets[:-1]].tolist() == [0.0, 0.0]  # BOS is certain
    assert corpus.info["optimum_val_ppl"] == pytest.approx(math.exp(-total / predicted), rel=1e-10)
    assert corpus.val.optimum_nll() == pytest.approx(-total / predicted, rel=1e-10)
    bits = -total / math.log(2) / corpus.val.n_bytes
    assert corpus.info["optimum_val_bits_per_byte"] == pytest.approx(bits, rel=1e-10)
    assert 1 < corpus.info["optimum_train_ppl"] < 50


def test_validation_is_fixed_and_never_overlaps_training(tmp_path):
    small = load_corpus(_builtin(tmp_path, samples=2), progress=False)
    large = load_corpus(_builtin(tmp_path, samples=5), progress=False)
    np.testing.assert_array_equal(small.val.ids, large.val.ids)
    assert small.info["optimum_val_ppl"] == large.info["optimum_val_ppl"]
    small_docs, large_docs = small.train.documents(), large.train.documents()
    assert all(np.array_equal(a, b) for a, b in zip(small_docs, large_docs))  # N samples = the first N
    assert not _texts(large, large.train) & _texts(large, large.val)


def test_same_seed_same_ids_other_seed_other_ids(tmp_path):
    a = load_corpus(_builtin(tmp_path, seed=1), progress=False)
    b = load_corpus(_builtin(tmp_path / "elsewhere", seed=1), progress=False)
    c = load_corpus(_builtin(tmp_path, seed=2), progress=False)
    np.testing.assert_array_equal(a.train.ids, b.train.ids)
    assert not np.array_equal(a.train.ids[:500], c.train.ids[:500])


def test_cache_hit_skips_training_and_stale_or_truncated_entries_are_rebuilt(tmp_path, monkeypatch):
    cfg = _builtin(tmp_path, tokenizer="bpe", vocab_size=400, samples=2, val_samples=1)
    first = load_corpus(cfg, progress=False)
    expected = np.array(first.train.ids)
    folder = Path(first.info["cache_path"])
    assert not first.info["cache_hit"] and isinstance(first.train.ids, np.memmap)
    assert first.info["optimum_val_ppl"] is None and first.info["optimum_val_bits_per_byte"] > 0
    del first

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not retrain the tokenizer")

    with monkeypatch.context() as patch:
        patch.setattr(tk.BPETokenizer, "train", no_training)
        hit = load_corpus(cfg, progress=False)
    assert hit.info["cache_hit"]
    np.testing.assert_array_equal(hit.train.ids, expected)
    del hit

    meta = json.loads((folder / META).read_text())
    meta["version"] += 1
    (folder / META).write_text(json.dumps(meta))
    rebuilt = load_corpus(cfg, progress=False)
    assert not rebuilt.info["cache_hit"]
    np.testing.assert_array_equal(rebuilt.train.ids, expected)
    del rebuilt

    ids_file = folder / "train_ids.npy"
    ids_file.write_bytes(ids_file.read_bytes()[:-10])
    rebuilt = load_corpus(cfg, progress=False)
    assert not rebuilt.info["cache_hit"]
    np.testing.assert_array_equal(rebuilt.train.ids, expected)

    (folder / "tokenizer.json").write_text('{"type": "word", "format": 1, "words": ["x"]}')
    assert not load_corpus(cfg, progress=False).info["cache_hit"]  # not the tokenizer the ids were made with


def test_auto_offline_falls_back_to_builtin_loudly(tmp_path):
    cfg = DataConfig(dataset="auto", samples=2, val_samples=1, cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="BUILT-IN corpus"):
        corpus = load_corpus(cfg, progress=False, hub_probe=offline)
    assert corpus.info["dataset"] == "builtin" and corpus.info["requested_dataset"] == "auto"
    assert corpus.info["offline_fallback"] and corpus.info["optimum_val_ppl"] is not None


def test_hf_hub_offline_is_honoured_without_probing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = DataConfig(dataset="auto", samples=2, val_samples=1, cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="HF_HUB_OFFLINE"):
        corpus = load_corpus(cfg, progress=False, hub_probe=_never_called)
    assert corpus.info["dataset"] == "builtin"


def test_explicit_hub_dataset_offline_is_a_clear_error(tmp_path):
    cfg = DataConfig(dataset="ultrachat", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Offline alternatives: dataset='builtin'"):
        load_corpus(cfg, progress=False, hub_probe=offline)


def _local_text(tmp_path, n=12) -> Path:
    path = tmp_path / "text.txt"
    paragraphs = [f"Paragraph {i} tells of the river and the hill . It has {i % 3} turns ." for i in range(n)]
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


def test_local_text_with_the_word_tokenizer(tmp_path):
    path = _local_text(tmp_path)
    cfg = DataConfig(dataset=str(path), tokenizer="word", vocab_size=12, samples=4, val_samples=3,
                     cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(cfg, progress=False, hub_probe=_never_called)
    assert corpus.info["dataset"] == f"local:{path.resolve()}" and corpus.info["vocab_size"] == 12
    assert corpus.train.logprobs is None and corpus.info["optimum_val_ppl"] is None
    # V=12 keeps the 8 most frequent training words: ".", "the", then the 4-count words alphabetically
    assert corpus.tokenizer.words == [".", "the", "and", "has", "hill", "it", "of", "paragraph"]
    last = "<bos> paragraph <unk> <unk> of the <unk> and the hill . it has <unk> <unk> . <eos>"
    assert corpus.tokenizer.decode(corpus.val.documents()[-1]) == last
    assert corpus.train.n_docs == 4 and corpus.val.n_docs == 3


@pytest.mark.parametrize("tokenizer", ["char", "byte"])
def test_char_and_byte_tokenizers_through_load_corpus(tmp_path, tokenizer):
    path = _local_text(tmp_path)
    cfg = DataConfig(dataset=str(path), tokenizer=tokenizer, samples=4, val_samples=3,
                     cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(cfg, progress=False, hub_probe=_never_called)
    text = path.read_text(encoding="utf-8")
    assert corpus.info["tokenizer"] == tokenizer
    docs = sources.split_documents(text.splitlines())
    assert corpus.info["vocab_size"] == (len(set("".join(docs[:4]))) + 1 if tokenizer == "char" else 256)
    # no specials: one id per character (per byte), and every document decodes to its text
    assert [corpus.tokenizer.decode(d) for d in corpus.train.documents()] == docs[:4]
    seen = set("".join(docs[:4])) if tokenizer == "char" else set(text)  # "9" only appears in validation
    val_text = [corpus.tokenizer.decode(d) for d in corpus.val.documents()]
    assert val_text == ["".join(c if c in seen else "\ufffd" for c in doc) for doc in docs[-3:]]
    assert corpus.val.n_tokens == corpus.val.n_bytes == sum(len(d) for d in docs[-3:])
    again = load_corpus(cfg, progress=False, hub_probe=_never_called)  # from the cache, tokenizer included
    assert again.info["cache_hit"] and again.tokenizer.fingerprint() == corpus.tokenizer.fingerprint()


def test_byte_tokenizer_vocab_size_is_checked():
    with pytest.raises(ValueError, match="vocab_size"):
        DataConfig(tokenizer="byte", vocab_size=300)


def test_auto_tokenizer_trains_bpe_loudly_without_gpt2_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tk, "find_gpt2_tokenizer_dir", lambda: None)
    cfg = DataConfig(dataset=str(_local_text(tmp_path)), vocab_size=300, samples=6, val_samples=2,
                     cache_dir=str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="byte-level BPE"):
        corpus = load_corpus(cfg, progress=False, hub_probe=offline)
    assert corpus.info["tokenizer"] == "bpe" and corpus.info["tokenizer_fallback"]
    with pytest.raises(ValueError, match="tokenizer_path"):
        load_corpus(dataclasses.replace(cfg, tokenizer="gpt2"), progress=False, hub_probe=offline)


@pytest.mark.skipif(not GPT2_DIR.is_dir(), reason=f"GPT-2 tokenizer files not found at {GPT2_DIR}")
def test_auto_tokenizer_uses_local_gpt2_files(tmp_path):
    cfg = DataConfig(dataset=str(_local_text(tmp_path)), samples=2, val_samples=1, cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(cfg, progress=False, hub_probe=_never_called)
    assert corpus.info["tokenizer"] == "gpt2" and corpus.info["vocab_size"] == 50257
    assert corpus.train.documents()[0][-1] == 50256 and corpus.train.ids.dtype == np.uint16


def test_bad_inputs_are_clear_errors_and_leave_no_cache(tmp_path):
    cache = tmp_path / "cache"
    path = _local_text(tmp_path, n=5)
    with pytest.raises(ValueError, match="only 2 are available"):
        load_corpus(DataConfig(dataset=str(path), tokenizer="word", samples=3, val_samples=3, cache_dir=str(cache)))
    with pytest.raises(ValueError, match="neither a known dataset"):
        load_corpus(DataConfig(dataset="wikitext-103", cache_dir=str(cache)))
    with pytest.raises(ValueError, match="257"):
        load_corpus(DataConfig(dataset=str(path), tokenizer="bpe", vocab_size=100, samples=1, val_samples=1,
                               cache_dir=str(cache)))
    with pytest.raises(ValueError, match="leave vocab_size=None"):
        load_corpus(_builtin(tmp_path, vocab_size=100))
    assert not list(cache.rglob("*.npy")) and not list(cache.rglob(META))


def test_model_vocabulary_mismatch_is_reported(tmp_path):
    corpus = load_corpus(_builtin(tmp_path, samples=1, val_samples=1), progress=False)
    corpus.check_fits(corpus.info["vocab_size"])
    with pytest.raises(ValueError, match="vocab_size"):
        corpus.check_fits(100)


def test_token_stream_validates_its_offsets():
    with pytest.raises(ValueError, match="doc_offsets"):
        CorpusSplit(np.arange(5), np.array([0, 3], dtype=np.int64), 10)
    stream = CorpusSplit(np.arange(5), np.array([0, 3, 5], dtype=np.int64), 10)
    assert [d.tolist() for d in stream.documents()] == [[0, 1, 2], [3, 4]] and stream.optimum_nll() is None


def test_a_stream_shorter_than_two_tokens_is_an_error():
    class Letters(tk.Tokenizer):
        name = "letters"
        vocab_size = 26

        def encode(self, text):
            return [ord(c) - ord("a") for c in text]

        def _decode(self, ids):
            return "".join(chr(i + ord("a")) for i in ids)

        def fingerprint(self):
            return "letters"

    docs = sources.SourceDocuments("tiny", ["ab"], ["c"], available_train=1)
    with pytest.raises(ValueError, match="val stream has only 1 token"):
        data._tokenize(docs, Letters(), with_logprobs=False, progress=False)


def test_hub_dataset_setting_is_validated():
    with pytest.raises(ValueError, match="hub_dataset"):
        DataConfig(hub_dataset="wikitext103")


def test_auto_uses_the_hub_dataset_when_reachable(tmp_path, monkeypatch):
    import datasets

    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(5)]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    cfg = DataConfig(dataset="auto", tokenizer="word", samples=3, val_samples=2, cache_dir=str(tmp_path))
    corpus = load_corpus(cfg, progress=False, hub_probe=lambda: True)
    assert corpus.info["dataset"] == "ultrachat" and not corpus.info["offline_fallback"]
    assert corpus.tokenizer.decode(corpus.val.documents()[0]) == "<bos> question <unk> answer <unk> <eos>"  # row 3
    assert corpus.tokenizer.decode(corpus.train.documents()[2]) == "<bos> question 2? answer 2. <eos>"

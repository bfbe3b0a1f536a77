"""Local text read verbatim: nanoGPT's fraction split, documents at a separator, folders of split files, and bits
per byte counted on the original UTF-8 bytes of what is scored."""

from __future__ import annotations

from pathlib import Path

import pytest

from newllm.config.data import DataConfig
from newllm.data import sources
from newllm.data.corpus import load_corpus

# what a rewriting reader would lose: CRLF line ends, trailing spaces, runs of blank lines, non-ASCII, no final newline
TEXT = ("First Citizen:\r\nBefore we proceed any further, hear me speak.  \r\n\r\n\r\n"
        "All:\nSpeak, speak.\n\n  Indented line, café and naïve ☃\n\n\nLast words without a newline")


def _never_called():
    raise AssertionError("the hub probe must not be called")


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def _load(tmp_path, dataset, **kw):
    kw.setdefault("tokenizer", "char")
    cfg = DataConfig(dataset=str(dataset), cache_dir=str(tmp_path / "cache"), **kw)
    return load_corpus(cfg, progress=False, hub_probe=_never_called)


def _text(corpus, split) -> str:
    return "".join(corpus.tokenizer.decode(doc) for doc in split.documents())


@pytest.mark.parametrize("tokenizer", ["char", "byte"])
def test_a_file_is_split_90_10_verbatim_and_bytes_equal_the_files(tmp_path, tokenizer):
    path = _write(tmp_path / "input.txt", TEXT * 3)
    corpus = _load(tmp_path, path, tokenizer=tokenizer)  # split="auto" with no counts: nanoGPT's fraction split
    text = TEXT * 3
    cut = int(len(text) * 0.9)
    assert corpus.info["split"] == "fraction" and corpus.info["samples"] is None
    assert corpus.train.n_docs == corpus.val.n_docs == 1
    assert corpus.train.n_bytes + corpus.val.n_bytes == path.stat().st_size
    assert corpus.val.n_bytes == len(text[cut:].encode("utf-8"))
    assert _text(corpus, corpus.train) == text[:cut]  # nothing stripped, no \r\n translated, no token added
    if tokenizer == "byte":
        assert corpus.val.n_tokens == corpus.val.n_bytes and _text(corpus, corpus.val) == text[cut:]
    else:
        assert corpus.train.n_tokens == cut and corpus.val.n_tokens == len(text) - cut


def test_val_fraction_and_its_limits(tmp_path):
    path = _write(tmp_path / "input.txt", "abcdefghij")
    corpus = _load(tmp_path, path, val_fraction=0.3)
    assert (corpus.train.n_tokens, corpus.val.n_tokens) == (7, 3)
    with pytest.raises(ValueError, match="non-empty parts"):
        _load(tmp_path, _write(tmp_path / "tiny.txt", "ab"), val_fraction=0.6)
    with pytest.raises(ValueError, match="split='fraction'"):
        DataConfig(dataset=str(path), split="fraction", samples=3)
    with pytest.raises(ValueError, match="val_fraction"):
        DataConfig(val_fraction=1.0)


def test_split_verbatim_joins_back_to_the_text():
    for text in (TEXT, "a\n\nb", "a\n\n", "\n\na", "a\n\n\n\n\nb\n\n", "no separator"):
        docs = sources.split_verbatim(text, "\n\n")
        assert "".join(docs) == text and all(docs)
    assert sources.split_verbatim("a\n\n\n\nb\n\nc", "\n\n") == ["a\n\n\n\n", "b\n\n", "c"]


def test_documents_at_a_separator_hold_out_the_last_fraction(tmp_path):
    docs = [f"Scene {i}.\nA line,  with spaces.  \n" for i in range(10)]
    path = _write(tmp_path / "play.txt", "\n".join(docs))
    corpus = _load(tmp_path, path, split="document")
    pieces = sources.split_verbatim("\n".join(docs), "\n\n")
    assert corpus.info["split"] == "document" and len(pieces) == 10
    assert corpus.train.n_docs == corpus.info["samples"] == 9 and corpus.val.n_docs == 1
    assert corpus.train.n_bytes + corpus.val.n_bytes == path.stat().st_size
    assert [corpus.tokenizer.decode(d) for d in corpus.train.documents()] == pieces[:9]
    fewer = _load(tmp_path, path, split="document", samples=4, val_samples=2)
    assert fewer.train.n_docs == 4 and fewer.val.n_bytes == sum(len(p.encode()) for p in pieces[-2:])
    assert fewer.train.n_bytes == sum(len(p.encode()) for p in pieces[:4])


def test_a_folder_of_split_files_reads_each_whole_and_never_reads_test(tmp_path):
    folder = tmp_path / "shakespeare"
    folder.mkdir()
    train = _write(folder / "train.txt", TEXT)
    valid = _write(folder / "valid.txt", "Speak, speak.\r\n\r\n")
    _write(folder / "test.txt", "TEST TEXT: never read\n")
    corpus = _load(tmp_path, folder)
    assert corpus.info["split"] == "files" and corpus.info["unused_files"] == [str(folder / "test.txt")]
    assert corpus.train.n_bytes == train.stat().st_size and corpus.val.n_bytes == valid.stat().st_size
    assert _text(corpus, corpus.train) == TEXT
    assert "T" not in _text(corpus, corpus.val).replace("\ufffd", "")  # validation is valid.txt, test is untouched
    # separator=None under split="document": each file is one document, as above
    assert _load(tmp_path, folder, split="document", separator=None).train.n_bytes == train.stat().st_size


def test_a_folder_with_train_and_test_but_no_valid_is_refused(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "train.txt", TEXT)
    _write(folder / "test.txt", "held-out test text\n")
    for split in ("auto", "document", "blocks"):
        with pytest.raises(ValueError, match="not both a train and a validation file"):
            _load(tmp_path, folder, split=split)
    _write(folder / "valid.txt", TEXT)
    with pytest.raises(ValueError, match="not 'fraction'"):
        _load(tmp_path, folder, split="fraction")


def test_a_folder_of_text_files_is_one_text_in_path_order(tmp_path):
    folder = tmp_path / "books"
    (folder / "b").mkdir(parents=True)
    first, second = _write(folder / "a.txt", "Alpha text.\n"), _write(folder / "b" / "c.txt", "Beta text.\n" * 4)
    corpus = _load(tmp_path, folder, tokenizer="byte")
    assert corpus.train.n_bytes + corpus.val.n_bytes == first.stat().st_size + second.stat().st_size
    assert _text(corpus, corpus.train).startswith("Alpha text.\nBeta")


def test_counting_documents_keeps_the_paragraph_rule_and_builtin_refuses_a_split(tmp_path):
    path = _write(tmp_path / "text.txt", "\n\n".join(f"Para {i} ." for i in range(6)) + "\n")
    corpus = _load(tmp_path, path, tokenizer="byte", samples=2, val_samples=1)  # counts given: "blocks", as before verbatim reading
    assert corpus.info["split"] == "blocks" and corpus.train.n_docs == 2
    assert _text(corpus, corpus.val) == "Para 5 ."  # stripped paragraphs
    with pytest.raises(ValueError, match="local text only"):
        load_corpus(DataConfig(dataset="builtin", split="fraction", cache_dir=str(tmp_path / "c")), progress=False)

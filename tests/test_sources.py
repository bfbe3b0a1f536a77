"""Document sources: dataset resolution, offline detection, leak-free splits, hub loaders (mocked), local text."""

from __future__ import annotations

import socket
import time

import datasets
import pytest

from newllm.data import sources
from newllm.data.sources import load_documents, resolve_dataset, split_documents


def _never_called():
    raise AssertionError("the probe must not be called")


@pytest.fixture(autouse=True)
def _online_env(monkeypatch):
    for name in sources.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)


def _write_paragraphs(path, n, prefix="doc"):
    path.write_text("\n\n".join(f"{prefix} {i} line one\n{prefix} {i} line two" for i in range(n)) + "\n", encoding="utf-8")
    return path


def test_split_documents_blocks_separated_by_blank_lines():
    lines = [" = Title = \n", " \n", "first line \n", "second\n", "\n", "\n", " third block\n"]
    assert split_documents(lines) == ["= Title =", "first line\nsecond", "third block"]
    assert split_documents([]) == [] and split_documents(["", "  "]) == []


def test_offline_environment_variables_win_without_probing(monkeypatch):
    assert sources.hub_reachable(lambda: True) is True
    assert sources.hub_reachable(lambda: False) is False
    for name in sources.OFFLINE_ENV:
        monkeypatch.setenv(name, "1")
        assert sources.hub_reachable(_never_called) is False
        monkeypatch.delenv(name)


def test_probe_gives_up_on_a_hanging_connection(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(3)
        raise OSError("too late")

    monkeypatch.setattr(socket, "create_connection", hang)
    assert sources.probe_huggingface(timeout=0.05) is False


def test_probe_reports_a_successful_connection(monkeypatch):
    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    seen = []
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: seen.append(address) or Connection())
    assert sources.probe_huggingface(timeout=1.0) is True
    assert seen == [("huggingface.co", 443)]


def test_auto_uses_the_hub_dataset_when_reachable_else_builtin_loudly():
    assert resolve_dataset("auto", "wikitext2", lambda: True).name == "wikitext2"
    with pytest.warns(UserWarning, match="BUILT-IN"):
        resolved = resolve_dataset("auto", "ultrachat", lambda: False)
    assert resolved.name == "builtin" and resolved.offline_fallback and resolved.requested == "auto"


def test_unknown_dataset_lists_the_valid_names(tmp_path):
    with pytest.raises(ValueError, match="auto, builtin, ultrachat, wikitext2"):
        resolve_dataset("wikitext103", "ultrachat", _never_called)
    with pytest.raises(ValueError, match="existing file or folder"):
        resolve_dataset(str(tmp_path / "missing.txt"), "ultrachat", _never_called)
    resolved = resolve_dataset(str(tmp_path), "ultrachat", _never_called)
    assert resolved.name == f"local:{tmp_path.resolve()}" and resolved.path == tmp_path.resolve()


def _local(path, samples, val_samples):
    return load_documents(resolve_dataset(str(path), "ultrachat", _never_called), samples, val_samples, 0, _never_called)


def test_local_file_holds_out_the_last_documents_whatever_n(tmp_path):
    path = _write_paragraphs(tmp_path / "corpus.txt", 10)
    small, large = _local(path, 2, 3), _local(path, 7, 3)
    assert small.train == large.train[:2] and small.val == large.val
    assert small.val == [f"doc {i} line one\ndoc {i} line two" for i in (7, 8, 9)]
    assert not set(large.train) & set(large.val) and large.available_train == 7
    with pytest.raises(ValueError, match="only 7 are available"):
        _local(path, 8, 3)
    with pytest.raises(ValueError, match="held out"):
        _local(path, 1, 10)


def test_local_folder_with_train_and_valid_files_uses_them_as_splits(tmp_path):
    _write_paragraphs(tmp_path / "train.txt", 5, "train")
    _write_paragraphs(tmp_path / "valid.txt", 4, "valid")
    docs = _local(tmp_path, 3, 2)
    assert docs.train[0].startswith("train 0") and len(docs.train) == 3
    assert docs.val == ["valid 0 line one\nvalid 0 line two", "valid 1 line one\nvalid 1 line two"]
    with pytest.raises(ValueError, match="only 4 documents"):
        _local(tmp_path, 1, 5)


def test_local_folder_of_text_files_in_path_order(tmp_path):
    (tmp_path / "sub").mkdir()
    _write_paragraphs(tmp_path / "sub" / "b.txt", 2, "b")
    _write_paragraphs(tmp_path / "a.txt", 2, "a")
    (tmp_path / "ignored.bin").write_bytes(b"\xff\xfe")
    docs = _local(tmp_path, 3, 1)
    assert [d.split()[0] for d in docs.train] == ["a", "a", "b"] and docs.val[0].startswith("b 1")


def test_local_errors_empty_folder_and_non_utf8(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt files"):
        _local(tmp_path / "empty", 1, 1)
    (tmp_path / "latin1.txt").write_bytes("café\n\nthé\n\nmore\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        _local(tmp_path / "latin1.txt", 1, 1)


def test_builtin_splits_never_overlap_and_val_ignores_n():
    resolved = resolve_dataset("builtin", "ultrachat", _never_called)
    small = load_documents(resolved, 2, 2, 5, _never_called)
    large = load_documents(resolved, 4, 2, 5, _never_called)
    assert small.val == large.val and small.train == large.train[:2]
    assert not set(large.train) & set(large.val)
    assert [len(lp) for lp in large.val_logprobs] == [len(t.split()) + 1 for t in large.val]


def test_ultrachat_joins_messages_and_holds_out_the_last_conversations(monkeypatch):
    rows = [{"prompt": f"q{i}", "messages": [{"role": "user", "content": f"q{i}"},
                                             {"role": "assistant", "content": f"a{i}\nmore"}]} for i in range(6)]
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    resolved = resolve_dataset("ultrachat", "ultrachat", _never_called)
    docs = load_documents(resolved, 2, 2, 0, lambda: True)
    assert calls == [("HuggingFaceH4/ultrachat_200k", None, "train_sft")]
    assert docs.train == ["q0\na0\nmore", "q1\na1\nmore"] and docs.val == ["q4\na4\nmore", "q5\na5\nmore"]
    assert load_documents(resolved, 4, 2, 0, lambda: True).val == docs.val
    with pytest.raises(ValueError, match="only 4 are available"):
        load_documents(resolved, 5, 2, 0, lambda: True)


def test_wikitext_uses_the_train_and_validation_splits(monkeypatch):
    def split(prefix, n):
        lines = []
        for i in range(n):
            lines += [f" {prefix} paragraph {i} \n", ""]
        return datasets.Dataset.from_dict({"text": [""] + lines})

    fake = datasets.DatasetDict({"train": split("train", 5), "validation": split("valid", 3)})
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kw: fake)
    docs = load_documents(resolve_dataset("wikitext2", "ultrachat", _never_called), 4, 2, 0, lambda: True)
    assert docs.train == [f"train paragraph {i}" for i in range(4)]
    assert docs.val == ["valid paragraph 0", "valid paragraph 1"] and docs.available_train == 5


def test_unreachable_hub_dataset_names_the_offline_alternatives(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: _never_called())
    resolved = resolve_dataset("ultrachat", "ultrachat", _never_called)
    with pytest.raises(ValueError, match="dataset='builtin'.*local text file or folder"):
        load_documents(resolved, 1, 1, 0, lambda: False)


def test_hub_load_failure_when_offline_by_env_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (offline mode)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="ConnectionError.*dataset='builtin'"):
        load_documents(resolve_dataset("wikitext2", "ultrachat", _never_called), 1, 1, 0, _never_called)

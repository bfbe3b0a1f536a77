"""The era-A data pipeline: paragraphs, windows (counts, stride, tail, no cross-paragraph targets), sources."""

from __future__ import annotations

import random

import pytest

from newllm.config.models import GatedLMConfig
from newllm.config.training import GatedTrainConfig
from newllm.data.wikitext import (
    encode_paragraphs,
    load_wikitext2_lines,
    make_windows,
    prepare_wikitext,
    split_paragraphs,
    window_starts,
)


def paragraph(length: int, first: int = 4) -> list[int]:
    """A sequence of distinct ids (so any misplaced token is detectable), no PAD."""
    return list(range(first, first + length))


def scored_positions(windows, index: int) -> list[int]:
    """Paragraph positions scored by window ``index``."""
    start = int(windows.start[index])
    keep = (windows.targets[index] != windows.pad_id).nonzero().flatten().tolist()
    return [start + 1 + j for j in keep]


def positions_by_paragraph(windows) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i in range(len(windows)):
        out.setdefault(int(windows.paragraph[i]), []).extend(scored_positions(windows, i))
    return out


# --------------------------------------------------------------------------------------------- paragraphs

def test_split_paragraphs_drops_empty_lines_and_short_paragraphs():
    lines = ["", "   ", " = Title = ", " one two three four five ", "one two three four", "\n", "a b c d e f"]
    assert split_paragraphs(lines, min_words=5) == ["one two three four five", "a b c d e f"]
    assert split_paragraphs(lines, min_words=0) == ["= Title =", "one two three four five", "one two three four",
                                                    "a b c d e f"]


# ----------------------------------------------------------------------------------------------- windows

def test_window_counts_stride_and_tail():
    # 10 tokens, window 4, stride 2: regular starts 0, 2, 4, 6 reach the end exactly; no tail needed
    assert window_starts(10, 4, 2, "keep") == ([0, 2, 4, 6], False)
    # 11 tokens: the regular windows stop at token 9, a tail window aligned to the end is added (keep) or not (drop)
    assert window_starts(11, 4, 2, "keep") == ([0, 2, 4, 6, 7], True)
    assert window_starts(11, 4, 2, "drop") == ([0, 2, 4, 6], False)
    # at most one window for a short paragraph; none without a target
    assert window_starts(4, 4, 2) == ([0], False)
    assert window_starts(2, 64, 32) == ([0], False)
    assert window_starts(1, 64, 32) == ([], False)
    # the original's figures: a 64/32 window over 200 tokens gives starts 0..128 and a tail at 136
    assert window_starts(200, 64, 32, "keep") == ([0, 32, 64, 96, 128, 136], True)


def test_short_paragraph_is_right_padded_and_padding_is_never_a_target():
    windows = make_windows([paragraph(5)], window=8, stride=4)
    assert windows.inputs.tolist() == [[4, 5, 6, 7, 8, 0, 0]]
    assert windows.targets.tolist() == [[5, 6, 7, 8, 0, 0, 0]]
    assert windows.n_targets == 4  # n - 1 targets: every token but the first is predicted once


def test_input_is_window_without_last_token_and_target_is_shifted_by_one():
    seq = paragraph(9)
    windows = make_windows([seq], window=5, stride=4, targets="all")
    for i in range(len(windows)):
        start = int(windows.start[i])
        assert windows.inputs[i].tolist() == seq[start:start + 4]
        assert windows.targets[i].tolist() == seq[start + 1:start + 5]


@pytest.mark.parametrize("tail", ["keep", "drop"])
@pytest.mark.parametrize("targets", ["all", "once"])
def test_no_window_crosses_a_paragraph_boundary(tail, targets):
    rng = random.Random(0)
    sequences, first = [], 4
    for _ in range(30):
        length = rng.randint(2, 40)
        sequences.append(paragraph(length, first))
        first += length  # ids never repeat across paragraphs, so a leaked token would be visible
    windows = make_windows(sequences, window=8, stride=3, tail=tail, targets=targets)
    for i in range(len(windows)):
        seq = sequences[int(windows.paragraph[i])]
        start = int(windows.start[i])
        inputs = [t for t in windows.inputs[i].tolist() if t != 0]
        assert inputs == seq[start:start + 7]
        for j, target in enumerate(windows.targets[i].tolist()):
            if target != 0:
                assert target == seq[start + j + 1]  # the scored target is the paragraph's own next token


@pytest.mark.parametrize("window,stride", [(8, 3), (8, 7), (5, 1), (64, 32), (2, 1)])
def test_once_scores_every_target_exactly_once(window, stride):
    rng = random.Random(window * 100 + stride)
    sequences = [paragraph(rng.randint(2, 150)) for _ in range(25)]
    windows = make_windows(sequences, window=window, stride=stride, tail="keep", targets="once")
    scored = positions_by_paragraph(windows)
    for index, seq in enumerate(sequences):
        assert sorted(scored[index]) == list(range(1, len(seq)))  # each position 1..n-1, once
    assert windows.n_targets == sum(len(s) - 1 for s in sequences)


def test_all_counts_overlaps_twice_but_the_tail_adds_only_new_targets():
    seq = paragraph(11)  # window 4 stride 2: regular windows cover positions 1..9, the tail window adds 10 only
    windows = make_windows([seq], window=4, stride=2, tail="keep", targets="all")
    per_window = [scored_positions(windows, i) for i in range(len(windows))]
    assert per_window == [[1, 2, 3], [3, 4, 5], [5, 6, 7], [7, 8, 9], [10]]
    dropped = make_windows([seq], window=4, stride=2, tail="drop", targets="all")
    assert [scored_positions(dropped, i) for i in range(len(dropped))] == per_window[:4]  # position 10 is lost


def test_drop_reproduces_the_original_window_count():
    # original: floor((n - window) / stride) + 1 windows for n > window, one window otherwise
    lengths = [3, 64, 65, 95, 96, 97, 200, 1000]
    windows = make_windows([paragraph(n) for n in lengths], window=64, stride=32, tail="drop")
    expected = sum(1 if n <= 64 else (n - 64) // 32 + 1 for n in lengths)
    assert len(windows) == expected


def test_pad_inside_a_sequence_is_rejected():
    with pytest.raises(ValueError, match="PAD id 0"):
        make_windows([[2, 5, 0, 6, 3]], window=4, stride=2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"window": 1}, "window=1 must be an integer >= 2"),
        ({"stride": 0}, "stride=0"),
        ({"window": 8, "stride": 8}, r"window - 1 = 7"),
        ({"tail": "pad"}, "tail='pad'"),
        ({"targets": "some"}, "targets='some'"),
    ],
)
def test_bad_window_settings_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_windows([paragraph(20)], **{"window": 8, "stride": 4, **kwargs})


def test_bad_settings_in_the_configs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"GatedTrainConfig.window=1 .*>= 2"):
        GatedTrainConfig(window=1)
    with pytest.raises(ValueError, match=r"GatedTrainConfig.stride=0 .*>= 1"):
        GatedTrainConfig(stride=0)
    with pytest.raises(ValueError, match=r"GatedTrainConfig.stride=64 .*window - 1 = 63"):
        GatedTrainConfig(stride=64)
    with pytest.raises(ValueError, match=r"GatedLMConfig.vocab_size=4 .*>= 5"):
        GatedLMConfig(vocab_size=4)
    with pytest.raises(ValueError, match="tail"):
        GatedTrainConfig(tail="maybe")


# ----------------------------------------------------------------------------------------------- pipeline

def write_corpus(folder, n_train=40, n_valid=8, seed=0):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]

    def lines(n):
        out = []
        for _ in range(n):
            out.append(" " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) + " ")
            out.append(" ")
        return out

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("\n".join(lines(n_train)) + "\n", encoding="utf-8")
    (folder / "valid.txt").write_text("\n".join(lines(n_valid)) + "\nzzunseen " * 6 + "\n", encoding="utf-8")
    return folder


def test_prepare_from_local_files(tmp_path):
    folder = write_corpus(tmp_path / "wt2")
    cfg = GatedTrainConfig(window=12, stride=6, min_words=5)
    data = prepare_wikitext(cfg, source=str(folder), vocab_size=20)
    tok = data.tokenizer
    assert tok.vocab_size == 20 and (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert "local files" in data.source
    lines = (folder / "train.txt").read_text().splitlines()
    kept = split_paragraphs(lines, 5)
    assert data.stats["train_paragraphs"] == len(kept) < sum(1 for line in lines if line.strip())
    # every window starts at its paragraph's BOS or inside it, and BOS/EOS wrap each paragraph
    first = data.train.inputs[data.train.start == 0]
    assert bool((first[:, 0] == tok.bos_id).all())
    assert int((data.train.targets == tok.eos_id).sum()) >= data.stats["train_paragraphs"]
    # validation counts every target once: tokens minus one per paragraph
    assert data.val.n_targets == data.stats["val_tokens"] - data.stats["val_paragraphs"]
    # the word only in validation is UNK: the vocabulary comes from the training split
    assert data.stats["val_unk_rate"] > 0
    assert "zzunseen" not in tok.words


def test_prepare_rejects_a_tiny_vocabulary_and_a_missing_source(tmp_path):
    folder = write_corpus(tmp_path / "wt2")
    with pytest.raises(ValueError, match="vocab_size=4 must be an integer >= 5"):
        prepare_wikitext(GatedTrainConfig(), source=str(folder), vocab_size=4)
    with pytest.raises(ValueError, match="neither one of"):
        load_wikitext2_lines(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no train split"):
        load_wikitext2_lines(str(tmp_path / "empty"))


def test_builtin_source_gives_disjoint_deterministic_splits():
    a = load_wikitext2_lines("builtin", builtin_documents=(2, 1), seed=3)
    b = load_wikitext2_lines("builtin", builtin_documents=(2, 1), seed=3)
    assert a == b and len(a.train) == 2 and len(a.valid) == 1
    assert a.valid[0] not in a.train
    data = prepare_wikitext(GatedTrainConfig(window=16, stride=8, seed=3), source="builtin",
                            vocab_size=1000, builtin_documents=(2, 1))
    assert data.stats["train_paragraphs"] == 2 and data.stats["val_paragraphs"] == 1  # one paragraph per document
    assert data.val.n_targets == data.stats["val_tokens"] - 1
    assert int(data.train.inputs.max()) < data.tokenizer.vocab_size <= 1000


def test_wikitext2_window_counts_match_the_original(shared_data):
    # seed-spec 2.2: 51,026 training and 5,272 validation sequences (64/32 windows, tail dropped, min 5 words).
    # The local copy is the tokenised v1 variant; its whitespace word counts per line equal the raw variant's.
    folder = shared_data / "wikitext-2"
    dropped = prepare_wikitext(GatedTrainConfig(tail="drop"), source=str(folder))
    assert (dropped.stats["train_windows"], dropped.stats["val_windows"]) == (51026, 5272)
    # keeping the tail scores every validation target once: all tokens but each paragraph's BOS
    val_ids = encode_paragraphs(split_paragraphs(load_wikitext2_lines(str(folder)).valid, 5), dropped.tokenizer)
    kept = make_windows(val_ids, 64, 32, tail="keep", targets="once")
    assert kept.n_targets == sum(len(ids) - 1 for ids in val_ids)
    assert kept.n_targets == dropped.stats["val_tokens"] - dropped.stats["val_paragraphs"]
    assert dropped.val.n_targets < kept.n_targets

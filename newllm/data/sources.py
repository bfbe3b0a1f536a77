"""Document sources: which texts are the training documents and which are the validation documents.

A *document* is one unit of text: a WikiText paragraph, an UltraChat conversation (all its messages' contents
joined with "\\n", full length), a block of a local text file, or a generated built-in document.
"N samples" = the first N training documents (``DEFAULT_SAMPLES`` when not given; all of them for local text).
Validation = a fixed set of ``val_samples`` documents that never overlaps training and does not depend on N:
- "wikitext2" (``wikitext-2-raw-v1``): the hub's validation split (its first ``val_samples`` paragraphs).
- "ultrachat" (``HuggingFaceH4/ultrachat_200k``, ``train_sft``, one split): its LAST ``val_samples``
  conversations; training documents come from the front and may never reach them.
- a local file or folder, read VERBATIM (bytes decoded as UTF-8, line ends and whitespace untouched), under
  ``DataConfig.split``:
  * "fraction": one contiguous text (a file, or a folder's ``*.txt`` files joined in sorted path order); the first
    ``int(n * (1 - val_fraction))`` characters are the training text, the rest validation (nanoGPT's 90/10).
  * "document": the text cut after each ``separator`` (kept with its document, so the documents join back to the
    text; a run of separators stays with the document before it); ``separator=None``: each file is one document.
    A single source holds out its last ``val_samples`` documents (None: the last ``val_fraction`` of them).
  * "blocks": the WikiText convention: a document = a block of consecutive non-blank lines (blank lines
    separate blocks), line ends stripped; the last ``val_samples`` documents are held out. In WikiText every
    paragraph (and heading) is one line between blank lines, so a document is a paragraph, as for the hub's rows.
  * "auto": when ``samples`` and ``val_samples`` are both None, "fraction" (a folder with split files: each file
    whole); when either is given, documents are being counted, so "blocks" (the rule before verbatim reading).
  A folder holding split files (``train.txt`` + ``valid.txt``, see ``SPLIT_FILE_NAMES``) uses them as the two
  splits; its test file is never read (recorded as unused). A folder with a train file but no validation file is
  refused rather than guessed at, so test text can never become training text. Other folders: every ``*.txt``
  below it, in sorted path order. Files are read directly (no ``datasets`` cache).
- "builtin": documents 0..N-1 of the "train" seed stream; validation = documents 0..V-1 of the "val" stream.

``dataset="auto"`` means the hub dataset when huggingface.co is reachable, else "builtin", said loudly.
Reachability is decided fast: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set to a true value means offline without any
network call; otherwise one TCP connection to huggingface.co:443 with a short timeout, run in a daemon thread
so that a slow DNS lookup cannot hold it up either. ``hub_reachable`` takes the probe as an argument (tests).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from newllm.config.data import HUB_DATASETS
from newllm.data import builtin_corpus

logger = logging.getLogger(__name__)

DATASETS = ("auto", "builtin") + HUB_DATASETS
HUB_HOST = "huggingface.co"
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 1.5
DEFAULT_SAMPLES, DEFAULT_VAL_SAMPLES = 50, 20  # document counts when DataConfig leaves them None
OFFLINE_ALTERNATIVES = "dataset='builtin' (generated here, no download) or dataset='<path to a local text file or folder>'"


# --------------------------------------------------------------------------------------- reachability

def offline_by_env() -> bool:
    """True when HF_HUB_OFFLINE, HF_DATASETS_OFFLINE or TRANSFORMERS_OFFLINE asks for offline mode."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENV)


def probe_huggingface(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to huggingface.co:443; returns within about ``timeout`` seconds whatever happens."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)  # daemon: a hung DNS lookup cannot block exit
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_reachable(probe: Callable[[], bool] = probe_huggingface) -> bool:
    """False when the offline environment variables say so (no probe), else what ``probe()`` finds."""
    return False if offline_by_env() else bool(probe())


@dataclass(frozen=True)
class ResolvedDataset:
    requested: str
    name: str  # "builtin", "wikitext2", "ultrachat" or "local:<absolute path>"
    path: Optional[Path] = None  # local sources only
    offline_fallback: bool = False  # "auto" fell back to "builtin" because the hub was unreachable


def resolve_dataset(requested: str, hub_dataset: str, reachable: Callable[[], bool]) -> ResolvedDataset:
    """Turn ``DataConfig.dataset`` into a concrete source; "auto" probes the hub (via ``reachable``)."""
    if requested == "auto":
        if reachable():
            return ResolvedDataset(requested, hub_dataset)
        message = (
            f"dataset='auto': the Hugging Face hub is not reachable ({_why_offline()}), so the BUILT-IN corpus is "
            f"used instead of {hub_dataset!r}. Set dataset='builtin' to silence this, or a local path for your text."
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        logger.warning(message)
        return ResolvedDataset(requested, "builtin", offline_fallback=True)
    if requested in ("builtin",) + HUB_DATASETS:
        return ResolvedDataset(requested, requested)
    path = Path(requested).expanduser()
    if path.exists():
        return ResolvedDataset(requested, f"local:{path.resolve()}", path=path.resolve())
    raise ValueError(
        f"dataset={requested!r} is neither a known dataset ({', '.join(DATASETS)}) nor an existing file or folder; "
        "use one of those names or the path of a local text file or folder"
    )


def _why_offline() -> str:
    if offline_by_env():
        return "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    return f"no connection to {HUB_HOST}:443"


# ------------------------------------------------------------------------------------------- WikiText-2

WIKITEXT2_HUB = ("wikitext", "wikitext-2-raw-v1")
# file names of the two splits in a local folder: PyTorch examples' names, then Salesforce's raw and tokenised ones
SPLIT_FILE_NAMES = {
    "train": ("train.txt", "wiki.train.raw", "wiki.train.tokens"),
    "valid": ("valid.txt", "validation.txt", "val.txt", "wiki.valid.raw", "wiki.valid.tokens"),
    "test": ("test.txt", "wiki.test.raw", "wiki.test.tokens"),
}


@dataclass(frozen=True)
class TextSplits:
    """The raw lines of the training and validation splits, and where they came from."""

    train: list[str]
    valid: list[str]
    source: str


def wikitext2_local_dir() -> Optional[Path]:
    """``<repo>/../shared/data/wikitext-2`` when it exists (this project's CI has it; Colab does not)."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext-2"
    return path if path.is_dir() else None


def split_files(folder: Path) -> dict[str, Optional[Path]]:
    """The files holding a folder's "train", "valid" and "test" splits (None where none of SPLIT_FILE_NAMES is)."""
    return {split: next((folder / n for n in names if (folder / n).is_file()), None)
            for split, names in SPLIT_FILE_NAMES.items()}


def read_wikitext2_local(folder: Path) -> TextSplits:
    """Lines of the two split files in ``folder``."""
    found = split_files(folder)
    for split in ("train", "valid"):
        if found[split] is None:
            names = list(SPLIT_FILE_NAMES[split])
            raise ValueError(f"{str(folder)!r} has no {split} split: expected one of {names} in it")
    train_text = found["train"].read_text(encoding="utf-8")
    valid_text = found["valid"].read_text(encoding="utf-8")
    # the tokenised (v1) variant replaced rare words by <unk>; the raw variant the original used did not
    kind = "tokenised variant, <unk> in the text" if "<unk>" in train_text else "no <unk>: raw variant"
    return TextSplits(train_text.splitlines(), valid_text.splitlines(),
                      f"local files {found['train']} + {found['valid'].name} ({kind})")


def read_wikitext2_hub() -> TextSplits:
    """Lines of ``datasets.load_dataset("wikitext", "wikitext-2-raw-v1")``; its errors are the caller's to word."""
    import datasets

    dataset = datasets.load_dataset(*WIKITEXT2_HUB)
    return TextSplits(list(dataset["train"]["text"]), list(dataset["validation"]["text"]),
                      f"Hugging Face datasets {WIKITEXT2_HUB[0]}/{WIKITEXT2_HUB[1]}")


# ------------------------------------------------------------------------------------------- documents

@dataclass(frozen=True)
class SourceDocuments:
    """The training and validation documents of one source."""

    name: str
    train: list[str]
    val: list[str]
    available_train: int  # how many training documents the source holds (the most ``samples`` can be)
    # builtin only: per document, the exact log p of each word and then of the document's end (n_words + 1 values)
    train_logprobs: Optional[list[np.ndarray]] = None
    val_logprobs: Optional[list[np.ndarray]] = None
    split: str = "documents"  # how the text became documents: "fraction", "files", "document", "blocks", ...
    unused: tuple[str, ...] = ()  # files of the source that were not read (a test split)


def split_documents(lines: Iterable[str]) -> list[str]:
    """Blocks of consecutive non-blank lines, each joined with "\\n" (line ends and outer whitespace stripped)."""
    documents, block = [], []
    for line in lines:
        line = line.rstrip("\r\n").rstrip()
        if line.strip():
            block.append(line)
        elif block:
            documents.append("\n".join(block).strip())
            block = []
    if block:
        documents.append("\n".join(block).strip())
    return documents


def load_documents(
    resolved: ResolvedDataset, samples: Optional[int], val_samples: Optional[int], seed: int,
    reachable: Callable[[], bool], progress: bool = False, split: str = "blocks",
    separator: Optional[str] = "\n\n", val_fraction: float = 0.1,
) -> SourceDocuments:
    """The first ``samples`` training documents and the fixed validation documents (see the module docstring)."""
    if resolved.path is not None:
        return _local(resolved, samples, val_samples, split, separator, val_fraction)
    if split != "auto" and split != "blocks":
        raise ValueError(f"split={split!r} applies to local text only; {resolved.name!r} has its own documents "
                         "(leave split='auto')")
    samples = DEFAULT_SAMPLES if samples is None else samples
    val_samples = DEFAULT_VAL_SAMPLES if val_samples is None else val_samples
    if resolved.name == "builtin":
        return _builtin(samples, val_samples, seed, progress)
    if resolved.name in HUB_DATASETS:
        return _hub(resolved.name, samples, val_samples, reachable)
    raise ValueError(f"unknown resolved dataset {resolved.name!r}")


def _check_count(source: str, samples: int, available: int, detail: str = "") -> None:
    if samples > available:
        raise ValueError(
            f"{source}: asked for samples={samples} training documents but only {available} are available{detail}; "
            "use fewer samples (or a larger source)"
        )


def _builtin(samples: int, val_samples: int, seed: int, progress: bool) -> SourceDocuments:
    _check_count("builtin", samples, builtin_corpus.MAX_DOCUMENTS)
    _check_count("builtin (validation)", val_samples, builtin_corpus.MAX_DOCUMENTS)
    grammar = builtin_corpus.BuiltinGrammar()
    train = builtin_corpus.generate_documents(seed, "train", 0, samples, progress, grammar)
    val = builtin_corpus.generate_documents(seed, "val", 0, val_samples, progress, grammar)

    def logprobs(docs: list[builtin_corpus.BuiltinDocument]) -> list[np.ndarray]:
        return [np.append(d.word_logprobs, d.end_logprob) for d in docs]

    return SourceDocuments("builtin", [d.text for d in train], [d.text for d in val],
                           builtin_corpus.MAX_DOCUMENTS, logprobs(train), logprobs(val))


def read_text(path: Path) -> str:
    """The file's text exactly as stored (UTF-8, no newline translation)."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8") from None
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def split_verbatim(text: str, separator: str) -> list[str]:
    """``text`` cut after each ``separator`` (kept); ``"".join(result) == text``; separator-only pieces merge back."""
    documents: list[str] = []
    for piece in text.split(separator):
        if documents and not piece.strip(separator):
            documents[-1] += piece  # an empty piece: a run of separators stays with the document before it
        else:
            documents.append(piece)
        documents[-1] += separator
    documents[-1] = documents[-1][: len(documents[-1]) - len(separator)]  # the text does not end with an extra one
    return [doc for doc in documents if doc]


def _documents(text: str, split: str, separator: Optional[str]) -> list[str]:
    if split == "blocks":
        return split_documents(io.StringIO(text, newline=None))  # universal newlines, as reading the file did
    if split == "document" and separator is not None:
        return split_verbatim(text, separator)
    return [text] if text else []  # "fraction", or one document per file


def _local(resolved: ResolvedDataset, samples: Optional[int], val_samples: Optional[int], split: str,
           separator: Optional[str], val_fraction: float) -> SourceDocuments:
    path = resolved.path
    assert path is not None
    name = resolved.name
    if split == "auto" and (samples is not None or val_samples is not None):
        split = "blocks"  # documents are counted: the WikiText convention
    found = split_files(path) if path.is_dir() else {}
    if any(found.values()):
        if found.get("train") is None or found.get("valid") is None:
            present = ", ".join(f.name for f in found.values() if f is not None)
            raise ValueError(
                f"folder {str(path)!r} has split files ({present}) but not both a train and a validation file "
                f"(one of {list(SPLIT_FILE_NAMES['train'])} and of {list(SPLIT_FILE_NAMES['valid'])}); newllm will not "
                "guess which text to train on. Add a validation file, or point dataset at the training file itself "
                "(split='fraction' holds out its end)"
            )
        if split == "fraction":
            raise ValueError(f"folder {str(path)!r} already has a train and a validation file: use split='auto' "
                             "(each file whole), 'document' or 'blocks', not 'fraction'")
        mode = "files" if split == "auto" else split
        train_all = _documents(read_text(found["train"]), mode, None if mode == "files" else separator)
        val_all = _documents(read_text(found["valid"]), mode, None if mode == "files" else separator)
        default = DEFAULT_SAMPLES if mode == "blocks" else None
        samples = default if samples is None else samples
        val_samples = (DEFAULT_VAL_SAMPLES if mode == "blocks" else len(val_all)) if val_samples is None else val_samples
        if len(val_all) < val_samples:
            raise ValueError(
                f"{str(found['valid'])!r} has only {len(val_all)} documents but val_samples={val_samples}; "
                "lower val_samples or add text"
            )
        samples = len(train_all) if samples is None else samples
        _check_count(name, samples, len(train_all), f" in {str(found['train'])!r}")
        unused = (str(found["test"]),) if found.get("test") is not None else ()
        if unused:
            logger.info("%s: the test file %s is not read (training and validation only)", name, unused[0])
        return SourceDocuments(name, train_all[:samples], val_all[:val_samples], len(train_all), split=mode, unused=unused)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*.txt") if f.is_file())
        if not files:
            raise ValueError(f"folder {str(path)!r} holds no .txt files; put UTF-8 text files (*.txt) in it")
    else:
        files = [path]
    texts = [read_text(f) for f in files]
    mode = "fraction" if split == "auto" else split
    if mode == "fraction":
        if samples is not None or val_samples is not None:
            raise ValueError(f"{name}: split='fraction' reads one contiguous text, not documents; leave samples and "
                             "val_samples None (or use split='document' to count documents)")
        return _fraction(name, "".join(texts), val_fraction)
    if mode == "document" and separator is None:
        documents = [t for t in texts if t]
    else:
        documents = [doc for t in texts for doc in _documents(t, mode, separator)]
    if val_samples is None:
        val_samples = DEFAULT_VAL_SAMPLES if mode == "blocks" else max(1, round(len(documents) * val_fraction))
    result = _hold_out_last(name, documents, DEFAULT_SAMPLES if mode == "blocks" and samples is None else samples,
                            val_samples)
    return dataclasses.replace(result, split=mode)


def _fraction(source: str, text: str, val_fraction: float) -> SourceDocuments:
    """nanoGPT's split: the first int(n * (1 - val_fraction)) characters train, the rest validate."""
    cut = int(len(text) * (1 - val_fraction))
    if cut == 0 or cut == len(text):
        raise ValueError(f"{source}: {len(text)} characters cannot be split {1 - val_fraction:g} / {val_fraction:g} "
                         "into two non-empty parts; add text or change val_fraction")
    return SourceDocuments(source, [text[:cut]], [text[cut:]], 1, split="fraction")


def _hold_out_last(source: str, documents: list[str], samples: Optional[int], val_samples: int) -> SourceDocuments:
    """Single-split sources: the last ``val_samples`` documents are validation, training comes from the front."""
    available = len(documents) - val_samples
    if available <= 0:
        raise ValueError(
            f"{source}: only {len(documents)} documents, but the last val_samples={val_samples} are held out for "
            "validation and at least 1 must remain for training; add text, lower val_samples, or use split='fraction'"
        )
    samples = available if samples is None else samples
    _check_count(source, samples, available, f" ({len(documents)} documents minus the {val_samples} held out)")
    return SourceDocuments(source, documents[:samples], documents[len(documents) - val_samples:], available)


def _hub(name: str, samples: int, val_samples: int, reachable: Callable[[], bool]) -> SourceDocuments:
    # When offline by environment variable, `datasets` may still serve a locally cached copy, so try; without
    # the variable and without a connection it would only retry and time out, so fail at once.
    if not offline_by_env() and not reachable():
        raise ValueError(_hub_error(name, f"no connection to {HUB_HOST}:443"))
    import datasets

    try:
        if name == "wikitext2":
            splits = read_wikitext2_hub()
            train_all, val_all = split_documents(splits.train), split_documents(splits.valid)
        else:
            conversations = datasets.load_dataset("HuggingFaceH4/ultrachat_200k", split="train_sft")
    except Exception as exc:  # datasets raises many kinds (connection, not found, offline cache miss)
        raise ValueError(_hub_error(name, f"{type(exc).__name__}: {exc}")) from exc
    if name == "wikitext2":
        _check_count(name, samples, len(train_all), " in the train split")
        if len(val_all) < val_samples:
            raise ValueError(f"wikitext2: the validation split has only {len(val_all)} paragraphs; lower val_samples")
        return SourceDocuments(name, train_all[:samples], val_all[:val_samples], len(train_all))
    total = len(conversations)
    available = total - val_samples
    if available <= 0:
        raise ValueError(f"ultrachat: only {total} conversations, fewer than val_samples={val_samples} + 1")
    _check_count(name, samples, available, f" ({total} conversations minus the last {val_samples} held out)")
    train = [_conversation_text(m) for m in conversations[:samples]["messages"]]
    val = [_conversation_text(m) for m in conversations[available:]["messages"]]
    return SourceDocuments(name, train, val, available)


def _conversation_text(messages: list[dict]) -> str:
    return "\n".join(message["content"] for message in messages)


def _hub_error(name: str, reason: str) -> str:
    return (
        f"dataset={name!r} needs the Hugging Face hub, which could not be used ({reason}). Offline alternatives: "
        f"{OFFLINE_ALTERNATIVES}. (If the dataset is already in your local `datasets` cache, set "
        "HF_DATASETS_OFFLINE=1 to use it.)"
    )

"""Tokenizers behind one small interface: GPT-2 BPE (transformers), word level, a trained byte-level BPE,
character level and raw bytes.

Every tokenizer has ``name``, ``vocab_size``, ``encode(text) -> list[int]``, ``decode(ids) -> str``, its special
ids (``pad_id``/``unk_id``/``bos_id``/``eos_id``, None where it has none) and ``fingerprint()``, a hash of its
exact vocabulary that keys the token cache. ``encode_document`` wraps a document in the specials it has:
- "gpt2": GPT-2's 50,257-token BPE, loaded with ``GPT2TokenizerFast.from_pretrained`` from the hub name "gpt2" or
  a local folder. Each document ends with <|endoftext|> (nanoGPT's convention), so a model sees boundaries.
  transformers 5 silently builds an EMPTY tokenizer from the 4.x keywords ``vocab_file=/merges_file=`` (and
  from a folder without tokenizer files), so the size is checked after loading.
- "word": the WikiText-era tokenizer: lower-cased whitespace split; ids PAD 0, UNK 1, BOS 2, EOS 3, then the
  (V - 4) most frequent training words (ties broken alphabetically); anything else is UNK; documents are
  BOS ... EOS. The literal strings "<pad>", "<unk>", "<bos>", "<eos>" in text map to the special ids.
- "bpe": a byte-level BPE trained with the ``tokenizers`` library on the training documents (deterministic:
  the same texts and size give the same merges); each document ends with <|endoftext|> (id 0).
- "char": one id per character (Karpathy's char-rnn / nanoGPT's shakespeare_char): id 0 is UNK (any character
  not seen in the training text; it decodes to U+FFFD), then the training text's characters in code-point order
  (with ``vocab_size``: UNK + the vocab_size - 1 most frequent ones). No BOS/EOS: text is scored as it is.
- "byte": the 256 byte values of the UTF-8 encoding, nothing trained and no specials; decoding replaces an
  incomplete UTF-8 sequence by U+FFFD.
The trainable ones (word, bpe, char) save to and load from one JSON file (``save`` / ``load_tokenizer``).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from newllm.utils.io import atomic_write_json

DEFAULT_WORD_VOCAB = 1000
DEFAULT_BPE_VOCAB = 8192
BYTE_VOCAB_SIZE = 256
UNKNOWN_CHAR = "\ufffd"  # what the char tokenizer's UNK decodes to
GPT2_VOCAB_SIZE = 50257
GPT2_ENV = "NEWLLM_GPT2_TOKENIZER"  # a local GPT-2 tokenizer folder, checked before ../shared
END_OF_TEXT = "<|endoftext|>"
_SAVE_FORMAT = 1


def check_token_ids(ids: Union[Sequence[int], np.ndarray], vocab_size: int, what: str = "tokens") -> None:
    """Raise a clear ValueError when an id is negative or >= ``vocab_size`` (a tokenizer/vocabulary mismatch)."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise ValueError(
            f"{what}: token id {bad} is outside a vocabulary of size {vocab_size} (valid ids 0 .. {vocab_size - 1}). "
            "The ids come from a different tokenizer than the one (or the model) they are used with: re-tokenize "
            "with the same tokenizer, or size the model with the corpus's vocab_size (corpus.info['vocab_size'])."
        )


class Tokenizer(ABC):
    """The common interface (see the module docstring)."""

    name: str = ""
    pad_id: Optional[int] = None
    unk_id: Optional[int] = None
    bos_id: Optional[int] = None
    eos_id: Optional[int] = None

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (every id is < vocab_size)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without any special tokens."""

    @abstractmethod
    def _decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def fingerprint(self) -> str:
        """A hex digest of the exact vocabulary (and merges): equal fingerprints encode identically."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Union[Sequence[int], np.ndarray]) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        check_token_ids(ids, self.vocab_size, f"decode with the {self.name!r} tokenizer")
        return self._decode(ids)

    @property
    def special_ids(self) -> dict[str, int]:
        named = {"pad": self.pad_id, "unk": self.unk_id, "bos": self.bos_id, "eos": self.eos_id}
        return {k: v for k, v in named.items() if v is not None}

    def wrap_document(self, ids: list[int]) -> list[int]:
        """[BOS] + ids + [EOS], each special only where the tokenizer has one."""
        head = [] if self.bos_id is None else [self.bos_id]
        tail = [] if self.eos_id is None else [self.eos_id]
        return head + ids + tail

    def encode_document(self, text: str) -> list[int]:
        return self.wrap_document(self.encode(text))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------- GPT-2

def _is_gpt2_folder(path: Path) -> bool:
    return path.is_dir() and (
        (path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file())
    )


def find_gpt2_tokenizer_dir() -> Optional[Path]:
    """A local GPT-2 tokenizer folder: $NEWLLM_GPT2_TOKENIZER, else ../shared/data/gpt2-tokenizer beside the repo.

    Returns None when neither exists (the kit never requires one). A set but invalid environment variable is an
    error, since the user asked for that folder explicitly.
    """
    configured = os.environ.get(GPT2_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not _is_gpt2_folder(path):
            raise ValueError(
                f"${GPT2_ENV}={configured!r} is not a folder with GPT-2 tokenizer files (vocab.json + merges.txt, "
                "or tokenizer.json); point it at such a folder or unset it"
            )
        return path
    beside_repo = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpt2-tokenizer"
    return beside_repo if _is_gpt2_folder(beside_repo) else None


def locate_gpt2_tokenizer(tokenizer_path: Optional[str], hub_reachable: Callable[[], bool]) -> Optional[str]:
    """Where to load GPT-2 from: ``tokenizer_path``, a local folder, or the hub name "gpt2"; None if nowhere."""
    if tokenizer_path is not None:
        if not _is_gpt2_folder(Path(tokenizer_path).expanduser()):
            raise ValueError(
                f"tokenizer_path={tokenizer_path!r} is not a folder with GPT-2 tokenizer files (vocab.json + "
                "merges.txt, or tokenizer.json)"
            )
        return str(Path(tokenizer_path).expanduser())
    local = find_gpt2_tokenizer_dir()
    if local is not None:
        return str(local)
    return "gpt2" if hub_reachable() else None


class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE through ``transformers`` (hub name "gpt2" or a local folder)."""

    name = "gpt2"

    def __init__(self, source: Union[str, Path] = "gpt2") -> None:
        from transformers import GPT2TokenizerFast

        self.source = str(source)
        try:
            # a huge model_max_length: documents are long, and we never feed the tokenizer's output to GPT-2 itself
            tok = GPT2TokenizerFast.from_pretrained(self.source, model_max_length=10**12)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"could not load a GPT-2 tokenizer from {self.source!r} ({exc}). Offline, pass tokenizer_path=<a "
                f"folder with vocab.json and merges.txt>, set ${GPT2_ENV}, or use tokenizer='bpe' or 'word'."
            ) from exc
        if len(tok) <= 1000:
            raise ValueError(
                f"the GPT-2 tokenizer loaded from {self.source!r} has only {len(tok)} tokens (expected "
                f"{GPT2_VOCAB_SIZE}): the folder lacks vocab.json/merges.txt or tokenizer.json (transformers then "
                "builds an empty tokenizer without an error)"
            )
        self._tok = tok
        self.eos_id = tok.eos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def encode(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return self._tok(list(texts), add_special_tokens=False)["input_ids"]

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def fingerprint(self) -> str:
        return _sha256(self._tok.backend_tokenizer.to_str())


# -------------------------------------------------------------------------------------------- word level

class WordTokenizer(Tokenizer):
    """Lower-cased whitespace split over a fixed word list; PAD 0, UNK 1, BOS 2, EOS 3, then the words."""

    name = "word"
    SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        problems = [w for w in words if not w or w != w.lower() or len(w.split()) != 1 or w in self.SPECIALS]
        if problems:
            raise ValueError(f"word vocabulary entries must be single lower-case non-special words; bad: {problems[:5]}")
        if len(set(words)) != len(words):
            raise ValueError("word vocabulary has duplicate entries")
        self._tokens = list(self.SPECIALS) + words
        self._index = {token: i for i, token in enumerate(self._tokens)}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_WORD_VOCAB) -> "WordTokenizer":
        """The (vocab_size - 4) most frequent lower-cased words of ``texts``; ties broken alphabetically."""
        if vocab_size < len(cls.SPECIALS) + 1:
            raise ValueError(
                f"word vocab_size={vocab_size} leaves no room for words after the {len(cls.SPECIALS)} special tokens "
                f"(PAD, UNK, BOS, EOS); use vocab_size >= {len(cls.SPECIALS) + 1} (default {DEFAULT_WORD_VOCAB})"
            )
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text.lower().split())
        for special in cls.SPECIALS:
            counts.pop(special, None)
        if not counts:
            raise ValueError("cannot build a word vocabulary: the training texts contain no words")
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls([word for word, _ in ranked[: vocab_size - len(cls.SPECIALS)]])

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def words(self) -> list[str]:
        return self._tokens[len(self.SPECIALS):]

    def encode(self, text: str) -> list[int]:
        index, unk = self._index, self.unk_id
        return [index.get(word, unk) for word in text.lower().split()]

    def _decode(self, ids: list[int]) -> str:
        return " ".join(self._tokens[i] for i in ids)

    def fingerprint(self) -> str:
        return _sha256("\n".join(self._tokens))

    def save(self, path: Union[str, Path]) -> None:
        atomic_write_json(Path(path), {"type": "word", "format": _SAVE_FORMAT, "words": self.words})


# ------------------------------------------------------------------------------------------ trained BPE

class BPETokenizer(Tokenizer):
    """A byte-level BPE (``tokenizers`` library) with <|endoftext|> as id 0, ending every document."""

    name = "bpe"

    def __init__(self, backend) -> None:  # backend: tokenizers.Tokenizer
        eos = backend.token_to_id(END_OF_TEXT)
        if eos is None:
            raise ValueError(f"a BPE tokenizer for newllm needs the special token {END_OF_TEXT!r}")
        self._backend = backend
        self.eos_id = eos

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = DEFAULT_BPE_VOCAB) -> "BPETokenizer":
        """Train on ``texts`` (the training documents only). May stop below ``vocab_size`` on a small corpus."""
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders, models, pre_tokenizers, trainers

        minimum = 256 + 1  # every byte plus <|endoftext|>
        if vocab_size < minimum:
            raise ValueError(
                f"bpe vocab_size={vocab_size} is below {minimum} (256 byte symbols + {END_OF_TEXT}); use >= {minimum} "
                f"(default {DEFAULT_BPE_VOCAB})"
            )
        if not any(text.strip() for text in texts):
            raise ValueError("cannot train a BPE tokenizer: the training texts are empty")
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(list(texts))]

    def _decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=False)

    def fingerprint(self) -> str:
        return _sha256(self._backend.to_str())

    def save(self, path: Union[str, Path]) -> None:
        atomic_write_json(
            Path(path), {"type": "bpe", "format": _SAVE_FORMAT, "tokenizer": json.loads(self._backend.to_str())}
        )


# ---------------------------------------------------------------------------------------- char and byte

class CharTokenizer(Tokenizer):
    """One id per character: UNK 0, then the vocabulary's characters (see the module docstring)."""

    name = "char"
    unk_id = 0

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"char vocabulary entries must be single characters; bad: {bad[:5]}")
        if len(set(chars)) != len(chars):
            raise ValueError("char vocabulary has duplicate entries")
        self._chars = chars
        self._index = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: Optional[int] = None) -> "CharTokenizer":
        """Every character of ``texts`` (or the vocab_size - 1 most frequent), in code-point order, after UNK."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        if not counts:
            raise ValueError("cannot build a character vocabulary: the training texts are empty")
        if vocab_size is not None:
            if vocab_size < 2:
                raise ValueError(f"char vocab_size={vocab_size} leaves no room for a character after UNK; use >= 2 "
                                 "or None (every character of the training text)")
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            counts = Counter(dict(ranked[: vocab_size - 1]))
        return cls(sorted(counts))

    @property
    def vocab_size(self) -> int:
        return len(self._chars) + 1

    @property
    def chars(self) -> list[str]:
        return list(self._chars)

    def encode(self, text: str) -> list[int]:
        index = self._index
        return [index.get(c, 0) for c in text]

    def _decode(self, ids: list[int]) -> str:
        chars = self._chars
        return "".join(chars[i - 1] if i else UNKNOWN_CHAR for i in ids)

    def fingerprint(self) -> str:
        return _sha256("char\0" + "".join(self._chars))

    def save(self, path: Union[str, Path]) -> None:
        atomic_write_json(Path(path), {"type": "char", "format": _SAVE_FORMAT, "chars": self._chars})


class ByteTokenizer(Tokenizer):
    """The UTF-8 bytes of the text as ids 0..255; every text round-trips exactly."""

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def _decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return _sha256("byte-utf8")

    def save(self, path: Union[str, Path]) -> None:
        atomic_write_json(Path(path), {"type": "byte", "format": _SAVE_FORMAT})


class IdsOnlyTokenizer(Tokenizer):
    """A vocabulary without its tokenizer (pre-tokenized ids whose tokenizer is not available here).

    It sizes models and labels metrics; ``encode`` is an error and ``decode`` writes ids as ``<id>``.
    """

    def __init__(self, name: str, vocab_size: int) -> None:
        self.name = name
        self._vocab_size = int(vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        raise ValueError(f"the {self.name!r} ids were pre-tokenized and their tokenizer is not available: add a "
                         "tokenizer_file to the folder's meta.json (a tokenizer saved with .save()) to encode text")

    def _decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)

    def fingerprint(self) -> str:
        return _sha256(f"ids-only\0{self.name}\0{self._vocab_size}")


SAVED_TYPES = ("word", "bpe", "char", "byte")


def load_tokenizer(path: Union[str, Path]) -> Tokenizer:
    """Load a tokenizer saved by the ``save`` method of a word, bpe, char or byte tokenizer."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no tokenizer file at {str(path)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a saved newllm tokenizer (bad JSON: {exc}); re-save it") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in SAVED_TYPES or data.get("format") != _SAVE_FORMAT:
        raise ValueError(f"{str(path)!r} is not a saved newllm tokenizer (type {kind!r}); re-save it with .save()")
    if kind == "word":
        return WordTokenizer(data["words"])
    if kind == "char":
        return CharTokenizer(data["chars"])
    if kind == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer as Backend

    return BPETokenizer(Backend.from_str(json.dumps(data["tokenizer"])))

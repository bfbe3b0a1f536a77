"""Corpora as token streams: ``load_corpus(cfg) -> Corpus``, the one entry point of the data layer.

Steps (each in its own module): resolve the dataset (``sources``: "auto" falls back to the built-in corpus when
the hub is unreachable), pick the tokenizer (``tokenizers``: "auto" = GPT-2 for text, with a loud fallback to a
trained BPE when no GPT-2 files are available, and the word tokenizer over the grammar's vocabulary for the
built-in corpus), load the training and validation documents (``sources``), then tokenize once and cache
(``token_cache``): later calls memory-map the stored arrays. A folder of nanoGPT-style ``.bin`` files
(``pretokenized``) skips all of that: its ids are memory-mapped as they are.

A ``CorpusSplit`` is one split: all its documents' ids concatenated (each wrapped in the tokenizer's BOS/EOS, see
``Tokenizer.wrap_document``), ``doc_offsets`` marking where each document starts, the UTF-8 byte count of the
documents' text (for bits per byte) and, for the built-in corpus under the word tokenizer, the exact
log-probability of every token given everything before it. Its ``optimum_nll`` is then the best cross-entropy any
model can reach on the split: the mean of -log p over the predicted tokens (all but the first, which is BOS,
probability 1). ``info["optimum_val_ppl"]`` is its exponential, to print next to a model's perplexity.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from newllm.config.data import DataConfig
from newllm.data import pretokenized, sources
from newllm.data.builtin_corpus import BuiltinGrammar, generator_fingerprint
from newllm.data.token_cache import (
    CacheEntry,
    CacheKey,
    cache_root,
    content_hash,
    ids_dtype,
    load_entry,
    save_entry,
)
from newllm.data.tokenizers import (
    DEFAULT_BPE_VOCAB,
    DEFAULT_WORD_VOCAB,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    WordTokenizer,
    check_token_ids,
    load_tokenizer,
    locate_gpt2_tokenizer,
)

logger = logging.getLogger(__name__)

_ENCODE_CHUNK = 256  # documents per tokenizer call (batching, and the progress bar's step)


@dataclass(frozen=True)
class CorpusSplit:
    """One split as a single stream of token ids with document boundaries."""

    ids: np.ndarray  # 1-D integer ids (uint16 or int32; a read-only memory map when loaded from the cache)
    doc_offsets: np.ndarray  # int64, n_docs + 1 entries: document i is ids[doc_offsets[i]:doc_offsets[i + 1]]
    n_bytes: int  # UTF-8 bytes of the documents' text
    logprobs: Optional[np.ndarray] = None  # exact log p(token | all before it), when known (built-in + word)

    def __post_init__(self) -> None:
        if self.ids.ndim != 1 or self.doc_offsets.ndim != 1 or len(self.doc_offsets) < 1:
            raise ValueError("CorpusSplit needs 1-D ids and 1-D doc_offsets with at least one entry")
        if int(self.doc_offsets[0]) != 0 or int(self.doc_offsets[-1]) != len(self.ids):
            raise ValueError(f"doc_offsets must run from 0 to len(ids)={len(self.ids)}")
        if self.logprobs is not None and self.logprobs.shape != self.ids.shape:
            raise ValueError("logprobs must have one entry per token")

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def n_docs(self) -> int:
        return len(self.doc_offsets) - 1

    def documents(self) -> list[np.ndarray]:
        """Per-document id arrays (views, specials included)."""
        bounds = self.doc_offsets.tolist()
        return [self.ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def optimum_nll(self) -> Optional[float]:
        """Best achievable mean cross-entropy (nats) over the predicted tokens ids[1:]; None when unknown."""
        if self.logprobs is None or self.n_tokens < 2:
            return None
        return -float(np.sum(self.logprobs[1:], dtype=np.float64)) / (self.n_tokens - 1)


@dataclass(frozen=True)
class Corpus:
    """Training and validation streams, the tokenizer that made them, and a summary (``info``)."""

    train: CorpusSplit
    val: CorpusSplit
    tokenizer: Tokenizer
    info: dict[str, Any]
    test: Optional[CorpusSplit] = None  # pre-tokenized folders with a test.bin only

    def check_fits(self, vocab_size: int) -> None:
        """Raise a clear ValueError if a model with ``vocab_size`` outputs cannot represent every id."""
        check_token_ids(self.train.ids, vocab_size, f"training ids ({self.info['tokenizer']} tokenizer)")
        check_token_ids(self.val.ids, vocab_size, f"validation ids ({self.info['tokenizer']} tokenizer)")


def load_corpus(
    cfg: DataConfig, progress: bool = True, hub_probe: Optional[Callable[[], bool]] = None
) -> Corpus:
    """Load (or build and cache) the token streams ``cfg`` describes.

    ``hub_probe``: a zero-argument function telling whether huggingface.co is reachable (default: a short TCP
    probe); the HF_HUB_OFFLINE / HF_DATASETS_OFFLINE variables are honoured before it is ever called.
    """
    reachable = functools.cache(lambda: sources.hub_reachable(hub_probe or sources.probe_huggingface))
    resolved = sources.resolve_dataset(cfg.dataset, cfg.hub_dataset, reachable)
    if resolved.path is not None and pretokenized.is_pretokenized(resolved.path):
        return _load_pretokenized(cfg, resolved)
    is_builtin = resolved.name == "builtin"
    documents: Optional[sources.SourceDocuments] = None
    load = functools.partial(sources.load_documents, resolved, cfg.samples, cfg.val_samples, cfg.seed, reachable,
                             progress, split=cfg.split, separator=cfg.separator, val_fraction=cfg.val_fraction)
    samples = cfg.samples if cfg.samples is not None else sources.DEFAULT_SAMPLES
    val_samples = cfg.val_samples if cfg.val_samples is not None else sources.DEFAULT_VAL_SAMPLES
    if is_builtin:  # generated deterministically: what determines the text is its identity (no need to generate)
        if cfg.split not in ("auto", "blocks"):
            raise ValueError(f"split={cfg.split!r} applies to local text only; leave split='auto' for 'builtin'")
        identity = content_hash(["builtin", generator_fingerprint(), str(cfg.seed), str(samples), str(val_samples)])
    else:
        documents = load()
        split_mode = documents.split
        samples = None if split_mode in ("fraction", "files") else len(documents.train)
        val_samples = None if split_mode in ("fraction", "files") else len(documents.val)
        identity = content_hash(
            ["train", str(len(documents.train)), *documents.train, "val", str(len(documents.val)), *documents.val])

    tokenizer_name, gpt2_source, tokenizer_fallback = _choose_tokenizer(cfg, is_builtin, reachable)
    tokenizer: Optional[Tokenizer] = None  # fixed tokenizers now; trained ones come from the cache or training
    if tokenizer_name == "gpt2":
        tokenizer = GPT2Tokenizer(gpt2_source)
    elif tokenizer_name == "byte":
        tokenizer = ByteTokenizer()
    elif tokenizer_name == "word" and is_builtin:
        tokenizer = _builtin_word_tokenizer(cfg.vocab_size)
    key = CacheKey(resolved.name, _tokenizer_tag(tokenizer_name, cfg.vocab_size, is_builtin), identity)
    folder = key.folder(cache_root(cfg.cache_dir))

    entry = load_entry(folder, key, tokenizer.fingerprint() if tokenizer is not None else None)
    if entry is not None and tokenizer is None:
        tokenizer = _cached_tokenizer(entry)
        if tokenizer is None:
            entry = None
    cache_hit = entry is not None
    if entry is None:
        if documents is None:
            documents = load()
        trained = tokenizer is None
        if tokenizer is None:
            tokenizer = _train_tokenizer(tokenizer_name, documents.train, cfg.vocab_size)
        arrays, extra = _tokenize(documents, tokenizer, with_logprobs=is_builtin and tokenizer_name == "word",
                                  progress=progress)
        save_entry(folder, key, arrays, extra, tokenizer.fingerprint(), tokenizer if trained else None)
        entry = load_entry(folder, key, tokenizer.fingerprint())
        if entry is None:
            raise RuntimeError(f"the token cache entry just written to {folder} cannot be read back")
    assert tokenizer is not None

    extra = entry.meta
    train = _split(entry.arrays, "train", extra["train_bytes"])
    val = _split(entry.arrays, "val", extra["val_bytes"])
    check_token_ids(train.ids, tokenizer.vocab_size, f"cached training ids in {folder}")
    check_token_ids(val.ids, tokenizer.vocab_size, f"cached validation ids in {folder}")
    info = _info(
        cfg, resolved, tokenizer, train, val,
        tokenizer_fallback=tokenizer_fallback,
        samples=samples,  # training documents (None: one contiguous text per split, nothing counted)
        val_samples=val_samples,
        split="builtin" if is_builtin else documents.split if documents is not None else None,
        unused_files=list(documents.unused) if documents is not None else [],
        optimum_train_ppl=_exp_or_none(train.optimum_nll()),
        optimum_val_ppl=_exp_or_none(val.optimum_nll()),
        optimum_train_bits_per_byte=_bits_per_byte(extra.get("train_optimum_nats"), train.n_bytes),
        optimum_val_bits_per_byte=_bits_per_byte(extra.get("val_optimum_nats"), val.n_bytes),
        cache_path=str(folder),
        cache_hit=cache_hit,
    )
    logger.info("corpus %s / %s (V=%d): %d train, %d val tokens%s", info["dataset"], info["tokenizer"],
                info["vocab_size"], info["train_tokens"], info["val_tokens"], " (cached)" if cache_hit else "")
    return Corpus(train, val, tokenizer, info)


def _info(cfg: DataConfig, resolved: sources.ResolvedDataset, tokenizer: Tokenizer, train: CorpusSplit,
          val: CorpusSplit, **rest: Any) -> dict[str, Any]:
    """The corpus summary every source reports (``rest``: what a source adds or overrides)."""
    return {
        "requested_dataset": cfg.dataset, "dataset": resolved.name, "offline_fallback": resolved.offline_fallback,
        "tokenizer": tokenizer.name, "tokenizer_fallback": False, "vocab_size": tokenizer.vocab_size,
        "samples": None, "val_samples": None, "seed": cfg.seed,
        "train_tokens": train.n_tokens, "val_tokens": val.n_tokens, "train_bytes": train.n_bytes,
        "val_bytes": val.n_bytes, "optimum_train_ppl": None, "optimum_val_ppl": None,
        "optimum_train_bits_per_byte": None, "optimum_val_bits_per_byte": None, **rest,
    }


def _load_pretokenized(cfg: DataConfig, resolved: sources.ResolvedDataset) -> Corpus:
    """A folder of nanoGPT-style ``.bin`` files (``newllm.data.pretokenized``): memory-mapped, one stream per split."""
    assert resolved.path is not None
    for name in ("samples", "val_samples"):
        if getattr(cfg, name) is not None:
            raise ValueError(f"DataConfig.{name}={getattr(cfg, name)!r}: {str(resolved.path)!r} holds pre-tokenized "
                             "streams (train.bin / val.bin), not documents; leave samples and val_samples None")
    if cfg.split != "auto":
        raise ValueError(f"split={cfg.split!r}: pre-tokenized ids are already split (train.bin / val.bin); "
                         "leave split='auto'")
    data = pretokenized.read_pretokenized(resolved.path)
    if cfg.tokenizer not in ("auto", data.tokenizer.name):
        raise ValueError(f"tokenizer={cfg.tokenizer!r}, but {str(resolved.path)!r} was tokenized with "
                         f"{data.tokenizer.name!r} (meta.json); use tokenizer='auto' or {data.tokenizer.name!r}")
    splits = {name: CorpusSplit(split.ids, np.array([0, len(split.ids)], dtype=np.int64), split.n_bytes)
              for name, split in data.splits.items()}
    test = splits.get("test")
    info = _info(cfg, resolved, data.tokenizer, splits["train"], splits["val"], split="pretokenized",
                 unused_files=[], cache_path=str(resolved.path), cache_hit=False, dtype=data.meta["dtype"],
                 test_tokens=test.n_tokens if test is not None else None,
                 test_bytes=test.n_bytes if test is not None else None)
    logger.info("corpus %s (pre-tokenized, %s V=%d): %d train, %d val tokens", info["dataset"], info["tokenizer"],
                info["vocab_size"], info["train_tokens"], info["val_tokens"])
    return Corpus(splits["train"], splits["val"], data.tokenizer, info, test)


# ------------------------------------------------------------------------------------------- helpers

def _choose_tokenizer(cfg: DataConfig, is_builtin: bool, reachable: Callable[[], bool]) -> tuple[str, Optional[str], bool]:
    """(tokenizer name, where GPT-2 loads from, whether "auto" fell back from GPT-2 to a trained BPE)."""
    if cfg.tokenizer == "auto" and is_builtin:
        return "word", None, False
    if cfg.tokenizer not in ("auto", "gpt2"):
        return cfg.tokenizer, None, False
    source = locate_gpt2_tokenizer(cfg.tokenizer_path, reachable)
    if source is not None:
        return "gpt2", source, False
    if cfg.tokenizer == "gpt2":
        raise ValueError(
            "tokenizer='gpt2' but no GPT-2 tokenizer files were found (tokenizer_path, $NEWLLM_GPT2_TOKENIZER, "
            "../shared/data/gpt2-tokenizer beside the repo) and the hub is unreachable; pass tokenizer_path=<folder "
            "with vocab.json + merges.txt>, or use tokenizer='bpe'"
        )
    vocab = cfg.vocab_size or DEFAULT_BPE_VOCAB
    message = (
        "tokenizer='auto': no GPT-2 tokenizer is available (no local files, hub unreachable), so a byte-level BPE "
        f"with vocab_size={vocab} is TRAINED on the training documents instead; perplexities are not comparable "
        "with GPT-2 ones (compare bits per byte)"
    )
    warnings.warn(message, UserWarning, stacklevel=3)
    logger.warning(message)
    return "bpe", None, True


def _cached_tokenizer(entry: CacheEntry) -> Optional[Tokenizer]:
    """The trained tokenizer stored with a cache entry, or None (entry stale) if unreadable or not the one used."""
    try:
        tokenizer = load_tokenizer(entry.tokenizer_path) if entry.tokenizer_path is not None else None
    except (ValueError, KeyError) as exc:
        logger.info("token cache: stored tokenizer unreadable (%s); rebuilding", exc)
        return None
    if tokenizer is None or tokenizer.fingerprint() != entry.tokenizer_fingerprint:
        logger.info("token cache: stored tokenizer missing or not the one the ids were made with; rebuilding")
        return None
    return tokenizer


def _builtin_word_tokenizer(vocab_size: Optional[int]) -> WordTokenizer:
    tokenizer = WordTokenizer(BuiltinGrammar().vocabulary())
    if vocab_size is not None and vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"DataConfig.vocab_size={vocab_size} is too small for the built-in corpus under the word tokenizer: its "
            f"grammar has {tokenizer.vocab_size - 4} words, all kept (+4 specials = {tokenizer.vocab_size}) so that "
            "the optimum perplexity stays exact; leave vocab_size=None"
        )
    return tokenizer


def _tokenizer_tag(name: str, vocab_size: Optional[int], is_builtin: bool) -> str:
    if name == "word":
        return "word-grammar" if is_builtin else f"word{vocab_size or DEFAULT_WORD_VOCAB}"
    if name == "bpe":
        return f"bpe{vocab_size or DEFAULT_BPE_VOCAB}"
    if name == "char":
        return f"char{vocab_size or 'all'}"
    return name


def _train_tokenizer(name: str, texts: list[str], vocab_size: Optional[int]) -> Tokenizer:
    if name == "word":
        return WordTokenizer.train(texts, vocab_size or DEFAULT_WORD_VOCAB)
    if name == "bpe":
        return BPETokenizer.train(texts, vocab_size or DEFAULT_BPE_VOCAB)
    if name == "char":
        return CharTokenizer.train(texts, vocab_size)
    raise ValueError(f"tokenizer {name!r} is not trainable")


def _encode_split(texts: list[str], tokenizer: Tokenizer, what: str, progress: bool) -> list[list[int]]:
    encoded: list[list[int]] = []
    chunks = range(0, len(texts), _ENCODE_CHUNK)
    with tqdm(total=len(texts), desc=f"tokenize {what}", unit="doc", disable=not progress) as bar:
        for start in chunks:
            batch = texts[start:start + _ENCODE_CHUNK]
            encoded += [tokenizer.wrap_document(ids) for ids in tokenizer.encode_batch(batch)]
            bar.update(len(batch))
    return encoded


def _tokenize(
    documents: sources.SourceDocuments, tokenizer: Tokenizer, with_logprobs: bool, progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and summary numbers for both splits, checked before anything is written."""
    arrays: dict[str, np.ndarray] = {}
    extra: dict[str, Any] = {"available_train": documents.available_train}
    for split, texts, logprobs in (("train", documents.train, documents.train_logprobs),
                                   ("val", documents.val, documents.val_logprobs)):
        encoded = _encode_split(texts, tokenizer, split, progress)
        lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
        total = int(lengths.sum())
        if total < 2:
            raise ValueError(
                f"the {split} stream has only {total} token(s); at least 2 are needed to predict anything. Use more "
                "samples / val_samples or a source with more text"
            )
        ids = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=total)
        check_token_ids(ids, tokenizer.vocab_size, f"{split} ids from the {tokenizer.name!r} tokenizer")
        arrays[f"{split}_ids"] = ids.astype(ids_dtype(tokenizer.vocab_size))
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        extra[f"{split}_bytes"] = sum(len(text.encode("utf-8")) for text in texts)
        if logprobs is not None:
            extra[f"{split}_optimum_nats"] = -math.fsum(float(lp.sum()) for lp in logprobs)
        if with_logprobs:
            arrays[f"{split}_logprobs"] = _token_logprobs(encoded, logprobs, tokenizer)
    return arrays, extra


def _token_logprobs(encoded: list[list[int]], logprobs: Optional[list[np.ndarray]], tokenizer: Tokenizer) -> np.ndarray:
    """Per token: 0 for BOS (it always follows EOS), then each word's log p, then the end's log p on EOS."""
    assert logprobs is not None
    for ids, lp in zip(encoded, logprobs):
        # one word = one token: BOS + words + EOS, and the grammar's words are all in the vocabulary
        if len(ids) != len(lp) + 1 or tokenizer.unk_id in ids[1:-1]:
            raise RuntimeError("built-in document does not map one word to one token; the word vocabulary is wrong")
    return np.concatenate([np.concatenate([[0.0], lp]) for lp in logprobs]).astype(np.float64)


def _split(arrays: dict[str, np.ndarray], split: str, n_bytes: int) -> CorpusSplit:
    return CorpusSplit(arrays[f"{split}_ids"], arrays[f"{split}_offsets"], int(n_bytes), arrays.get(f"{split}_logprobs"))


def _exp_or_none(nll: Optional[float]) -> Optional[float]:
    return None if nll is None else math.exp(nll)


def _bits_per_byte(nats: Optional[float], n_bytes: int) -> Optional[float]:
    """The documents' exact information (nats, known for the built-in corpus) per byte of text, in bits."""
    return None if nats is None or n_bytes == 0 else nats / math.log(2) / n_bytes

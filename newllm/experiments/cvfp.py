"""One CVFP run (data, model, Phase 1, Phase 2, summary row) and a parameter-matched baseline on the same data.

Data flows one way: DataConfig -> corpus (token ids) -> model -> Phase 1 -> Phase 2 -> metrics -> run folder.
Each function takes plain configs and returns plain objects (dataclasses, DataFrames); writing to ``results/`` is
done through a :class:`~newllm.utils.runs.RunFolder` when one is given.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from newllm.config.data import DataConfig
from newllm.config.models import ModelConfig
from newllm.config.training import Phase1Config, Phase2Config
from newllm.data.corpus import Corpus, load_corpus
from newllm.models.common import parameter_count
from newllm.models.cvfp import CVFPModel, build_cvfp_model
from newllm.models.embeddings import EmbeddingChoice
from newllm.training.phase1 import Phase1Result, train_phase1
from newllm.training.phase2 import Phase2Result, train_phase2
from newllm.utils.checkpoint import CheckpointError
from newllm.utils.runs import RunFolder
from newllm.utils.runtime import resolve_device, seed_everything


@dataclass(frozen=True)
class CVFPSettings:
    """Everything one CVFP run needs. ``model.vocab_size`` is taken from the corpus's tokenizer at run time."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    phase1: Phase1Config = field(default_factory=Phase1Config)
    phase2: Phase2Config = field(default_factory=Phase2Config)
    device: str = "auto"
    seed: int = 42
    deterministic: bool = False  # bit-for-bit repeatable CUDA runs (slower): see utils.runtime.seed_everything

    def with_seed(self, seed: int) -> "CVFPSettings":
        """The same settings with every seed set to ``seed`` (data split and validation set stay fixed)."""
        return dataclasses.replace(
            self,
            seed=seed,
            phase1=dataclasses.replace(self.phase1, seed=seed),
            phase2=dataclasses.replace(self.phase2, seed=seed),
        )

    def to_dict(self) -> dict:
        return {
            "data": self.data.to_dict(),
            "model": self.model.to_dict(),
            "phase1": self.phase1.to_dict(),
            "phase2": self.phase2.to_dict(),
            "device": self.device,
            "seed": self.seed,
            "deterministic": self.deterministic,
        }


@dataclass
class CVFPRun:
    """One finished CVFP run: the summary row plus the full Phase 1 / Phase 2 results."""

    row: dict
    phase1: Phase1Result
    phase2: Phase2Result
    model: CVFPModel
    corpus_info: dict
    embedding: EmbeddingChoice


def model_for_corpus(cfg: ModelConfig, corpus: Corpus) -> ModelConfig:
    """The model config with the tokenizer's vocabulary size (and random embeddings when GPT-2's cannot apply)."""
    vocab = corpus.tokenizer.vocab_size
    model_cfg = dataclasses.replace(cfg, vocab_size=vocab) if cfg.vocab_size != vocab else cfg
    corpus.check_fits(model_cfg.vocab_size)
    return model_cfg


def summarise(
    samples: int, seed: int, corpus: Corpus, p1: Phase1Result, p2: Phase2Result, params: int, embedding: EmbeddingChoice
) -> dict:
    """The results-table row of one run; every perplexity names its tokenizer and vocabulary size."""
    last = p1.history.iloc[-1]
    info = corpus.info
    val = p2.val
    return {
        "samples": samples,
        "seed": seed,
        "dataset": info.get("dataset"),
        "tokenizer": val.tokenizer,
        "vocab_size": val.vocab_size,
        "train_tokens": corpus.train.n_tokens,
        "val_tokens": corpus.val.n_tokens,
        "parameters": params,
        "embedding": embedding.kind,
        "phase1_iterations": p1.iterations,
        "phase1_converged": p1.converged,  # False: stopped at the iteration cap (warned when it happened)
        "phase1_converged_ratio": float(last.get("converged_ratio", float("nan"))),
        "train_er_pct": p1.train_metrics.er_pct,
        "val_er_pct": p1.val_metrics.er_pct if p1.val_metrics is not None else float("nan"),
        "phase1_seconds": p1.seconds,
        "best_epoch": p2.best_epoch,
        "phase2_stop": p2.stop_reason,
        "phase2_seconds": float(p2.history["train_seconds"].sum() + p2.history.get("eval_seconds", 0).sum()),
        "val_loss": val.loss,
        "val_ppl": val.perplexity,
        "val_accuracy": val.accuracy,
        "val_bits_per_byte": val.bits_per_byte,
        "optimum_val_ppl": info.get("optimum_val_ppl"),
    }


def run_cvfp(
    settings: CVFPSettings,
    run: Optional[RunFolder] = None,
    progress: bool = True,
    corpus: Optional[Corpus] = None,
    phase2_callback: Optional[Callable[[dict], None]] = None,
    epoch_callback: Optional[Callable[[dict], None]] = None,
    checkpoint: Optional[Path] = None,
    resume: bool = False,
) -> CVFPRun:
    """Load the data, build the model, run Phase 1 then Phase 2, and summarise (writing to ``run`` when given).

    Phase 2 checkpoints to ``checkpoint`` (default ``<run>/phase2.safetensors`` with a run). ``resume``: continue
    Phase 2 from that checkpoint when it exists (Phase 1 is recomputed; it is deterministic for a seed on one
    machine). When the recomputed Phase 1 differs from the one the checkpoint was trained on, Phase 2 starts again
    and says so."""
    device = resolve_device(settings.device)
    corpus = corpus if corpus is not None else load_corpus(settings.data, progress=progress)
    # seeded after loading: building a token cache the first time draws random numbers a cache hit does not
    seed_everything(settings.seed, deterministic=settings.deterministic)
    model_cfg = model_for_corpus(settings.model, corpus)
    model, embedding = build_cvfp_model(model_cfg)
    model.to(device)
    train_docs = corpus.train.documents()
    val_docs = corpus.val.documents()
    streams = settings.phase1.streams
    scalars = run.scalars() if run is not None else None
    p1 = train_phase1(model, train_docs, settings.phase1, val_ids=val_docs, progress=progress,
                      callback=(lambda row: scalars.log("phase1", row, row["iteration"])) if scalars else None)
    if checkpoint is None and run is not None:
        checkpoint = run.file("phase2.safetensors")
    resume = resume and checkpoint is not None and Path(checkpoint).exists()

    def after_epoch(row: dict) -> None:
        if run is not None:
            scalars.log("phase2", row, row["epoch"])
            run.sync()  # the epoch's checkpoint reaches the mirror (e.g. Google Drive)
        if epoch_callback is not None:
            epoch_callback(row)

    def phase2(resume_now: bool):
        return train_phase2(
            model, train_docs, val_docs, settings.phase2, tokenizer_name=corpus.tokenizer.name,
            train_bytes=corpus.train.n_bytes, val_bytes=corpus.val.n_bytes, checkpoint_path=checkpoint,
            resume=resume_now, progress=progress, streams=streams, callback=phase2_callback, epoch_callback=after_epoch,
        )

    try:
        p2 = phase2(resume)
    except CheckpointError as error:
        if not (resume and "frozen weights" in str(error)):
            raise
        warnings.warn(f"Phase 2 starts again: {error}", RuntimeWarning, stacklevel=2)
        p2 = phase2(False)
    row = summarise(corpus.info.get("samples"), settings.seed, corpus, p1, p2, parameter_count(model), embedding)
    if run is not None:
        run.write_config(settings=settings.to_dict(), resolved={**corpus.info, "embedding": embedding.kind,
                                                                 "embedding_reason": embedding.reason,
                                                                 "device": str(device)})
        run.write_table("phase1_history", p1.history)
        run.write_table("phase2_history", p2.history)
        run.write_json("summary", row)
        scalars.close()
        run.sync()
    return CVFPRun(row, p1, p2, model, dict(corpus.info), embedding)


def run_baseline(kind: str, settings: CVFPSettings, corpus: Corpus, progress: bool = True) -> dict:
    """Train a parameter-matched LSTM or Transformer on the same data and token budget as the CVFP model."""
    from newllm.models.baselines import build_matched_baseline
    from newllm.training.lm_baseline import train_lm_baseline

    seed_everything(settings.seed)
    model_cfg = model_for_corpus(settings.model, corpus)
    model, info = build_matched_baseline(kind, model_cfg, model_cfg.vocab_size)
    train_ids = torch.as_tensor(corpus.train.ids.astype("int64"))
    val_ids = torch.as_tensor(corpus.val.ids.astype("int64"))
    # the CVFP model sees every training token once per Phase-2 epoch: give the baseline the same budget
    budget = int(corpus.train.n_tokens * settings.phase2.epochs)
    began = time.perf_counter()
    history, val = train_lm_baseline(
        model, train_ids, val_ids, budget, tokenizer=corpus.tokenizer.name, n_bytes=corpus.val.n_bytes,
        device=settings.device, seed=settings.seed, progress=progress,
    )
    return {
        "model": kind,
        "samples": corpus.info.get("samples"),
        "seed": settings.seed,
        "dataset": corpus.info.get("dataset"),
        "tokenizer": val.tokenizer,
        "vocab_size": val.vocab_size,
        "train_tokens": corpus.train.n_tokens,
        "val_tokens": corpus.val.n_tokens,
        "parameters": info.total_params,
        "val_loss": val.loss,
        "val_ppl": val.perplexity,
        "val_accuracy": val.accuracy,
        "val_bits_per_byte": val.bits_per_byte,
        "optimum_val_ppl": corpus.info.get("optimum_val_ppl"),
        "total_seconds": time.perf_counter() - began,
    }

"""The pipelines the notebooks and the command line call: one CVFP run, a scaling sweep, the dist_reg_weight objective.

Data flows one way: DataConfig -> corpus (token ids) -> model -> Phase 1 -> Phase 2 -> metrics -> run folder.
Each function takes plain configs and returns plain objects (dataclasses, DataFrames); writing to ``results/`` is
done through a :class:`~newllm.utils.runs.RunFolder` when one is given.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import pandas as pd
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
) -> CVFPRun:
    """Load the data, build the model, run Phase 1 then Phase 2, and summarise (writing to ``run`` when given)."""
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    corpus = corpus if corpus is not None else load_corpus(settings.data, progress=progress)
    model_cfg = model_for_corpus(settings.model, corpus)
    model, embedding = build_cvfp_model(model_cfg)
    model.to(device)
    train_docs = corpus.train.documents()
    val_docs = corpus.val.documents()
    streams = settings.phase1.streams
    p1 = train_phase1(model, train_docs, settings.phase1, val_ids=val_docs, progress=progress)
    checkpoint = run.file("phase2.safetensors") if run is not None else None
    p2 = train_phase2(
        model,
        train_docs,
        val_docs,
        settings.phase2,
        tokenizer_name=corpus.tokenizer.name,
        train_bytes=corpus.train.n_bytes,
        val_bytes=corpus.val.n_bytes,
        checkpoint_path=checkpoint,
        progress=progress,
        streams=streams,
        callback=phase2_callback,
        epoch_callback=epoch_callback,
    )
    row = summarise(settings.data.samples, settings.seed, corpus, p1, p2, parameter_count(model), embedding)
    if run is not None:
        run.write_config(settings=settings.to_dict(), resolved={**corpus.info, "embedding": embedding.kind,
                                                                 "embedding_reason": embedding.reason,
                                                                 "device": str(device)})
        run.write_table("phase1_history", p1.history)
        run.write_table("phase2_history", p2.history)
        run.write_json("summary", row)
    return CVFPRun(row, p1, p2, model, dict(corpus.info), embedding)


# --------------------------------------------------------------------------------------------- scaling

SCALING_TABLE = "scaling"


def run_scaling(
    samples: Sequence[int],
    settings: CVFPSettings,
    run: RunFolder,
    seeds: Sequence[int] = (42,),
    baselines: Sequence[str] = (),
    progress: bool = True,
    on_row: Optional[Callable[[dict], None]] = None,
) -> pd.DataFrame:
    """Phase 1 + Phase 2 for every (samples, seed) on the same fixed validation set.

    Each finished size is appended to ``<run>/scaling.csv`` at once; rows already there are skipped, so an
    interrupted sweep resumes at the next size (call again with the same ``run``, e.g. ``RunFolder.create(...,
    resume=True)``). ``baselines`` ("lstm", "transformer") are trained on the same data and token budget with a
    parameter count matched to the CVFP model; their rows have ``model`` set to the baseline's name.
    """
    if not samples:
        raise ValueError("samples is empty: give at least one training size, e.g. [50, 100, 200]")
    done = run.read_table(SCALING_TABLE)
    finished = set()
    if not done.empty:
        finished = {(str(r.model), int(r.samples), int(r.seed)) for r in done.itertuples()}
    run.write_config(settings=settings.to_dict(), sweep={"samples": list(samples), "seeds": list(seeds),
                                                         "baselines": list(baselines)})
    for n in sorted(samples):
        for seed in seeds:
            size_settings = dataclasses.replace(settings.with_seed(seed), data=dataclasses.replace(settings.data,
                                                                                                   samples=n))
            corpus = None
            if ("cvfp", n, seed) not in finished:
                corpus = load_corpus(size_settings.data, progress=progress)
                began = time.perf_counter()
                result = run_cvfp(size_settings, progress=progress, corpus=corpus)
                row = {"model": "cvfp", **result.row, "total_seconds": time.perf_counter() - began}
                run.append_row(SCALING_TABLE, row)
                if on_row is not None:
                    on_row(row)
            for kind in baselines:
                if (kind, n, seed) in finished:
                    continue
                corpus = corpus or load_corpus(size_settings.data, progress=progress)
                row = run_baseline(kind, size_settings, corpus, progress=progress)
                run.append_row(SCALING_TABLE, row)
                if on_row is not None:
                    on_row(row)
    return run.read_table(SCALING_TABLE)


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
        "samples": settings.data.samples,
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


# ----------------------------------------------------------------------------------- dist_reg_weight study

def dist_reg_objective(settings: CVFPSettings, progress: bool = False) -> Callable[[dict, Callable], dict]:
    """The Optuna objective of the dist_reg_weight study: Phase 1 with the trial's parameters, then Phase 2;
    the per-epoch validation loss is reported (so the pruner can stop bad trials) and the validation PPL returned.

    The corpus is loaded once and shared by every trial.
    """
    corpus = load_corpus(settings.data, progress=progress)
    phase1_fields = {f.name for f in dataclasses.fields(Phase1Config)}

    def objective(params: dict, report: Callable[[int, float], None]) -> dict:
        unknown = sorted(set(params) - phase1_fields)
        if unknown:
            raise ValueError(f"study parameters {unknown} are not Phase1Config fields")
        trial_settings = dataclasses.replace(settings, phase1=dataclasses.replace(settings.phase1, **params))

        def on_epoch(info: dict) -> None:
            report(int(info["epoch"]), float(info["val_loss"]))

        result = run_cvfp(trial_settings, progress=progress, corpus=corpus, epoch_callback=on_epoch)
        row = result.row
        return {
            "val_ppl": float(row["val_ppl"]),
            "val_loss": float(row["val_loss"]),
            "val_accuracy": float(row["val_accuracy"]),
            "train_er_pct": float(row["train_er_pct"]),
            "val_er_pct": None if math.isnan(row["val_er_pct"]) else float(row["val_er_pct"]),
            "is_identity": bool(result.phase1.train_metrics.is_identity),
            "converged_ratio": float(row["phase1_converged_ratio"]),
            "phase1_iterations": int(row["phase1_iterations"]),
        }

    return objective

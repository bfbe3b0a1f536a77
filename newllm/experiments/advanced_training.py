"""Advanced training (seeds 001, 002): the gated LM end to end or the two-phase CVFP model, then optionally int8.

A run is set up from plain configs and loaded data (:func:`gated_setup` / :func:`cvfp_setup`, nothing trained yet),
trained into a run folder under the original's file names (:func:`train`), and with ``quantization='int8'`` the
trained fp32 model is quantized and both are compared on the validation data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd
import torch

from newllm.config.models import GatedLMConfig
from newllm.config.training import GatedTrainConfig
from newllm.data.corpus import Corpus
from newllm.data.wikitext import WikiTextData
from newllm.evaluation.quantize import compare_int8
from newllm.experiments.cvfp import CVFPSettings, model_for_corpus, run_cvfp
from newllm.models.common import parameter_count
from newllm.models.gated import GatedContextLM
from newllm.plotting import plot_training_curves
from newllm.training.gated import evaluate_windows, train_gated_lm
from newllm.training.lm_baseline import evaluate_lm
from newllm.training.planner import Phase2Workload
from newllm.utils.io import atomic_write_json
from newllm.utils.runs import RunFolder, original_run_name

EXPERIMENT = "advanced_training"


@dataclass
class TrainingSetup:
    """Everything decided before training: configs, loaded data and the parameter count."""

    family: str  # "gated" or "cvfp"
    name: str  # the original's name: new_llm_wikitext_ctx{D}_layers{L}[_int8]
    parameters: int
    data_summary: str
    ppl_label: str  # "word (V=1,000)": every perplexity names its tokenizer and vocabulary
    quantization: str = "none"  # "none" or "int8" (post-training, compared with fp32)
    resume_from: Optional[str] = None  # a gated LM checkpoint to continue
    gated_model: Optional[GatedLMConfig] = None
    gated_train: Optional[GatedTrainConfig] = None
    gated_data: Optional[WikiTextData] = None
    cvfp_settings: Optional[CVFPSettings] = None
    corpus: Optional[Corpus] = None

    def overview(self) -> pd.DataFrame:
        rows = [("model", f"{self.family} ({self.name})"), ("parameters", f"{self.parameters:,}"),
                ("perplexity unit", self.ppl_label), ("data", self.data_summary)]
        return pd.DataFrame(rows, columns=["", "value"])


def gated_setup(model_cfg: GatedLMConfig, train_cfg: GatedTrainConfig, data: WikiTextData,
                quantization: str = "none", resume_from: Optional[str] = None) -> TrainingSetup:
    """The gated LM's run on ``data`` (newllm.data.wikitext.prepare_wikitext); the vocabulary is the tokenizer's."""
    model_cfg = replace(model_cfg, vocab_size=data.tokenizer.vocab_size)
    with torch.device("meta"):  # counted without allocating weights
        parameters = parameter_count(GatedContextLM(model_cfg))
    return TrainingSetup("gated", original_run_name(model_cfg.ctx_dim, model_cfg.num_layers, quantization),
                         parameters, data.summary().replace("\n", "; "),
                         f"{data.tokenizer_label} (V={data.tokenizer.vocab_size:,})", quantization, resume_from,
                         gated_model=model_cfg, gated_train=train_cfg, gated_data=data)


def cvfp_setup(settings: CVFPSettings, corpus: Corpus, quantization: str = "none") -> TrainingSetup:
    """The CVFP model's run (Phase 1 then Phase 2) on ``corpus``; the vocabulary is the tokenizer's."""
    model_cfg = model_for_corpus(settings.model, corpus)
    settings = replace(settings, model=model_cfg)
    work = Phase2Workload.from_config(model_cfg, corpus.train.n_tokens, corpus.val.n_tokens)
    data_summary = (f"{corpus.info['dataset']}: {corpus.train.n_docs} training documents "
                    f"({corpus.train.n_tokens:,} tokens), {corpus.val.n_docs} validation documents "
                    f"({corpus.val.n_tokens:,} tokens)")
    return TrainingSetup("cvfp", original_run_name(model_cfg.ctx_dim, model_cfg.num_layers, quantization),
                         work.params, data_summary, f"{corpus.tokenizer.name} (V={corpus.tokenizer.vocab_size:,})",
                         quantization, cvfp_settings=settings, corpus=corpus)


@dataclass
class TrainingOutcome:
    """A finished advanced-training run: its folder, history, final row and (with int8) the comparison."""

    run: RunFolder
    setup: TrainingSetup
    history: pd.DataFrame
    final: pd.DataFrame  # one row
    int8: Optional[pd.DataFrame]  # fp32 vs int8: size, val PPL, tokens/s
    paths: dict[str, Path] = field(default_factory=dict)
    model: Any = None


def train(setup: TrainingSetup, run: RunFolder, on_history: Optional[Callable[[pd.DataFrame], Any]] = None,
          on_epoch: Optional[Callable[[dict], None]] = None, progress: bool = True) -> TrainingOutcome:
    """Train the prepared run into ``run``.

    Gated LM: :func:`newllm.training.gated.train_gated_lm` (checkpoints, progress JSON, curves PNG under the
    original's names; ``on_history(history)`` after every evaluation). CVFP: Phase 1 then Phase 2
    (:func:`newllm.experiments.cvfp.run_cvfp`; ``on_epoch(info)`` after every Phase-2 epoch), then the same curves
    PNG and progress JSON. With ``quantization='int8'`` the trained model is compared with its int8 version
    (:func:`newllm.evaluation.quantize.compare_int8`).
    """
    if setup.family == "gated":
        outcome = _train_gated(setup, run, on_history, progress)
    else:
        outcome = _train_cvfp(setup, run, on_epoch, progress)
    if setup.quantization == "int8":
        outcome.int8 = _compare_int8(setup, outcome.model)
        outcome.paths["int8_comparison"] = run.write_table("int8_comparison", outcome.int8.reset_index())
    outcome.paths["final"] = run.write_table("final", outcome.final)
    run.sync()
    return outcome


def _train_gated(setup: TrainingSetup, run: RunFolder, on_history: Optional[Callable], progress: bool
                 ) -> TrainingOutcome:
    data = setup.gated_data
    run.write_config(model=setup.gated_model, train=setup.gated_train, data=data.stats,
                     resolved={"data_source": data.source})
    data.tokenizer.save(run.file(f"{setup.name}_tokenizer.json"))

    scalars = run.scalars()

    def after_epoch(history: pd.DataFrame):
        last = history.iloc[-1].to_dict()
        scalars.log("gated", last, int(last.get("updates", last.get("epoch", len(history)))))
        run.sync()  # the epoch's checkpoints reach the mirror (e.g. Google Drive)
        return on_history(history) if on_history is not None else None

    result = train_gated_lm(
        setup.gated_model, setup.gated_train, data.train, data.val, run.path, name=setup.name,
        tokenizer_name=data.tokenizer_label, resume_from=setup.resume_from, callback=after_epoch, progress=progress,
        extra_config={"data_source": data.source, "data_stats": data.stats},
    )
    scalars.close()
    history = result.history
    best = history.loc[history["val_loss"].idxmin()] if len(history) else None
    final = pd.DataFrame([{
        "run": setup.name, "family": "gated", "parameters": result.parameters, "ppl_tokenizer": setup.ppl_label,
        "best_val_ppl": result.best_val_ppl, "best_epoch": result.best_epoch,
        "best_val_acc": float(best["val_acc"]) if best is not None else math.nan,
        "epochs_run": float(history["epoch"].iloc[-1]) if len(history) else 0.0, "updates": result.updates,
        "batch_size": result.batch_size, "lr": result.lr, "stopped_early": result.stopped_early,
        "seconds": result.seconds,
    }])
    paths = {**result.paths, "tokenizer": run.file(f"{setup.name}_tokenizer.json")}
    return TrainingOutcome(run, setup, history, final, None, paths, result.model)


def _train_cvfp(setup: TrainingSetup, run: RunFolder, on_epoch: Optional[Callable], progress: bool
                ) -> TrainingOutcome:
    began = time.perf_counter()
    result = run_cvfp(setup.cvfp_settings, run, progress=progress, corpus=setup.corpus, epoch_callback=on_epoch)
    seconds = time.perf_counter() - began
    history = result.phase2.history
    row = result.row
    paths = {"checkpoint": run.file("phase2.safetensors")}
    if len(history):
        paths["curves"] = run.file(f"{setup.name}_training_curves.png")
        plot_training_curves(history, title=f"{setup.name} ({row['parameters']:,} parameters)",
                             ppl_label=f"PPL, {setup.ppl_label}", path=paths["curves"])
    paths["progress"] = run.file(f"{setup.name}_progress.json")
    atomic_write_json(paths["progress"], {
        "model_name": setup.name, "phase1_iterations": row["phase1_iterations"],
        "epochs": history["epoch"].tolist() if len(history) else [],
        "train_losses": history["train_loss"].tolist() if len(history) else [],
        "val_losses": history["val_loss"].tolist() if len(history) else [],
        "best_val_ppl": row["val_ppl"], "best_epoch": row["best_epoch"], "ppl_tokenizer": setup.ppl_label,
        "parameters": row["parameters"], "summary": row,
    })
    final = pd.DataFrame([{
        "run": setup.name, "family": "cvfp", "parameters": row["parameters"], "ppl_tokenizer": setup.ppl_label,
        "best_val_ppl": row["val_ppl"], "best_epoch": row["best_epoch"], "best_val_acc": row["val_accuracy"],
        "train_er_pct": row["train_er_pct"], "val_er_pct": row["val_er_pct"],
        "phase1_iterations": row["phase1_iterations"], "phase2_stop": row["phase2_stop"],
        "seconds": seconds,
    }])
    return TrainingOutcome(run, setup, history, final, None, paths, result.model)


def _compare_int8(setup: TrainingSetup, model: torch.nn.Module) -> pd.DataFrame:
    """fp32 vs int8 of the trained model on the run's own validation data (CPU, as int8 inference is)."""
    if setup.family == "gated":
        val = setup.gated_data.val
        batch = setup.gated_train.batch_size
        label = setup.gated_data.tokenizer_label
        return compare_int8(model, lambda m: evaluate_windows(m, val, batch, label), val.inputs[:batch])
    corpus = setup.corpus
    val_ids = torch.as_tensor(corpus.val.ids.astype("int64"))
    sample = val_ids[: min(256, val_ids.numel())][None]
    return compare_int8(model, lambda m: evaluate_lm(m, val_ids, tokenizer=corpus.tokenizer.name,
                                                     n_bytes=corpus.val.n_bytes), sample)

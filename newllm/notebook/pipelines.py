"""What the four notebooks call: results folder, parameters, live displays, and one pipeline per notebook.

The notebooks stay thin (a parameters cell, calls into this module, tables and plots); everything that decides or
computes something is here and tested in tests/test_notebook_pipelines.py.

- :func:`find_results_dir`: an explicit folder, else ``$NEWLLM_RESULTS_DIR``, else ``<repo>/results`` (the repo
  found by walking up to newllm's pyproject.toml), else ``./results``. Notebooks run with cwd = notebooks/.
- :func:`notebook_values`: the parameters cell's values resolved against the presets (:mod:`newllm.notebook.presets`).
- :class:`LiveOutput`, :class:`LiveCurves`, :class:`LiveTable`: one output area redrawn in place
  (IPython ``display_id`` / ``update``) while a run goes on.
- :func:`data_sizes`, :func:`training_controls`: what the size sliders (newllm.notebook.widgets) need.
- advanced_training: :func:`prepare_training` (data, parameter count, memory plan) then :func:`train`.
- scaling: :func:`run_scaling_sweep`. parallel_tuning: :func:`run_phase1_grid`, :func:`grid_verdicts`.
- optimize_dist_reg_weight: :func:`run_dist_reg_study`.

Every run writes ``results/<experiment>/<run-name>/`` through :class:`~newllm.utils.runs.RunFolder` (never
overwriting an earlier run), with the resolved parameters, the preset used among them, in ``parameters.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import pandas as pd
import torch

from newllm.config.experiments import StudyConfig
from newllm.config.models import GatedLMConfig
from newllm.config.training import GatedTrainConfig, Phase2Config
from newllm.notebook.presets import NOTEBOOK_PARAMS, resolve
from newllm.utils.runs import RunFolder, original_run_name

PathLike = Union[str, Path]
RESULTS_DIR_ENV = "NEWLLM_RESULTS_DIR"
_PROJECT_MARKER = 'name = "newllm"'  # the line of pyproject.toml that identifies this project's checkout

GATED_DEFAULT_LR = 1e-4  # seed 001's learning rate (Adam, batch 512 on a T4)
GATED_GPU_BATCH = 512  # seed 001's batch (windows) on a T4; on a CPU the trainer's own 32
CVFP_DEFAULT_LR = Phase2Config().lr
from newllm.models.embeddings import GPT2_EMBED_DIM

# ------------------------------------------------------------------------------------------ results folder

def repo_root(start: Optional[PathLike] = None) -> Optional[Path]:
    """The newllm checkout at or above ``start`` (default: cwd), else the one this package was imported from.

    A checkout is a folder whose pyproject.toml names the project ``newllm``; None when neither place is in one
    (e.g. a non-editable pip install run from elsewhere).
    """
    bases = [Path(start if start is not None else Path.cwd()).resolve(), Path(__file__).resolve().parent]
    for base in bases:
        for folder in (base, *base.parents):
            pyproject = folder / "pyproject.toml"
            if pyproject.is_file() and _PROJECT_MARKER in pyproject.read_text(encoding="utf-8", errors="replace"):
                return folder
    return None


def find_results_dir(results_dir: Optional[PathLike] = None, start: Optional[PathLike] = None) -> Path:
    """Where runs are written: ``results_dir`` when given (relative to cwd), else ``$NEWLLM_RESULTS_DIR``, else
    ``<repo>/results``, else ``./results``."""
    if results_dir not in (None, ""):
        return Path(results_dir).expanduser()
    from_env = os.environ.get(RESULTS_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    root = repo_root(start)
    return (root if root is not None else Path.cwd()) / "results"


# ------------------------------------------------------------------------------------------- parameters

def notebook_values(notebook: str, preset: str, namespace: Mapping[str, Any]) -> dict:
    """The notebook's parameters resolved against ``preset``; each one is read from ``namespace`` (the
    parameters cell's ``globals()``), where None means "take the preset". Raises ValueError on a bad value."""
    if notebook not in NOTEBOOK_PARAMS:
        raise ValueError(f"unknown notebook {notebook!r}: one of {sorted(NOTEBOOK_PARAMS)}")
    return resolve(notebook, preset, **{name: namespace.get(name) for name in NOTEBOOK_PARAMS[notebook]})


def parameters_table(values: Mapping[str, Any]) -> pd.DataFrame:
    """Two columns (parameter, value) for display; the preset line says which one was requested and used."""
    rows = [("preset", f"{values['preset']} -> {values['preset_used']}")]
    rows += [(k, repr(v)) for k, v in values.items() if k not in ("preset", "preset_used")]
    return pd.DataFrame(rows, columns=["parameter", "value"])


# ------------------------------------------------------------------------------------------ live output

class LiveOutput:
    """One notebook output area, replaced in place on every ``show`` (IPython display_id + update).

    Outside IPython ``display`` returns no handle, and each ``show`` simply displays again.
    """

    def __init__(self, display: Optional[Callable[..., Any]] = None):
        if display is None:
            from IPython.display import display as ipython_display

            display = ipython_display
        self._display = display
        self._handle = None
        self.shown = 0

    def show(self, obj: Any) -> None:
        if self._handle is None:
            self._handle = self._display(obj, display_id=True)
        else:
            self._handle.update(obj)
        self.shown += 1


class LiveCurves:
    """Loss and perplexity curves redrawn after every evaluation.

    ``on_history(history)`` is the gated trainer's callback (the whole history so far); ``on_epoch(info)`` is
    run_cvfp's epoch callback (one row per Phase-2 epoch, accumulated here).
    """

    def __init__(self, title: str, ppl_label: str = "perplexity", output: Optional[LiveOutput] = None):
        self.title = title
        self.ppl_label = ppl_label
        self.output = output or LiveOutput()
        self.rows: list[dict] = []
        self.figure = None

    def on_history(self, history: pd.DataFrame) -> None:
        from newllm.plotting import plot_training_curves

        self.figure = plot_training_curves(history, title=self.title, ppl_label=self.ppl_label)
        self.output.show(self.figure)
        return None  # never asks the trainer to stop

    def on_epoch(self, info: Mapping[str, Any]) -> None:
        row = {"epoch": info["epoch"], "train_loss": info.get("train_loss", math.nan), "val_loss": info["val_loss"]}
        self.rows.append(row)
        self.on_history(pd.DataFrame(self.rows))


class LiveTable:
    """A table that grows by one row per call (e.g. ``run_scaling``'s ``on_row``), redrawn in place."""

    def __init__(self, columns: Optional[list[str]] = None, output: Optional[LiveOutput] = None):
        self.columns = columns
        self.output = output or LiveOutput()
        self.rows: list[dict] = []

    def __call__(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        self.output.show(self.frame())

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        if self.columns is not None:
            frame = frame[[c for c in self.columns if c in frame.columns]]
        return frame


# -------------------------------------------------------------------------------------------- data sizes

@dataclass(frozen=True)
class DataSizes:
    """Token counts of the notebook's corpus, for the size controls' memory estimate."""

    tokens_per_sample: float  # mean training tokens per document
    val_tokens: int
    vocab_size: int
    tokenizer: str


def data_sizes(values: Mapping[str, Any], progress: bool = False) -> DataSizes:
    """Load the corpus at the smallest training size of ``values`` (cached for the run) and measure it."""
    from newllm.data.corpus import load_corpus
    from newllm.experiments.pipelines import settings_from_parameters

    samples = values["samples"]
    smallest = min(samples) if isinstance(samples, (list, tuple)) else samples
    # only the data settings matter here; the model width is any valid one
    settings = settings_from_parameters({**values, "embed_dim": values.get("embed_dim") or values["ctx_dim"]},
                                        samples=smallest)
    corpus = load_corpus(settings.data, progress=progress)
    return DataSizes(corpus.train.n_tokens / smallest, corpus.val.n_tokens, corpus.tokenizer.vocab_size,
                     corpus.tokenizer.name)


# ------------------------------------------------------------------------------------ advanced training

def training_controls(values: Mapping[str, Any], budget: Any = None) -> tuple[Any, Any]:
    """The advanced-training notebook's size sliders for its model family (see newllm.notebook.widgets)."""
    from newllm.notebook.widgets import notebook_controls

    if values["model_family"] == "gated":
        return notebook_controls("gated", values, vocab_size=values["vocab_size"],
                                 embed_dim=values["embed_dim"] or GatedLMConfig().embed_dim,
                                 batch_size=gated_batch_size(values), budget=budget)
    sizes = data_sizes(values)
    return notebook_controls("cvfp", values, vocab_size=sizes.vocab_size,
                             embed_dim=cvfp_embed_dim(values, sizes.tokenizer),
                             tokens_per_sample=sizes.tokens_per_sample, val_tokens=sizes.val_tokens,
                             batch_size=values["batch_size"], budget=budget)


def gated_batch_size(values: Mapping[str, Any], cuda: Optional[bool] = None) -> int:
    """The gated LM's windows per batch: the parameter, else seed 001's 512 on a GPU and the trainer's 32 on a CPU."""
    from newllm.training.gated import CPU_BATCH_SIZE

    if values["batch_size"]:
        return int(values["batch_size"])
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return GATED_GPU_BATCH if cuda else CPU_BATCH_SIZE


@dataclass
class TrainingSetup:
    """Everything decided before training: configs, data, parameter count and the memory estimate."""

    family: str  # "gated" or "cvfp"
    name: str  # the original's name: new_llm_wikitext_ctx{D}_layers{L}[_int8]
    values: dict
    parameters: int
    memory: pd.DataFrame  # component, where, GiB
    memory_summary: str
    data_summary: str
    ppl_label: str  # "word (V=1,000)": every perplexity names its tokenizer and vocabulary
    gated_model: Optional[GatedLMConfig] = None
    gated_train: Optional[GatedTrainConfig] = None
    gated_data: Any = None  # newllm.data.wikitext.WikiTextData
    cvfp_settings: Any = None  # newllm.experiments.cvfp.CVFPSettings
    corpus: Any = None  # newllm.data.corpus.Corpus

    def overview(self) -> pd.DataFrame:
        rows = [("model", f"{self.family} ({self.name})"), ("parameters", f"{self.parameters:,}"),
                ("perplexity unit", self.ppl_label), ("data", self.data_summary),
                ("memory", self.memory_summary)]
        return pd.DataFrame(rows, columns=["", "value"])


def _gated_source(dataset: str) -> str:
    """The gated pipeline's data source for the notebook's ``dataset``: 'wikitext2' is the local copy beside the
    repo or the hub (newllm.data.wikitext's "auto"), 'builtin' the offline corpus, anything else a folder."""
    return "auto" if dataset in ("wikitext2", "auto") else dataset


def cvfp_embed_dim(values: Mapping[str, Any], tokenizer: str) -> int:
    """The CVFP embedding width: the parameter, else 768 (GPT-2's, loaded when possible) with GPT-2 tokens,
    else ctx_dim."""
    if values.get("embed_dim"):
        return int(values["embed_dim"])
    return GPT2_EMBED_DIM if tokenizer == "gpt2" else int(values["ctx_dim"])


def _cvfp_settings(values: Mapping[str, Any], tokenizer: str):
    """CVFPSettings for the advanced-training notebook's cvfp family (Phase 2 takes epochs, batch, lr, ...)."""
    from newllm.experiments.pipelines import settings_from_parameters

    # the tokenizer actually used decides the embedding (GPT-2's for GPT-2 tokens at 768 dims); the data config
    # keeps the requested one so the corpus cache is the same one data loading used
    settings = settings_from_parameters({**values, "tokenizer": tokenizer, "phase2_epochs": values["epochs"],
                                         "embed_dim": cvfp_embed_dim(values, tokenizer)})
    phase2 = dataclasses.replace(settings.phase2, batch_size=values["batch_size"], lr=values["lr"] or CVFP_DEFAULT_LR,
                                 schedule=values["schedule"], max_steps=values["max_updates"])
    data = dataclasses.replace(settings.data, tokenizer=values["tokenizer"])
    return dataclasses.replace(settings, phase2=phase2, data=data)


def _memory_table(parts: Mapping[str, int], where: str) -> pd.DataFrame:
    from newllm.training.planner import GiB

    rows = [{"component": k, "where": where, "GiB": v / GiB} for k, v in parts.items()]
    rows.append({"component": "PEAK", "where": where, "GiB": sum(parts.values()) / GiB})
    return pd.DataFrame(rows)


def prepare_training(values: Mapping[str, Any], progress: bool = True) -> TrainingSetup:
    """Load the data and size the run of the advanced-training notebook, before anything is trained."""
    from newllm.notebook.widgets import count_parameters, gated_training_bytes
    from newllm.training.planner import MemoryBudget, Phase2Workload, format_bytes, plan_phase2
    from newllm.utils.runtime import resolve_device

    values = dict(values)
    family = values["model_family"]
    name = original_run_name(values["ctx_dim"], values["layers"], values["quantization"])
    device = resolve_device("auto")
    budget = MemoryBudget.probe(device)
    where = "device" if device.type == "cuda" else "host"
    if family == "gated":
        from newllm.data.wikitext import prepare_wikitext

        if values["tokenizer"] not in ("auto", "word"):
            raise ValueError(f"tokenizer={values['tokenizer']!r}: the gated LM is trained on word-level tokens; "
                             "use tokenizer='auto' or 'word' (or model_family='cvfp' for GPT-2 / BPE tokens)")
        batch = gated_batch_size(values, device.type == "cuda")
        train_cfg = GatedTrainConfig(epochs=values["epochs"], max_updates=values["max_updates"],
                                     batch_size=batch, lr=values["lr"] or GATED_DEFAULT_LR,
                                     schedule=values["schedule"], seed=values["seed"])
        data = prepare_wikitext(train_cfg, _gated_source(values["dataset"]), values["vocab_size"],
                                (values["samples"], values["val_samples"]), progress)
        model_cfg = GatedLMConfig(vocab_size=data.tokenizer.vocab_size, ctx_dim=values["ctx_dim"],
                                  num_layers=values["layers"],
                                  embed_dim=values["embed_dim"] or GatedLMConfig().embed_dim)
        parameters = count_parameters("gated", model_cfg.ctx_dim, model_cfg.num_layers, model_cfg.vocab_size,
                                      model_cfg.embed_dim)
        parts = gated_training_bytes(model_cfg, batch, train_cfg.window, parameters, len(data.train))
        memory = _memory_table(parts, where)
        summary = (f"peak {format_bytes(sum(parts.values()))} on {where} (estimate, batch {batch}); "
                   f"{format_bytes(budget.device_free if where == 'device' else budget.host_available)} free")
        ppl_label = f"{data.tokenizer_label} (V={data.tokenizer.vocab_size:,})"
        return TrainingSetup(family, name, values, parameters, memory, summary, data.summary().replace("\n", "; "),
                             ppl_label, gated_model=model_cfg, gated_train=train_cfg, gated_data=data)
    if family != "cvfp":
        raise ValueError(f"model_family={family!r}: use 'gated' or 'cvfp'")
    if values["resume_from"]:
        raise ValueError("resume_from is supported for the gated LM only; a CVFP run's Phase 2 is short: start "
                         "it again (or use newllm.training.phase2.train_phase2(..., resume=True) from Python)")
    from newllm.data.corpus import load_corpus
    from newllm.experiments.cvfp import model_for_corpus

    probe = _cvfp_settings(values, "auto")
    corpus = load_corpus(probe.data, progress=progress)
    settings = _cvfp_settings(values, corpus.tokenizer.name)
    model_cfg = model_for_corpus(settings.model, corpus)
    settings = dataclasses.replace(settings, model=model_cfg)
    work = Phase2Workload.from_config(model_cfg, corpus.train.n_tokens, corpus.val.n_tokens)
    plan = plan_phase2(work, settings.phase2, budget, checkpointing=True)
    info = corpus.info
    data_summary = (f"{info['dataset']}: {values['samples']} training documents ({corpus.train.n_tokens:,} tokens), "
                    f"{values['val_samples']} validation documents ({corpus.val.n_tokens:,} tokens)")
    summary = (f"Phase-2 peak {format_bytes(plan.peak(where))} on {where} of {format_bytes(plan.limits[where])} "
               f"usable; cache on {plan.placement} as {plan.cache_dtype}, batch {plan.batch_size:,} tokens")
    return TrainingSetup(family, name, values, work.params, plan.table(), summary, data_summary,
                         f"{corpus.tokenizer.name} (V={corpus.tokenizer.vocab_size:,})", cvfp_settings=settings,
                         corpus=corpus)


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


def train(setup: TrainingSetup, results_dir: PathLike, run_name: Optional[str] = None,
          curves: Optional[LiveCurves] = None, progress: bool = True) -> TrainingOutcome:
    """Train the prepared run into ``results/advanced_training/<name>/`` (a new folder; never overwrites).

    Gated LM: :func:`newllm.training.gated.train_gated_lm` (checkpoints, progress JSON, curves PNG under the
    original's names). CVFP: Phase 1 then Phase 2 (:func:`newllm.experiments.cvfp.run_cvfp`), then the same curves PNG
    and progress JSON. With ``quantization='int8'`` the trained fp32 model is quantized after training and both
    are compared on the validation data (:func:`newllm.evaluation.quantize.compare_int8`).
    """
    run = RunFolder.create("advanced_training", run_name or setup.name, results_dir)
    run.write_json("parameters", setup.values)
    if setup.family == "gated":
        outcome = _train_gated(setup, run, curves, progress)
    else:
        outcome = _train_cvfp(setup, run, curves, progress)
    if setup.values["quantization"] == "int8":
        outcome.int8 = _compare_int8(setup, outcome.model)
        outcome.paths["int8_comparison"] = run.write_table("int8_comparison", outcome.int8.reset_index())
    outcome.paths["final"] = run.write_table("final", outcome.final)
    return outcome


def _train_gated(setup: TrainingSetup, run: RunFolder, curves: Optional[LiveCurves], progress: bool) -> TrainingOutcome:
    from newllm.training.gated import train_gated_lm

    data, values = setup.gated_data, setup.values
    run.write_config(model=setup.gated_model, train=setup.gated_train, data=data.stats,
                     resolved={"data_source": data.source, "preset_used": values["preset_used"]})
    data.tokenizer.save(run.file(f"{setup.name}_tokenizer.json"))
    result = train_gated_lm(
        setup.gated_model, setup.gated_train, data.train, data.val, run.path, name=setup.name,
        tokenizer_name=data.tokenizer_label, resume_from=values["resume_from"],
        callback=curves.on_history if curves is not None else None, progress=progress,
        extra_config={"data_source": data.source, "data_stats": data.stats, "preset": values["preset_used"]},
    )
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


def _train_cvfp(setup: TrainingSetup, run: RunFolder, curves: Optional[LiveCurves], progress: bool) -> TrainingOutcome:
    from newllm.experiments.cvfp import run_cvfp
    from newllm.plotting import plot_training_curves
    from newllm.utils.io import atomic_write_json

    began = time.perf_counter()
    result = run_cvfp(setup.cvfp_settings, run, progress=progress, corpus=setup.corpus,
                      epoch_callback=curves.on_epoch if curves is not None else None)
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
    from newllm.evaluation.quantize import compare_int8

    if setup.family == "gated":
        from newllm.training.gated import evaluate_windows

        val = setup.gated_data.val
        batch = setup.gated_train.batch_size
        label = setup.gated_data.tokenizer_label
        sample = val.inputs[:batch]
        return compare_int8(model, lambda m: evaluate_windows(m, val, batch, label), sample)
    from newllm.training.lm_baseline import evaluate_lm

    corpus = setup.corpus
    val_ids = torch.as_tensor(corpus.val.ids.astype("int64"))
    sample = val_ids[: min(256, val_ids.numel())][None]
    return compare_int8(model, lambda m: evaluate_lm(m, val_ids, tokenizer=corpus.tokenizer.name,
                                                     n_bytes=corpus.val.n_bytes), sample)


# ----------------------------------------------------------------------------------------------- scaling

SCALING_ROW_COLUMNS = ["model", "samples", "seed", "train_tokens", "parameters", "phase1_iterations",
                       "train_er_pct", "val_er_pct", "val_ppl", "optimum_val_ppl", "val_accuracy", "total_seconds"]


def run_scaling_sweep(values: Mapping[str, Any], results_dir: PathLike, run_name: Optional[str] = None,
                      resume: bool = False, on_row: Optional[Callable[[dict], None]] = None, progress: bool = True,
                      experiment: str = "scaling"):
    """The scaling notebook: Phase 1 + Phase 2 per size (rows appended as each finishes; ``resume`` continues the
    run folder ``run_name``), the power-law fit, the extrapolation table and the PPL-vs-tokens plot (log-log,
    with the fit, and the baselines' points when ``values['baselines']`` asks for them).

    Returns :class:`newllm.experiments.pipelines.ScalingOutcome`.
    """
    from newllm.experiments.cvfp import run_scaling
    from newllm.experiments.pipelines import ScalingOutcome, fit_scaling_table, settings_from_parameters
    from newllm.plotting import plot_scaling

    values = dict(values)
    name = run_name or f"{values['dataset'].replace('/', '_')}_ctx{values['ctx_dim']}_layers{values['layers']}"
    if resume and not run_name:
        raise ValueError(f"resume needs run_name: the folder under results/{experiment}/ to continue")
    run = RunFolder.create(experiment, name, results_dir, resume=resume)
    run.write_json("parameters", values)
    settings = settings_from_parameters(values)
    table = run_scaling(values["samples"], settings, run, seeds=values["seeds"], baselines=values["baselines"],
                        progress=progress, on_row=on_row)
    with warnings.catch_warnings():  # a refused fit (fewer than 3 sizes) is reported in the outcome, not warned
        warnings.simplefilter("ignore")
        points, power, saturating, extrapolation = fit_scaling_table(table, progress=progress)
    run.write_table("extrapolation", extrapolation)
    run.write_json("fits", {"power_law": power.to_dict(),
                            "saturating": saturating.to_dict() if saturating is not None else None})
    figure = plot_scaling(points, power_law=power, saturating=saturating, size_col="train_tokens",
                          value_col="val_ppl")
    add_baseline_points(figure, table)
    run.save_figure(figure, "ppl_vs_tokens")
    return ScalingOutcome(run, table, points, power, saturating, extrapolation, values)


def add_baseline_points(figure: Any, table: pd.DataFrame) -> list[str]:
    """Draw each baseline's validation PPL against training tokens (mean over seeds) on the scaling plot's axes.

    Returns the baselines drawn (none when the table has only CVFP rows).
    """
    from newllm.evaluation.scaling_fits import aggregate_seeds

    if "model" not in table:
        return []
    ax = figure.axes[0]
    drawn = []
    for i, (kind, rows) in enumerate(table[table["model"] != "cvfp"].groupby("model", sort=True)):
        points = aggregate_seeds(rows, size_col="train_tokens", value_col="val_ppl", seed_col="seed")
        params = int(rows["parameters"].iloc[0]) if "parameters" in rows else None
        label = f"{kind} baseline" + (f" ({params:,} parameters)" if params else "")
        ax.plot(points["train_tokens"], points["val_ppl_mean"], marker="s", linestyle="--", color=f"C{i + 2}",
                label=label)
        drawn.append(str(kind))
    if drawn:
        ax.legend(fontsize=9, loc="best")
    return drawn


# ------------------------------------------------------------------------------------------ Phase-1 grid

@dataclass
class GridOutcome:
    """The parallel-tuning grid: its table, verdicts and where they were written."""

    run: RunFolder
    table: pd.DataFrame
    verdicts: list[str]
    figures: dict[str, Path]


def run_phase1_grid(values: Mapping[str, Any], results_dir: PathLike, run_name: Optional[str] = None,
                    progress: bool = True) -> GridOutcome:
    """Seed 000's grid: every (solver, max iterations, dist_reg_weight) from the same initial weights; table,
    heatmaps of validation ER and time, and verdict lines computed from the table."""
    from newllm.data.corpus import load_corpus
    from newllm.experiments.cvfp import model_for_corpus
    from newllm.experiments.phase1_grid import phase1_grid
    from newllm.experiments.pipelines import settings_from_parameters
    from newllm.models.cvfp import build_cvfp_model
    from newllm.utils.runtime import resolve_device, seed_everything

    values = dict(values)
    settings = settings_from_parameters(values)
    name = run_name or f"{values['dataset'].replace('/', '_')}_ctx{values['ctx_dim']}_layers{values['layers']}" \
                       f"_{values['samples']}samples"
    run = RunFolder.create("parallel_tuning", name, results_dir)
    run.write_json("parameters", values)
    corpus = load_corpus(settings.data, progress=progress)
    model_cfg = model_for_corpus(settings.model, corpus)
    seed_everything(settings.seed)
    template, embedding = build_cvfp_model(model_cfg)  # built once: every grid point starts from these weights
    template.to(resolve_device(settings.device))
    run.write_config(settings=settings.to_dict(), grid={"iterations": values["iterations"],
                                                        "weights": values["weights"], "solvers": values["solvers"]},
                     resolved={**corpus.info, "embedding": embedding.kind})
    table = phase1_grid(lambda: copy.deepcopy(template), corpus.train.documents(), corpus.val.documents(),
                        iterations=values["iterations"], weights=values["weights"], solvers=values["solvers"],
                        base_cfg=settings.phase1, progress=progress)
    run.write_table("grid", table)
    verdicts = grid_verdicts(table)
    run.write_json("verdicts", verdicts)
    figures = {}
    for column, title in (("val_er_pct", "validation ER (%)"), ("seconds", "Phase-1 time (s)")):
        figures[column] = run.save_figure(plot_grid_heatmaps(table, column, title), f"heatmap_{column}")
    return GridOutcome(run, table, verdicts, figures)


def grid_verdicts(table: pd.DataFrame) -> list[str]:
    """Readable conclusions computed from a phase1_grid table (never typed in by hand)."""
    lines = []
    er_col = "val_er_pct" if table["val_er_pct"].notna().any() else "train_er_pct"
    which = "val" if er_col == "val_er_pct" else "train"
    best = table.loc[table[er_col].idxmax()]
    lines.append(f"best {which} ER: {best['solver']}, {int(best['max_iterations'])} it, "
                 f"w={best['dist_reg_weight']:g}: {best[er_col]:.1f} %")
    solvers = set(table["solver"])
    if {"sequential", "parallel"} <= solvers:
        keys = ["max_iterations", "dist_reg_weight"]
        paired = table[table["solver"] == "sequential"].merge(
            table[table["solver"] == "parallel"], on=keys, suffixes=("_seq", "_par"))
        ratio = float((paired["seconds_seq"] / paired["seconds_par"]).median())
        n = len(paired)
        if ratio >= 1:
            lines.append(f"parallel is {ratio:.1f}x faster than sequential at equal settings (median of {n})")
        else:
            lines.append(f"parallel is {1 / ratio:.1f}x slower than sequential at equal settings (median of {n})")
        gap = float((paired[f"{er_col}_par"] - paired[f"{er_col}_seq"]).median())
        direction = "above" if gap >= 0 else "below"
        lines.append(f"parallel's {which} ER is {abs(gap):.1f} points {direction} sequential's at equal settings "
                     f"(median of {n})")
    early = int(table["stopped_early"].sum())
    lines.append(f"{early} of {len(table)} runs stopped before their max_iterations (converged)")
    return lines


def plot_grid_heatmaps(table: pd.DataFrame, column: str, title: str) -> Any:
    """One heatmap per solver: ``column`` over max_iterations (rows) x dist_reg_weight (columns), cells labelled."""
    import matplotlib.pyplot as plt

    solvers = list(dict.fromkeys(table["solver"]))
    fig, axes = plt.subplots(1, len(solvers), figsize=(4.6 * len(solvers), 3.8), squeeze=False)
    plt.close(fig)  # detached from pyplot: the notebook shows it once
    low, high = float(table[column].min()), float(table[column].max())
    for ax, solver in zip(axes[0], solvers):
        grid = table[table["solver"] == solver].pivot_table(index="max_iterations", columns="dist_reg_weight",
                                                            values=column, aggfunc="mean")
        image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", vmin=low, vmax=high, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [f"{w:g}" for w in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(int(i)) for i in grid.index])
        ax.set_xlabel("dist_reg_weight")
        ax.set_ylabel("max iterations")
        ax.set_title(solver)
        for (r, c), value in pd.DataFrame(grid.to_numpy()).stack().items():
            bright = high > low and (value - low) / (high - low) > 0.6  # viridis turns yellow: dark text there
            ax.text(c, r, f"{value:.1f}", ha="center", va="center", color="black" if bright else "white", fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), label=title)
    fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------- dist_reg_weight study

STUDY_EXPERIMENT = "optimize_dist_reg_weight"
STUDIES_FOLDER = "studies"  # results/optimize_dist_reg_weight/studies/<study>/: the journal a study resumes from


@dataclass
class StudyOutcome:
    """A finished (or resumed and finished) dist_reg_weight study and what was written."""

    run: RunFolder
    config: StudyConfig
    result: Any  # newllm.experiments.study.StudyResult
    written: dict[str, Path]


def study_config(values: Mapping[str, Any], results_dir: PathLike) -> StudyConfig:
    """The StudyConfig of the notebook's parameters; the journal lives under results/<experiment>/studies/."""
    return StudyConfig(
        dist_reg_weight_range=(float(values["w_low"]), float(values["w_high"])),
        n_trials=values["n_trials"], timeout=values["timeout"], study_name=values["study_name"],
        experiment=STUDIES_FOLDER, results_dir=str(Path(results_dir) / STUDY_EXPERIMENT), storage=values["storage"],
        sampler_seed=values["seed"],
    )


def run_dist_reg_study(values: Mapping[str, Any], results_dir: PathLike, run_name: Optional[str] = None,
                       progress: bool = True) -> StudyOutcome:
    """Seed 004's Optuna study of dist_reg_weight (minimising validation PPL), resumed when the study exists;
    its outputs (best config, top-5, plots) go to a new run folder."""
    from newllm.experiments.cvfp import dist_reg_objective
    from newllm.experiments.pipelines import settings_from_parameters
    from newllm.experiments.study import run_study, write_study_outputs

    values = dict(values)
    config = study_config(values, results_dir)  # validates the range and names before anything runs
    settings = settings_from_parameters(values)
    run = RunFolder.create(STUDY_EXPERIMENT, run_name or values["study_name"], results_dir)
    run.write_json("parameters", values)
    run.write_config(study=config, settings=settings.to_dict(), journal=str(config.journal_path))
    objective = dist_reg_objective(settings, progress=False)
    result = run_study(objective, config, progress=progress)
    written = write_study_outputs(result, run.path, base_phase1=settings.phase1)
    return StudyOutcome(run, config, result, written)

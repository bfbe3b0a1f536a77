"""From a notebook's parameters cell to configs: resolved values, the results folder, and the preset -> config
translation the notebooks and ``python -m newllm demo`` share.

- :func:`find_results_dir`: an explicit folder, else ``$NEWLLM_RESULTS_DIR``, else ``<repo>/results`` (the repo
  found by walking up to newllm's pyproject.toml), else ``./results``. Notebooks run with cwd = notebooks/.
- :func:`open_run`: the run folder ``results/<experiment>/<run-name>/`` with the resolved parameters.
- :func:`notebook_values`: the parameters cell's values resolved against the presets (:mod:`newllm.notebook.presets`).
- :func:`settings_from_parameters`, :func:`study_config`, :func:`gated_batch_size`, :func:`cvfp_embed_dim`,
  :func:`training_family`: resolved values -> the configs the experiments take.
"""

from __future__ import annotations

import difflib
import json
import os
import types
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import pandas as pd
import torch

from newllm.config.data import DataConfig
from newllm.config.experiments import StudyConfig
from newllm.config.models import ModelConfig
from newllm.config.training import Phase1Config, Phase2Config
from newllm.experiments.cvfp import CVFPSettings
from newllm.experiments.dist_reg_study import STUDIES_FOLDER, STUDY_EXPERIMENT
from newllm.models.embeddings import GPT2_EMBED_DIM
from newllm.notebook.presets import NOTEBOOK_PARAMS, resolve
from newllm.training.gated import CPU_BATCH_SIZE
from newllm.utils.runs import RunFolder

PathLike = Union[str, Path]
RESULTS_DIR_ENV = "NEWLLM_RESULTS_DIR"
_PROJECT_MARKER = 'name = "newllm"'  # the line of pyproject.toml that identifies this project's checkout

GATED_DEFAULT_LR = 1e-4  # seed 001's learning rate (Adam, batch 512 on a T4)
GATED_GPU_BATCH = 512  # seed 001's batch (windows) on a T4; on a CPU the trainer's own 32
CVFP_DEFAULT_LR = Phase2Config().lr


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


def default_run_name(values: Mapping[str, Any], *suffixes: str) -> str:
    """``<dataset>_ctx<D>_layers<L>[_suffix...]``: a run folder's name from the settings."""
    return "_".join([f"{values['dataset'].replace('/', '_')}_ctx{values['ctx_dim']}_layers{values['layers']}",
                     *suffixes])


# parameters a resumed run may change: what it adds (sizes, seeds, baselines, trials), not how it trains
RESUMABLE_PARAMETERS = frozenset({"samples", "seeds", "baselines", "n_trials", "timeout"})


def open_run(experiment: str, values: Mapping[str, Any], results_dir: PathLike, run_name: Optional[str] = None,
             default_name: Optional[str] = None, resume: bool = False) -> RunFolder:
    """``results/<experiment>/<run_name>/``, a new folder (an existing name gets _2, _3, ...) or, with ``resume``,
    the existing ``run_name``; the resolved parameters, the preset used among them, go to parameters.json.

    A resume whose parameters differ from the recorded ones in anything but :data:`RESUMABLE_PARAMETERS` stops
    here, before anything is written, naming the differences."""
    if not isinstance(resume, bool):
        raise ValueError(f"resume={resume!r} is not allowed: use True or False")
    if resume and not run_name:
        raise ValueError(f"resume needs run_name: the folder under results/{experiment}/ to continue")
    run = RunFolder.create(experiment, run_name or default_name or default_run_name(values), results_dir,
                           resume=resume)
    if resume and run.file("parameters.json").is_file():
        recorded = recorded_parameters(experiment, run.name, results_dir)
        differing = sorted(k for k in set(recorded) | set(values) if k not in RESUMABLE_PARAMETERS | {"preset"}
                           and recorded.get(k) != values.get(k))
        if differing:
            changes = "; ".join(f"{k}: {recorded.get(k)!r} -> {values.get(k)!r}" for k in differing)
            raise ValueError(f"run {run.name!r} was made with other parameters ({changes}): its results would be "
                             "mixed with these. Start a new run (another run_name, or resume=False), or resume with "
                             "the recorded parameters (leave those at None).")
    run.write_json("parameters", dict(values))
    return run


# ------------------------------------------------------------------------------------------- parameters

def notebook_values(notebook: str, preset: str, namespace: Mapping[str, Any]) -> dict:
    """The notebook's parameters resolved against ``preset``; each one is read from ``namespace`` (the
    parameters cell's ``globals()``), where None means "take the preset". Raises ValueError on a bad value.

    With ``resume=True`` (and ``run_name``) in the namespace, every parameter left at None takes the value the run
    recorded in its parameters.json, not the preset's: ``-p run_name my_sweep -p resume True`` continues the sweep
    as it was started. A parameter given explicitly wins (the experiment then checks that the run's settings did
    not change, e.g. only sizes may be added)."""
    if notebook not in NOTEBOOK_PARAMS:
        raise ValueError(f"unknown notebook {notebook!r}: one of {sorted(NOTEBOOK_PARAMS)}")
    _refuse_unknown(notebook, namespace)
    given = {name: namespace.get(name) for name in NOTEBOOK_PARAMS[notebook]}
    resume = namespace.get("resume", False)
    if not isinstance(resume, bool):
        raise ValueError(f"resume={resume!r} is not allowed: use True or False (papermill: -p resume True), not a "
                         "string or a number")
    if resume:
        recorded = recorded_parameters(notebook, namespace.get("run_name"), namespace.get("results_dir"))
        given = {name: recorded.get(name) if value is None else value for name, value in given.items()}
        preset = recorded.get("preset_used", preset)
    return resolve(notebook, preset, **given)


# Globals a notebook holds before its resolve cell besides its parameters: the Colab cell's and IPython's own.
_NOTEBOOK_GLOBALS = frozenset({"preset", "results_dir", "run_name", "resume", "MOUNT_DRIVE", "repo", "url", "In", "Out"})


def _refuse_unknown(notebook: str, namespace: Mapping[str, Any]) -> None:
    """A misspelt papermill parameter (``-p sampels 200``) lands in the notebook as a global nobody reads, and the
    whole preset would run: stop instead, naming the closest parameter."""
    known = set(NOTEBOOK_PARAMS[notebook]) | _NOTEBOOK_GLOBALS
    unknown = sorted(name for name, value in namespace.items()
                     if not name.startswith("_") and name not in known and not isinstance(value, types.ModuleType)
                     and not callable(value))
    if unknown:
        hints = [f"{name!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
            name, sorted(known - _NOTEBOOK_GLOBALS | {"results_dir", "run_name", "resume"}), n=1)) else "")
            for name in unknown]
        raise ValueError(f"unknown parameter(s) for {notebook}: {', '.join(hints)}; the parameters are "
                         f"{sorted(NOTEBOOK_PARAMS[notebook])} plus results_dir, run_name (and resume where offered)")


def recorded_parameters(experiment: str, run_name: Optional[str], results_dir: Optional[PathLike] = None) -> dict:
    """The resolved parameters a run recorded (``<results>/<experiment>/<run_name>/parameters.json``)."""
    if not run_name:
        raise ValueError(f"resume needs run_name: the folder under results/{experiment}/ to continue")
    path = find_results_dir(results_dir) / experiment / str(run_name) / "parameters.json"
    if not path.is_file():
        raise ValueError(f"cannot resume run {run_name!r}: {path} does not exist (check run_name and results_dir, "
                         "or set resume=False to start a new run)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot resume run {run_name!r}: {path} is unreadable ({error})") from None


def parameters_table(values: Mapping[str, Any]) -> pd.DataFrame:
    """Two columns (parameter, value) for display; the preset line says which one was requested and used."""
    rows = [("preset", f"{values['preset']} -> {values['preset_used']}")]
    rows += [(k, repr(v)) for k, v in values.items() if k not in ("preset", "preset_used")]
    return pd.DataFrame(rows, columns=["parameter", "value"])


# ---------------------------------------------------------------------------------------------- configs

def cvfp_embedding(tokenizer: str, embed_dim: int) -> str:
    """GPT-2's pretrained embeddings ("auto": loaded when reachable) for GPT-2 tokens at 768 dims, else random."""
    return "auto" if tokenizer == "gpt2" and embed_dim == GPT2_EMBED_DIM else "random"


def settings_from_parameters(values: Mapping[str, Any], samples: Optional[int] = None) -> CVFPSettings:
    """CVFPSettings from resolved notebook parameters (``samples`` overrides a list-valued ``samples``)."""
    get = values.get
    n = samples if samples is not None else (get("samples") if isinstance(get("samples"), int) else get("samples")[0])
    return CVFPSettings(
        data=DataConfig(dataset=get("dataset"), tokenizer=get("tokenizer"), samples=n,
                        val_samples=get("val_samples", 20)),
        model=ModelConfig(ctx_dim=get("ctx_dim"), embed_dim=get("embed_dim"), num_layers=get("layers"),
                          num_input_tokens=get("num_input_tokens", 1),
                          embedding=cvfp_embedding(get("tokenizer"), get("embed_dim"))),
        phase1=Phase1Config(
            solver=get("phase1_solver", "parallel"), dist_reg_weight=get("dist_reg_weight", 0.6),
            max_iterations=get("phase1_max_iterations", 40),
            min_iterations=min(get("phase1_min_iterations", 5), get("phase1_max_iterations", 40)),
        ),
        phase2=Phase2Config(epochs=get("phase2_epochs", 10), patience=get("phase2_patience", 2),
                            lr=get("phase2_lr", 1e-3)),
        seed=get("seed", 42),
    )


def cvfp_embed_dim(values: Mapping[str, Any], tokenizer: str) -> int:
    """The CVFP embedding width: the parameter, else 768 (GPT-2's, loaded when possible) with GPT-2 tokens,
    else ctx_dim."""
    if values.get("embed_dim"):
        return int(values["embed_dim"])
    return GPT2_EMBED_DIM if tokenizer == "gpt2" else int(values["ctx_dim"])


def gated_batch_size(values: Mapping[str, Any], cuda: Optional[bool] = None) -> int:
    """The gated LM's windows per batch: the parameter, else seed 001's 512 on a GPU and the trainer's 32 on a CPU."""
    if values["batch_size"]:
        return int(values["batch_size"])
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return GATED_GPU_BATCH if cuda else CPU_BATCH_SIZE


def gated_source(dataset: str) -> str:
    """The gated LM's data source for the notebook's ``dataset``: 'wikitext2' is the local copy beside the
    repo or the hub (newllm.data.wikitext's "auto"), 'builtin' the offline corpus, anything else a folder."""
    return "auto" if dataset in ("wikitext2", "auto") else dataset


def training_family(values: Mapping[str, Any]) -> str:
    """The advanced-training notebook's ``model_family``, once the parameters that family cannot take are refused."""
    family = values["model_family"]
    if family == "gated" and values["tokenizer"] not in ("auto", "word"):
        raise ValueError(f"tokenizer={values['tokenizer']!r}: the gated LM is trained on word-level tokens; "
                         "use tokenizer='auto' or 'word' (or model_family='cvfp' for GPT-2 / BPE tokens)")
    if family == "cvfp" and values["sweep"]:
        raise ValueError(f"sweep={values['sweep']!r}: seed 002's sweeps train the gated LM; use model_family='gated'")
    if family == "cvfp" and values["resume_from"]:
        raise ValueError("resume_from is supported for the gated LM only; a CVFP run's Phase 2 is short: start "
                         "it again (or use newllm.training.phase2.train_phase2(..., resume=True) from Python)")
    return family


def study_config(values: Mapping[str, Any], results_dir: PathLike) -> StudyConfig:
    """The StudyConfig of the notebook's parameters; the journal lives under results/<experiment>/studies/."""
    return StudyConfig(
        dist_reg_weight_range=(float(values["w_low"]), float(values["w_high"])),
        n_trials=values["n_trials"], timeout=values["timeout"], study_name=values["study_name"],
        experiment=STUDIES_FOLDER, results_dir=str(Path(results_dir) / STUDY_EXPERIMENT), storage=values["storage"],
        sampler_seed=values["seed"],
    )

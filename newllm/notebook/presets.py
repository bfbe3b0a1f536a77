"""Notebook parameters: presets and validation.

Every notebook's ``parameters`` cell sets its knobs to ``None`` ("use the preset") or to a value. ``resolve``
fills the ``None`` ones from the chosen preset: on a CUDA GPU ("gpu") the seeds' real experiments (GPT-2 tokenizer,
768 dims, 6 layers, samples [50, 100, 200, 500], ...); on a CPU ("cpu") a small version that finishes in a few minutes
on 2 cores. ``preset="auto"`` picks by the hardware. An explicit parameter always wins over the preset, and every
value is checked here, so a bad parameter stops the parameters cell with a message that says what to pass instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

PRESETS = ("auto", "cpu", "gpu", "seed000", "seed004")


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its kind and its value under each preset."""

    kind: str  # "int", "int_list", "float", "float_list", "str", "str_list", "bool", or "optional_" + a scalar kind
    cpu: Any
    gpu: Any
    help: str = ""
    choices: Optional[tuple] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None


COMMON_MODEL = {
    "dataset": Param("str", "builtin", "auto", "'auto', 'builtin', 'wikitext2', 'ultrachat' or a local path"),
    "tokenizer": Param("str", "auto", "gpt2", "tokenizer", choices=("auto", "gpt2", "word", "bpe")),
    "ctx_dim": Param("int", 64, 768, "context vector width", minimum=1),
    "embed_dim": Param("int", 64, 768, "token embedding width (768 for GPT-2 embeddings)", minimum=1),
    "layers": Param("int", 2, 6, "layers in each of ContextBlock and TokenBlock", minimum=1),
    "num_input_tokens": Param("int", 1, 1, "k: how many recent tokens form the token input", minimum=1),
    "seed": Param("int", 42, 42, "random seed", minimum=0),
}

PHASES = {
    "dist_reg_weight": Param("float", 0.6, 0.6, "w in (1-w)*CVFP + w*diversity", minimum=0.0, maximum=1.0),
    "phase1_solver": Param("str", "parallel", "parallel", "Phase 1 solver", choices=("sequential", "parallel")),
    "phase1_max_iterations": Param("int", 10, 40, "Phase 1 iterations at most", minimum=1),
    "phase1_min_iterations": Param("int", 3, 5, "Phase 1 iterations at least", minimum=1),
    "phase2_epochs": Param("int", 3, 10, "Phase 2 epochs", minimum=1),
    "phase2_patience": Param("int", 2, 2, "Phase 2 early-stopping patience", minimum=1),
    "phase2_lr": Param("float", 1e-3, 1e-3, "Phase 2 learning rate", minimum=1e-12),
    "val_samples": Param("int", 2, 20, "held-out validation documents (fixed for every size)", minimum=1),
}

ERA_B = {
    "architecture": Param("str", "E", "E", "model: 'E' (ContextBlock + TokenBlock) or 'eraB' (the CVFPLayer model of "
                          "seeds 000 / 004)", choices=("E", "eraB")),
    "phase1_original": Param("optional_str", None, None, "None: the kit's Phase-1 rules; 'B' / 'C': the original's "
                             "(Phase1Config.original: wrap-around token 0, dispersion per chunk, era B's fixed target, "
                             "no noise, thr 0.1 / era C's)", choices=("B", "C")),
}

NOTEBOOK_PARAMS: dict[str, dict[str, Param]] = {
    "scaling": {
        "samples": Param("int_list", [2, 4, 8, 16], [50, 100, 200, 500], "training documents per size", minimum=1),
        "seeds": Param("int_list", [42], [42], "seeds per size (mean and std are reported)", minimum=0),
        "baselines": Param("str_list", [], [], "baselines trained on the same data", choices=("lstm", "transformer")),
        **COMMON_MODEL,
        **PHASES,
        # seed 003 stopped Phase 2 after one epoch without improvement
        "phase2_patience": Param("int", 2, 1, "Phase 2 early-stopping patience", minimum=1),
    },
    "parallel_tuning": {
        "samples": Param("int", 4, 50, "training documents", minimum=1),
        "iterations": Param("int_list", [3, 6], [10, 20, 30, 50], "Phase 1 max iterations (grid axis)", minimum=1),
        "weights": Param("float_list", [0.5, 0.9], [0.5, 0.7, 0.8, 0.9], "dist_reg_weight values (grid axis)",
                         minimum=0.0, maximum=1.0),
        "solvers": Param("str_list", ["sequential", "parallel"], ["sequential", "parallel"], "solvers (grid axis)",
                         choices=("sequential", "parallel")),
        **COMMON_MODEL,
        **ERA_B,
        **{k: v for k, v in PHASES.items() if k in ("val_samples", "phase1_min_iterations")},
    },
    "optimize_dist_reg_weight": {
        "samples": Param("int", 4, 50, "training documents", minimum=1),
        "n_trials": Param("int", 6, 20, "Optuna trials in all (a resumed study runs the rest)", minimum=1),
        "timeout": Param("optional_int", None, None, "stop after this many seconds (None: no limit)", minimum=1),
        "study_name": Param("str", "dist_reg_weight", "dist_reg_weight", "study name (resumes when it exists)"),
        "storage": Param("optional_str", None, None, "None: a journal file under results/; or an RDB URL"),
        "w_low": Param("float", 0.5, 0.5, "lower end of the dist_reg_weight range", minimum=0.0, maximum=1.0),
        "w_high": Param("float", 0.999, 0.999, "upper end of the dist_reg_weight range", minimum=0.0, maximum=1.0),
        "pruner": Param("str", "median", "median", "'median': MedianPruner(5, 0, 1) as seed 004's document; 'none': "
                        "NopPruner as the original's final code", choices=("median", "none")),
        "min_er_pct": Param("optional_float", 30.0, 30.0, "prune trials whose train ER is below this % (the kit: 30, "
                            "seed-spec 4.6's low-diversity flag; seed 004's document: 50; 0: off)",
                            minimum=0.0, maximum=100.0),
        **COMMON_MODEL,
        **ERA_B,
        **PHASES,
    },
    "advanced_training": {
        "model_family": Param("str", "gated", "gated", "'gated' (end-to-end LM) or 'cvfp' (two-phase model)",
                              choices=("gated", "cvfp")),
        "dataset": Param("str", "builtin", "wikitext2", "'wikitext2', 'builtin' or a local path"),
        "tokenizer": Param("str", "auto", "auto", "'auto' (gated: word; cvfp: GPT-2 for hub data, word for builtin); "
                           "'gpt2' and 'bpe' for cvfp only", choices=("auto", "gpt2", "word", "bpe")),
        "samples": Param("int", 8, 200, "training documents (cvfp; gated: built-in corpus only, WikiText-2 is used "
                         "whole)", minimum=1),
        "val_samples": Param("int", 2, 20, "validation documents (cvfp; gated: built-in corpus only)", minimum=1),
        "ctx_dim": Param("int", 64, 512, "context vector width", minimum=1),
        "embed_dim": Param("optional_int", None, None, "token embedding width (None: gated 256 as in seed 001; "
                           "cvfp 768 with GPT-2 tokens, else ctx_dim)", minimum=1),
        "layers": Param("int", 2, 12, "layers", minimum=1),
        "quantization": Param("str", "none", "none", "'none' or 'int8' (post-training, for inference)",
                              choices=("none", "int8")),
        "vocab_size": Param("int", 1000, 1000, "word-level vocabulary (gated LM)", minimum=5),
        "epochs": Param("int", 3, 50, "epochs", minimum=1),
        "max_updates": Param("optional_int", None, None, "stop after this many optimizer steps (cvfp: Phase-2 "
                             "steps; None: no limit)", minimum=1),
        "batch_size": Param("optional_int", None, None, "gated: windows per batch (None: 512 on a GPU as in seed "
                            "001, 32 on a CPU); cvfp: Phase-2 tokens per step (None: the memory planner's)", minimum=1),
        "lr": Param("optional_float", 1e-3, None, "learning rate (None: gated 1e-4 as in seed 001; cvfp Phase 2 "
                    "1e-3)", minimum=1e-12),
        "schedule": Param("str", "constant", "constant", "LR schedule", choices=("constant", "cosine")),
        "resume_from": Param("optional_str", None, None, "a checkpoint to resume from (gated LM)"),
        "sweep": Param("optional_str", None, None, "gated LM only: also run seed 002's sweep, 'ctx' (ctx_dim 256, "
                       "512, 1024 at 6 layers) or 'layers' (6, 12, 24 layers at ctx 512); None: no sweep",
                       choices=("ctx", "layers")),
        "seed": Param("int", 42, 42, "random seed", minimum=0),
        **{k: v for k, v in PHASES.items()
           if k in ("dist_reg_weight", "phase1_solver", "phase1_max_iterations", "phase1_min_iterations")},
    },
}


# The seeds' experiments at CPU size, on top of the "cpu" preset: seed 000's grid (seed-spec 4.7) and seed 004's
# study (4.8) on the era-B model with the original's Phase-1 rules.
SEED_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "seed000": ("parallel_tuning", {
        "architecture": "eraB", "phase1_original": "B", "iterations": [10, 20, 30, 50],
        "weights": [0.5, 0.7, 0.8, 0.9], "solvers": ["parallel"], "phase1_min_iterations": 1,
    }),
    "seed004": ("optimize_dist_reg_weight", {
        "architecture": "E", "phase1_original": "B", "n_trials": 20, "w_low": 0.5, "w_high": 0.999,
        "pruner": "median", "min_er_pct": 50.0, "phase1_max_iterations": 10, "phase1_min_iterations": 1,
        "phase2_epochs": 5, "phase2_lr": 1e-4, "phase2_patience": 5, "samples": 5,
    }),
}

# Where a seed preset differs from its seed: (what, the seed's, this preset's, why).
SEED_DEVIATIONS: dict[str, list[tuple[str, str, str, str]]] = {
    "seed000": [
        ("data", "1,000 UltraChat tokens (GPT-2 BPE)", "the built-in corpus, `samples` documents (word tokens)",
         "offline; DataConfig has no token cap"),
        ("model size", "6 x 768, V 50,257", "ctx_dim / layers of the cpu preset (64 x 2)", "CPU time"),
        ("embedding", "GPT-2 wte, frozen", "random N(0, 0.02), frozen", "GPT-2 weights cannot be loaded offline"),
        ("iteration 0 / validation pass", "block called as (token, context) (seed-spec 7.1)", "(context, token)",
         "the swap was a bug"),
        ("solvers", "parallel grid (+ one sequential run)", "parallel", "as the seed's grid"),
    ],
    "seed004": [
        ("data", "5 samples x 128 UltraChat tokens", "5 built-in documents, full length", "offline; no truncation"),
        ("model size", "6 x 768", "cpu preset (64 x 2)", "CPU time"),
        ("embedding", "GPT-2 wte, frozen", "random N(0, 0.02), frozen", "GPT-2 weights cannot be loaded offline"),
        ("model", "era-B CVFPLayer model", "E-architecture (ContextBlock + TokenBlock) with era B's Phase-1 rules",
         "the kit has no era-B Phase 2 yet"),
        ("Phase 2", "per-block heads, batch 32, lr 1e-4, 5 epochs", "the kit's cached Phase 2, lr 1e-4, 5 epochs, "
         "planner's batch", "the kit has no era-B Phase 2 yet"),
        ("pruner", "MedianPruner(5, 0, 1) + train ER < 50 % (document); NopPruner (final code)",
         "the document's by default; pruner='none', min_er_pct=0 for the final code's", ""),
    ],
}


def seed_deviations(preset: str) -> "Any":
    """A DataFrame of where the seed preset differs from its seed (empty for other presets)."""
    import pandas as pd

    rows = SEED_DEVIATIONS.get(preset, [])
    return pd.DataFrame(rows, columns=["what", "the seed", "this preset", "why"])


def choose_preset(preset: str, cuda_available: Optional[bool] = None) -> str:
    """'auto' -> 'gpu' on a CUDA machine, else 'cpu'; 'cpu'/'gpu' and the seed presets pass through; anything
    else is an error."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is unknown: use one of {', '.join(map(repr, PRESETS))}")
    if preset != "auto":
        return preset
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    return "gpu" if available else "cpu"


def _check(name: str, spec: Param, value: Any) -> Any:
    def bad(expected: str) -> ValueError:
        return ValueError(f"parameter {name}={value!r} is not allowed: {expected}" + (f" ({spec.help})" if spec.help else ""))

    def number(v: Any, integer: bool) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
            raise bad("an integer" if integer else "a number")
        v = int(v) if integer else float(v)
        if spec.minimum is not None and v < spec.minimum:
            raise bad(f"a value >= {spec.minimum}")
        if spec.maximum is not None and v > spec.maximum:
            raise bad(f"a value <= {spec.maximum}")
        return v

    def text(v: Any) -> str:
        if not isinstance(v, str):
            raise bad("a string")
        if spec.choices is not None and v not in spec.choices:
            raise bad("one of " + ", ".join(map(repr, spec.choices)))
        return v

    kind = spec.kind
    if kind.startswith("optional_"):
        if value is None:
            return None
        kind = kind[len("optional_"):]
    if kind.endswith("_list"):
        items = value if isinstance(value, (list, tuple)) else [value]  # one value is a list of one
        item_kind = kind[: -len("_list")]
        if item_kind == "str":
            checked = [text(v) for v in items]
        else:
            checked = [number(v, item_kind == "int") for v in items]
        if not checked and name not in ("baselines",):
            raise bad("a non-empty list")
        return checked
    if isinstance(value, (list, tuple)):
        raise bad("one value, not a list")
    if kind in ("int", "float"):
        return number(value, kind == "int")
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("True or False")
        return value
    return text(value)


def resolve(notebook: str, preset: str = "auto", cuda_available: Optional[bool] = None, **given: Any) -> dict:
    """The notebook's parameters with ``None`` filled from the preset; explicit values win and are validated.

    Returns a dict that also records ``preset`` (the requested one) and ``preset_used`` ("cpu" or "gpu").
    """
    if notebook not in NOTEBOOK_PARAMS:
        raise ValueError(f"unknown notebook {notebook!r}: one of {sorted(NOTEBOOK_PARAMS)}")
    specs = NOTEBOOK_PARAMS[notebook]
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {notebook}.ipynb; known: {sorted(specs)}")
    used = choose_preset(preset, cuda_available)
    seed_values: dict[str, Any] = {}
    if used in SEED_PRESETS:
        home, seed_values = SEED_PRESETS[used]
        if home != notebook:
            raise ValueError(f"preset={used!r} is {home}.ipynb's (seed experiment); use 'auto', 'cpu' or 'gpu' here")
    values: dict[str, Any] = {"preset": preset, "preset_used": used}
    for name, spec in specs.items():
        value = given.get(name)
        if value is None:
            value = seed_values.get(name, spec.gpu if used == "gpu" else spec.cpu)
            values[name] = _check(name, spec, value) if value is not None else None
        else:
            values[name] = _check(name, spec, value)
    return values


def parameter_table(notebook: str) -> "Any":
    """A DataFrame describing the notebook's parameters and both presets (for docs and the notebooks)."""
    import pandas as pd

    rows = [
        {"parameter": name, "cpu preset": spec.cpu, "gpu preset": spec.gpu, "meaning": spec.help}
        for name, spec in NOTEBOOK_PARAMS[notebook].items()
    ]
    return pd.DataFrame(rows)

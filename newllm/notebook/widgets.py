"""Model-size controls for the notebooks: sliders for ctx_dim and layers (and data size) with a live estimate.

Moving a slider shows at once the parameter count (counted on PyTorch's meta device: no weights are allocated) and
the memory the run will need on this machine: for the CVFP model the Phase-2 plan (``Phase2Workload.from_config``
+ ``plan_phase2`` under ``MemoryBudget.probe``), for the gated LM a closed-form estimate of end-to-end training.

``size_controls`` returns the widget box and a :class:`SizeControls` object. The notebooks' run cell calls
``controls.apply(values)``: slider values replace the parameters only for the sliders the user moved, so a
papermill run (where nobody moves anything) uses the parameters unchanged. The estimate logic (``count_parameters``,
``estimate_size``, ``SizeControls``) works without a browser; ipywidgets is imported only to build the box.
"""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pandas as pd
import torch

from newllm.config.models import GatedLMConfig, ModelConfig
from newllm.config.training import Phase2Config
from newllm.data.corpus import load_corpus
from newllm.experiments.advanced_training import TrainingSetup
from newllm.notebook.parameters import cvfp_embed_dim, gated_batch_size, settings_from_parameters
from newllm.training.planner import (
    GATED_MEMORY_SAFETY,
    GiB,
    MemoryBudget,
    MemoryPlanError,
    Phase2Workload,
    format_bytes,
    gated_training_bytes,
    plan_phase2,
)

FAMILIES = ("cvfp", "gated")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is unknown: use one of {', '.join(map(repr, FAMILIES))}")


def gated_model_config(ctx_dim: int, layers: int, vocab_size: int, embed_dim: Optional[int] = None) -> GatedLMConfig:
    """The gated LM's config for these sizes (embedding width: seed 001's 256 unless given)."""
    base = GatedLMConfig()
    return dataclasses.replace(base, ctx_dim=ctx_dim, num_layers=layers, vocab_size=vocab_size,
                               embed_dim=embed_dim or base.embed_dim)


def cvfp_model_config(ctx_dim: int, layers: int, vocab_size: int, embed_dim: Optional[int] = None,
                      architecture: str = "E") -> ModelConfig:
    """The CVFP model's config for these sizes (embedding width ctx_dim unless given; random embeddings)."""
    return ModelConfig(vocab_size=vocab_size, ctx_dim=ctx_dim, embed_dim=embed_dim or ctx_dim, num_layers=layers,
                       embedding="random", architecture=architecture)


def count_parameters(family: str, ctx_dim: int, layers: int, vocab_size: int, embed_dim: Optional[int] = None,
                     architecture: str = "E") -> int:
    """Parameters of the model with these sizes (cvfp: of ``architecture``, "E" or "eraB"), counted on the meta
    device (nothing is allocated)."""
    from newllm.models.common import parameter_count
    from newllm.models.cvfp import model_class
    from newllm.models.gated import GatedContextLM

    _check_family(family)
    with torch.device("meta"):
        if family == "gated":
            model = GatedContextLM(gated_model_config(ctx_dim, layers, vocab_size, embed_dim))
        else:
            cfg = cvfp_model_config(ctx_dim, layers, vocab_size, embed_dim, architecture)
            model = model_class(cfg)(cfg)
    return parameter_count(model)


@dataclass(frozen=True)
class SizeEstimate:
    """What a model of these sizes costs on this machine."""

    parameters: int
    peak_bytes: Optional[int]  # planned peak where the run computes (GPU on CUDA, host RAM on CPU); None: no plan fits
    limit_bytes: int  # what that place may use (safety x free)
    where: str  # "GPU" or "host RAM"
    detail: str  # how the estimate was made / the plan's choices
    fits: bool

    def text(self) -> str:
        return f"{self.parameters:,} parameters | {self.memory_text()} | {self.detail}"

    def memory_text(self) -> str:
        if self.peak_bytes is None:
            return f"does NOT fit in {format_bytes(self.limit_bytes)} of usable {self.where}"
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{self.where} peak {format_bytes(self.peak_bytes)} of {format_bytes(self.limit_bytes)} usable: "
                f"{verdict}")


def estimate_size(
    family: str,
    ctx_dim: int,
    layers: int,
    *,
    vocab_size: int,
    budget: MemoryBudget,
    embed_dim: Optional[int] = None,
    train_tokens: int = 0,
    val_tokens: int = 0,
    phase2: Phase2Config = Phase2Config(),
    batch_size: int = 32,
    window: int = 64,
    train_windows: int = 0,
    architecture: str = "E",
) -> SizeEstimate:
    """Parameter count and memory peak of a run with these sizes (cvfp: the Phase-2 plan; gated: training).

    ``architecture="eraB"``: the era-B model's parameter count; the memory is still the E-architecture's Phase-2
    plan at these sizes (the planner models that one)."""
    _check_family(family)
    where = "GPU" if budget.device_type == "cuda" else "host RAM"
    if family == "cvfp":
        cfg = cvfp_model_config(ctx_dim, layers, vocab_size, embed_dim)
        work = Phase2Workload.from_config(cfg, max(train_tokens, 1), max(val_tokens, 1))
        params = work.params
        if architecture != "E":
            params = count_parameters("cvfp", ctx_dim, layers, vocab_size, embed_dim, architecture)
        place = "device" if budget.device_type == "cuda" else "host"
        try:
            plan = plan_phase2(work, phase2, budget)
        except MemoryPlanError as exc:
            limit = int(phase2.memory_safety * (budget.device_free if place == "device" else budget.host_available))
            return SizeEstimate(params, None, limit, where, str(exc).splitlines()[0], False)
        detail = (f"Phase-2 plan for {train_tokens:,} + {val_tokens:,} tokens: cache on {plan.placement} as "
                  f"{plan.cache_dtype}, micro-batch {plan.micro_batch_size:,}")
        if architecture != "E":
            detail += " (memory: the E-architecture's plan)"
        return SizeEstimate(params, plan.peak(place), plan.limits[place], where, detail, True)
    cfg = gated_model_config(ctx_dim, layers, vocab_size, embed_dim)
    params = count_parameters("gated", ctx_dim, layers, vocab_size, embed_dim)
    parts = gated_training_bytes(cfg, batch_size, window, params, train_windows)
    free = budget.device_free if budget.device_type == "cuda" else budget.host_available
    limit = int(GATED_MEMORY_SAFETY * free)
    peak = sum(parts.values())
    detail = f"end-to-end training, batch {batch_size} x {window - 1} tokens (estimate)"
    return SizeEstimate(params, peak, limit, where, detail, peak <= limit)


@dataclass
class SizeControls:
    """Slider state: the values the notebook started with, the current ones, and the estimate they give.

    ``estimator(values) -> SizeEstimate`` is called with the current ``{name: value}``. ``set`` is what a slider's
    observer calls; ``apply`` merges the moved values into the notebook's parameters.
    """

    initial: dict[str, int]
    estimator: Callable[[dict[str, int]], SizeEstimate]
    applied: tuple[str, ...] = ()  # sliders whose value replaces the parameter when moved (others: estimate only)
    current: dict[str, int] = field(default_factory=dict)
    estimate: Optional[SizeEstimate] = None
    listeners: list[Callable[[SizeEstimate], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.current = dict(self.initial) if not self.current else self.current
        self.applied = tuple(self.applied) if self.applied else tuple(self.initial)
        unknown = sorted(set(self.applied) - set(self.initial))
        if unknown:
            raise ValueError(f"applied={unknown} are not sliders; sliders are {sorted(self.initial)}")
        self.estimate = self.estimator(dict(self.current))

    @property
    def moved(self) -> dict[str, int]:
        """The sliders whose value differs from the parameter they started at."""
        return {k: v for k, v in self.current.items() if v != self.initial[k]}

    def set(self, name: str, value: int) -> SizeEstimate:
        """Record a slider's new value and recompute the estimate."""
        if name not in self.initial:
            raise ValueError(f"no slider named {name!r}; sliders are {sorted(self.initial)}")
        self.current[name] = int(value)
        self.estimate = self.estimator(dict(self.current))
        for listener in self.listeners:
            listener(self.estimate)
        return self.estimate

    def apply(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with the moved (applied) sliders' values; records them under ``"sliders"``."""
        moved = {k: v for k, v in self.moved.items() if k in self.applied}
        if not moved:
            return values
        return {**values, **moved, "sliders": moved}

    def summary(self) -> str:
        """One line for the notebook's text output (the widget itself is not a result)."""
        sizes = ", ".join(f"{k}={v}" for k, v in self.current.items())
        moved = f" (moved: {', '.join(sorted(self.moved))})" if self.moved else ""
        return f"{sizes}{moved}: {self.estimate.text()}"


SLIDER_RANGES = {  # name -> (min, max, step); the max grows to hold the parameter's own value
    "ctx_dim": (8, 2048, 8),
    "layers": (1, 24, 1),
    "samples": (1, 1000, 1),
}


def size_controls(
    initial: dict[str, int],
    estimator: Callable[[dict[str, int]], SizeEstimate],
    applied: tuple[str, ...] = (),
    labels: Optional[dict[str, str]] = None,
) -> tuple[Any, SizeControls]:
    """An ipywidgets box (one IntSlider per ``initial`` entry, and the estimate as HTML) and its state."""
    import ipywidgets as widgets

    controls = SizeControls(dict(initial), estimator, applied)
    label = widgets.HTML(value=_html(controls.estimate))
    sliders = []
    for name, value in initial.items():
        low, high, step = SLIDER_RANGES.get(name, (1, max(4 * value, 1), 1))
        slider = widgets.IntSlider(value=value, min=min(low, value), max=max(high, value), step=step,
                                   description=(labels or {}).get(name, name), continuous_update=False,
                                   style={"description_width": "initial"}, layout=widgets.Layout(width="480px"))
        slider.observe(lambda change, n=name: controls.set(n, change["new"]), names="value")
        sliders.append(slider)
    controls.listeners.append(lambda estimate: setattr(label, "value", _html(estimate)))
    return widgets.VBox([*sliders, label]), controls


def _html(estimate: SizeEstimate) -> str:
    colour = "green" if estimate.fits else "red"
    return (f"<b>{estimate.parameters:,}</b> parameters &nbsp;|&nbsp; "
            f"<span style='color:{colour}'>{html.escape(estimate.memory_text())}</span>"
            f"<br><small>{html.escape(estimate.detail)}</small>")


def notebook_controls(
    family: str,
    values: dict[str, Any],
    *,
    vocab_size: int,
    embed_dim: Optional[int] = None,
    tokens_per_sample: float = 0.0,
    val_tokens: int = 0,
    batch_size: Optional[int] = None,
    budget: Optional[MemoryBudget] = None,
    architecture: Optional[str] = None,
) -> tuple[Any, SizeControls]:
    """The sliders of a notebook's resolved parameters: ctx_dim and layers, and for the CVFP model ``samples``.
    The parameter count follows ``architecture`` (default: ``values["architecture"]``, else "E").

    ``tokens_per_sample`` / ``val_tokens`` turn the samples slider into token counts (measure them on the corpus,
    e.g. :func:`data_sizes`). A list of sizes (the scaling sweep) shows its largest
    size and is not changed by the slider (estimate only); a single size is. ``batch_size``: gated windows per
    batch (default 32) or cvfp Phase-2 tokens per step (default: the planner's). ``budget``: this machine by default.
    """
    _check_family(family)
    if budget is None:
        budget = MemoryBudget.probe(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    architecture = architecture or values.get("architecture") or "E"
    initial = {"ctx_dim": int(values["ctx_dim"]), "layers": int(values["layers"])}
    applied: tuple[str, ...] = ("ctx_dim", "layers")
    labels = {}
    samples = values.get("samples")
    if family == "cvfp" and samples is not None:
        sweep = isinstance(samples, (list, tuple))
        initial["samples"] = int(max(samples)) if sweep else int(samples)
        labels["samples"] = "largest size (estimate only)" if sweep else "samples"
        applied = applied if sweep else applied + ("samples",)
    phase2 = Phase2Config(batch_size=batch_size) if family == "cvfp" and batch_size else Phase2Config()

    def estimator(current: dict[str, int]) -> SizeEstimate:
        n = current.get("samples", 0)
        return estimate_size(family, current["ctx_dim"], current["layers"], vocab_size=vocab_size, budget=budget,
                             embed_dim=embed_dim, train_tokens=int(round(tokens_per_sample * n)),
                             val_tokens=val_tokens, phase2=phase2, batch_size=batch_size or 32,
                             architecture=architecture)

    return size_controls(initial, estimator, applied, labels)


# ---------------------------------------------------------------------------------- the notebooks' controls

@dataclass(frozen=True)
class DataSizes:
    """Token counts of the notebook's corpus, for the size controls' memory estimate."""

    tokens_per_sample: float  # mean training tokens per document
    val_tokens: int
    vocab_size: int
    tokenizer: str


def data_sizes(values: dict[str, Any], progress: bool = False) -> DataSizes:
    """Load the corpus at the smallest training size of ``values`` (cached for the run) and measure it."""
    samples = values["samples"]
    smallest = min(samples) if isinstance(samples, (list, tuple)) else samples
    # only the data settings matter here; the model width is any valid one
    settings = settings_from_parameters({**values, "embed_dim": values.get("embed_dim") or values["ctx_dim"]},
                                        samples=smallest)
    corpus = load_corpus(settings.data, progress=progress)
    return DataSizes(corpus.train.n_tokens / smallest, corpus.val.n_tokens, corpus.tokenizer.vocab_size,
                     corpus.tokenizer.name)


def training_controls(values: dict[str, Any], budget: Optional[MemoryBudget] = None) -> tuple[Any, SizeControls]:
    """The advanced-training notebook's size sliders for its model family."""
    if values["model_family"] == "gated":
        return notebook_controls("gated", values, vocab_size=values["vocab_size"],
                                 embed_dim=values["embed_dim"] or GatedLMConfig().embed_dim,
                                 batch_size=gated_batch_size(values), budget=budget)
    sizes = data_sizes(values)
    return notebook_controls("cvfp", values, vocab_size=sizes.vocab_size,
                             embed_dim=cvfp_embed_dim(values, sizes.tokenizer),
                             tokens_per_sample=sizes.tokens_per_sample, val_tokens=sizes.val_tokens,
                             batch_size=values["batch_size"], budget=budget)


def training_memory(setup: TrainingSetup, budget: Optional[MemoryBudget] = None) -> tuple[pd.DataFrame, str]:
    """The prepared run's memory on this machine: a table (component, where, GiB; PEAK last) and one line.

    Gated LM: the closed-form estimate of :func:`gated_training_bytes`; CVFP: the Phase-2 memory plan.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    budget = budget if budget is not None else MemoryBudget.probe(device)
    where = "device" if budget.device_type == "cuda" else "host"
    if setup.family == "gated":
        data, batch = setup.gated_data, setup.gated_train.batch_size
        parts = gated_training_bytes(setup.gated_model, batch, setup.gated_train.window, setup.parameters,
                                     len(data.train))
        rows = [{"component": k, "where": where, "GiB": v / GiB} for k, v in parts.items()]
        rows.append({"component": "PEAK", "where": where, "GiB": sum(parts.values()) / GiB})
        free = budget.device_free if where == "device" else budget.host_available
        return pd.DataFrame(rows), (f"peak {format_bytes(sum(parts.values()))} on {where} (estimate, batch {batch}); "
                                    f"{format_bytes(free)} free")
    settings, corpus = setup.cvfp_settings, setup.corpus
    work = Phase2Workload.from_config(settings.model, corpus.train.n_tokens, corpus.val.n_tokens)
    plan = plan_phase2(work, settings.phase2, budget, checkpointing=True)
    return plan.table(), (f"Phase-2 peak {format_bytes(plan.peak(where))} on {where} of "
                          f"{format_bytes(plan.limits[where])} usable; cache on {plan.placement} as "
                          f"{plan.cache_dtype}, batch {plan.batch_size:,} tokens")

"""Write the four notebooks of notebooks/ (committed without outputs): ``python notebooks/build_notebooks.py``.

The .ipynb files are what is committed, tested and run; this script only keeps their shared cells (Colab setup,
parameters from newllm.notebook.presets, resolution, sliders, the CVFP configs) identical. Edit here, rerun, and
commit the regenerated notebooks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from newllm.notebook.presets import NOTEBOOK_PARAMS  # noqa: E402

# The one place notebooks take the repository's URL from (README.md's "Notebooks" section uses the same base).
COLAB_BASE = "https://colab.research.google.com/github/newllm/newllm/blob/main/notebooks"
DEFAULT_REPO_URL = "https://github.com/newllm/newllm.git"

COLAB_CELL = f'''\
# Colab only: clone (or update) the kit and install its requirements, never touching Colab's torch
# (colab_setup.sh; set NEWLLM_REPO_URL for a fork). Anywhere else this cell does nothing.
MOUNT_DRIVE = False  # True: runs are copied to Google Drive (MyDrive/newllm-results) after every epoch, surviving disconnects
import os
import subprocess
import sys

if "google.colab" in sys.modules:  # Colab's kernel imports it at start-up
    repo = "/content/newllm"
    if not os.path.isdir(os.path.join(repo, ".git")):
        url = os.environ.get("NEWLLM_REPO_URL", "{DEFAULT_REPO_URL}")
        subprocess.run(["git", "clone", "--depth", "1", url, repo], check=True)
    subprocess.run(["bash", os.path.join(repo, "colab_setup.sh")], check=True, cwd="/content")
    os.chdir(os.path.join(repo, "notebooks"))
    sys.path.insert(0, repo)  # a running kernel does not see the fresh editable install
    if MOUNT_DRIVE:
        from google.colab import drive  # mounting must happen in the notebook's kernel, not in a subprocess

        drive.mount("/content/drive")
        # runs are written on the VM's disk and copied whole to Drive after every epoch (RunFolder.sync): files
        # written in place on a Drive mount can read as empty for a long while
        os.environ["NEWLLM_RESULTS_DIR"] = "/content/newllm-results"
        os.environ["NEWLLM_MIRROR_DIR"] = "/content/drive/MyDrive/newllm-results"
'''

EXTRA_PARAMETERS = {  # parameters of the notebook itself, not of the presets
    "results_dir": ("None", "None: $NEWLLM_RESULTS_DIR, else <repo>/results"),
    "run_name": ("None", "None: named from the settings; an existing name gets _2, _3, ..."),
}


def colab_link(name: str) -> str:
    return f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_BASE}/{name}.ipynb)"


def parameters_cell(notebook: str, extra: dict[str, tuple[str, str]]) -> nbformat.NotebookNode:
    lines = ['preset = "auto"  # "auto": on a CUDA GPU the seed\'s real experiment, on a CPU a small version; '
             'or "cpu" / "gpu"',
             "# None = take the preset's value; any explicit value wins (papermill: -p name value)"]
    for name, spec in NOTEBOOK_PARAMS[notebook].items():
        lines.append(f"{name} = None  # {spec.help}; cpu {spec.cpu!r}, gpu {spec.gpu!r}")
    for name, (default, help_text) in {**EXTRA_PARAMETERS, **extra}.items():
        lines.append(f"{name} = {default}  # {help_text}")
    cell = new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["parameters"]
    return cell


def resolve_cell(notebook: str) -> nbformat.NotebookNode:
    return new_code_cell(f"""\
from IPython.display import Image, display

from newllm.notebook.parameters import find_results_dir, notebook_values, parameters_table

# A bad parameter stops here with a message saying what to pass instead.
values = notebook_values("{notebook}", preset, globals())
results = find_results_dir(results_dir)
print(f"preset {{values['preset']!r}} -> {{values['preset_used']!r}}; runs are written under {{results}}")
display(parameters_table(values))
from newllm.notebook.presets import seed_deviations

if len(seed_deviations(values["preset_used"])):
    print(f"preset {{values['preset_used']!r}} differs from its seed here:")
    display(seed_deviations(values["preset_used"]))""")


def header(notebook: str, title: str, text: str, headless: str) -> list[nbformat.NotebookNode]:
    return [
        new_markdown_cell(f"# {title}\n\n{colab_link(notebook)}\n\n{text}\n\n"
                          f"Headless: `{headless}`. On a CPU the preset is a small version that finishes in a few "
                          "minutes; on a CUDA GPU it is the seed's real experiment. Results go to "
                          "`results/<experiment>/<run-name>/` and never overwrite an earlier run."),
        new_code_cell(COLAB_CELL),
        new_markdown_cell("## Parameters\nEvery knob, `None` meaning the preset's value. The cell after it "
                          "resolves them and prints the preset used."),
    ]


def cvfp_size_cells(text: str = "") -> list:
    """The CVFP notebooks' sliders for ctx_dim, layers and data size, with the live parameter count and memory plan."""
    return [
        new_markdown_cell("## Model and data size\nMove the sliders to see the parameter count and the Phase-2 memory "
                          "plan on this machine; the next cell uses the values of the sliders you moved." + text),
        new_code_cell("""\
from newllm.notebook.widgets import data_sizes, notebook_controls

sizes = data_sizes(values)
box, controls = notebook_controls("cvfp", values, vocab_size=sizes.vocab_size, embed_dim=values["embed_dim"],
                                  tokens_per_sample=sizes.tokens_per_sample, val_tokens=sizes.val_tokens)
display(box)
print(f"{sizes.tokenizer} tokens: {sizes.tokens_per_sample:,.0f} per training document, "
      f"{sizes.val_tokens:,} validation tokens")
print(controls.summary())"""),
    ]


PHASE1_CFG = """\
phase1_cfg = Phase1Config(solver=values["phase1_solver"], dist_reg_weight=values["dist_reg_weight"],
                          max_iterations=values["phase1_max_iterations"],
                          min_iterations=min(values["phase1_min_iterations"], values["phase1_max_iterations"]))"""
PHASE2_CFG = ('phase2_cfg = Phase2Config(epochs=values["phase2_epochs"], patience=values["phase2_patience"], '
              'lr=values["phase2_lr"])')
FULL_SETTINGS = ('CVFPSettings(data=data_cfg, model=model_cfg, phase1=phase1_cfg, phase2=phase2_cfg, '
                 'seed=values["seed"])')


def cvfp_config_cells(samples: str, phase1: str, phase2: str, settings: str) -> list:
    """The cell that builds the CVFP run's configs from the parameters: edit any field there."""
    return [
        new_markdown_cell("## Configs\nThe data, model, Phase-1 and Phase-2 configs of the run (`newllm.config`). "
                          "Change any field here, e.g. the Phase-1 loss weight `dist_reg_weight`, the dataset or "
                          "the model width."),
        new_code_cell(f"""\
from newllm.config import DataConfig, ModelConfig, Phase1Config, Phase2Config
from newllm.experiments.cvfp import CVFPSettings
from newllm.notebook.parameters import cvfp_embedding

values = controls.apply(values)  # the sliders you moved, if any
data_cfg = DataConfig(dataset=values["dataset"], tokenizer=values["tokenizer"], samples={samples},
                      val_samples=values["val_samples"])
model_cfg = ModelConfig(ctx_dim=values["ctx_dim"], embed_dim=values["embed_dim"], num_layers=values["layers"],
                        num_input_tokens=values["num_input_tokens"], architecture=values.get("architecture", "E"),
                        embedding=cvfp_embedding(values["tokenizer"], values["embed_dim"]))
{phase1}
{phase2}
settings = {settings}
display(settings.to_dict())"""),
    ]


def notebook(name: str, cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    for i, cell in enumerate(cells):
        cell.id = f"{name.replace('_', '-')}-{i:02d}"  # stable ids: regenerating changes nothing that did not change
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def advanced_training() -> nbformat.NotebookNode:
    name = "advanced_training"
    cvfp_phase1 = "\n".join("    " + line for line in PHASE1_CFG.splitlines())
    return notebook(name, [
        *header(name, "Advanced training: gated LM or two-phase CVFP model (seeds 001, 002)",
                "Train the end-to-end gated context-vector LM on WikiText-2 (seed 001's 512 / 12 run on a GPU) or the "
                "two-phase CVFP model, watch loss and perplexity live, and optionally quantize the trained model to "
                "int8 and compare size, validation PPL and speed with fp32. With `sweep='ctx'` or `'layers'` the "
                "gated LM is also trained at each point of seed 002's sweeps.",
                "papermill notebooks/advanced_training.ipynb out.ipynb -p quantization int8"),
        parameters_cell(name, {}),
        resolve_cell(name),
        new_markdown_cell("## Model size\nMove the sliders to see the parameter count and the memory estimate. "
                          "Moved values replace `ctx_dim` / `layers` in the configs below; unmoved sliders change "
                          "nothing."),
        new_code_cell("""\
from newllm.notebook.widgets import training_controls

box, controls = training_controls(values)
display(box)
print(controls.summary())"""),
        new_markdown_cell("## Configs and data: the gated LM\n`model_family='gated'`: word-level WikiText-2 windows, "
                          "trained end to end. Change any field of the configs here."),
        new_code_cell("""\
from newllm.config import GatedLMConfig, GatedTrainConfig
from newllm.data.wikitext import prepare_wikitext
from newllm.experiments.advanced_training import gated_setup
from newllm.notebook.parameters import GATED_DEFAULT_LR, gated_batch_size, gated_source, training_family

values = controls.apply(values)  # the sliders you moved, if any
family = training_family(values)
if family == "gated":
    model_cfg = GatedLMConfig(vocab_size=values["vocab_size"], ctx_dim=values["ctx_dim"], num_layers=values["layers"],
                              embed_dim=values["embed_dim"] or GatedLMConfig().embed_dim)
    train_cfg = GatedTrainConfig(epochs=values["epochs"], max_updates=values["max_updates"],
                                 batch_size=gated_batch_size(values), lr=values["lr"] or GATED_DEFAULT_LR,
                                 schedule=values["schedule"], seed=values["seed"])
    data = prepare_wikitext(train_cfg, gated_source(values["dataset"]), model_cfg.vocab_size,
                            (values["samples"], values["val_samples"]), progress=True)
    setup = gated_setup(model_cfg, train_cfg, data, values["quantization"], values["resume_from"])
    display(model_cfg, train_cfg)"""),
        new_markdown_cell("## Configs and data: the CVFP model\n`model_family='cvfp'`: the corpus, then the model, "
                          "Phase-1 and Phase-2 configs (the embedding follows the tokenizer the corpus uses)."),
        new_code_cell(f"""\
from newllm.config import DataConfig, ModelConfig, Phase1Config, Phase2Config
from newllm.data.corpus import load_corpus
from newllm.experiments.advanced_training import cvfp_setup
from newllm.experiments.cvfp import CVFPSettings
from newllm.notebook.parameters import CVFP_DEFAULT_LR, cvfp_embed_dim, cvfp_embedding

if family == "cvfp":
    data_cfg = DataConfig(dataset=values["dataset"], tokenizer=values["tokenizer"], samples=values["samples"],
                          val_samples=values["val_samples"])
    corpus = load_corpus(data_cfg, progress=True)
    tokenizer = corpus.tokenizer.name  # what tokenizer="auto" became
    embed_dim = cvfp_embed_dim(values, tokenizer)
    model_cfg = ModelConfig(ctx_dim=values["ctx_dim"], embed_dim=embed_dim, num_layers=values["layers"],
                            embedding=cvfp_embedding(tokenizer, embed_dim))
{cvfp_phase1}
    phase2_cfg = Phase2Config(epochs=values["epochs"], batch_size=values["batch_size"],
                              lr=values["lr"] or CVFP_DEFAULT_LR, schedule=values["schedule"],
                              max_steps=values["max_updates"])
    settings = CVFPSettings(data=data_cfg, model=model_cfg, phase1=phase1_cfg, phase2=phase2_cfg, seed=values["seed"])
    setup = cvfp_setup(settings, corpus, values["quantization"])
    display(settings.to_dict())"""),
        new_markdown_cell("## Parameter count and memory plan (before training)"),
        new_code_cell("""\
from newllm.notebook.widgets import training_memory

memory, memory_summary = training_memory(setup)
display(setup.overview())
display(memory)
print(memory_summary)"""),
        new_markdown_cell("## Training\nThe curves below are redrawn after every evaluation."),
        new_code_cell("""\
from newllm.experiments.advanced_training import EXPERIMENT, train
from newllm.notebook.live import LiveCurves
from newllm.notebook.parameters import open_run

run = open_run(EXPERIMENT, values, results, run_name, default_name=setup.name)
curves = LiveCurves(f"{setup.name} ({setup.parameters:,} parameters)", ppl_label=f"PPL, {setup.ppl_label}")
outcome = train(setup, run, on_history=curves.on_history, on_epoch=curves.on_epoch)
print("run folder:", run.path)
display(outcome.final)"""),
        new_markdown_cell("## int8 post-training quantization\nWith `quantization='int8'` the trained fp32 model "
                          "is quantized and both are measured on the validation data (CPU)."),
        new_code_cell("""\
if outcome.int8 is not None:
    display(outcome.int8)
    fp32, int8 = outcome.int8.loc["fp32"], outcome.int8.loc["int8"]
    print(f"int8: {fp32.size_mb / int8.size_mb:.2f}x smaller, val PPL {int8.val_ppl:.3f} vs {fp32.val_ppl:.3f} "
          f"({100 * (int8.val_ppl / fp32.val_ppl - 1):+.2f} %), {int8.tokens_per_s / fp32.tokens_per_s:.2f}x the "
          f"fp32 tokens/s")
else:
    print("quantization='none': nothing to compare")"""),
        new_markdown_cell("## Seed 002's sweep (optional)\nWith `sweep='ctx'` (ctx_dim 256, 512, 1024 at 6 layers) "
                          "or `sweep='layers'` (6, 12, 24 layers at ctx 512) the gated LM is trained once per point "
                          "with the configs above; finished points are kept in `sweep.csv` and skipped when run "
                          "again."),
        new_code_cell("""\
from newllm.experiments.sweeps import SEED002_CTX_SWEEP, SEED002_LAYER_SWEEP, sweep_gated

if values["sweep"] is not None:
    points = SEED002_CTX_SWEEP if values["sweep"] == "ctx" else SEED002_LAYER_SWEEP
    sweep_run = open_run(EXPERIMENT, values, results, default_name=f"sweep_{values['sweep']}")
    sweep_table = sweep_gated(points, model_cfg, train_cfg, data.train, data.val, sweep_run.path,
                              tokenizer_name=data.tokenizer_label)
    display(sweep_table)
else:
    print("sweep=None: no sweep")"""),
        new_markdown_cell("## Checks"),
        new_code_cell("""\
import math

final = outcome.final.iloc[0]
assert math.isfinite(final.best_val_ppl) and final.best_val_ppl > 1, final.best_val_ppl
assert len(outcome.history) >= 1 and outcome.history["val_loss"].map(math.isfinite).all()
for key in ("progress", "curves"):
    assert outcome.paths[key].is_file(), outcome.paths[key]
if outcome.int8 is not None:
    assert outcome.int8["val_ppl"].map(math.isfinite).all()
    assert outcome.int8.loc["int8", "size_mb"] < outcome.int8.loc["fp32", "size_mb"]
print(f"best val PPL {final.best_val_ppl:.3f} ({setup.ppl_label}); files in {outcome.run.path}")"""),
    ])


def scaling() -> nbformat.NotebookNode:
    name = "scaling"
    return notebook(name, [
        *header(name, "Scaling: validation perplexity against training tokens (seed 003)",
                "Phase 1 + Phase 2 of the CVFP model at each training size, all on the same fixed validation set. "
                "Each size's row is appended to the results table as soon as it finishes (an interrupted sweep "
                "keeps its rows; rerun with `resume=True` and its `run_name` to continue at the next size). Then "
                "the power-law fit PPL = A * tokens^alpha, the plot on log-log axes and the extrapolation table.",
                'papermill notebooks/scaling.ipynb out.ipynb -y "samples: [50, 100, 200, 500]"'),
        parameters_cell(name, {"resume": ("False", "True: continue the run folder run_name at its next size")}),
        resolve_cell(name),
        *cvfp_size_cells(" The samples slider shows the largest size (estimate only)."),
        *cvfp_config_cells('min(values["samples"])', PHASE1_CFG, PHASE2_CFG, FULL_SETTINGS),
        new_markdown_cell("## The sweep\nPhase 1 + Phase 2 per (size, seed) with the configs above (each size "
                          "replaces `data_cfg.samples`); rows appear as each size finishes. Then the fits, the "
                          "extrapolation and the plot, all in the run folder."),
        new_code_cell("""\
from newllm.experiments.scaling import SCALING_ROW_COLUMNS, run_scaling_sweep
from newllm.notebook.live import LiveTable
from newllm.notebook.parameters import open_run

run = open_run("scaling", values, results, run_name, resume=resume)
outcome = run_scaling_sweep(settings, run, values["samples"], seeds=values["seeds"], baselines=values["baselines"],
                            on_row=LiveTable(SCALING_ROW_COLUMNS))
print("run folder:", run.path)"""),
        new_markdown_cell("## Results table and fit"),
        new_code_cell("""\
print(outcome.report())
display(outcome.points)"""),
        new_markdown_cell("## PPL against training tokens (log-log)"),
        new_code_cell("""display(Image(filename=str(outcome.run.file("ppl_vs_tokens.png"))))"""),
        new_markdown_cell("## Extrapolation"),
        new_code_cell("""display(outcome.extrapolation)"""),
        new_markdown_cell("## Checks"),
        new_code_cell("""\
import math

cvfp = outcome.table[outcome.table["model"] == "cvfp"]
assert sorted(set(cvfp["samples"])) == sorted(set(values["samples"])), "a size is missing from the table"
assert len(cvfp) == len(set(values["samples"])) * len(values["seeds"])
assert outcome.table["val_ppl"].map(math.isfinite).all(), "a non-finite validation PPL"
optimum = cvfp["optimum_val_ppl"].dropna()  # the built-in corpus's best achievable PPL (None for other data)
if len(optimum):  # no model beats the true distribution: a PPL at or below it means the evaluation is wrong
    assert (cvfp["val_ppl"] > optimum.iloc[0]).all(), f"val PPL at or below the known optimum {optimum.iloc[0]:.2f}"
assert cvfp["val_er_pct"].between(0, 100, inclusive="right").all(), "ER outside (0, 100] %"
assert outcome.run.file("ppl_vs_tokens.png").is_file()
if outcome.power_law.ok:
    assert math.isfinite(outcome.power_law.alpha)
    print(f"power law: alpha {outcome.power_law.alpha:.4f}, R^2 {outcome.power_law.r2:.4f} "
          f"({outcome.power_law.n_points} sizes)")
else:
    print("power law not fitted:", outcome.power_law.reason)"""),
    ])


def parallel_tuning() -> nbformat.NotebookNode:
    name = "parallel_tuning"
    return notebook(name, [
        *header(name, "Phase 1 tuning grid: iterations x dist_reg_weight x solver (seed 000)",
                "Every combination of Phase-1 max iterations, dist_reg_weight and solver (sequential: exact contexts "
                "each iteration; parallel: the previous pass shifted), each from the same initial weights. The "
                "table, heatmaps of validation effective rank (ER) and time, and verdicts computed from the data.",
                'papermill notebooks/parallel_tuning.ipynb out.ipynb -y "weights: [0.5, 0.9]"'),
        parameters_cell(name, {}),
        resolve_cell(name),
        *cvfp_size_cells(),
        *cvfp_config_cells('values["samples"]',
                           "# the grid sets solver, max_iterations and dist_reg_weight at each point; "
                           "phase1_original: the original's rules (Phase1Config.original)\n"
                           'phase1_cfg = (Phase1Config.original(values["phase1_original"], '
                           'min_iterations=values["phase1_min_iterations"]) if values["phase1_original"]\n'
                           '              else Phase1Config(min_iterations=values["phase1_min_iterations"]))',
                           "# no Phase 2: the grid compares Phase 1 alone",
                           'CVFPSettings(data=data_cfg, model=model_cfg, phase1=phase1_cfg, seed=values["seed"])'),
        new_markdown_cell("## The grid\nEvery (solver, max iterations, dist_reg_weight) from the same initial "
                          "weights: the table, heatmaps and verdicts go to the run folder."),
        new_code_cell("""\
from newllm.experiments.phase1_grid import run_phase1_grid
from newllm.notebook.parameters import default_run_name, open_run

run = open_run("parallel_tuning", values, results, run_name,
               default_name=default_run_name(values, f"{values['samples']}samples"))
outcome = run_phase1_grid(settings, run, iterations=values["iterations"], weights=values["weights"],
                          solvers=values["solvers"])
print("run folder:", run.path)
display(outcome.table)"""),
        new_markdown_cell("## Heatmaps"),
        new_code_cell("""\
for path in outcome.figures.values():
    display(Image(filename=str(path)))"""),
        new_markdown_cell("## Verdicts (computed from the table above)"),
        new_code_cell("""\
for line in outcome.verdicts:
    print(line)"""),
        new_markdown_cell("## Checks"),
        new_code_cell("""\
import math

table = outcome.table
expected = len(values["iterations"]) * len(values["weights"]) * len(values["solvers"])
assert len(table) == expected, (len(table), expected)
assert table["train_er_pct"].between(0, 100, inclusive="right").all(), "train ER outside (0, 100] %"
assert table["val_er_pct"].between(0, 100, inclusive="right").all(), "val ER outside (0, 100] %"
assert table["seconds"].map(math.isfinite).all() and (table["seconds"] > 0).all()
assert (table["iterations_run"] <= table["max_iterations"]).all()"""),
    ])


def optimize_dist_reg_weight() -> nbformat.NotebookNode:
    name = "optimize_dist_reg_weight"
    return notebook(name, [
        *header(name, "Optuna study of dist_reg_weight (seed 004)",
                "Search dist_reg_weight in [w_low, w_high] for the lowest validation PPL after Phase 1 + Phase 2. "
                "The study is stored in a journal file under `results/optimize_dist_reg_weight/studies/` and "
                "resumes when run again with the same `study_name` (n_trials counts all its finished trials). "
                "The best configuration is written as JSON and as `config_optimized.py`.",
                "papermill notebooks/optimize_dist_reg_weight.ipynb out.ipynb -p n_trials 40"),
        parameters_cell(name, {}),
        resolve_cell(name),
        *cvfp_size_cells(),
        *cvfp_config_cells('values["samples"]', PHASE1_CFG + "  # each trial sets dist_reg_weight\n"
                           "if values[\"phase1_original\"]:  # the original's rules (Phase1Config.original)\n"
                           "    phase1_cfg = Phase1Config.original(values[\"phase1_original\"], "
                           "max_iterations=phase1_cfg.max_iterations,\n"
                           "                                       min_iterations=phase1_cfg.min_iterations)",
                           PHASE2_CFG, FULL_SETTINGS),
        new_markdown_cell("## The study\nIts config (range, trials, journal), then one Phase 1 + Phase 2 run per "
                          "trial with the configs above."),
        new_code_cell("""\
import dataclasses

from newllm.experiments.dist_reg_study import STUDY_EXPERIMENT, run_dist_reg_study
from newllm.notebook.parameters import open_run, study_config

study_cfg = study_config(values, results)
# the pruner: seed 004's document (MedianPruner(5, 0, 1) + train ER < 50 %) or its final code (NopPruner, no ER rule)
study_cfg = dataclasses.replace(study_cfg, pruner=values["pruner"], min_er_pct=values["min_er_pct"])
print(study_cfg)
run = open_run(STUDY_EXPERIMENT, values, results, run_name, default_name=values["study_name"])
outcome = run_dist_reg_study(settings, study_cfg, run)
result = outcome.result
print(f"study {result.study_name!r}: {result.n_complete} complete, {result.n_pruned} pruned, "
      f"{result.n_failed} failed; journal {study_cfg.journal_path}")
print("run folder:", run.path)"""),
        new_markdown_cell("## Best trial and top 5"),
        new_code_cell("""\
if result.best_trial is not None:
    print(f"best trial #{result.best_trial}: val PPL {result.best_value:.4f} with {result.best_params}")
display(result.top)"""),
        new_markdown_cell("## Optimisation history and parameter slices"),
        new_code_cell("""\
for name in ("optimization_history.png", "param_slices.png"):
    if name in outcome.written:
        display(Image(filename=str(outcome.written[name])))"""),
        new_markdown_cell("## Checks"),
        new_code_cell("""\
import math

# the study stops at n_trials finished (complete + pruned) trials, counting earlier runs of a resumed study
assert result.n_complete + result.n_pruned >= values["n_trials"] or values["timeout"] is not None
if result.best_trial is not None:
    assert math.isfinite(result.best_value) and result.best_value > 1
    assert values["w_low"] <= result.best_params["dist_reg_weight"] <= values["w_high"]
    assert outcome.written["phase1_config_best.json"].is_file()
    print("best config:", outcome.written["phase1_config_best.json"])
else:
    print("no trial completed: no best config (see the trials table for the prune reasons)")
    display(result.trials)"""),
    ])


NOTEBOOKS = {
    "advanced_training": advanced_training,
    "scaling": scaling,
    "parallel_tuning": parallel_tuning,
    "optimize_dist_reg_weight": optimize_dist_reg_weight,
}


def main() -> None:
    for name, build in NOTEBOOKS.items():
        nb = build()
        nbformat.validate(nb)
        path = HERE / f"{name}.ipynb"
        nbformat.write(nb, str(path))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

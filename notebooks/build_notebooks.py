"""Write the four notebooks of notebooks/ (committed without outputs): ``python notebooks/build_notebooks.py``.

The .ipynb files are what is committed, tested and run; this script only keeps their shared cells (Colab setup,
parameters from newllm.notebook.presets, resolution) identical. Edit here, rerun, and commit the regenerated notebooks.
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
MOUNT_DRIVE = False  # True: results and checkpoints go to Google Drive (MyDrive/newllm-results), surviving disconnects
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
        os.environ["NEWLLM_RESULTS_DIR"] = "/content/drive/MyDrive/newllm-results"  # read by find_results_dir
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
    return new_code_cell(f'''\
from IPython.display import Image, display

from newllm.notebook import pipelines as nbp

# A bad parameter stops here with a message saying what to pass instead.
values = nbp.notebook_values("{notebook}", preset, globals())
results = nbp.find_results_dir(results_dir)
print(f"preset {{values['preset']!r}} -> {{values['preset_used']!r}}; runs are written under {{results}}")
display(nbp.parameters_table(values))''')


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


def cvfp_size_cells() -> list:
    """The CVFP notebooks' sliders for ctx_dim, layers and data size, with the live parameter count and memory plan."""
    return [
        new_markdown_cell("## Model and data size"),
        new_code_cell('''\
from newllm.notebook.widgets import notebook_controls

sizes = nbp.data_sizes(values)
box, controls = notebook_controls("cvfp", values, vocab_size=sizes.vocab_size, embed_dim=values["embed_dim"],
                                  tokens_per_sample=sizes.tokens_per_sample, val_tokens=sizes.val_tokens)
display(box)
print(controls.summary())'''),
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
    return notebook(name, [
        *header(name, "Advanced training: gated LM or two-phase CVFP model (seeds 001, 002)",
                "Train the end-to-end gated context-vector LM on WikiText-2 (seed 001's 512 / 12 run on a GPU) or the "
                "two-phase CVFP model, watch loss and perplexity live, and optionally quantize the trained model to "
                "int8 and compare size, validation PPL and speed with fp32.",
                "papermill notebooks/advanced_training.ipynb out.ipynb -p quantization int8"),
        parameters_cell(name, {}),
        resolve_cell(name),
        new_markdown_cell("## Model size\nMove the sliders to see the parameter count and the memory estimate. "
                          "Moved values replace `ctx_dim` / `layers` in the next cell; unmoved sliders change "
                          "nothing."),
        new_code_cell('''\
box, controls = nbp.training_controls(values)
display(box)
print(controls.summary())'''),
        new_markdown_cell("## Data, parameter count and memory plan (before training)"),
        new_code_cell('''\
values = controls.apply(values)
setup = nbp.prepare_training(values)
display(setup.overview())
display(setup.memory)'''),
        new_markdown_cell("## Training\nThe curves below are redrawn after every evaluation."),
        new_code_cell('''\
curves = nbp.LiveCurves(f"{setup.name} ({setup.parameters:,} parameters)", ppl_label=f"PPL, {setup.ppl_label}")
outcome = nbp.train(setup, results, run_name=run_name, curves=curves)
print("run folder:", outcome.run.path)
display(outcome.final)'''),
        new_markdown_cell("## int8 post-training quantization\nWith `quantization='int8'` the trained fp32 model "
                          "is quantized and both are measured on the validation data (CPU)."),
        new_code_cell('''\
if outcome.int8 is not None:
    display(outcome.int8)
    fp32, int8 = outcome.int8.loc["fp32"], outcome.int8.loc["int8"]
    print(f"int8: {fp32.size_mb / int8.size_mb:.2f}x smaller, val PPL {int8.val_ppl:.3f} vs {fp32.val_ppl:.3f} "
          f"({100 * (int8.val_ppl / fp32.val_ppl - 1):+.2f} %), {int8.tokens_per_s / fp32.tokens_per_s:.2f}x the "
          f"fp32 tokens/s")
else:
    print("quantization='none': nothing to compare")'''),
        new_markdown_cell("## Checks"),
        new_code_cell('''\
import math

final = outcome.final.iloc[0]
assert math.isfinite(final.best_val_ppl) and final.best_val_ppl > 1, final.best_val_ppl
assert len(outcome.history) >= 1 and outcome.history["val_loss"].map(math.isfinite).all()
for key in ("progress", "curves"):
    assert outcome.paths[key].is_file(), outcome.paths[key]
if outcome.int8 is not None:
    assert outcome.int8["val_ppl"].map(math.isfinite).all()
    assert outcome.int8.loc["int8", "size_mb"] < outcome.int8.loc["fp32", "size_mb"]
print(f"best val PPL {final.best_val_ppl:.3f} ({setup.ppl_label}); files in {outcome.run.path}")'''),
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
        new_markdown_cell("## Model and data size\nThe sliders show the parameter count and the Phase-2 memory "
                          "plan at the largest size; moved `ctx_dim` / `layers` values are used by the run."),
        new_code_cell('''\
from newllm.notebook.widgets import notebook_controls

sizes = nbp.data_sizes(values)
box, controls = notebook_controls("cvfp", values, vocab_size=sizes.vocab_size, embed_dim=values["embed_dim"],
                                  tokens_per_sample=sizes.tokens_per_sample, val_tokens=sizes.val_tokens)
display(box)
print(f"{sizes.tokenizer} tokens: {sizes.tokens_per_sample:,.0f} per training document, "
      f"{sizes.val_tokens:,} validation tokens")
print(controls.summary())'''),
        new_markdown_cell("## The sweep\nRows appear as each size finishes."),
        new_code_cell('''\
values = controls.apply(values)
rows = nbp.LiveTable(nbp.SCALING_ROW_COLUMNS)
outcome = nbp.run_scaling_sweep(values, results, run_name=run_name, resume=resume, on_row=rows)
print("run folder:", outcome.run.path)'''),
        new_markdown_cell("## Results table and fit"),
        new_code_cell('''\
print(outcome.report())
display(outcome.points)'''),
        new_markdown_cell("## PPL against training tokens (log-log)"),
        new_code_cell('''display(Image(filename=str(outcome.run.file("ppl_vs_tokens.png"))))'''),
        new_markdown_cell("## Extrapolation"),
        new_code_cell('''display(outcome.extrapolation)'''),
        new_markdown_cell("## Checks"),
        new_code_cell('''\
import math

cvfp = outcome.table[outcome.table["model"] == "cvfp"]
assert sorted(set(cvfp["samples"])) == sorted(set(values["samples"])), "a size is missing from the table"
assert len(cvfp) == len(set(values["samples"])) * len(values["seeds"])
assert outcome.table["val_ppl"].map(math.isfinite).all(), "a non-finite validation PPL"
assert cvfp["val_er_pct"].between(0, 100, inclusive="right").all(), "ER outside (0, 100] %"
assert outcome.run.file("ppl_vs_tokens.png").is_file()
if outcome.power_law.ok:
    assert math.isfinite(outcome.power_law.alpha)
    print(f"power law: alpha {outcome.power_law.alpha:.4f}, R^2 {outcome.power_law.r2:.4f} "
          f"({outcome.power_law.n_points} sizes)")
else:
    print("power law not fitted:", outcome.power_law.reason)'''),
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
        new_markdown_cell("## The grid"),
        new_code_cell('''\
values = controls.apply(values)
outcome = nbp.run_phase1_grid(values, results, run_name=run_name)
print("run folder:", outcome.run.path)
display(outcome.table)'''),
        new_markdown_cell("## Heatmaps"),
        new_code_cell('''\
for path in outcome.figures.values():
    display(Image(filename=str(path)))'''),
        new_markdown_cell("## Verdicts (computed from the table above)"),
        new_code_cell('''\
for line in outcome.verdicts:
    print(line)'''),
        new_markdown_cell("## Checks"),
        new_code_cell('''\
import math

table = outcome.table
expected = len(values["iterations"]) * len(values["weights"]) * len(values["solvers"])
assert len(table) == expected, (len(table), expected)
assert table["train_er_pct"].between(0, 100, inclusive="right").all(), "train ER outside (0, 100] %"
assert table["val_er_pct"].between(0, 100, inclusive="right").all(), "val ER outside (0, 100] %"
assert table["seconds"].map(math.isfinite).all() and (table["seconds"] > 0).all()
assert (table["iterations_run"] <= table["max_iterations"]).all()'''),
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
        new_markdown_cell("## The study"),
        new_code_cell('''\
values = controls.apply(values)
outcome = nbp.run_dist_reg_study(values, results, run_name=run_name)
result = outcome.result
print(f"study {result.study_name!r}: {result.n_complete} complete, {result.n_pruned} pruned, "
      f"{result.n_failed} failed; journal {outcome.config.journal_path}")
print("run folder:", outcome.run.path)'''),
        new_markdown_cell("## Best trial and top 5"),
        new_code_cell('''\
if result.best_trial is not None:
    print(f"best trial #{result.best_trial}: val PPL {result.best_value:.4f} with {result.best_params}")
display(result.top)'''),
        new_markdown_cell("## Optimisation history and parameter slices"),
        new_code_cell('''\
for name in ("optimization_history.png", "param_slices.png"):
    if name in outcome.written:
        display(Image(filename=str(outcome.written[name])))'''),
        new_markdown_cell("## Checks"),
        new_code_cell('''\
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
    display(result.trials)'''),
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

"""The notebooks' parameters: results folder, resolved values, and their translation into configs."""

from pathlib import Path

import pytest

from newllm.notebook import parameters as nbp
from newllm.notebook.presets import NOTEBOOK_PARAMS, resolve

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ results folder

def test_results_dir_explicit_then_env_then_repo(tmp_path, monkeypatch):
    monkeypatch.delenv(nbp.RESULTS_DIR_ENV, raising=False)
    assert nbp.find_results_dir(tmp_path / "mine") == tmp_path / "mine"
    assert nbp.find_results_dir(start=REPO / "notebooks") == REPO / "results"
    monkeypatch.setenv(nbp.RESULTS_DIR_ENV, str(tmp_path / "env"))
    assert nbp.find_results_dir() == tmp_path / "env"
    assert nbp.find_results_dir(tmp_path / "mine") == tmp_path / "mine"


def test_repo_root_walks_up_to_the_newllm_pyproject(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "notebooks" / "deep").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text('[project]\nname = "newllm"\n')
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert nbp.repo_root(checkout / "notebooks" / "deep") == checkout
    # outside any checkout: the one this package was imported from
    assert nbp.repo_root(tmp_path / "other") == REPO


# --------------------------------------------------------------------------------------------- parameters

def test_notebook_values_reads_the_parameters_cell_namespace():
    namespace = {name: None for name in NOTEBOOK_PARAMS["scaling"]}
    namespace.update(samples=7, ctx_dim=32, helper=lambda: None)  # a function the notebook defines is not a parameter
    values = nbp.notebook_values("scaling", "cpu", namespace)
    assert values["samples"] == [7] and values["ctx_dim"] == 32
    assert values["layers"] == NOTEBOOK_PARAMS["scaling"]["layers"].cpu
    table = nbp.parameters_table(values)
    assert table.iloc[0].tolist() == ["preset", "cpu -> cpu"]
    with pytest.raises(ValueError, match="samples=-5 is not allowed"):
        nbp.notebook_values("scaling", "cpu", {**namespace, "samples": -5})
    with pytest.raises(ValueError, match="preset='fast' is unknown"):
        nbp.notebook_values("scaling", "fast", namespace)
    with pytest.raises(ValueError, match="one value, not a list"):
        nbp.notebook_values("parallel_tuning", "cpu", {"samples": [1, 2]})


def test_open_run_never_overwrites_and_resumes_only_a_named_run(tmp_path):
    values = resolve("scaling", "cpu")
    first = nbp.open_run("scaling", values, tmp_path)
    assert first.path == tmp_path / "scaling" / "builtin_ctx64_layers2"
    assert nbp.open_run("scaling", values, tmp_path).path.name == "builtin_ctx64_layers2_2"
    assert (first.path / "parameters.json").is_file()
    with pytest.raises(ValueError, match="resume needs run_name"):
        nbp.open_run("scaling", values, tmp_path, resume=True)


# ------------------------------------------------------------------------------------------------- study

def test_study_config_maps_the_notebook_parameters(tmp_path):
    values = {"w_low": 0.6, "w_high": 0.95, "n_trials": 3, "timeout": None, "study_name": "s1", "storage": None,
              "seed": 7}
    config = nbp.study_config(values, tmp_path)
    assert config.dist_reg_weight_range == (0.6, 0.95) and config.n_trials == 3 and config.sampler_seed == 7
    assert config.journal_path == tmp_path / "optimize_dist_reg_weight" / "studies" / "s1" / "optuna_journal.log"
    with pytest.raises(ValueError, match="dist_reg_weight_range"):
        nbp.study_config({**values, "w_low": 0.99, "w_high": 0.5}, tmp_path)


# -------------------------------------------------------------------------------------- advanced training

def test_gated_batch_defaults_to_seed_001_on_a_gpu_and_the_trainers_on_a_cpu():
    assert nbp.gated_batch_size({"batch_size": None}, cuda=True) == 512
    assert nbp.gated_batch_size({"batch_size": None}, cuda=False) == 32
    assert nbp.gated_batch_size({"batch_size": 48}, cuda=True) == 48


def test_training_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="word-level tokens"):
        nbp.training_family(resolve("advanced_training", "cpu", tokenizer="gpt2"))
    with pytest.raises(ValueError, match="gated LM only"):
        nbp.training_family(resolve("advanced_training", "cpu", model_family="cvfp", resume_from="x.safetensors"))
    with pytest.raises(ValueError, match="seed 002's sweeps train the gated LM"):
        nbp.training_family(resolve("advanced_training", "cpu", model_family="cvfp", sweep="ctx"))
    assert nbp.training_family(resolve("advanced_training", "cpu", sweep="layers")) == "gated"


def test_cvfp_embedding_follows_the_tokenizer():
    assert nbp.cvfp_embed_dim({"embed_dim": None, "ctx_dim": 16}, "word") == 16
    assert nbp.cvfp_embed_dim({"embed_dim": None, "ctx_dim": 16}, "gpt2") == 768
    assert nbp.cvfp_embedding("gpt2", 768) == "auto" and nbp.cvfp_embedding("word", 768) == "random"


def test_a_resume_takes_the_recorded_parameters_and_refuses_other_settings(tmp_path):
    from newllm.notebook.parameters import notebook_values, open_run

    first = notebook_values("scaling", "cpu", {"samples": [2, 4], "ctx_dim": 32})
    run = open_run("scaling", first, tmp_path, "my_sweep")
    # the README's line: -p run_name my_sweep -p resume True, nothing else
    again = notebook_values("scaling", "auto", {"resume": True, "run_name": "my_sweep", "results_dir": str(tmp_path)})
    assert again["samples"] == [2, 4] and again["ctx_dim"] == 32
    assert open_run("scaling", again, tmp_path, "my_sweep", resume=True).path == run.path
    more = notebook_values("scaling", "auto", {"resume": True, "run_name": "my_sweep", "results_dir": str(tmp_path),
                                               "samples": [2, 4, 8]})
    open_run("scaling", more, tmp_path, "my_sweep", resume=True)  # adding a size is a resume
    other = notebook_values("scaling", "auto", {"resume": True, "run_name": "my_sweep", "results_dir": str(tmp_path),
                                                "ctx_dim": 64})
    with pytest.raises(ValueError, match=r"ctx_dim: 32 -> 64.*Start a new run"):
        open_run("scaling", other, tmp_path, "my_sweep", resume=True)
    for bad in ("no", "True", 1):
        with pytest.raises(ValueError, match="resume=.* is not allowed: use True or False"):
            notebook_values("scaling", "cpu", {"resume": bad, "run_name": "my_sweep"})
    with pytest.raises(ValueError, match="cannot resume run 'nope'"):
        notebook_values("scaling", "cpu", {"resume": True, "run_name": "nope", "results_dir": str(tmp_path)})


def test_a_misspelt_parameter_stops_the_notebook():
    import os

    from newllm.notebook.parameters import notebook_values

    namespace = {"preset": "cpu", "sampels": [200], "results_dir": None, "os": os, "MOUNT_DRIVE": False,
                 "_i1": "x", "In": [], "get_ipython": lambda: None}
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) for scaling: 'sampels' \(did you mean 'samples'\?\)"):
        notebook_values("scaling", "cpu", namespace)
    del namespace["sampels"]
    assert notebook_values("scaling", "cpu", namespace)["preset_used"] == "cpu"

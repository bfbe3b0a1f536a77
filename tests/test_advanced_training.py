"""The advanced-training experiment: gated LM and CVFP runs with the original's files, live curves and int8.

The setups are built as advanced_training.ipynb builds them: configs from the resolved parameters, data, setup.
"""

import json
import math

import pytest

from newllm.config import DataConfig, GatedLMConfig, GatedTrainConfig, ModelConfig, Phase1Config, Phase2Config
from newllm.data.corpus import load_corpus
from newllm.data.wikitext import prepare_wikitext
from newllm.experiments.advanced_training import EXPERIMENT, cvfp_setup, gated_setup, train
from newllm.experiments.cvfp import CVFPSettings
from newllm.notebook import parameters as nbp
from newllm.notebook.live import LiveCurves, LiveOutput
from newllm.notebook.presets import resolve
from newllm.notebook.widgets import training_memory


def _advanced(**overrides):
    small = dict(dataset="builtin", samples=1, val_samples=1, ctx_dim=8, layers=1, epochs=2, batch_size=64,
                 vocab_size=60)
    return resolve("advanced_training", "cpu", **{**small, **overrides})


def _setup(values):
    """advanced_training.ipynb's two configs-and-data cells."""
    if nbp.training_family(values) == "gated":
        model_cfg = GatedLMConfig(vocab_size=values["vocab_size"], ctx_dim=values["ctx_dim"],
                                  num_layers=values["layers"],
                                  embed_dim=values["embed_dim"] or GatedLMConfig().embed_dim)
        train_cfg = GatedTrainConfig(epochs=values["epochs"], max_updates=values["max_updates"],
                                     batch_size=nbp.gated_batch_size(values), lr=values["lr"] or nbp.GATED_DEFAULT_LR,
                                     schedule=values["schedule"], seed=values["seed"])
        data = prepare_wikitext(train_cfg, nbp.gated_source(values["dataset"]), model_cfg.vocab_size,
                                (values["samples"], values["val_samples"]))
        return gated_setup(model_cfg, train_cfg, data, values["quantization"], values["resume_from"])
    data_cfg = DataConfig(dataset=values["dataset"], tokenizer=values["tokenizer"], samples=values["samples"],
                          val_samples=values["val_samples"])
    corpus = load_corpus(data_cfg, progress=False)
    embed_dim = nbp.cvfp_embed_dim(values, corpus.tokenizer.name)
    model_cfg = ModelConfig(ctx_dim=values["ctx_dim"], embed_dim=embed_dim, num_layers=values["layers"],
                            embedding=nbp.cvfp_embedding(corpus.tokenizer.name, embed_dim))
    phase1_cfg = Phase1Config(solver=values["phase1_solver"], dist_reg_weight=values["dist_reg_weight"],
                              max_iterations=values["phase1_max_iterations"],
                              min_iterations=min(values["phase1_min_iterations"], values["phase1_max_iterations"]))
    phase2_cfg = Phase2Config(epochs=values["epochs"], batch_size=values["batch_size"],
                              lr=values["lr"] or nbp.CVFP_DEFAULT_LR, schedule=values["schedule"],
                              max_steps=values["max_updates"])
    settings = CVFPSettings(data=data_cfg, model=model_cfg, phase1=phase1_cfg, phase2=phase2_cfg, seed=values["seed"])
    return cvfp_setup(settings, corpus, values["quantization"])


def test_gated_training_writes_the_originals_files_and_compares_int8(tmp_path, fake_display, monkeypatch):
    monkeypatch.setenv("NEWLLM_MIRROR_DIR", str(tmp_path / "drive"))  # as on Colab with Google Drive mounted
    values = _advanced(quantization="int8")
    setup = _setup(values)
    assert setup.name == "new_llm_wikitext_ctx8_layers1_int8"
    memory, _ = training_memory(setup)
    assert memory["component"].iloc[-1] == "PEAK" and setup.parameters > 0
    log = []
    curves = LiveCurves("t", output=LiveOutput(fake_display(log)))
    run = nbp.open_run(EXPERIMENT, values, tmp_path, default_name=setup.name)
    mirrored_during = []

    def on_history(history):  # after each evaluation the epoch's checkpoint is on the mirror already
        mirrored_during.append((run.mirror / f"checkpoints/best_{setup.name}.safetensors").is_file())
        return curves.on_history(history)

    outcome = train(setup, run, on_history=on_history, progress=False)
    assert mirrored_during and all(mirrored_during)
    assert list((tmp_path / "advanced_training" / setup.name / "tensorboard").glob("events.out.tfevents.*"))
    folder = tmp_path / "advanced_training" / setup.name
    mirror = tmp_path / "drive" / "advanced_training" / setup.name
    for path in folder.rglob("*"):
        if path.is_file():
            assert (mirror / path.relative_to(folder)).read_bytes() == path.read_bytes(), path.name
    assert outcome.run.path == folder
    for name in (f"{setup.name}_progress.json", f"{setup.name}_training_curves.png", "final.csv",
                 "int8_comparison.csv", "parameters.json", "config.json", f"checkpoints/best_{setup.name}.safetensors"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "parameters.json").read_text())["preset_used"] == "cpu"
    assert len(log) == len(outcome.history) == 2  # curves redrawn after each evaluation
    assert outcome.int8.index.tolist() == ["fp32", "int8"]
    assert outcome.int8.loc["int8", "size_mb"] < outcome.int8.loc["fp32", "size_mb"]
    assert math.isfinite(outcome.final["best_val_ppl"].iloc[0])
    again = train(setup, nbp.open_run(EXPERIMENT, values, tmp_path, default_name=setup.name), progress=False)
    assert again.run.path == tmp_path / "advanced_training" / f"{setup.name}_2"  # never overwrites the first run


def test_cvfp_training_shows_live_curves_and_writes_the_originals_files(tmp_path, fake_display):
    values = _advanced(model_family="cvfp", samples=2, ctx_dim=16, layers=1, epochs=2, phase1_max_iterations=2,
                       phase1_min_iterations=1)
    setup = _setup(values)
    assert setup.cvfp_settings.phase2.epochs == 2 and setup.cvfp_settings.phase2.lr == nbp.CVFP_DEFAULT_LR
    assert setup.cvfp_settings.model.embed_dim == 16  # word tokens: the embedding is ctx_dim wide
    memory, memory_summary = training_memory(setup)
    assert "Phase-2 peak" in memory_summary and memory["component"].str.startswith("PEAK").any()
    log = []
    curves = LiveCurves("t", output=LiveOutput(fake_display(log)))
    run = nbp.open_run(EXPERIMENT, values, tmp_path, default_name=setup.name)
    outcome = train(setup, run, on_epoch=curves.on_epoch, progress=False)
    assert len(log) == len(outcome.history) >= 1  # one redraw per Phase-2 epoch
    assert curves.rows[-1]["val_loss"] == pytest.approx(outcome.history["val_loss"].iloc[-1])
    for key in ("progress", "curves", "checkpoint", "final"):
        assert outcome.paths[key].is_file(), key
    final = outcome.final.iloc[0]
    assert final["family"] == "cvfp" and math.isfinite(final["best_val_ppl"]) and 0 < final["train_er_pct"] <= 100

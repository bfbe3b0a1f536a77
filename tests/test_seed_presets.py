"""The seed presets (seed000, seed004): the seeds' settings, refused elsewhere, deviations stated."""

from __future__ import annotations

import pytest

from newllm.notebook.presets import SEED_PRESETS, resolve, seed_deviations


def test_seed000_is_the_seed_grid_on_era_b_with_the_original_rules():
    values = resolve("parallel_tuning", "seed000")
    assert values["preset_used"] == "seed000"
    assert values["architecture"] == "eraB" and values["phase1_original"] == "B"
    assert values["iterations"] == [10, 20, 30, 50] and values["weights"] == [0.5, 0.7, 0.8, 0.9]
    assert resolve("parallel_tuning", "seed000", weights=[0.9])["weights"] == [0.9]  # explicit values win


def test_seed004_is_the_documented_study():
    values = resolve("optimize_dist_reg_weight", "seed004")
    assert (values["w_low"], values["w_high"], values["n_trials"], values["seed"]) == (0.5, 0.999, 20, 42)
    assert values["pruner"] == "median" and values["min_er_pct"] == 50.0
    assert (values["phase2_epochs"], values["phase2_lr"]) == (5, 1e-4)
    assert resolve("optimize_dist_reg_weight", "seed004", pruner="none")["pruner"] == "none"


@pytest.mark.parametrize("preset", sorted(SEED_PRESETS))
def test_seed_preset_is_refused_by_other_notebooks_and_states_its_deviations(preset):
    home = SEED_PRESETS[preset][0]
    other = "scaling" if home != "scaling" else "parallel_tuning"
    with pytest.raises(ValueError, match=home):
        resolve(other, preset)
    table = seed_deviations(preset)
    assert len(table) > 0 and {"what", "the seed", "this preset", "why"} <= set(table.columns)
    assert "embedding" in set(table["what"])
    assert len(seed_deviations("cpu")) == 0


def test_seed003_gpu_preset_has_the_seeds_patience():
    assert resolve("scaling", "gpu")["phase2_patience"] == 1

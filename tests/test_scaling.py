"""Scaling-law fits (newllm/scaling.py) and the scaling plot (newllm/plots.py).

The reference figures are the original's, as quoted in seed-spec 5.6(b) and 5.6(e).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from newllm.config.experiments import ScalingConfig
from newllm.evaluation.scaling_extrapolation import extrapolation_table
from newllm.evaluation.scaling_fits import (
    PowerLawFit,
    SaturatingFit,
    ScalingFitWarning,
    aggregate_seeds,
    fit_power_law,
    fit_saturating,
)
from newllm.plotting import plot_scaling, save_figure

# Seed 003 (11-29): training tokens and best validation PPL at 50 / 100 / 200 / 500 samples.
SEED003_TOKENS = (56602, 110516, 216119, 529173)
SEED003_PPL = (799.42, 680.12, 500.12, 325.00)
# 11-27 sample scaling: tokens, and PPL of the 6-layer and 3-layer runs.
RUN1127_TOKENS = (3495, 7466, 15832, 39814)
RUN1127_PPL_6L = (7341.91, 3498.24, 2242.03, 1145.23)
RUN1127_PPL_3L = (7152.28, 3360.15, 2439.31, 1171.15)

FAST = ScalingConfig(n_bootstrap=200)


def power_law(tokens, ppl, config=FAST):
    return fit_power_law(tokens, ppl, config, progress=False)


def saturating(tokens, ppl, config=FAST):
    return fit_saturating(tokens, ppl, config, progress=False)


# ------------------------------------------------------------------------------------ the original's fits

def test_seed003_three_point_fit():
    fit = power_law(SEED003_TOKENS[:3], SEED003_PPL[:3])
    assert fit.ok and fit.n_points == 3
    assert round(fit.alpha, 4) == -0.3501
    assert round(fit.A, 2) == 37791.58
    assert round(fit.r2, 4) == 0.9690
    assert round(100 * fit.change_for_doubling()) == -22


def test_seed003_four_point_fit():
    fit = power_law(SEED003_TOKENS, SEED003_PPL)
    assert round(fit.alpha, 4) == -0.4109
    assert round(fit.A, 2) == 75686.99
    assert round(fit.r2, 4) == 0.9820
    assert round(fit.p_value, 4) == 0.0090
    assert round(100 * fit.change_for_doubling()) == -25
    assert fit.change_for_doubling() == pytest.approx(2**fit.alpha - 1)


@pytest.mark.parametrize(
    "ppl, alpha, a, r2, p",
    [(RUN1127_PPL_6L, -0.7463, 3022654, 0.9908, 0.0046), (RUN1127_PPL_3L, -0.7143, 2264935, 0.9818, 0.0092)],
)
def test_1127_fits(ppl, alpha, a, r2, p):
    fit = power_law(RUN1127_TOKENS, ppl)
    assert round(fit.alpha, 4) == alpha
    assert round(fit.A) == a
    assert round(fit.r2, 4) == r2
    assert round(fit.p_value, 4) == p


def test_extrapolations_match_the_original():
    fits = {
        "3 points": power_law(SEED003_TOKENS[:3], SEED003_PPL[:3]),
        "4 points": power_law(SEED003_TOKENS, SEED003_PPL),
    }
    table = extrapolation_table(fits, targets=(5e5, 1e6, 2e6, 5e6, 1e7)).set_index(["fit", "tokens"])
    expected = {
        "3 points": {5e5: 382, 1e6: 300, 5e6: 171, 1e7: 134},
        "4 points": {1e6: 259, 2e6: 195, 5e6: 134, 1e7: 101},
    }
    for label, values in expected.items():
        for tokens, ppl in values.items():
            assert round(table.loc[(label, tokens), "ppl"]) == ppl, (label, tokens)
    # For a power law the change for 2x data is the same at every size: 2^alpha - 1.
    three = table.loc["3 points"]
    assert np.allclose(three["change_2x"], fits["3 points"].change_for_doubling())
    six = power_law(RUN1127_TOKENS, RUN1127_PPL_6L)
    assert [round(six.predict(n)) for n in (1e5, 5e5, 1e6, 1e7)] == [561, 169, 101, 18]


# ---------------------------------------------------------------------------------------------- bootstrap

def test_bootstrap_is_seeded_skips_degenerate_resamples_and_brackets_the_fit():
    config = ScalingConfig(n_bootstrap=1000, seed=3)
    fit = power_law(SEED003_TOKENS[:3], SEED003_PPL[:3], config)
    again = power_law(SEED003_TOKENS[:3], SEED003_PPL[:3], config)
    other = power_law(SEED003_TOKENS[:3], SEED003_PPL[:3], dataclasses.replace(config, seed=4))
    assert fit.ci == again.ci and np.array_equal(fit.samples, again.samples)
    # 3 points allow only 10 distinct resamples, so compare the draws, not the (discrete) interval ends.
    assert not np.array_equal(fit.samples, other.samples)
    # A resample of 3 points is all one size with probability 1/9; those cannot fix a slope and are skipped.
    assert 840 <= fit.n_bootstrap_used <= 940
    for name in ("alpha", "A"):
        low, high = fit.ci[name]
        assert low < getattr(fit, name) < high
    low, high = fit.predict_interval([5e5, 1e7])
    assert np.all(low < fit.predict([5e5, 1e7])) and np.all(fit.predict([5e5, 1e7]) < high)
    assert np.all(high[1] - low[1] > high[0] - low[0])  # wider the further out it extrapolates


def test_bootstrap_of_exact_data_has_zero_width():
    tokens = np.geomspace(1e4, 1e6, 6)
    fit = power_law(tokens, 5e4 * tokens**-0.4)
    assert fit.n_bootstrap_used == FAST.n_bootstrap  # 6 points: a resample with < 2 sizes is vanishingly rare
    assert fit.ci["alpha"] == pytest.approx((-0.4, -0.4))
    assert fit.ci["A"] == pytest.approx((5e4, 5e4))


def test_noisy_power_law_interval_covers_the_truth():
    rng = np.random.default_rng(0)
    tokens = np.geomspace(1e4, 1e7, 12)
    fit = power_law(tokens, 2e4 * tokens**-0.3 * np.exp(rng.normal(0, 0.05, tokens.size)))
    low, high = fit.ci["alpha"]
    assert low < -0.3 < high and high - low < 0.1


def test_zero_resamples_gives_nan_intervals():
    fit = power_law(SEED003_TOKENS, SEED003_PPL, ScalingConfig(n_bootstrap=0))
    assert fit.ok and fit.n_bootstrap_used == 0
    assert all(math.isnan(v) for pair in fit.ci.values() for v in pair)
    assert np.isnan(fit.predict_interval(1e6)[0]).all()


# ------------------------------------------------------------------------------------------ saturating fit

def test_saturating_fit_recovers_exact_parameters():
    tokens = np.geomspace(1e4, 1e7, 8)
    for e, b, beta in [(1.5, 30.0, 0.3), (0.0, 30.0, 0.3), (0.2, 5.0, 0.6)]:
        fit = saturating(tokens, np.exp(e + b * tokens**-beta), ScalingConfig(n_bootstrap=0))
        assert fit.ok
        assert fit.E == pytest.approx(e, abs=1e-6)
        assert fit.B == pytest.approx(b, rel=1e-6)
        assert fit.beta == pytest.approx(beta, rel=1e-6)
        assert fit.asymptotic_ppl == pytest.approx(math.exp(e), rel=1e-6)


def test_saturating_huber_resists_an_outlier_better_than_least_squares():
    tokens = np.geomspace(1e4, 1e7, 8)
    ppl = np.exp(1.5 + 30.0 * tokens**-0.3)
    ppl[3] *= 1.5
    no_boot = ScalingConfig(n_bootstrap=0)
    huber = saturating(tokens, ppl, no_boot)
    squares = saturating(tokens, ppl, dataclasses.replace(no_boot, huber_delta=10.0))  # all residuals quadratic
    assert abs(huber.E - 1.5) < 0.01
    assert abs(huber.E - 1.5) < abs(squares.E - 1.5)


@pytest.fixture(scope="module")
def seed003_saturating() -> SaturatingFit:
    return saturating(SEED003_TOKENS, SEED003_PPL, ScalingConfig(n_bootstrap=60))


def test_saturating_fit_on_seed003_respects_constraints_and_brackets(seed003_saturating):
    fit = seed003_saturating
    assert fit.ok and fit.E >= 0 and fit.B > 0 and fit.beta > 0
    assert fit.rmse_log < 0.05  # the fit follows 4 points within a few percent of the loss
    assert 0 < fit.n_bootstrap_used < 60  # resamples with < 3 distinct sizes are skipped
    assert np.all(fit.samples[:, 0] >= 0) and np.all(fit.samples[:, 1:] > 0)
    for name in ("E", "B", "beta"):
        low, high = fit.ci[name]
        assert low <= getattr(fit, name) <= high
    assert "rough and wide" in fit.summary()
    change = fit.change_for_doubling([1e6, 1e7])
    assert np.all(change < 0)
    with pytest.raises(ValueError, match="needs the size N"):
        fit.change_for_doubling()


# -------------------------------------------------------------------------------------------- refusals

def test_power_law_refuses_two_sizes():
    # Four runs, but only two distinct sizes: a line through two points has R^2 = 1 and no p-value.
    with pytest.warns(ScalingFitWarning, match="at least 3"):
        fit = fit_power_law([1e4, 1e4, 2e4, 2e4], [900, 910, 700, 690], progress=False)
    assert not fit.ok and fit.n_points == 2 and "3" in fit.reason
    assert math.isnan(fit.alpha) and math.isnan(fit.r2) and fit.n_bootstrap_used == 0
    assert math.isnan(fit.predict(1e6))
    assert "not fitted" in fit.summary()


def test_saturating_refuses_three_sizes():
    with pytest.warns(ScalingFitWarning, match="at least 4"):
        fit = fit_saturating(SEED003_TOKENS[:3], SEED003_PPL[:3], progress=False)
    assert not fit.ok and math.isnan(fit.E) and math.isnan(fit.beta)
    table = extrapolation_table({"saturating": fit}, targets=(1e6,))
    assert table["ppl"].isna().all()


@pytest.mark.parametrize(
    "tokens, ppl, message",
    [
        ([1e4, 2e4, 4e4], [900, 800], "equal length"),
        ([1e4, -2e4, 4e4], [900, 800, 700], "sizes must be finite and > 0"),
        ([1e4, 2e4, 4e4], [900, float("nan"), 700], "drop failed runs"),
    ],
)
def test_bad_input_is_rejected(tokens, ppl, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(tokens, ppl, progress=False)


def test_saturating_needs_ppl_above_one():
    with pytest.raises(ValueError, match="> 1"):
        fit_saturating([1e4, 2e4, 4e4, 8e4], [900, 800, 700, 1.0], progress=False)


def test_config_validation():
    with pytest.raises(ValueError, match="confidence"):
        ScalingConfig(confidence=1.0)
    with pytest.raises(ValueError, match="resample"):
        ScalingConfig(resample="sizes")
    with pytest.raises(ValueError, match="targets"):
        ScalingConfig(targets=(1e6, -1.0))
    assert ScalingConfig.from_json(ScalingConfig(targets=(1e6, 2e6)).to_json()).targets == (1e6, 2e6)


# ------------------------------------------------------------------------------------- seeds and tables

def seeded_runs() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [
        {"tokens": n, "seed": seed, "ppl": p * math.exp(rng.normal(0, 0.03))}
        for n, p in zip(SEED003_TOKENS, SEED003_PPL)
        for seed in (0, 1, 2)
    ]
    return pd.DataFrame(rows)


def test_aggregate_seeds():
    runs = seeded_runs()
    runs = pd.concat([runs, pd.DataFrame([{"tokens": 10**6, "seed": 0, "ppl": 250.0}])], ignore_index=True)
    table = aggregate_seeds(runs)
    assert list(table.columns) == ["tokens", "ppl_mean", "ppl_std", "n_runs"]
    assert table["tokens"].tolist() == [*SEED003_TOKENS, 10**6]
    first = runs[runs.tokens == SEED003_TOKENS[0]].ppl
    assert table.loc[0, "ppl_mean"] == pytest.approx(first.mean())
    assert table.loc[0, "ppl_std"] == pytest.approx(first.std(ddof=1))
    assert table["n_runs"].tolist() == [3, 3, 3, 3, 1]
    assert math.isnan(table.loc[4, "ppl_std"])
    with pytest.raises(ValueError, match="more than once"):
        aggregate_seeds(pd.concat([runs, runs.iloc[:1]]))
    with pytest.raises(ValueError, match="seed_col=None"):
        aggregate_seeds(runs.drop(columns="seed"))


def test_fits_average_seeds_and_can_resample_them():
    runs = seeded_runs()
    table = aggregate_seeds(runs)
    from_runs = power_law(runs.tokens, runs.ppl)
    from_means = power_law(table.tokens, table.ppl_mean)
    assert from_runs.alpha == pytest.approx(from_means.alpha) and from_runs.n_points == 4
    by_seed = power_law(runs.tokens, runs.ppl, dataclasses.replace(FAST, resample="seeds"))
    assert by_seed.n_bootstrap_used == FAST.n_bootstrap  # every size is kept: nothing is degenerate
    low, high = by_seed.ci["alpha"]
    assert low < by_seed.alpha < high
    with pytest.raises(ValueError, match="resample='seeds' needs >= 2 runs"):
        power_law(SEED003_TOKENS, SEED003_PPL, dataclasses.replace(FAST, resample="seeds"))


def test_extrapolation_table_shape_and_intervals(seed003_saturating):
    fits = {"power law": power_law(SEED003_TOKENS, SEED003_PPL), "saturating": seed003_saturating}
    table = extrapolation_table(fits)
    assert list(table.columns) == [
        "fit", "tokens", "ppl", "ppl_low", "ppl_high", "change_2x", "change_2x_low", "change_2x_high", "note"
    ]
    assert len(table) == 2 * len(ScalingConfig().targets)
    assert (table.ppl_low <= table.ppl_high).all() and (table.change_2x_low <= table.change_2x_high).all()
    assert (table.ppl_low <= table.ppl).all() and (table.ppl <= table.ppl_high).all()
    with pytest.raises(ValueError, match="mapping"):
        extrapolation_table([fits["power law"]])


def test_results_are_frozen_and_serialise():
    fit = power_law(SEED003_TOKENS, SEED003_PPL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.alpha = 0.0
    with pytest.raises(ValueError):
        fit.samples[0, 0] = 0.0  # the bootstrap samples are read-only too
    data = json.loads(json.dumps(fit.to_dict(), allow_nan=False))
    assert data["kind"] == "power_law" and data["alpha"] == pytest.approx(fit.alpha)
    assert data["ci"]["alpha"] == pytest.approx(list(fit.ci["alpha"]))
    with pytest.warns(ScalingFitWarning):
        refused = fit_saturating(SEED003_TOKENS[:2], SEED003_PPL[:2], progress=False)
    refused_data = json.loads(json.dumps(refused.to_dict(), allow_nan=False))
    assert refused_data["E"] is None and refused_data["ok"] is False and refused_data["reason"]
    assert isinstance(fit.predict(1e6), float) and fit.predict([1e6, 2e6]).shape == (2,)
    assert isinstance(fit, PowerLawFit) and isinstance(refused, SaturatingFit)


# ------------------------------------------------------------------------------------------------- plot

def test_plot_scaling_returns_figure_and_writes_png(tmp_path):
    runs = seeded_runs()
    pl = power_law(runs.tokens, runs.ppl)
    sat = saturating(runs.tokens, runs.ppl, ScalingConfig(n_bootstrap=30))
    path = tmp_path / "plots" / "scaling.png"
    fig = plot_scaling(runs, pl, sat, extrapolate_to=1e7, path=path)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["scaling.png"]  # no temporary file left behind
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert f"{pl.alpha:.3f}" in ax.get_title() and f"{pl.r2:.3f}" in ax.get_title()
    labels = ax.get_legend_handles_labels()[1]
    assert any("mean ± std" in label for label in labels)
    assert sum("bootstrap band" in label for label in labels) == 2
    assert ax.get_xlim()[1] > 1e7


def test_plot_scaling_from_aggregated_points_and_refused_fit():
    points = pd.DataFrame({"tokens": SEED003_TOKENS[:2], "ppl_mean": SEED003_PPL[:2]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScalingFitWarning)
        refused = fit_power_law(points.tokens, points.ppl_mean, progress=False)
    fig = plot_scaling(points, refused)
    assert "not fitted" in fig.axes[0].get_title()
    assert not any("std" in label for label in fig.axes[0].get_legend_handles_labels()[1])
    with pytest.raises(ValueError, match=".png"):
        save_figure(fig, "scaling.pdf")


def test_baseline_points_are_drawn_on_the_scaling_axes():
    import matplotlib.pyplot as plt

    from newllm.plotting import add_baseline_points

    fig, ax = plt.subplots()
    plt.close(fig)
    table = pd.DataFrame({"model": ["cvfp", "lstm", "lstm", "cvfp"], "samples": [1, 1, 2, 2], "seed": [0, 0, 0, 0],
                          "train_tokens": [100, 100, 200, 200], "val_ppl": [9.0, 8.0, 7.0, 6.0],
                          "parameters": [10, 11, 11, 10]})
    assert add_baseline_points(fig, table) == ["lstm"]
    line = ax.lines[-1]
    assert line.get_xdata().tolist() == [100, 200] and line.get_ydata().tolist() == [8.0, 7.0]
    assert "lstm baseline (11 parameters)" in line.get_label()
    assert add_baseline_points(fig, table[table["model"] == "cvfp"]) == []


def test_the_sweep_frees_each_size_before_the_next(tmp_path, monkeypatch):
    import gc
    import weakref

    import newllm.experiments.scaling as scaling
    from newllm.config.data import DataConfig
    from newllm.config.models import ModelConfig
    from newllm.experiments.cvfp import CVFPSettings
    from newllm.utils.runs import RunFolder

    class FakeRun:  # stands for a CVFPRun: model, contexts and caches on the device
        def __init__(self, n):
            self.row = {"samples": n, "seed": 42, "val_ppl": 10.0}

    alive = []

    def fake_run_cvfp(settings, progress=True, corpus=None, **kwargs):
        gc.collect()
        assert all(ref() is None for ref in alive), "the previous size's run is still referenced"
        run = FakeRun(settings.data.samples)
        alive.append(weakref.ref(run))
        return run

    monkeypatch.setattr(scaling, "run_cvfp", fake_run_cvfp)
    monkeypatch.setattr(scaling, "load_corpus", lambda cfg, progress=True: None)
    settings = CVFPSettings(data=DataConfig(dataset="builtin", samples=2, val_samples=2),
                            model=ModelConfig(ctx_dim=8, embed_dim=8, num_layers=1, embedding="random"))
    run = RunFolder.create("scaling", "free_test", results_dir=tmp_path)
    table = scaling.run_scaling([2, 4, 8], settings, run, progress=False)
    assert sorted(table["samples"]) == [2, 4, 8] and len(alive) == 3


def test_the_saturating_floor_stays_at_or_above_a_known_optimum():
    from newllm.evaluation.scaling_extrapolation import extrapolation_table
    from newllm.evaluation.scaling_fits import fit_saturating

    sizes = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5])
    ppl = np.exp(1.0 + 30.0 / sizes**0.3)  # the truth flattens at PPL e^1 = 2.72
    free = fit_saturating(sizes, ppl, ScalingConfig(n_bootstrap=20), progress=False)
    assert free.asymptotic_ppl == pytest.approx(math.e, rel=1e-3)
    bounded = fit_saturating(sizes, ppl, ScalingConfig(n_bootstrap=20), progress=False, optimum_ppl=5.0)
    assert bounded.ok and bounded.asymptotic_ppl >= 5.0 - 1e-9  # never below what the data allows
    table = extrapolation_table({"saturating": free}, targets=[1e9], optimum_ppl=5.0)
    assert table["note"].iloc[0] == "impossible: below the known optimum 5"
    with pytest.warns(UserWarning):
        refused = fit_saturating(sizes, ppl, ScalingConfig(n_bootstrap=20), progress=False, optimum_ppl=100.0)
    assert not refused.ok and "below the data's known optimum" in refused.reason


def test_extrapolations_below_one_are_flagged():
    from newllm.evaluation.scaling_extrapolation import extrapolation_table
    from newllm.evaluation.scaling_fits import fit_power_law

    fit = fit_power_law([1e3, 1e4, 1e5], [100.0, 20.0, 4.0], ScalingConfig(n_bootstrap=20), progress=False)
    table = extrapolation_table({"power law": fit}, targets=[1e6, 1e8])
    assert table["note"].tolist()[1] == "impossible: PPL below 1" and table["ppl"].iloc[1] < 1


def _fake_sweep(tmp_path, monkeypatch, calls):
    import newllm.experiments.scaling as scaling
    from newllm.config.data import DataConfig
    from newllm.config.models import ModelConfig
    from newllm.experiments.cvfp import CVFPSettings

    class FakeRun:
        def __init__(self, n, seed):
            self.row = {"samples": n, "seed": seed, "val_ppl": 100.0 / n, "train_tokens": 1000 * n}

    def fake_run_cvfp(settings, progress=True, corpus=None, **kwargs):
        calls.append(settings.data.samples)
        return FakeRun(settings.data.samples, settings.seed)

    monkeypatch.setattr(scaling, "run_cvfp", fake_run_cvfp)
    monkeypatch.setattr(scaling, "load_corpus", lambda cfg, progress=True: None)
    return scaling, CVFPSettings(data=DataConfig(dataset="builtin", samples=2, val_samples=2),
                                 model=ModelConfig(ctx_dim=8, embed_dim=8, num_layers=1, embedding="random"))


def test_a_resumed_sweep_never_mixes_settings_and_retrains_damaged_rows(tmp_path, monkeypatch):
    import dataclasses

    from newllm.config.models import ModelConfig
    from newllm.utils.runs import RunFolder

    calls = []
    scaling, settings = _fake_sweep(tmp_path, monkeypatch, calls)
    run = RunFolder.create("scaling", "s", results_dir=tmp_path)
    scaling.run_scaling([2, 4], settings, run, progress=False)
    with pytest.raises(ValueError, match="samples lists \\[2\\] more than once"):
        scaling.run_scaling([2, 2], settings, run, progress=False)
    wider = dataclasses.replace(settings, model=ModelConfig(ctx_dim=16, embed_dim=8, num_layers=1,
                                                            embedding="random"))
    with pytest.raises(ValueError, match="model.ctx_dim: 8 -> 16"):
        scaling.run_scaling([2, 4, 8], wider, run, progress=False)
    assert calls == [2, 4]  # nothing trained by the refused calls
    # a row cut mid-write: dropped, said aloud, trained again
    table = run.file("scaling.csv")
    table.write_text(table.read_text().rstrip("\n").rsplit(",", 3)[0] + "\n")
    with pytest.warns(RuntimeWarning, match="damaged row"):
        done = scaling.run_scaling([2, 4, 8], settings, run, progress=False)
    assert calls == [2, 4, 4, 8] and sorted(done["samples"]) == [2, 4, 8]
    assert run.read_config()["sweep"]["samples"] == [2, 4, 8]


def test_two_processes_cannot_run_one_sweep(tmp_path, monkeypatch):
    from newllm.utils.runs import RunFolder

    calls = []
    scaling, settings = _fake_sweep(tmp_path, monkeypatch, calls)
    run = RunFolder.create("scaling", "s", results_dir=tmp_path)
    with run.lock():  # another process holds it (here: this one, still alive)
        with pytest.raises(RuntimeError, match="is in use by process"):
            scaling.run_scaling([2], settings, run, progress=False)
    assert calls == []
    scaling.run_scaling([2], settings, run, progress=False)  # released: runs
    assert calls == [2] and not run.file(".lock").exists()


def test_an_interrupted_phase2_resumes_inside_a_cvfp_run(tmp_path):
    from newllm.config.data import DataConfig
    from newllm.config.models import ModelConfig
    from newllm.config.training import Phase1Config, Phase2Config
    from newllm.experiments.cvfp import CVFPSettings, run_cvfp

    settings = CVFPSettings(
        data=DataConfig(dataset="builtin", samples=2, val_samples=2, cache_dir=str(tmp_path / "cache")),
        model=ModelConfig(ctx_dim=16, embed_dim=16, num_layers=1, embedding="random"),
        phase1=Phase1Config(max_iterations=3, min_iterations=3),
        phase2=Phase2Config(epochs=3, patience=5, cache_build_method="loop"),
    )
    unbroken = run_cvfp(settings, progress=False)

    class Stop(Exception):
        pass

    def stop_after_first(row):
        raise Stop()

    checkpoint = tmp_path / "phase2.safetensors"
    with pytest.raises(Stop):
        run_cvfp(settings, progress=False, checkpoint=checkpoint, epoch_callback=stop_after_first)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # Phase 1 repeats (to rounding): no "Phase 2 starts again"
        resumed = run_cvfp(settings, progress=False, checkpoint=checkpoint, resume=True)
    assert len(resumed.phase2.history) == 3 and resumed.phase2.steps == unbroken.phase2.steps
    assert resumed.row["val_ppl"] == pytest.approx(unbroken.row["val_ppl"], rel=1e-5)


def test_a_headless_sweep_prints_a_line_per_size(tmp_path, monkeypatch, capsys):
    from newllm.utils.runs import RunFolder

    scaling, settings = _fake_sweep(tmp_path, monkeypatch, [])
    scaling.run_scaling([2, 4], settings, RunFolder.create("scaling", "p", results_dir=tmp_path), progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[scaling]")]
    assert lines == ["[scaling] samples 2, seed 42: val PPL 50 (2000 training tokens)",
                     "[scaling] samples 4, seed 42: val PPL 25 (4000 training tokens)"]

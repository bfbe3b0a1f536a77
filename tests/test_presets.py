import pytest

from newllm.notebook.presets import NOTEBOOK_PARAMS, choose_preset, parameter_table, resolve


def test_auto_preset_follows_the_hardware():
    assert choose_preset("auto", cuda_available=True) == "gpu"
    assert choose_preset("auto", cuda_available=False) == "cpu"
    with pytest.raises(ValueError, match="preset='tpu' is unknown"):
        choose_preset("tpu")


def test_gpu_preset_is_the_seed_experiment_and_cpu_is_small():
    gpu = resolve("scaling", "auto", cuda_available=True)
    assert gpu["samples"] == [50, 100, 200, 500] and gpu["ctx_dim"] == 768 and gpu["layers"] == 6
    assert gpu["tokenizer"] == "gpt2" and gpu["preset_used"] == "gpu"
    cpu = resolve("scaling", "auto", cuda_available=False)
    assert cpu["preset_used"] == "cpu" and cpu["ctx_dim"] < 768


def test_explicit_parameters_win_and_one_value_becomes_a_list():
    values = resolve("scaling", "gpu", samples=200, ctx_dim=256)
    assert values["samples"] == [200] and values["ctx_dim"] == 256 and values["layers"] == 6


@pytest.mark.parametrize(
    "notebook, given, fragment",
    [
        ("scaling", {"samples": -5}, ">= 1"),
        ("scaling", {"samples": [50, "x"]}, "an integer"),
        ("scaling", {"ctx_dim": [64, 128]}, "one value, not a list"),
        ("scaling", {"dist_reg_weight": 1.5}, "<= 1.0"),
        ("scaling", {"tokenizer": "spacy"}, "one of"),
        ("scaling", {"baselines": ["gru"]}, "one of"),
        ("scaling", {"samples": []}, "non-empty"),
        ("scaling", {"sample": 10}, "unknown parameter"),
        ("advanced_training", {"quantization": "int4"}, "'none', 'int8'"),
    ],
)
def test_bad_parameters_stop_with_a_clear_message(notebook, given, fragment):
    with pytest.raises(ValueError, match="not allowed|unknown parameter") as info:
        resolve(notebook, "cpu", **given)
    assert fragment in str(info.value)


def test_every_notebook_resolves_under_both_presets():
    for notebook in NOTEBOOK_PARAMS:
        for preset in ("cpu", "gpu"):
            values = resolve(notebook, preset)
            assert set(NOTEBOOK_PARAMS[notebook]) <= set(values)
        assert len(parameter_table(notebook)) == len(NOTEBOOK_PARAMS[notebook])

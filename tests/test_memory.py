"""The Phase-2 memory planner: decisions on simulated machines, the seed-003 500-sample case, overrides, errors."""

import pytest
import torch

from newllm.config.models import ModelConfig
from newllm.config.training import Phase2Config
from newllm.models.cvfp import CVFPModel
from newllm.training.planner import (
    ORIGINAL_500_SAMPLE_PEAK_BYTES,
    GiB,
    MemoryBudget,
    MemoryPlanError,
    MiB,
    Phase2Workload,
    host_memory,
    original_batch_tokens,
    original_required_bytes,
    plan_phase2,
)

SEED003_TRAIN, SEED003_VAL = 529_173, 58_797  # seed-spec 5.5: 500 samples


@pytest.fixture(scope="module")
def seed003() -> Phase2Workload:
    return Phase2Workload.from_config(ModelConfig(embedding="random"), SEED003_TRAIN, SEED003_VAL)


def test_workload_counts_match_the_original_model(seed003):
    # seed-spec 5.1: 91,429,969 parameters; 45,739,345 Phase-2 trainable (TokenBlock + head, 11-27 doc)
    assert seed003.params == 91_429_969
    assert seed003.trainable_params == 45_739_345
    assert seed003.row_values == 6 * 768 and seed003.head_trainable


def test_workload_from_config_equals_from_model():
    cfg = ModelConfig(vocab_size=200, ctx_dim=24, embed_dim=16, num_layers=3, embedding="random",
                      token_input_all_layers=False, num_input_tokens=2)
    assert Phase2Workload.from_config(cfg, 100, 10) == Phase2Workload.from_model(CVFPModel(cfg), 100, 10)


def test_original_rule_reproduces_the_spec_cache_sizes():
    # seed-spec 5.4: the 500-sample context caches were 9301.9 MiB (train) and 1033.5 MiB (val)
    contexts_only = lambda n: 6 * n * 768 * 4  # noqa: E731
    assert contexts_only(SEED003_TRAIN) / MiB == pytest.approx(9301.9, abs=0.1)
    assert contexts_only(SEED003_VAL) / MiB == pytest.approx(1033.5, abs=0.1)
    required = original_required_bytes(SEED003_TRAIN, SEED003_VAL, 6, 768, 768)
    assert required / GiB == pytest.approx(13.28, abs=0.01)  # "fits" its own 0.8 x 22.2 GiB check ...
    assert required < 0.8 * 22.2 * GiB
    assert original_batch_tokens(22.16) == 8864  # ... and then 8,864-token batches of fp32 logits OOMed


def test_seed003_500_samples_fits_a_22gib_gpu_at_under_half_the_original_peak(seed003):
    plan = plan_phase2(seed003, Phase2Config(), MemoryBudget.simulated(22.2, host_gib=50))
    assert (plan.placement, plan.cache_dtype) == ("gpu", "float16")
    assert plan.device_peak <= plan.limits["device"]
    # Target: <= 50% of the original's ~21.4 GiB in use at the OOM, and below its own planned requirement.
    # Recorded: planned peak 7.59 GiB vs original rule 13.28 GiB vs original peak 21.4 GiB.
    assert plan.device_peak <= 0.5 * ORIGINAL_500_SAMPLE_PEAK_BYTES
    assert plan.device_peak < original_required_bytes(SEED003_TRAIN, SEED003_VAL, 6, 768, 768)
    # the output layer is bounded by the CE chunk, not the batch: under the original's 1.66 GiB of batch logits
    ce = next(i for i in plan.items if i.name.startswith("output layer"))
    assert ce.nbytes < 8864 * 50257 * 4 + 4 * 50257 * 768
    assert plan.batch_size == 4096 and plan.micro_batch_size == 4096


def test_disk_is_chosen_when_host_ram_cannot_hold_the_cache(seed003):
    plan = plan_phase2(seed003, Phase2Config(), MemoryBudget.simulated(None, host_gib=8, disk_gib=100))
    assert (plan.placement, plan.cache_dtype) == ("disk", "float16")
    assert plan.host_peak <= plan.limits["host"]
    assert plan.disk_bytes == seed003.cache_bytes("float16", SEED003_TRAIN + SEED003_VAL)
    assert any("did not fit: cpu/float32, cpu/float16" in r for r in plan.reasons)


def test_small_run_on_cpu_keeps_an_exact_fp32_cache_in_ram():
    work = Phase2Workload.from_config(ModelConfig(embedding="random"), 20_000, 2_000)
    plan = plan_phase2(work, Phase2Config(), MemoryBudget.simulated(None, host_gib=20))
    assert (plan.placement, plan.cache_dtype, plan.batch_size) == ("cpu", "float32", 512)


def test_huge_run_on_gpu_moves_the_cache_to_host_then_disk():
    work = Phase2Workload.from_config(ModelConfig(embedding="random"), 5_000_000, 500_000)  # 47 GiB as fp16
    roomy_host = plan_phase2(work, Phase2Config(), MemoryBudget.simulated(22.2, host_gib=128))
    assert roomy_host.placement == "cpu" and roomy_host.device_peak <= roomy_host.limits["device"]
    small_host = plan_phase2(work, Phase2Config(), MemoryBudget.simulated(22.2, host_gib=16, disk_gib=500))
    assert small_host.placement == "disk"


def test_overrides_are_obeyed_and_a_forced_batch_only_lowers_the_micro_batch(seed003):
    budget = MemoryBudget.simulated(22.2, host_gib=50)
    forced = plan_phase2(seed003, Phase2Config(cache_placement="disk", cache_dtype="bfloat16"), budget)
    assert (forced.placement, forced.cache_dtype) == ("disk", "bfloat16")
    tight = MemoryBudget.simulated(9.0, host_gib=50)
    big = plan_phase2(seed003, Phase2Config(batch_size=65536, cache_placement="gpu"), tight)
    assert big.batch_size == 65536 and big.micro_batch_size < 65536
    assert big.device_peak <= big.limits["device"]
    fixed = plan_phase2(seed003, Phase2Config(batch_size=1000, micro_batch_size=250, ce_chunk_tokens=100,
                                              eval_batch_size=300), budget)
    assert (fixed.micro_batch_size, fixed.ce_chunk_tokens, fixed.eval_batch_size) == (250, 100, 300)


def test_gpu_placement_without_a_gpu_is_a_clear_error(seed003):
    with pytest.raises(ValueError, match="needs a GPU"):
        plan_phase2(seed003, Phase2Config(cache_placement="gpu"), MemoryBudget.simulated(None, host_gib=64))


def test_nothing_fits_raises_with_the_smallest_plan(seed003):
    budget = MemoryBudget.simulated(None, host_gib=1.0, disk_gib=2.0)
    with pytest.raises(MemoryPlanError, match="does not fit") as info:
        plan_phase2(seed003, Phase2Config(), budget)
    assert "PEAK host" in str(info.value)


def test_plan_table_is_readable(seed003):
    plan = plan_phase2(seed003, Phase2Config(), MemoryBudget.simulated(22.2, host_gib=50))
    table = plan.table()
    assert {"component", "where", "phase", "GiB", "note"} <= set(table.columns)
    peak = table[table.component == "PEAK device"].GiB.item()
    assert peak == pytest.approx(plan.device_peak / GiB)
    text = str(plan)
    assert "cache on gpu as float16" in text and "context cache: train" in text
    assert plan.summary()["cache_placement"] == "gpu"


def test_budget_probe_and_validation():
    total, available = host_memory()
    assert 0 < available <= total
    probed = MemoryBudget.probe(torch.device("cpu"))
    assert probed.device_type == "cpu" and probed.host_total == total and probed.disk_free > 0
    with pytest.raises(ValueError, match="device_type"):
        MemoryBudget("tpu", 0, 0, 1, 1, 1)
    with pytest.raises(ValueError, match="host_available"):
        MemoryBudget("cpu", 0, 0, 1, -1, 1)


def test_the_probe_frees_cached_blocks_first_and_counts_resident_weights_as_free(monkeypatch):
    from newllm.training.planner import device_bytes

    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: calls.append("mem_get_info") or (3 * GiB, 16 * GiB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "fake T4")
    budget = MemoryBudget.probe(torch.device("cuda"), resident_bytes=GiB)
    assert calls == ["empty_cache", "mem_get_info"]  # what Phase 1 freed is counted as free
    assert budget.device_free == 4 * GiB and budget.device_total == 16 * GiB
    model = torch.nn.Linear(10, 4)  # 44 fp32 values on the CPU
    assert device_bytes(model, torch.device("cpu")) == 44 * 4 and device_bytes(model, torch.device("cuda")) == 0


def test_the_plan_lists_the_bounded_context_metrics():
    from newllm.evaluation.context_metrics import context_metrics_bytes

    cfg = ModelConfig(vocab_size=1000, ctx_dim=64, embed_dim=64, num_layers=2, embedding="random")
    work = Phase2Workload.from_config(cfg, 10_000, 1_000)
    plan = plan_phase2(work, Phase2Config(), MemoryBudget.simulated(None, host_gib=8))
    row = plan.table()[lambda t: t["component"] == "context metrics (bounded)"]
    assert len(row) == 1 and row["GiB"].iloc[0] * GiB == pytest.approx(context_metrics_bytes(64))

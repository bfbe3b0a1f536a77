"""One command that runs every GPU path of the kit end to end and writes what it measured.

    python bench/gpu_check.py                      # on a CUDA machine: seed-scale checks (sized for < 8 min, untimed)
    python bench/gpu_check.py --out /tmp/check     # anywhere; on a CPU every check runs at tiny sizes (< 2 min)

Writes ``<out>/<device-name>.json`` (default out: results/gpu/): device, torch and CUDA versions, and per check
``passed`` with its figures (or the error). Exit status 1 when a check failed. Checks:

- ``phase1``: the sequential and parallel solvers (6 x 768, 4,000 WikiText-2 tokens on a GPU): s / iteration,
  contexts of the exact recurrence against the token loop;
- ``recurrence``: loop vs sweeps vs segments at 4,000 and 100,000 tokens: us / token, max-abs against the loop, sweeps;
- ``phase2_precision``: Phase 2 at 6 x 768, V = 50,257 in fp32, bf16 and fp16 autocast: tokens / s, loss after the
  same steps against fp32, and the head gradient of one batch against fp64 (no exactly zero non-target row);
- ``oom``: a real out-of-memory error (most free memory taken first) recovered by the backoff; simulated on a CPU;
- ``gated_amp``: the gated LM trained with AMP;
- ``pytest_cuda``: the ``cuda``-marked tests (all skipped on a CPU);
- ``notebooks``: the four notebooks under papermill (GPU preset at reduced sizes; CPU preset, tiny, on a CPU);
- ``seed003_headline``: Phase 1 + Phase 2 at 500 samples (the original: 11.8 + 11.5 min on an L4, then out of memory
  in Phase 2 on a 22 GiB card), timed, with the peak GPU memory.

Data: WikiText-2 and the GPT-2 tokenizer from ``$NEWLLM_SHARED_DATA`` (default ../shared/data) when present, else
the built-in corpus or seeded ids; the JSON says which. Nothing here needs the network.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from phase1 import load_token_ids  # noqa: E402  (bench/phase1.py: WikiText-2 / built-in corpus / seeded ids)

from newllm.config.data import DataConfig  # noqa: E402
from newllm.config.models import GatedLMConfig, ModelConfig  # noqa: E402
from newllm.config.training import GatedTrainConfig, Phase1Config, Phase2Config  # noqa: E402
from newllm.data.wikitext import make_windows  # noqa: E402
from newllm.experiments.cvfp import CVFPSettings, run_cvfp  # noqa: E402
from newllm.models.cvfp import CVFPModel  # noqa: E402
from newllm.recurrence import evaluate_contexts  # noqa: E402
from newllm.training.chunked_ce import linear_cross_entropy  # noqa: E402
from newllm.training.common import OOMBackoff, autocast_dtype  # noqa: E402
from newllm.training.gated import train_gated_lm  # noqa: E402
from newllm.training.phase1 import train_phase1  # noqa: E402
from newllm.training.phase2 import train_phase2  # noqa: E402
from newllm.utils.io import atomic_write_json  # noqa: E402
from newllm.utils.runtime import seed_everything  # noqa: E402

NOTEBOOKS = ("scaling", "parallel_tuning", "optimize_dist_reg_weight", "advanced_training")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size the checks use: the seed's on a GPU, tiny ones on a CPU."""

    layers: int
    dim: int
    vocab: int
    phase1_tokens: int
    recurrence_tokens: tuple[int, ...]
    phase2_train_tokens: int
    phase2_steps: int
    phase2_batch: int
    headline_samples: int
    headline: dict  # overrides of the headline run's settings


GPU = Sizes(layers=6, dim=768, vocab=50257, phase1_tokens=4000, recurrence_tokens=(4000, 100_000),
            phase2_train_tokens=100_000, phase2_steps=30, phase2_batch=4096, headline_samples=500,
            headline={"phase1_max_iterations": 40, "phase2_epochs": 10})
CPU = Sizes(layers=2, dim=64, vocab=2000, phase1_tokens=300, recurrence_tokens=(300, 3000),
            phase2_train_tokens=3000, phase2_steps=8, phase2_batch=256, headline_samples=8,
            headline={"phase1_max_iterations": 4, "phase2_epochs": 2})


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable):
    synchronize(device)
    began = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - began, result


def cvfp_model(sizes: Sizes, device: torch.device, seed: int = 0) -> CVFPModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=sizes.vocab, ctx_dim=sizes.dim, embed_dim=sizes.dim, num_layers=sizes.layers,
                      embedding="random")
    return CVFPModel(cfg).to(device)


def token_ids(sizes: Sizes, n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    ids, source = load_token_ids(n, seed)
    return ids % sizes.vocab, source


# ------------------------------------------------------------------------------------------ checks

def check_phase1(sizes: Sizes, device: torch.device) -> dict:
    ids, source = token_ids(sizes, sizes.phase1_tokens)
    out: dict = {"tokens": sizes.phase1_tokens, "data": source, "passed": True}
    for solver, iterations in (("sequential", 4), ("parallel", 10)):
        model = cvfp_model(sizes, device)
        cfg = Phase1Config(solver=solver, max_iterations=iterations, min_iterations=iterations, dist_reg_weight=0.9)
        seconds, result = timed(device, lambda: train_phase1(model, ids, cfg, progress=False))
        with torch.no_grad():
            x = model.embed_tokens(ids.to(device))[None]
            loop = evaluate_contexts(model.context_block, x, method="loop", all_layers=False).final[0]
        max_abs = float((result.contexts - loop).abs().max())
        stepping = result.history["seconds"].iloc[2 if solver == "sequential" else 1:]
        out[solver] = {"iterations": result.iterations, "s_per_iteration": float(stepping.median()),
                       "call_s": seconds, "max_abs_vs_token_loop": max_abs, "er_pct": result.train_metrics.er_pct}
        out["passed"] &= max_abs < 1e-3 and all(torch.isfinite(torch.tensor(result.history["loss"].iloc[1:].values)))
    return out


def check_recurrence(sizes: Sizes, device: torch.device) -> dict:
    model = cvfp_model(sizes, device)
    out: dict = {"passed": True}
    for n in sizes.recurrence_tokens:
        ids, source = token_ids(sizes, n, seed=1)
        with torch.no_grad():
            x = model.embed_tokens(ids.to(device))[None]
            loop_s, loop = timed(device, lambda: evaluate_contexts(model.context_block, x, method="loop",
                                                                   all_layers=False))
            row = {"data": source, "loop_us_per_token": 1e6 * loop_s / n}
            for method in ("sweeps", "segments"):
                seconds, result = timed(device, lambda: evaluate_contexts(model.context_block, x, method=method,
                                                                          tol=1e-5, all_layers=False))
                max_abs = float((result.final - loop.final).abs().max())
                row[method] = {"us_per_token": 1e6 * seconds / n, "max_abs_vs_loop": max_abs,
                               "sweeps": result.sweeps, "method_used": result.method}
                out["passed"] &= max_abs < 1e-3
        out[f"{n}_tokens"] = row
    return out


def head_gradient_parity(model: CVFPModel, ids: torch.Tensor, device: torch.device, dtype) -> dict:
    """One batch's head gradient in ``dtype`` against fp64: relative error, and zero non-target rows."""
    batch = ids[:512].to(device)
    with torch.no_grad():
        x = model.embed_tokens(batch[None])
        h = model.token_block(model.context_block.run(x, model.initial_context(1, device, x.dtype)), x)[0]
    targets = torch.roll(batch, -1)
    weight = (torch.randn(model.cfg.vocab_size, h.shape[-1], device=device) * 0.02).requires_grad_()
    loss, _ = linear_cross_entropy(h, weight, None, targets, 256, dtype, scale=1 / 4096)
    loss.backward()
    ref_w = weight.detach().double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(h.double() @ ref_w.t(), targets, reduction="sum") / 4096
    ref.backward()
    non_target = torch.ones(model.cfg.vocab_size, dtype=torch.bool, device=device)
    non_target[targets] = False
    return {"relative_error": float((weight.grad.double() - ref_w.grad).norm() / ref_w.grad.norm()),
            "zero_non_target_rows": int((weight.grad[non_target] == 0).all(dim=1).sum())}


def check_phase2_precision(sizes: Sizes, device: torch.device) -> dict:
    ids, source = token_ids(sizes, sizes.phase2_train_tokens + sizes.phase2_train_tokens // 10, seed=2)
    train, val = ids[: sizes.phase2_train_tokens], ids[sizes.phase2_train_tokens:]
    out: dict = {"data": source, "train_tokens": len(train), "steps": sizes.phase2_steps,
                 "batch_tokens": sizes.phase2_batch, "passed": True}
    modes = ("off", "bf16", "fp16") if device.type == "cuda" else ("off",)
    for amp in modes:
        model = cvfp_model(sizes, device)
        cfg = Phase2Config(epochs=1, max_steps=sizes.phase2_steps, batch_size=sizes.phase2_batch, amp=amp, seed=3)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds, result = timed(device, lambda: train_phase2(model, train, val, cfg, tokenizer_name="ids",
                                                             progress=False))
        build = sum(info.get("build_seconds", 0.0) for info in result.cache.values())
        dtype = autocast_dtype(device, amp)
        parity = head_gradient_parity(model, ids, device, dtype)
        row = {"tokens_per_s": result.steps * sizes.phase2_batch / max(seconds - build, 1e-9),
               "train_loss": float(result.history["train_loss"].iloc[-1]), "val_loss": result.val.loss,
               "cache_build_s": build, "head_gradient": parity, "placement": result.plan.placement,
               "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
        out[amp] = row
        out["passed"] &= parity["zero_non_target_rows"] == 0 and parity["relative_error"] < 5e-2
    for amp in modes[1:]:
        out[amp]["val_loss_vs_fp32"] = out[amp]["val_loss"] / out["off"]["val_loss"] - 1
        out["passed"] &= abs(out[amp]["val_loss_vs_fp32"]) < 5e-2
    if device.type != "cuda":  # no autocast training on a CPU, but the output layer's low-precision matmuls exist
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            parity = head_gradient_parity(cvfp_model(sizes, device), ids, device, dtype)
            out[f"{name}_head_gradient"] = parity
            out["passed"] &= parity["zero_non_target_rows"] == 0 and parity["relative_error"] < 5e-2
    return out


def check_oom(sizes: Sizes, device: torch.device) -> dict:
    calls = []
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        hog = torch.empty(int(free * 0.9) // 4, device=device)
        left, _ = torch.cuda.mem_get_info(device)

        def step(size):
            calls.append(size)
            return torch.empty(int(left * size / 8) // 4, device=device).numel()
    else:
        hog = None

        def step(size):  # no real OOM on a CPU: the same error, injected
            calls.append(size)
            if size > 4:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated on a CPU)")
            return size

    try:
        backoff = OOMBackoff(32, max_halvings=6, what="gpu_check", unit="parts")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            backoff.run(step, cleanup=lambda: None)
    finally:
        del hog
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"real": device.type == "cuda", "sizes_tried": calls, "halvings": backoff.halvings,
            "passed": backoff.halvings >= 1}


def check_gated_amp(sizes: Sizes, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    paragraphs = [[2] + torch.randint(4, 1000, (int(n),), generator=gen).tolist() + [3]
                  for n in torch.randint(20, 200, (200 if device.type == "cuda" else 30,), generator=gen)]
    train_cfg = GatedTrainConfig(window=64, stride=32, batch_size=64, epochs=2, checkpoint_every=100)
    train = make_windows(paragraphs[:-10], train_cfg.window, train_cfg.stride)
    val = make_windows(paragraphs[-10:], train_cfg.window, train_cfg.stride, targets="once")
    model_cfg = GatedLMConfig(vocab_size=1000, ctx_dim=256 if device.type == "cuda" else 32,
                              num_layers=6 if device.type == "cuda" else 1)
    with tempfile.TemporaryDirectory() as folder:
        seconds, result = timed(device, lambda: train_gated_lm(model_cfg, train_cfg, train, val, folder,
                                                               name="gpu_check", device=str(device), progress=False))
    losses = result.history["val_loss"].tolist()
    return {"amp": str(autocast_dtype(device, train_cfg.amp)), "seconds": seconds, "val_loss": losses,
            "passed": all(map(lambda v: v == v and v < 1e9, losses))}


def check_pytest_cuda(sizes: Sizes, device: torch.device) -> dict:
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "tests/"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-1:] or [done.stderr[-300:]]
    return {"command": " ".join(command[1:]), "summary": tail[0], "passed": done.returncode == 0}


def notebook_parameters(device: torch.device) -> dict[str, dict]:
    if device.type == "cuda":  # the GPU preset at reduced sizes, offline (built-in corpus)
        common = {"preset": "gpu", "dataset": "builtin", "tokenizer": "auto", "val_samples": 4}
        return {
            "scaling": {**common, "samples": [20, 40], "phase1_max_iterations": 6, "phase2_epochs": 2},
            "parallel_tuning": {**common, "samples": 10, "iterations": [3, 6], "weights": [0.5, 0.9]},
            "optimize_dist_reg_weight": {**common, "samples": 10, "n_trials": 2, "phase1_max_iterations": 5,
                                         "phase2_epochs": 1},
            "advanced_training": {**common, "samples": 40, "epochs": 2},
        }
    common = {"preset": "cpu", "val_samples": 2}
    return {
        "scaling": {**common, "samples": [2, 4], "phase1_max_iterations": 3, "phase2_epochs": 1},
        "parallel_tuning": {**common, "samples": 2, "iterations": [2], "weights": [0.5, 0.9]},
        "optimize_dist_reg_weight": {**common, "samples": 2, "n_trials": 2, "phase1_max_iterations": 3,
                                     "phase2_epochs": 1},
        "advanced_training": {**common, "samples": 4, "epochs": 1},
    }


def check_notebooks(sizes: Sizes, device: torch.device) -> dict:
    import papermill

    out: dict = {"passed": True}
    with tempfile.TemporaryDirectory() as folder:
        for name, parameters in notebook_parameters(device).items():
            began = time.perf_counter()
            try:
                papermill.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(Path(folder) / f"{name}.ipynb"),
                                           parameters={**parameters, "results_dir": folder}, kernel_name="python3",
                                           cwd=str(REPO / "notebooks"), progress_bar=False, log_output=False)
                out[name] = {"passed": True, "seconds": time.perf_counter() - began, "parameters": parameters}
            except Exception as error:  # papermill's PapermillExecutionError names the failing cell
                out[name] = {"passed": False, "error": str(error)[-1500:], "parameters": parameters}
                out["passed"] = False
    return out


def check_seed003_headline(sizes: Sizes, device: torch.device) -> dict:
    samples = sizes.headline_samples
    settings = CVFPSettings(
        data=DataConfig(dataset="builtin", samples=samples, val_samples=20 if device.type == "cuda" else 2),
        model=ModelConfig(ctx_dim=sizes.dim, embed_dim=sizes.dim, num_layers=sizes.layers, embedding="random"),
        phase1=Phase1Config(solver="parallel", max_iterations=sizes.headline["phase1_max_iterations"],
                            min_iterations=min(5, sizes.headline["phase1_max_iterations"])),
        phase2=Phase2Config(epochs=sizes.headline["phase2_epochs"], patience=2),
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, run = timed(device, lambda: run_cvfp(settings, progress=False))
    phase1_s = run.phase1.seconds
    return {
        "samples": samples, "train_tokens": int(run.row["train_tokens"]), "phase1_min": phase1_s / 60,
        "phase2_min": (seconds - phase1_s) / 60, "phase1_iterations": run.phase1.iterations,
        "phase2_epochs": len(run.phase2.history), "val_ppl": float(run.row["val_ppl"]),
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "original": "11.8 + 11.5 min on an L4; Phase 2 out of memory on a 22 GiB card (seed 003)",
        "passed": bool(run.row["val_ppl"] == run.row["val_ppl"]),
    }


CHECKS = {
    "phase1": check_phase1,
    "recurrence": check_recurrence,
    "phase2_precision": check_phase2_precision,
    "oom": check_oom,
    "gated_amp": check_gated_amp,
    "pytest_cuda": check_pytest_cuda,
    "notebooks": check_notebooks,
    "seed003_headline": check_seed003_headline,
}


def environment(device: torch.device) -> dict:
    info = {"device": device.type, "torch": torch.__version__, "cuda": torch.version.cuda, "python":
            platform.python_version(), "machine": platform.machine(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                    gpu_gib=torch.cuda.get_device_properties(device).total_memory / 2**30,
                    amp_auto=str(autocast_dtype(device, "auto")))
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "results" / "gpu"), help="folder for <device-name>.json")
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="run only these checks")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = GPU if device.type == "cuda" else CPU
    seed_everything(0)
    report = {"environment": environment(device), "sizes": dataclasses.asdict(sizes), "checks": {},
              "command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    began = time.perf_counter()
    for name in args.only or CHECKS:
        started = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            result = CHECKS[name](sizes, device)
        except Exception as error:  # one broken check must not hide the others' results
            result = {"passed": False, "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc()[-3000:]}
        result["check_seconds"] = time.perf_counter() - started
        report["checks"][name] = result
        print(f"[gpu_check] {name}: {'pass' if result['passed'] else 'FAIL'} ({result['check_seconds']:.1f} s)",
              flush=True)
    report["total_seconds"] = time.perf_counter() - began
    report["passed"] = all(check["passed"] for check in report["checks"].values())
    name = report["environment"].get("gpu", "cpu")
    path = Path(args.out) / (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, json.loads(json.dumps(report, default=str)))
    print(f"[gpu_check] {'all checks pass' if report['passed'] else 'FAILED'} in {report['total_seconds']:.0f} s; "
          f"wrote {path}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

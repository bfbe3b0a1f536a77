"""Phase-1 benchmark: the sequential and parallel solvers, and every way of evaluating the recurrence.

    python bench/phase1.py --tokens 4000 --layers 6 --out results/.scratch/phase1_bench.json

Defaults match the original's measurement (6 layers, 768 dims, 4,000 WikiText-2 training tokens in GPT-2 BPE,
dist_reg_weight 0.9, lr 0.002, 10 iterations). Embeddings are random N(0, 0.02) (GPT-2 weights are not available
offline); the recurrence's cost does not depend on them. Timings are medians of ``--repeats`` runs where cheap
(the recurrence), single runs for training. The original's figures on this machine kind: sequential 42.5 s per
iteration and 226 s in all; parallel 22.7 s in all; token loop 2,418 us per token.

Data: ../shared/data/wikitext-2/train.txt with the GPT-2 tokenizer in ../shared/data/gpt2-tokenizer when both
exist; else the built-in corpus with that tokenizer; else seeded random ids (the JSON says which).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from newllm.config.models import ModelConfig
from newllm.config.training import Phase1Config  # noqa: E402
from newllm.evaluation.context_metrics import effective_rank  # noqa: E402
from newllm.models.cvfp import CVFPModel  # noqa: E402
from newllm.recurrence import evaluate_contexts, forgetting_tokens, parallel_sweeps  # noqa: E402
from newllm.training.phase1 import train_phase1  # noqa: E402
from newllm.utils.io import atomic_write_json  # noqa: E402
from newllm.utils.runtime import seed_everything  # noqa: E402

SHARED_DATA = Path(os.environ.get("NEWLLM_SHARED_DATA", REPO.parent / "shared" / "data"))  # carry it to a GPU machine
ORIGINAL = {"sequential_s_per_iteration": 42.5, "sequential_total_s": 226.0, "parallel_total_s": 22.7,
            "token_loop_us_per_token": 2418.0}
VOCAB = 50257


def load_token_ids(n_tokens: int, seed: int) -> tuple[torch.Tensor, str]:
    """The first n GPT-2 tokens of WikiText-2 train (or of the built-in corpus), else seeded random ids."""
    tokenizer_dir = SHARED_DATA / "gpt2-tokenizer"
    text_file = SHARED_DATA / "wikitext-2" / "train.txt"
    tokenizer = None
    if (tokenizer_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tokenizer.model_max_length = 10**9  # one long stream, never fed to GPT-2 itself: no length warning
    if tokenizer is not None and text_file.is_file():
        text = text_file.read_text(encoding="utf-8")[: n_tokens * 12]  # ~4 characters per token, with margin
        ids = tokenizer(text)["input_ids"][:n_tokens]
        if len(ids) == n_tokens:
            return torch.tensor(ids), f"WikiText-2 train ({text_file}), GPT-2 BPE"
    if tokenizer is not None:
        try:
            from newllm.data.builtin_corpus import generate_documents

            text, index = "", 0
            while len(text) < n_tokens * 8:
                text += " ".join(doc.text for doc in generate_documents(seed, "train", index, index + 5)) + "\n"
                index += 5
            ids = tokenizer(text)["input_ids"][:n_tokens]
            return torch.tensor(ids), "built-in corpus (newllm.data.builtin_corpus), GPT-2 BPE"
        except ImportError:
            pass
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n_tokens,), generator=generator), "seeded random ids (no text/tokenizer found)"


def timed(fn: Callable, repeats: int = 1):
    """(median wall seconds, median process CPU seconds, last result). With one thread, CPU time is what the
    wall time would be on an idle machine; with more it sums the threads."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def bench_solver(solver: str, model: CVFPModel, ids: torch.Tensor, cfg: Phase1Config) -> dict:
    cfg = dataclasses.replace(cfg, solver=solver, final_contexts="last")
    wall_s, cpu_s, result = timed(lambda: train_phase1(model, ids, cfg, progress=False))
    seconds = result.history["seconds"]
    stepping = seconds.iloc[2:] if solver == "sequential" else seconds.iloc[1:]  # seq. iteration 1 reuses iteration 0
    with torch.no_grad():
        x = model.embed_tokens(ids)[None]
        exact = evaluate_contexts(model.context_block, x, method="auto", tol=cfg.tol, all_layers=False)
        loop = evaluate_contexts(model.context_block, x, method="loop", all_layers=False)
    er_exact = effective_rank(exact.final[0], cfg.er_max_rows, cfg.seed).er_pct
    er_loop = effective_rank(loop.final[0], cfg.er_max_rows, cfg.seed).er_pct
    out = {
        "iterations": result.iterations,
        "steps": result.steps,
        "s_per_iteration": float(stepping.median()),
        "total_s": float(seconds.sum()),
        "first_pass_s": float(seconds.iloc[0]),
        "call_wall_s": wall_s,  # the whole train_phase1 call, final metrics included
        "call_cpu_s": cpu_s,
        "er_pct": er_exact,  # exact contexts under the final weights (what validation and Phase 2 see)
        "er_pct_token_loop": er_loop,
        "er_pct_last_outputs": result.train_metrics.er_pct,  # the last iteration's outputs (the original's train ER)
        "max_abs_diff_exact_vs_token_loop": float((exact.final - loop.final).abs().max()),
        "final_converged_ratio": float(result.history["converged_ratio"].iloc[-1]),
        "eval_sweeps": result.history["eval_sweeps"].tolist(),
        "history_seconds": seconds.round(4).tolist(),
    }
    return out


def bench_recurrence(model: CVFPModel, ids: torch.Tensor, streams: int, repeats: int, tol: float) -> dict:
    block = model.context_block
    with torch.no_grad():
        x = model.embed_tokens(ids)[None]
    n = x.shape[1]
    loop_s, loop_cpu, loop = timed(lambda: evaluate_contexts(block, x, method="loop", all_layers=False), repeats)
    with torch.no_grad():
        sweep_s, sweep_cpu, sweeps = timed(
            lambda: parallel_sweeps(block, x, torch.zeros(1, block.ctx_dim), tol=tol, all_layers=False)
        )
    fallback_s, _, fallback = timed(lambda: evaluate_contexts(block, x, method="sweeps", tol=tol, all_layers=False))
    segments_s, segments_cpu, segments = timed(
        lambda: evaluate_contexts(block, x, method="segments", tol=tol, all_layers=False), repeats
    )
    per = n // streams
    xs = x[0, : per * streams].reshape(streams, per, -1)
    batched_s, batched_cpu, batched = timed(lambda: evaluate_contexts(block, xs, method="loop", all_layers=False),
                                            repeats)
    separate = torch.cat([
        evaluate_contexts(block, xs[i : i + 1], method="loop", all_layers=False).final for i in range(streams)
    ])
    per_sample_auto_s, _, per_sample_auto = timed(
        lambda: evaluate_contexts(block, xs, method="auto", tol=tol, all_layers=False), repeats
    )

    def diff(a, b):
        return float((a - b).abs().max())

    return {
        "tokens": n,
        "forgetting_tokens": forgetting_tokens(block, x[0, :512], tol),  # until a different start fades below tol
        "token_loop_us_per_token": 1e6 * loop_s / n,
        "token_loop_cpu_us_per_token": 1e6 * loop_cpu / n,
        "parallel_us_per_token": 1e6 * sweep_s / n,
        "parallel_cpu_us_per_token": 1e6 * sweep_cpu / n,
        "parallel_sweeps": sweeps.sweeps,
        "parallel_last_change": sweeps.max_abs_change,
        "max_abs_diff": diff(sweeps.final, loop.final),
        "sweeps_with_fallback_us_per_token": 1e6 * fallback_s / n,
        "sweeps_with_fallback_method": fallback.method,
        "sweeps_with_fallback_sweeps": fallback.sweeps,
        "sweeps_with_fallback_max_abs_diff": diff(fallback.final, loop.final),
        "segments_us_per_token": 1e6 * segments_s / n,
        "segments_cpu_us_per_token": 1e6 * segments_cpu / n,
        "segments_rounds": segments.sweeps,
        "segments_max_abs_diff": diff(segments.final, loop.final),
        "per_sample_streams": streams,
        "per_sample_us_per_token": 1e6 * batched_s / (per * streams),
        "per_sample_cpu_us_per_token": 1e6 * batched_cpu / (per * streams),
        "per_sample_max_abs_diff_vs_separate_loops": diff(batched.final, separate),
        "per_sample_auto_us_per_token": 1e6 * per_sample_auto_s / (per * streams),
        "per_sample_auto_method": per_sample_auto.method,
        "per_sample_auto_max_abs_diff": diff(per_sample_auto.final, separate),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--weight", type=float, default=0.9, help="dist_reg_weight")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streams", type=int, default=16, help="independent streams for the per-sample figure")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=REPO / "results" / ".scratch" / "phase1_bench.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ids, source = load_token_ids(args.tokens, args.seed)
    model_cfg = ModelConfig(vocab_size=VOCAB, ctx_dim=args.dims, embed_dim=args.dims, num_layers=args.layers,
                            embedding="random")
    cfg = Phase1Config(dist_reg_weight=args.weight, lr=args.lr, max_iterations=args.iterations,
                       min_iterations=args.iterations, er_every=0, seed=args.seed)

    def fresh() -> CVFPModel:
        seed_everything(args.seed)
        return CVFPModel(model_cfg)

    report = {
        "settings": {
            "tokens": args.tokens, "layers": args.layers, "dims": args.dims, "w": args.weight, "lr": args.lr,
            "iterations": args.iterations, "early_stopping": "off (min_iterations = iterations)",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "device": "cpu",
            "cpu": platform.processor() or platform.machine(), "dtype": "float32", "data": source,
            "embeddings": "random N(0, 0.02) (GPT-2 weights unavailable offline)", "tol": cfg.tol,
            "repeats": args.repeats,
        },
        "original": ORIGINAL,
    }
    print(f"data: {source}; threads {torch.get_num_threads()}", flush=True)
    trained = fresh()
    report["sequential"] = bench_solver("sequential", trained, ids, cfg)
    print("sequential:", json.dumps({k: v for k, v in report["sequential"].items() if "history" not in k}), flush=True)
    report["parallel"] = bench_solver("parallel", fresh(), ids, cfg)
    print("parallel:", json.dumps({k: v for k, v in report["parallel"].items() if "history" not in k}), flush=True)
    report["recurrence"] = bench_recurrence(trained, ids, args.streams, args.repeats, cfg.tol)  # a trained map
    report["recurrence_fresh_map"] = bench_recurrence(fresh(), ids, args.streams, 1, cfg.tol)
    seq, par, rec = report["sequential"], report["parallel"], report["recurrence"]
    report["ratios_vs_original"] = {
        "sequential_s_per_iteration": ORIGINAL["sequential_s_per_iteration"] / seq["s_per_iteration"],
        "parallel_total_s": ORIGINAL["parallel_total_s"] / par["total_s"],
        "token_loop_us_per_token": ORIGINAL["token_loop_us_per_token"] / rec["token_loop_us_per_token"],
    }
    atomic_write_json(args.out, report)
    print(json.dumps(report["recurrence"], indent=1))
    ratios = report["ratios_vs_original"]
    print(f"sequential {seq['s_per_iteration']:.2f} s/iteration ({ratios['sequential_s_per_iteration']:.1f}x the "
          f"original's 42.5), {seq['total_s']:.1f} s in all for {seq['iterations']} iterations; "
          f"ER {seq['er_pct']:.2f} % (token loop {seq['er_pct_token_loop']:.2f} %), "
          f"max-abs vs token loop {seq['max_abs_diff_exact_vs_token_loop']:.2e}")
    print(f"parallel {par['total_s']:.1f} s in all ({ratios['parallel_total_s']:.2f}x the original's 22.7), "
          f"{par['s_per_iteration']:.2f} s/iteration, first pass {par['first_pass_s']:.2f} s")
    print(f"token loop {rec['token_loop_us_per_token']:.0f} us/token ({ratios['token_loop_us_per_token']:.2f}x the "
          f"original's 2418); segments {rec['segments_us_per_token']:.0f}; per-sample x{rec['per_sample_streams']} "
          f"{rec['per_sample_us_per_token']:.0f}; sweeps {rec['parallel_us_per_token']:.0f} "
          f"({rec['parallel_sweeps']} sweeps)")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()

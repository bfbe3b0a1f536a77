"""Phase-2 benchmark: context-cache build, training and evaluation throughput, memory, on WikiText-2 with GPT-2 ids.

    python bench/phase2.py --out results/.scratch/phase2.json                      # 20k tokens, 6 layers, 768
    python bench/phase2.py --train-tokens 500000 --max-steps 20 --baseline-steps 0 --out ...   # 500k, 6 x 768
    python bench/phase2.py --scale --out results/bench/phase2_scale.json           # cost growth (see below)

Defaults: the first 20,000 GPT-2 tokens of <repo>/../shared/data/wikitext-2/train.txt (validation: 10% as many
from valid.txt), the GPT-2 tokenizer from ../shared/data/gpt2-tokenizer, a 6-layer, 768-dim CVFP model with
RANDOM embeddings (GPT-2's weights are not available offline; speed and memory do not depend on the values),
1 epoch, the memory planner's choices.

``--scale``: cost growth with the corpus. For each training size (``--sizes``, default 0.1M, 0.5M, 2M, 5M tokens of
the built-in corpus, word tokens) and each tier (the RAM cache in float32, the disk memmap in float16, the streaming
tier) one fresh process (so its peak RSS is its own) trains a small CVFP model (``--dim``, ``--layers``; default
64 x 2) for ``--max-steps`` steps and evaluates a fixed validation set. Writes the JSON (every point and setting),
``results/phase2_cost_growth.md`` (the table) and ``results/phase2_cost_growth.png`` (the plot), and checks the
targets: streaming peak RSS within 10 % between 0.5M and 5M, streaming tokens/s within 15 % of the RAM cache at 0.5M.

It also times this kit's training step against an "original-style" step (full fp32 logits with
F.cross_entropy, the default per-parameter Adam), alternating them step by step on the same random batches, so the
speed-up is measured under the same machine load (``step_comparison``). Writes one JSON file.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from newllm.config.models import ModelConfig
from newllm.config.training import Phase2Config  # noqa: E402
from newllm.models.cvfp import CVFPModel  # noqa: E402
from newllm.recurrence import token_inputs  # noqa: E402
from newllm.training.common import clip_and_step  # noqa: E402
from newllm.training.phase2 import make_adam, token_loss, train_phase2  # noqa: E402
from newllm.training.planner import phase2_trainable_parameters  # noqa: E402
from newllm.utils.io import atomic_write_json  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.model_max_length = 1 << 40  # long texts are encoded whole: silence the 1024-token warning
    return tokenizer


def load_ids(path: Path, tokenizer, n_tokens: int, streams: str):
    """At least n_tokens predicted tokens from the start of a text file; returns (ids or documents, UTF-8 bytes)."""
    text = path.read_text(encoding="utf-8")
    if streams == "concat":
        chars = min(len(text), 6 * n_tokens + 1000)
        while True:
            ids = tokenizer(text[:chars])["input_ids"]
            if len(ids) > n_tokens or chars >= len(text):
                break
            chars = min(len(text), 2 * chars)
        if len(ids) <= n_tokens:
            raise SystemExit(f"{path} holds only {len(ids) - 1:,} tokens, fewer than the {n_tokens:,} requested")
        ids = ids[: n_tokens + 1]
        return torch.tensor(ids), len(tokenizer.decode(ids[1:]).encode("utf-8"))
    docs, predicted, n_bytes = [], 0, 0
    for line in text.splitlines():
        if predicted >= n_tokens:
            break
        ids = tokenizer(line)["input_ids"] if line.strip() else []
        if len(ids) >= 2:
            docs.append(torch.tensor(ids))
            predicted += len(ids) - 1
            n_bytes += len(tokenizer.decode(ids[1:]).encode("utf-8"))
    if predicted < n_tokens:
        raise SystemExit(f"{path} holds only {predicted:,} per-line tokens, fewer than the {n_tokens:,} requested")
    return docs, n_bytes


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_now() -> dict:
    """Current resident memory split into anonymous and file-backed (memory-mapped cache pages) MiB."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(("RssAnon", "RssFile", "VmHWM", "VmRSS")):
                name, value = line.split(":")
                out[name] = int(value.split()[0]) / 1024
    return out


def step_comparison(model: CVFPModel, steps: int, batch: int, ce_chunk_tokens: int) -> dict:
    """Tokens/s of this kit's Phase-2 step and of the original's, timed alternately (same load on both).

    Ours: chunked cross-entropy (newllm.training.phase2.token_loss), fused Adam, clip 1.0. The original's: the full fp32
    logits through F.cross_entropy, the default per-parameter Adam, clip 1.0. Both on the same random batches
    (LayerNorm-ed random contexts; only the arithmetic is timed), with their own optimizer over the same weights.
    """
    params = phase2_trainable_parameters(model)
    for param in model.parameters():
        param.requires_grad_(False)
    for param in params:
        param.requires_grad_(True)
    ours_optimizer, original_optimizer = make_adam(params, 1e-3), torch.optim.Adam(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    seconds = {"ours": 0.0, "original": 0.0}
    for step in range(steps + 1):  # step 0 warms both up (allocations, Adam state)
        contexts = [F.layer_norm(torch.randn(batch, d, generator=generator), (d,)) for d in model.context_block.dims]
        ids = torch.randint(0, model.cfg.vocab_size, (batch, model.cfg.num_input_tokens), generator=generator)
        targets = torch.randint(0, model.cfg.vocab_size, (batch,), generator=generator)
        for name in ("ours", "original"):
            began = time.perf_counter()
            with torch.no_grad():
                x = token_inputs(model, ids)  # the original gathered cached embeddings: about the same cost
            if name == "ours":
                ours_optimizer.zero_grad(set_to_none=True)
                loss, _ = token_loss(model, contexts, x, targets, ce_chunk_tokens, scale=1.0 / batch)
                loss.backward()
                clip_and_step(ours_optimizer, 1.0)
            else:
                original_optimizer.zero_grad()
                F.cross_entropy(model.head(model.token_block(contexts, x)), targets).backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                original_optimizer.step()
            if step:
                seconds[name] += time.perf_counter() - began
    ours, original = steps * batch / seconds["ours"], steps * batch / seconds["original"]
    return {"steps": steps, "batch": batch, "ours_tokens_per_s": ours, "original_style_tokens_per_s": original,
            "speedup": ours / original}


def token_input_costs(model: CVFPModel, batch: int, reps: int = 5) -> dict:
    """us per token: recomputing x from ids (gather + LayerNorm) vs gathering precomputed x rows."""
    ids = torch.randint(0, model.cfg.vocab_size, (batch, model.cfg.num_input_tokens))
    table = torch.randn(max(batch * 4, 20_000), model.cfg.token_input_dim)
    index = torch.randint(0, table.shape[0], (batch,))
    with torch.no_grad():
        began = time.perf_counter()
        for _ in range(reps):
            token_inputs(model, ids)
        recompute = time.perf_counter() - began
        began = time.perf_counter()
        for _ in range(reps):
            table[index]
        gather = time.perf_counter() - began
    per = 1e6 / (reps * batch)
    return {"recompute_us_per_token": recompute * per, "gather_cached_us_per_token": gather * per,
            "cached_bytes_per_token_saved": 4 * model.cfg.token_input_dim}


def main(argv=None) -> dict:
    if argv is None:
        argv = sys.argv[1:]
    if "--scale" in argv or "--scale-point" in argv:
        sys.path.insert(0, str(REPO / "bench"))
        from phase2_scale import main as scale_main  # the cost-growth sweep

        return scale_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-tokens", type=int, default=None)
    parser.add_argument("--val-tokens", type=int, default=None, help="default: train tokens / 10")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="tokens per step; default: the planner's")
    parser.add_argument("--streams", choices=("concat", "per_sample"), default="concat")
    parser.add_argument("--placement", choices=("auto", "cpu", "disk", "gpu"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    parser.add_argument("--build-method", choices=("auto", "loop", "sweeps", "segments"), default="auto")
    parser.add_argument("--baseline-steps", type=int, default=None,
                        help="steps of the alternating ours/original-style comparison (0: none; default 5)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", type=Path, default=SHARED / "wikitext-2")
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "gpt2-tokenizer")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    train_tokens = args.train_tokens or 20_000
    val_tokens = args.val_tokens or max(1_000, train_tokens // 10)
    baseline_steps = 5 if args.baseline_steps is None else args.baseline_steps
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    tokenizer = load_tokenizer(args.tokenizer)
    train_ids, train_bytes = load_ids(args.data / "train.txt", tokenizer, train_tokens, args.streams)
    val_ids, val_bytes = load_ids(args.data / "valid.txt", tokenizer, val_tokens, args.streams)
    torch.manual_seed(0)
    model_cfg = ModelConfig(vocab_size=len(tokenizer), ctx_dim=args.dim, embed_dim=args.dim, num_layers=args.layers,
                            embedding="random")
    model = CVFPModel(model_cfg)
    if torch.cuda.is_available():
        model = model.cuda()
    cfg = Phase2Config(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                       cache_placement=args.placement, cache_dtype=args.dtype, cache_build_method=args.build_method,
                       cache_dir=args.cache_dir, patience=args.epochs)
    began = time.perf_counter()
    result = train_phase2(model, train_ids, val_ids, cfg, tokenizer_name="gpt2", train_bytes=train_bytes,
                          val_bytes=val_bytes, streams=args.streams, progress=True)
    total_seconds = time.perf_counter() - began
    rss_end = rss_now()
    history = result.history
    train_tps = float(history.train_tokens_per_s.mean())
    report = {
        "settings": {
            "train_tokens": result.cache["train"]["tokens"], "val_tokens": result.cache["val"]["tokens"],
            "layers": args.layers, "dim": args.dim, "vocab_size": model_cfg.vocab_size, "tokenizer": "gpt2",
            "data": str(args.data), "streams": args.streams, "embeddings": "random (GPT-2 weights not available "
            "offline)", "epochs": args.epochs, "max_steps": args.max_steps,
            "device": str(next(model.parameters()).device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "compute_dtype": "float32" if not torch.cuda.is_available() else "autocast",
            "batch_size": result.plan.batch_size, "micro_batch_size": result.micro_batch_size,
            "ce_chunk_tokens": result.plan.ce_chunk_tokens, "eval_batch_size": result.plan.eval_batch_size,
        },
        "cache_placement": result.plan.placement,
        "cache_dtype": result.plan.cache_dtype,
        "cache_us_per_token": result.cache["train"]["build_us_per_token"],
        "cache": result.cache,
        "train_tokens_per_s": train_tps,
        "eval_tokens_per_s": float(history.eval_tokens_per_s.mean()),
        "peak_rss_mb": peak_rss_mb(),
        "rss_at_end_mb": rss_end,
        "planned_host_peak_mb": result.plan.host_peak / 2**20,
        "plan": result.plan.summary(),
        "total_seconds": total_seconds,
        "val": result.val.to_dict(),
        "history": history.to_dict(orient="records"),
        "token_inputs": token_input_costs(model, result.plan.batch_size),
        "load_average_before": load_before,
    }
    if baseline_steps:
        report["step_comparison"] = step_comparison(model, baseline_steps, result.plan.batch_size,
                                                    result.plan.ce_chunk_tokens)
    report["load_average_after"] = os.getloadavg()
    atomic_write_json(args.out, report)
    print({k: report[k] for k in ("cache_placement", "cache_dtype", "cache_us_per_token", "train_tokens_per_s",
                                  "eval_tokens_per_s", "peak_rss_mb")})
    return report


if __name__ == "__main__":
    main()

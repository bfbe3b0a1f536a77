"""Phase 2 data-parallel under torchrun: every rank trains on its shard of each global batch, rank 0 logs,
checkpoints and writes the results.

    torchrun --nproc_per_node=2 bench/phase2_ddp.py --out results/.scratch/ddp.json     # gloo on CPU, NCCL on GPUs
    python bench/phase2_ddp.py --out ...                                                 # the same, one process

The built-in corpus (word tokens), a small CVFP model with random embeddings (the same weights on every rank:
same seed), ``--steps`` optimizer steps of ``--batch-size`` tokens (the global batch, split over the ranks).
Rank 0 writes the per-step losses and the final validation loss as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from newllm.config.data import DataConfig  # noqa: E402
from newllm.config.models import ModelConfig  # noqa: E402
from newllm.config.training import Phase2Config  # noqa: E402
from newllm.data.corpus import load_corpus  # noqa: E402
from newllm.models.cvfp import CVFPModel  # noqa: E402
from newllm.training.common import init_distributed  # noqa: E402
from newllm.training.phase2 import train_phase2  # noqa: E402
from newllm.utils.io import atomic_write_json  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--context-source", choices=("auto", "cache", "stream"), default="cache")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stop-after", type=int, default=None, help="(tests) exit after this global step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rank, world = init_distributed()
    corpus = load_corpus(DataConfig(dataset="builtin", tokenizer="word", samples=args.samples, val_samples=1))
    train_ids = torch.from_numpy(corpus.train.ids[:].astype("int64"))
    val_ids = torch.from_numpy(corpus.val.ids[:2000].astype("int64"))
    torch.manual_seed(0)
    model = CVFPModel(ModelConfig(vocab_size=corpus.tokenizer.vocab_size, ctx_dim=args.dim, embed_dim=args.dim,
                                  num_layers=args.layers, embedding="random"))
    if torch.cuda.is_available():
        model = model.cuda()
    cfg = Phase2Config(epochs=args.epochs, max_steps=args.steps, batch_size=args.batch_size, patience=args.epochs,
                       micro_batch_size=args.micro_batch_size, context_source=args.context_source,
                       checkpoint_every_steps=1 if args.checkpoint else None, seed=3)
    losses = []

    def record(info: dict) -> None:
        losses.append(info["loss"])
        if args.stop_after is not None and info["global_step"] >= args.stop_after:
            raise SystemExit(0)

    result = train_phase2(model, train_ids, val_ids, cfg, tokenizer_name="word", progress=False, callback=record,
                          checkpoint_path=args.checkpoint, resume=args.resume)
    report = {"world_size": world, "losses": losses, "val_loss": result.val.loss, "steps": result.steps,
              "history": result.history.to_dict(orient="records")}
    if rank == 0:
        atomic_write_json(args.out, report)
    if world > 1:
        torch.distributed.destroy_process_group()
    return report


if __name__ == "__main__":
    main()

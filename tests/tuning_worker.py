"""A study worker run as a separate process by tests/test_tuning.py (kill/resume and shared-storage tests).

Each objective call appends "<pid> <dist_reg_weight>" to --log. With --block-at K, call K writes --marker and then
blocks, so the test can kill the process in the middle of a trial. With --go, it waits for that file first, so that
several workers start their studies together.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

from newllm.config.experiments import StudyConfig
from newllm.experiments.study import run_study


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--journal", required=True)
    parser.add_argument("--n-trials", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log", required=True)
    parser.add_argument("--block-at", type=int, default=None)
    parser.add_argument("--marker", default=None)
    parser.add_argument("--ready", default=None)
    parser.add_argument("--go", default=None)
    parser.add_argument("--epoch-sleep", type=float, default=0.0)
    args = parser.parse_args()

    calls = 0

    def objective(params, report):
        nonlocal calls
        w = params["dist_reg_weight"]
        with open(args.log, "a") as log:
            log.write(f"{os.getpid()} {w!r}\n")
        if calls == args.block_at:
            Path(args.marker).write_text(str(os.getpid()))
            time.sleep(600)  # killed by the test long before this ends
        calls += 1
        ppl = 100 + 1000 * (w - 0.8) ** 2
        for epoch in range(2):
            time.sleep(args.epoch_sleep)
            report(epoch, math.log(ppl) * (1.2 - 0.1 * epoch))
        return {"val_ppl": ppl, "is_identity": False, "train_er_pct": 60.0}

    config = StudyConfig(n_trials=args.n_trials, storage=args.journal, workers=args.workers, pruner="none")
    if args.ready:
        Path(args.ready).write_text("ready")
    if args.go:
        deadline = time.monotonic() + 60
        while not Path(args.go).exists():
            if time.monotonic() > deadline:
                raise SystemExit("no go signal within 60 s")
            time.sleep(0.02)
    run_study(objective, config, progress=False)


if __name__ == "__main__":
    main()

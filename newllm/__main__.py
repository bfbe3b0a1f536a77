"""Command line: ``python -m newllm demo`` runs a small scaling experiment offline and writes results/.

The demo is the scaling notebook's CPU preset without a notebook: the built-in corpus (no download), Phase 1 and
Phase 2 at a few training sizes on one fixed validation set, the power-law fit, a table and a plot under
``results/demo/<run>/``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _demo(args: argparse.Namespace) -> int:
    from newllm.experiments.scaling import run_scaling_sweep
    from newllm.notebook.parameters import open_run, settings_from_parameters
    from newllm.notebook.presets import resolve

    values = resolve("scaling", args.preset, samples=args.samples)
    run = open_run("demo", values, args.results_dir)
    outcome = run_scaling_sweep(settings_from_parameters(values), run, values["samples"], seeds=values["seeds"],
                                baselines=values["baselines"], progress=not args.quiet)
    print(outcome.report())
    print(f"\nresults: {outcome.run.path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m newllm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a small scaling run on the built-in corpus (CPU, a few minutes)")
    demo.add_argument("--samples", type=int, nargs="+", default=None, help="training sizes (documents)")
    demo.add_argument("--preset", default="cpu", choices=("auto", "cpu", "gpu"))
    demo.add_argument("--results-dir", default="results")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        return _demo(args)
    except ValueError as exc:  # bad parameters: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

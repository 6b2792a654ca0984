"""Ablations of RTFSyn trained on one budget with several seeds, then evaluated together.

Each variant changes only the architecture (``--set 'model={...}'``) and trains from
scratch with ``rtfsyn train --config config/train.toml --set seed=K --steps N`` into
``runs/ablations/NAME-sK``; ``full`` is the unchanged architecture on the same budget (the
reference the others are compared with). Then one ``rtfsyn evaluate`` groups the
``NAME/seedK`` checkpoints and reports mean ± spread per variant.

    python -m bench.ablations --dry-run                # print the commands
    python -m bench.ablations --steps 3600 --seeds 0,1,2   # train what is missing, then evaluate
    python -m bench.ablations --init default --steps 60 --root runs/abl-ft --train-only ...
                          # each variant from the shipped weights (switch applied), a short fine-tune

Training is resumable: a run whose ``model.pt`` exists is skipped, one with ``last.pt``
continues. On a 2-core CPU one 3600-step run takes about 2 h; 15 runs are a GPU job.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from synthesis.ablations import (DEFAULT_STEPS, VARIANTS, commands, evaluate_argv, run_dir,  # noqa: F401
                                 train_argv)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: all)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--root", default="runs/ablations")
    p.add_argument("--config", default="config/train.toml")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start every run from these weights (\"default\" or a path) with the variant's "
                        "switch applied, instead of from scratch")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=JSON",
                   help="extra training override for every run (e.g. a tiny model in tests)")
    p.add_argument("--evaluate-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for rtfsyn evaluate (repeatable)")
    p.add_argument("--report", default="docs/EVALUATION.md")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--train-only", action="store_true", help="train what is missing, do not evaluate")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not seeds:
        print(f"bench.ablations: unknown variant(s) {unknown} or no seeds; known: {', '.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    runs = [train_argv(n, s, steps=args.steps, root=args.root, config=args.config, extra=args.train_set,
                       init=args.init)
            for s in seeds for n in names]  # seed by seed: stopped early, every variant has as many
    final = evaluate_argv(names, seeds, root=args.root, report=args.report, extra=args.evaluate_arg)
    if args.dry_run:
        print("\n".join(shlex.join(["rtfsyn", *a]) for a in runs + [final]))
        return 0
    for a in runs:
        if (Path(a[a.index("--out-dir") + 1]) / "model.pt").is_file():
            continue
        subprocess.run([sys.executable, "-m", "dicom_node.cli", *a], check=True)
    if args.train_only:
        return 0
    return subprocess.run([sys.executable, "-m", "dicom_node.cli", *final]).returncode


if __name__ == "__main__":
    sys.exit(main())

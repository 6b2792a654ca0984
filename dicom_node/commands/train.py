"""``rtfsyn train``: train RTFSyn on simulated data (resumable)."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the synthesis model on simulated data (resumable)")
    p.add_argument("--config", default="config/train.toml", help="training TOML (default: %(default)s)")
    p.add_argument("--out-dir", help="override [run] out_dir")
    p.add_argument("--steps", type=int, help="override [optim] steps")
    p.add_argument("--max-minutes", type=float, help="stop (resumably) after this much training time")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override [run] device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override any option, e.g. --set patch=32 --set 'model={\"fusion\": \"none\"}'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--export-only", action="store_true",
                   help="write model.pt and training_record.json from the run's last.pt, no training")
    p.add_argument("--snapshot", type=int, metavar="STEP",
                   help="with --export-only: export the snapshot of this step (<out_dir>/snapshots/) as "
                        "<out_dir>/exports/step-N.pt, to score it with rtfsyn evaluate --split validation")
    p.add_argument("--lesion-net", action="store_true",
                   help="train the white-matter lesion detector instead (synthesis/lesion_train.py; --config is "
                        "not read; --out-dir, --steps, --max-minutes and --set KEY=JSON of its options apply) and "
                        "write <out_dir>/model.pt: the init checkpoint with the detector added")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from synthesis.train import export_checkpoint, load_train_config, train

    overrides = {"out_dir": args.out_dir, "steps": args.steps, "max_minutes": args.max_minutes,
                 "device": args.device}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"rtfsyn train: --set needs KEY=VALUE. Found {item!r}.", file=sys.stderr)
            return 2
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if args.lesion_net:
        return _run_lesion_net(args, overrides)
    try:
        cfg = load_train_config(args.config, overrides)
    except (OSError, ValueError) as exc:
        print(f"rtfsyn train: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.snapshot is not None and not args.export_only:
        print("rtfsyn train: --snapshot needs --export-only.", file=sys.stderr)
        return 2
    if args.export_only:
        try:
            final = export_checkpoint(cfg, args.snapshot)
        except FileNotFoundError as exc:
            print(f"rtfsyn train: {exc}", file=sys.stderr)
            return 2
        print(f"Exported model: {final}")
        return 0
    final = train(cfg, progress=not args.no_progress)
    print(f"Trained model: {final}")
    from dicom_node.commands.cache import cache_note

    note = cache_note(cfg.cache_dir)
    if note:
        print(note, file=sys.stderr)
    return 0


def _run_lesion_net(args: argparse.Namespace, overrides: dict) -> int:
    import dataclasses

    from synthesis.lesion_train import LesionTrainConfig, train_lesion_net

    if args.export_only or args.snapshot is not None or args.device not in (None, "auto", "cpu"):
        print("rtfsyn train --lesion-net: --export-only, --snapshot and --device cuda do not apply.", file=sys.stderr)
        return 2
    known = {f.name for f in dataclasses.fields(LesionTrainConfig)}
    given = {k: v for k, v in overrides.items() if v is not None and k != "device"}
    unknown = sorted(set(given) - known)
    if unknown:
        print(f"rtfsyn train --lesion-net: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.",
              file=sys.stderr)
        return 2
    try:
        cfg = LesionTrainConfig(**given)
        final = train_lesion_net(cfg, command="rtfsyn train " + " ".join(args.argv))
    except (OSError, ValueError, TypeError) as exc:
        print(f"rtfsyn train --lesion-net: {exc}", file=sys.stderr)
        return 2
    print(f"Model with the lesion detector: {final}")
    return 0

"""``rtfsyn evaluate``: metrics of a checkpoint on held-out simulated subjects."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="PSNR/SSIM/MAE of a checkpoint on held-out simulated subjects")
    p.add_argument("--checkpoint", default="default", help="checkpoint path, or 'default' (the shipped model)")
    p.add_argument("--subjects", type=int, default=2, help="number of test subjects (default: %(default)s)")
    p.add_argument("--crop", default="112,128,112",
                   help="crop D,H,W around the brain centre, or 'brain' for the whole brain box (default: %(default)s)")
    p.add_argument("--conditions", default="clean,noise,bias,ghosting,gibbs,thick_slices,zeroshot",
                   help="comma-separated severities and/or 'zeroshot'")
    p.add_argument("--ablation", action="append", default=[], metavar="NAME=PATH",
                   help="also evaluate an ablation checkpoint (repeatable)")
    p.add_argument("--ablation-reference", metavar="NAME",
                   help="the --ablation entry that is the full architecture trained on the ablations' "
                        "budget: the ablations are compared with it instead of with --checkpoint")
    p.add_argument("--no-lookup", action="store_true", help="skip the look-up-table baseline")
    p.add_argument("--references-everywhere", action="store_true",
                   help="run the ablations, look-up and oracle on every condition (default: on the clean "
                        "source only, where the report compares them)")
    p.add_argument("--cache-dir", default="var/sim-cache", help="simulated subject cache")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--output", help="also write the JSON result to this file")
    p.add_argument("--report", help="write the Markdown report here (e.g. docs/EVALUATION.md), pictures beside it")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _parse_crop(text: str) -> tuple[int, int, int] | None:
    if text == "brain":
        return None
    parts = [int(v) for v in text.split(",")]
    if len(parts) != 3 or min(parts) < 8:
        raise ValueError(f"--crop needs three sizes ≥ 8 (D,H,W) or 'brain'. Found {text!r}.")
    return tuple(parts)  # type: ignore[return-value]


def _parse_ablation(item: str) -> tuple[str, str]:
    name, sep, path = item.partition("=")
    if not sep or not name.strip() or not path.strip() or name.strip() in ("rtfsyn", "lookup"):
        raise ValueError(f"--ablation needs NAME=PATH with a NAME other than 'rtfsyn' and 'lookup'. Found {item!r}.")
    return name.strip(), path.strip()


def _training_summary(path: str) -> str:
    """One line on how a checkpoint was trained (architecture, steps, minutes, seed)."""
    from synthesis import checkpoint as ckpt

    _, meta = ckpt.load(Path(path))
    record = meta.get("extra", {}).get("training") or {}
    config = record.get("config") or {}
    arch = config.get("model") or {}
    start = "from " + str(config["init_checkpoint"]) if config.get("init_checkpoint") else "from scratch"
    return (f"architecture overrides {arch or '{} (the full model)'}; {record.get('steps_done', '?')} steps "
            f"({record.get('train_minutes', '?')} min on {record.get('device', '?')}) {start}, seed "
            f"{record.get('seed', '?')}, subject seeds {record.get('train_subject_seeds', '?')}")


def run(args: argparse.Namespace) -> int:
    from synthesis import Synthesizer
    from synthesis import evaluate as ev
    from synthesis.report import render_markdown, save_case_figure
    from synthesis.simulate import SEVERITIES, in_zero_shot_band

    try:
        crop = _parse_crop(args.crop)
        conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
        unknown = [c for c in conditions if c != "zeroshot" and c not in SEVERITIES]
        if unknown:
            raise ValueError(f"unknown condition(s) {unknown}; known: {sorted(SEVERITIES)} and 'zeroshot'")
        if "clean" not in conditions:
            conditions.insert(0, "clean")
        ablations = dict(_parse_ablation(item) for item in args.ablation)
        if args.ablation_reference and args.ablation_reference not in ablations:
            raise ValueError(f"--ablation-reference {args.ablation_reference!r} must name an --ablation "
                             f"entry. Found: {', '.join(ablations) or 'none'}.")
    except ValueError as exc:
        print(f"rtfsyn evaluate: {exc}", file=sys.stderr)
        return 2
    cache = Path(args.cache_dir) if args.cache_dir else None
    try:
        syn = Synthesizer(args.checkpoint, args.device)
        predictors = {"rtfsyn": ev.synthesizer_predictor(syn)}
        for name, path in ablations.items():
            predictors[name] = ev.synthesizer_predictor(Synthesizer(path, args.device))
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"rtfsyn evaluate: {exc}", file=sys.stderr)
        return 2
    predictors["oracle"] = ev.oracle_predictor
    notes = ["oracle: the test subject's true tissue fractions rendered with the nominal tissue "
             "parameters, i.e. everything but the subject's own relaxation times and proton "
             "densities (jittered up to ±10%, which a T1w source reveals only in part). A reference "
             "for what the simulated data allow, not a competitor."]
    if not args.no_lookup:
        predictors["lookup"] = ev.LookupBaseline().fit(ev.make_case_subjects(ev.train_seeds(2), cache)).predictor()
        notes.append("lookup: per-intensity table fitted on 2 training subjects rendered with the same presets "
                     "(the most favourable setting for it); not run on the zero-shot band.")
    if not ablations:
        notes.append("No ablation checkpoints were given (--ablation NAME=PATH), so no ablation rows.")
    for name, path in ablations.items():
        notes.append(f"{name}: {_training_summary(path)}")

    report_dir = Path(args.report).parent if args.report else None
    pictures: dict[str, str] = {}

    def on_case(case, preds) -> None:
        if report_dir is None or case.condition != "clean" or case.target_contrast in pictures:
            return
        from synthesis.data import fit_to_shape
        from synthesis.grid import resample

        src = case.source if case.source_spacing == (1.0, 1.0, 1.0) else resample(case.source, case.source_spacing, (1.0, 1.0, 1.0))
        rel = f"img/eval_{case.target_contrast}.png"
        save_case_figure(report_dir / rel, fit_to_shape(src, case.truth.shape), case.truth, preds["rtfsyn"],
                         case.mask, f"T1w → {case.target_contrast} (test subject {case.subject_seed})")
        pictures[case.target_contrast] = rel

    cases = ev.evaluation_cases(ev.test_seeds(args.subjects), cache_dir=cache, crop=crop, conditions=conditions)
    clean_only = () if args.references_everywhere else [name for name in predictors if name != "rtfsyn"]
    if clean_only:
        notes.append("Ablations and references ran on the clean source only; the robustness and "
                     "zero-shot tables are the full model's.")
    evaluation = ev.evaluate(predictors, cases, on_case=on_case, progress=not args.no_progress,
                             clean_only=clean_only)
    from synthesis import checkpoint as ckpt

    ckpt_path = ckpt.default_checkpoint_path() if args.checkpoint == "default" else Path(args.checkpoint)
    training = ckpt.load(ckpt_path)[1].get("extra", {}).get("training")
    meta = {k: syn.info.get(k) for k in ("model_name", "model_version", "checkpoint_sha256", "architecture", "device")}
    meta["checkpoint"] = str(args.checkpoint)
    given = list(getattr(args, "argv", None) or [])
    command = " ".join(["rtfsyn", *map(shlex.quote, given[given.index("evaluate"):] if "evaluate" in given
                                       else ["evaluate"])])
    result = {
        "command": command,
        "model": meta, "training": training, "subjects": ev.test_seeds(args.subjects),
        "crop": args.crop, "targets": list(ev.TARGETS), "conditions": conditions,
        "severities": {k: repr(v) for k, v in SEVERITIES.items()},
        "zero_shot_band": (in_zero_shot_band.__doc__ or "").strip().splitlines()[0] if in_zero_shot_band.__doc__ else "",
        "summary": evaluation.summary(), "rows": evaluation.rows, "notes": notes,
        "ablation_reference": args.ablation_reference,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    if args.report:
        Path(args.report).write_text(render_markdown(result, command=command, pictures=pictures))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for model, conds in result["summary"].items():
            for cond, targets in conds.items():
                cells = "  ".join(f"{t}: {m['psnr']:.2f} dB / {m['ssim']:.4f}" for t, m in targets.items())
                print(f"{model:>10} {cond:>13}  {cells}")
    return 0

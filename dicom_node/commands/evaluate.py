"""``rtfsyn evaluate``: a checkpoint on held-out simulated sets (in distribution, anatomy and
acquisition shifts, zero-shot protocols), one real T1 image, and ablation seeds; the report."""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import shlex
import sys
import time
from pathlib import Path

ABLATION_TRAINING = "bench/ablations.py"
SECOND_SOURCE = "T2w"             # the second source a two-source model is evaluated with
PAIRED = f"rtfsyn+{SECOND_SOURCE}"  # its predictor's name in the result


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="a checkpoint on held-out simulated sets, a real T1 and ablations")
    p.add_argument("--checkpoint", default="default", help="checkpoint path, or 'default' (the shipped model)")
    p.add_argument("--subjects", type=int, default=2, help="number of test subjects (default: %(default)s)")
    p.add_argument("--first-subject", type=int, default=0,
                   help="pass over the split's first N subjects (default: %(default)s): with --split validation, "
                        "to compare with a model that was chosen on the first ones")
    p.add_argument("--split", choices=["test", "validation"], default="test",
                   help="subjects from the test split (the report) or the validation split (to choose among "
                        "checkpoints without tuning on the test subjects; no --report or --write-checks)")
    p.add_argument("--crop", default="112,128,112",
                   help="scoring region D,H,W around the brain centre, or 'brain' for the whole brain box "
                        "(default: %(default)s)")
    p.add_argument("--sets", default="all", help="comma-separated set names and/or groups (in_distribution, "
                   "anatomy, acquisition, protocol) or 'all' (default: %(default)s)")
    p.add_argument("--targets", default="T2w,PDw,FLAIR", help="target contrasts (default: %(default)s)")
    p.add_argument("--ablation", action="append", default=[], metavar="NAME=PATH",
                   help="also evaluate an ablation checkpoint (repeatable); NAME/seedK entries are grouped "
                        "by NAME and reported as mean ± spread over seeds")
    p.add_argument("--ablation-reference", metavar="NAME",
                   help="the ablation group that is the full architecture trained on the ablations' budget")
    p.add_argument("--ablation-sets", default="all", help="sets the ablations run on (default: %(default)s)")
    p.add_argument("--no-lookup", action="store_true", help="skip the look-up-table baseline")
    p.add_argument("--n4", choices=["auto", "on", "off"], default="auto",
                   help="also run with N4 bias correction on the in-distribution, bias and real-T1 cases "
                        "(auto: when the Synthesizer offers it)")
    p.add_argument("--no-real-t1", action="store_true", help="skip the real T1 image")
    p.add_argument("--no-second-source", action="store_true",
                   help="a model that takes a second source: skip its runs with a T2w second source "
                        "(model 'rtfsyn+T2w', PDw and FLAIR targets)")
    p.add_argument("--cache-dir", default="var/sim-cache", help="simulated subject cache ('' for none)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--output", help="also write the JSON result to this file")
    p.add_argument("--report", help="write the Markdown report here (e.g. docs/EVALUATION.md), pictures beside it")
    p.add_argument("--write-checks", action="store_true",
                   help="write the lesion checks beside the checkpoint (<checkpoint>.checks.json): the node "
                        "refuses a target whose lesions the model does not show (synthesis.lesion_check)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _parse_crop(text: str) -> tuple[int, int, int] | None:
    if text == "brain":
        return None
    try:
        parts = [int(v) for v in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 8:
        raise ValueError(f"--crop needs three sizes ≥ 8 (D,H,W) or 'brain'. Found {text!r}.")
    return tuple(parts)  # type: ignore[return-value]


def _parse_ablation(item: str) -> tuple[str, str]:
    name, sep, path = item.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path or name.split("/")[0] in ("rtfsyn", "lookup", "oracle", "oracle-sliced"):
        raise ValueError(f"--ablation needs NAME=PATH with a NAME other than rtfsyn, lookup and oracle. Found {item!r}.")
    return name, path


def _training_summary(path: str) -> str:
    """One line on how a checkpoint was trained (architecture, steps, minutes, seed)."""
    from synthesis import checkpoint as ckpt

    _, meta = ckpt.load(Path(path))
    record = meta.get("extra", {}).get("training") or {}
    config = record.get("config") or {}
    origin = record.get("initialized_from")
    start = (f"from the weights {origin['sha256'][:12]} ({origin.get('checkpoint')}), lr "
             f"{config.get('lr', '?')} → {config.get('min_lr', '?')}" if origin else "from scratch")
    return (f"architecture overrides {config.get('model') or '{} (the full model)'}; {start}; "
            f"{record.get('steps_done', '?')} steps ({record.get('train_minutes', '?')} min on "
            f"{record.get('device', '?')}), seed {record.get('seed', '?')}")


def _options(args: argparse.Namespace) -> dict:
    """Validated options, or ValueError naming the bad one."""
    from synthesis.eval_sets import TARGETS, select_sets

    crop = _parse_crop(args.crop)
    sets = select_sets(args.sets)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets or any(t not in TARGETS for t in targets):
        raise ValueError(f"--targets must name some of {', '.join(TARGETS)}. Found {args.targets!r}.")
    if args.subjects < 1:
        raise ValueError(f"--subjects must be at least 1. Found {args.subjects}.")
    if args.first_subject < 0:
        raise ValueError(f"--first-subject must be at least 0. Found {args.first_subject}.")
    if args.first_subject and (args.report or args.write_checks):
        raise ValueError("--report and --write-checks score the first test subjects: leave --first-subject at 0. "
                         f"Found --first-subject {args.first_subject}.")
    if args.split != "test" and (args.report or args.write_checks):
        raise ValueError("--report and --write-checks score the test subjects: leave --split at 'test'. "
                         f"Found --split {args.split!r}.")
    ablations = dict(_parse_ablation(item) for item in args.ablation)
    groups = {name.split("/")[0] for name in ablations}
    if args.ablation_reference and args.ablation_reference not in groups:
        raise ValueError(f"--ablation-reference {args.ablation_reference!r} must name an --ablation group. "
                         f"Found: {', '.join(sorted(groups)) or 'none'}.")
    ablation_sets = [s.name for s in select_sets(args.ablation_sets)]
    return {"crop": crop, "sets": sets, "targets": targets, "ablations": ablations, "ablation_sets": ablation_sets}


def _synthesizers(args: argparse.Namespace, ablations: dict[str, str]) -> dict:
    from synthesis import Synthesizer

    out = {"rtfsyn": Synthesizer(args.checkpoint, args.device)}
    has_n4 = "bias_correction" in inspect.signature(Synthesizer.__init__).parameters
    if args.n4 == "on" and not has_n4:
        raise ValueError("--n4 on: this Synthesizer has no bias_correction option.")
    if args.n4 == "on" or (args.n4 == "auto" and has_n4):
        out["rtfsyn+N4"] = Synthesizer(args.checkpoint, args.device, bias_correction=True)
    for name, path in ablations.items():
        out[name] = Synthesizer(path, args.device)
    return out


def _picture_keys(case) -> str | None:
    """Which cases get a picture: every target in distribution, lesions and ventricles, 5 mm slices."""
    wanted = {"in_distribution": ("T2w", "PDw", "FLAIR"), "lesions_30": ("T2w", "FLAIR"),
              "ventricles_6mm": ("T2w", "FLAIR"), "phantom": ("T2w",), "slices_5mm": ("T2w",)}
    return f"{case.set_name}_{case.target_contrast}" if case.target_contrast in wanted.get(case.set_name, ()) else None


def _real_t1(synthesizers: dict, report_dir: Path | None, pictures: dict[str, str]) -> dict:
    from synthesis.real_t1 import evaluate_real_t1, real_t1_path

    chosen = {k: v for k, v in synthesizers.items() if k in ("rtfsyn", "rtfsyn+N4")}
    picture = report_dir / "img" / "eval_real_t1.png" if report_dir else None
    try:
        import nibabel

        real = evaluate_real_t1(chosen, picture=picture)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:  # reported, not hidden
        logging.getLogger(__name__).exception("The real-T1 evaluation failed")
        return {"error": f"{type(exc).__name__}: {exc}"}
    if picture is not None:
        pictures["real_t1"] = "img/eval_real_t1.png"
    path = real_t1_path()
    real.update(file=f"{path.parent.parent.parent.name}/tests/data/{path.name}",
                package=f"nibabel {nibabel.__version__}", licence="MIT, the nibabel licence",
                description="a real T1-weighted brain (one SPM-normalized subject, cropped around the "
                            "ventricles and basal ganglia, 2 mm; not a template).")
    return real


def _ablation_commands() -> list[str]:
    """The commands that train every ablation variant with 3 seeds and evaluate them."""
    from synthesis.ablations import VARIANTS, commands

    return commands(list(VARIANTS), seeds=(0, 1, 2))


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from synthesis import evaluate as ev
    from synthesis.eval_sets import build_cases, held_out_seeds
    from synthesis.report import render_markdown, save_case_figure

    started = time.perf_counter()
    try:
        opts = _options(args)
        synthesizers = _synthesizers(args, opts["ablations"])
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"rtfsyn evaluate: {exc}", file=sys.stderr)
        return 2
    cache = Path(args.cache_dir) if args.cache_dir else None
    predictors = {name: (ev.n4_predictor(synthesizers["rtfsyn"]) if name == "rtfsyn+N4" else
                         ev.synthesizer_predictor(s)) for name, s in synthesizers.items()}
    predictors.update({"oracle": ev.oracle_predictor, "oracle-sliced": ev.sliced_oracle_predictor})
    if not args.no_lookup:
        predictors["lookup"] = ev.LookupBaseline.fitted(2, cache).predictor()
    sets_of = {name: set(opts["ablation_sets"]) for name in opts["ablations"]}
    sets_of["rtfsyn+N4"] = {"in_distribution", "bias_0.3"}
    second = None
    if getattr(synthesizers["rtfsyn"], "takes_second_source", False) and not args.no_second_source:
        second = SECOND_SOURCE
        predictors[PAIRED] = ev.paired_predictor(synthesizers["rtfsyn"])
    notes = [f"{name}: {_training_summary(path)}" for name, path in opts["ablations"].items()]
    report_dir = Path(args.report).parent if args.report else None
    pictures: dict[str, str] = {}

    def on_case(case, preds) -> None:
        key = _picture_keys(case)
        if report_dir is None or key is None or key in pictures or "rtfsyn" not in preds:
            return
        rel = f"img/eval_{key}.png"
        focus = {"lesions": "lesion", "ventricles": "csf"}.get(case.set_name.split("_")[0])
        save_case_figure(report_dir / rel, case.source_1mm, case.truth, preds["rtfsyn"], case.mask,
                         f"{case.set_name}: T1w → {case.target_contrast} (test subject {case.subject_seed})",
                         focus=None if focus is None else case.tissues[focus].astype(np.float32) > 0.5)
        pictures[key] = rel

    seeds = held_out_seeds(args.subjects, args.split, args.first_subject)
    cases = build_cases(opts["sets"], seeds, crop=opts["crop"], cache_dir=cache, targets=opts["targets"],
                        second_source=second)
    evaluation = ev.evaluate(predictors, cases, on_case=on_case, progress=not args.no_progress, sets_of=sets_of)
    real = None if args.no_real_t1 else _real_t1(synthesizers, report_dir, pictures)
    result = _result(args, opts, synthesizers["rtfsyn"], evaluation, real, notes, seeds)
    result["runtime_min"] = round((time.perf_counter() - started) / 60, 1)
    if args.write_checks:
        from synthesis import checkpoint as ckpt
        from synthesis.lesion_check import write_checks

        path = ckpt.default_checkpoint_path() if args.checkpoint == "default" else Path(args.checkpoint)
        try:
            paired = {SECOND_SOURCE: result["summary"][PAIRED]} if PAIRED in result["summary"] else None
            written = write_checks(path, result["model"]["checkpoint_sha256"], result["summary"]["rtfsyn"],
                                   result["command"], paired)
        except ValueError as exc:
            print(f"rtfsyn evaluate: {exc}", file=sys.stderr)
            return 2
        result["lesion_checks"] = json.loads(written.read_text())
        print(f"lesion checks written to {written}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    if args.report:
        Path(args.report).write_text(render_markdown(result, command=result["command"], pictures=pictures))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for model, sets in result["summary"].items():
            for name, targets in sets.items():
                cells = "  ".join(f"{t}: {m['psnr']:.2f} dB / {m['ssim']:.4f}" for t, m in targets.items())
                print(f"{model:>14} {name:>16}  {cells}")
    from dicom_node.commands.cache import cache_note

    note = cache_note(cache)
    if note:
        print(note, file=sys.stderr)
    return 0


def _result(args, opts, syn, evaluation, real, notes, seeds) -> dict:
    from synthesis import checkpoint as ckpt

    path = ckpt.default_checkpoint_path() if args.checkpoint == "default" else Path(args.checkpoint)
    training = ckpt.load(path)[1].get("extra", {}).get("training")
    meta = {k: syn.info.get(k) for k in ("model_name", "model_version", "checkpoint_sha256", "architecture", "device")}
    meta["checkpoint"] = str(args.checkpoint)
    given = list(getattr(args, "argv", None) or [])
    command = " ".join(["rtfsyn", *map(shlex.quote, given[given.index("evaluate"):] if "evaluate" in given
                                       else ["evaluate"])])
    return {
        "command": command, "model": meta, "training": training, "subjects": seeds,
        "split": args.split, "crop": args.crop,
        "targets": opts["targets"],
        "sets": [{"name": s.name, "group": s.group, "description": s.description, "edits": s.edits.to_dict(),
                  "acquisition": s.acquisition.to_dict()} for s in opts["sets"]],
        "summary": evaluation.summary(), "rows": evaluation.rows, "notes": notes,
        "normalization": evaluation.normalization(),
        "ablation_reference": args.ablation_reference, "ablation_sets": opts["ablation_sets"],
        "ablation_commands": _ablation_commands(), "real_t1": real,
    }

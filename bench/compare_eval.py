"""Compare candidate models with a base on the same ``rtfsyn evaluate --output`` cases.

The selection rules of docs/TRAINING.md ("The pass rule") judge a training state against the
shipped model on the same validation subjects. This bench applies them to the JSON that
``rtfsyn evaluate --output`` writes, so a verdict can be reproduced from the two files:

1. in distribution, no target loses more than ``--max-in-dist-loss`` dB (0.3) or gains more
   than ``--max-rmse-rise`` points (0.3) of brain-relative RMSE;
2. on the anatomy sets, no target's mean PSNR falls by more than ``--max-anatomy-loss`` dB (0.3);
3. on the acquisition sets, no (set, target) falls by more than ``--max-acquisition-loss`` dB (0.5);
4. lesion/WM contrast on ``lesions_30`` (T2w and FLAIR): within ``--lesion-tolerance`` of the
   truth (0.15), or, with ``--lesion-closer``, closer to the truth than the base's;
5. the mean PSNR over every (set, target) pair the two files share rises by at least
   ``--min-mean-gain`` dB (0.3);
6. with ``--lesion-every-set POINTS``: on every set, T2w and FLAIR show lesions brighter than white
   matter (lesion/WM > 1) and their lesion/WM error grows by at most POINTS percentage points
   against the base's (a change that helps ``lesions_30`` may hide the few small lesions of the
   other sets).

Both files must hold the same cases (sets, targets, subjects); a mismatch is an error, since
a comparison over different cases would say nothing. A criterion that has no cases to judge
(no anatomy set scored, no ``lesions_30``) is reported as such, not as passed.

Usage::

    python bench/compare_eval.py BASE.json CANDIDATE.json[:NAME] [...] [--lesion-closer --min-mean-gain 0]
    python bench/compare_eval.py base.json step300.json:300 --json
    python bench/compare_eval.py base.json cand.json --lesion-closer --min-mean-gain 0 --lesion-every-set 5
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from synthesis.report_targets import LESION_TOLERANCE

MODEL = "rtfsyn"
LESION_SET = "lesions_30"
LESION_TARGETS = ("T2w", "FLAIR")


@dataclass
class Thresholds:
    max_in_dist_loss: float = 0.3
    max_rmse_rise: float = 0.3
    max_anatomy_loss: float = 0.3
    max_acquisition_loss: float = 0.5
    lesion_tolerance: float = LESION_TOLERANCE
    lesion_closer: bool = False
    min_mean_gain: float = 0.3
    lesion_every_set: float | None = None


@dataclass
class Verdict:
    name: str
    failures: list[str] = field(default_factory=list)
    unjudged: list[str] = field(default_factory=list)
    mean_base: float = 0.0
    mean: float = 0.0
    in_distribution: dict[str, dict[str, float]] = field(default_factory=dict)
    group_deltas: dict[str, dict[str, float]] = field(default_factory=dict)
    lesion_error: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures and not self.unjudged

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "failures": self.failures, "unjudged": self.unjudged,
                "mean_base": round(self.mean_base, 3), "mean": round(self.mean, 3),
                "mean_delta": round(self.mean - self.mean_base, 3), "in_distribution": self.in_distribution,
                "group_deltas": self.group_deltas, "lesion_error": self.lesion_error}


def load(path: Path | str) -> dict[str, Any]:
    """The evaluation written by ``rtfsyn evaluate --output``; a clear error for anything else."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read an evaluation ({exc})") from exc
    if not isinstance(result, dict) or MODEL not in result.get("summary", {}) or "sets" not in result:
        raise ValueError(f"{path}: not an 'rtfsyn evaluate --output' file with the {MODEL!r} model")
    return result


def _cases(result: dict[str, Any]) -> set[tuple]:
    return {(r["set"], r["target"], r["subject"]) for r in result.get("rows", []) if r.get("model") == MODEL}


def _lesion_error(entry: dict[str, Any]) -> float | None:
    """The prediction's lesion/WM ratio over the truth's, minus 1 (as the report's target reads it)."""
    pred = (entry.get("ratios") or {}).get("lesion/WM")
    truth = (entry.get("truth_ratios") or {}).get("lesion/WM")
    return None if pred is None or not truth else pred / truth - 1.0


def compare(base: dict[str, Any], cand: dict[str, Any], name: str, limits: Thresholds = Thresholds()) -> Verdict:
    """Judge ``cand`` against ``base`` by the criteria in the module docstring."""
    if _cases(base) != _cases(cand):
        raise ValueError(f"{name}: the two evaluations hold different cases (sets, targets or subjects)")
    b, c = base["summary"][MODEL], cand["summary"][MODEL]
    verdict = Verdict(name)
    pairs = [(s, t) for s in b for t in b[s]]
    verdict.mean_base = sum(b[s][t]["psnr"] for s, t in pairs) / len(pairs)
    verdict.mean = sum(c[s][t]["psnr"] for s, t in pairs) / len(pairs)

    _in_distribution(b, c, limits, verdict)                                      # criteria 1-4
    _shift_groups(b, c, {s["name"]: s["group"] for s in base["sets"]}, limits, verdict)
    _lesion_contrast(b, c, limits, verdict)
    if limits.lesion_every_set is not None:                                      # criterion 6
        _lesion_every_set(b, c, limits.lesion_every_set, verdict)
    gain = verdict.mean - verdict.mean_base                                      # criterion 5
    if gain < limits.min_mean_gain:
        verdict.failures.append(f"mean of the {len(pairs)} pairs: {gain:+.2f} dB (needs {limits.min_mean_gain:+.2f})")
    return verdict


def _in_distribution(b: dict, c: dict, limits: Thresholds, verdict: Verdict) -> None:
    if "in_distribution" not in b:
        verdict.unjudged.append("in distribution: not scored")
    for target, entry in b.get("in_distribution", {}).items():
        got = c["in_distribution"][target]
        d_psnr, d_rmse = got["psnr"] - entry["psnr"], got["rmse_pct"] - entry["rmse_pct"]
        verdict.in_distribution[target] = {"psnr": got["psnr"], "delta_psnr": round(d_psnr, 3),
                                           "rmse_pct": got["rmse_pct"], "delta_rmse": round(d_rmse, 3)}
        if d_psnr < -limits.max_in_dist_loss:
            verdict.failures.append(f"in distribution {target}: {d_psnr:+.2f} dB")
        if d_rmse > limits.max_rmse_rise:
            verdict.failures.append(f"in distribution {target}: RMSE {d_rmse:+.2f} points")


def _shift_groups(b: dict, c: dict, groups: dict[str, str], limits: Thresholds, verdict: Verdict) -> None:
    for group in ("anatomy", "acquisition"):
        names = [s for s in b if groups.get(s) == group]
        if not names:
            verdict.unjudged.append(f"{group}: no set scored")
            continue
        targets = sorted({t for s in names for t in b[s]})
        deltas = {t: [c[s][t]["psnr"] - b[s][t]["psnr"] for s in names if t in b[s]] for t in targets}
        verdict.group_deltas[group] = {t: round(sum(v) / len(v), 3) for t, v in deltas.items()}
        if group == "anatomy":
            verdict.failures += [f"anatomy mean {t}: {mean:+.2f} dB"
                                 for t, mean in verdict.group_deltas[group].items() if mean < -limits.max_anatomy_loss]
            continue
        for s in names:
            for t in b[s]:
                d = c[s][t]["psnr"] - b[s][t]["psnr"]
                if d < -limits.max_acquisition_loss:
                    verdict.failures.append(f"{s} {t}: {d:+.2f} dB")


def _lesion_contrast(b: dict, c: dict, limits: Thresholds, verdict: Verdict) -> None:
    for t in LESION_TARGETS:
        if t not in b.get(LESION_SET, {}):
            verdict.unjudged.append(f"lesion/WM {t}: {LESION_SET} not scored")
            continue
        err_b, err_c = _lesion_error(b[LESION_SET][t]), _lesion_error(c[LESION_SET][t])
        verdict.lesion_error[t] = {"base": None if err_b is None else round(err_b, 4),
                                   "candidate": None if err_c is None else round(err_c, 4)}
        if err_c is None or err_b is None:
            verdict.unjudged.append(f"lesion/WM {t}: no lesion contrast in the evaluation")
        elif limits.lesion_closer and abs(err_c) >= abs(err_b):
            verdict.failures.append(f"lesion/WM {t}: {err_c:+.1%} of the truth, "
                                    f"not closer than the base's {err_b:+.1%}")
        elif not limits.lesion_closer and abs(err_c) > limits.lesion_tolerance:
            verdict.failures.append(f"lesion/WM {t}: {err_c:+.1%} of the truth")


def _lesion_every_set(b: dict, c: dict, points: float, verdict: Verdict) -> None:
    judged = 0
    for s in b:
        for t in LESION_TARGETS:
            if t not in b[s]:
                continue
            err_b, err_c = _lesion_error(b[s][t]), _lesion_error(c[s][t])
            ratio = (c[s][t].get("ratios") or {}).get("lesion/WM")
            if err_b is None or err_c is None or ratio is None:
                continue
            judged += 1
            if ratio <= 1.0:
                verdict.failures.append(f"{s} {t}: lesion/WM {ratio:.3f}, lesions not brighter than white matter")
            elif 100.0 * (abs(err_c) - abs(err_b)) > points:
                verdict.failures.append(f"{s} {t}: lesion/WM error {err_c:+.1%}, was {err_b:+.1%}")
    if not judged:
        verdict.unjudged.append("lesion/WM on every set: no set with lesions scored")


def _line(v: Verdict) -> str:
    ind = " / ".join(f"{t} {e['psnr']:.2f} ({e['delta_psnr']:+.2f})" for t, e in v.in_distribution.items())
    groups = "; ".join(f"{g} " + " / ".join(f"{t} {d:+.2f}" for t, d in ds.items()) for g, ds in v.group_deltas.items())
    lesion = " / ".join(f"{t} {e['candidate']:+.1%}" for t, e in v.lesion_error.items() if e["candidate"] is not None)
    head = "PASS" if v.passed else "FAIL"
    lines = [f"{v.name}: {head}  mean {v.mean:.2f} ({v.mean - v.mean_base:+.2f})  in dist {ind}",
             f"    {groups}  lesion/WM error {lesion}"]
    lines += [f"    fails: {f}" for f in v.failures] + [f"    not judged: {u}" for u in v.unjudged]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the base model's evaluation (JSON)")
    parser.add_argument("candidates", nargs="+", help="candidate evaluations, PATH or PATH:NAME")
    defaults = Thresholds()
    for option in ("max_in_dist_loss", "max_rmse_rise", "max_anatomy_loss", "max_acquisition_loss",
                   "lesion_tolerance", "min_mean_gain"):
        parser.add_argument("--" + option.replace("_", "-"), type=float, default=getattr(defaults, option))
    parser.add_argument("--lesion-closer", action="store_true",
                        help="lesion/WM must be closer to the truth than the base's (instead of within tolerance)")
    parser.add_argument("--lesion-every-set", type=float, default=None, metavar="POINTS",
                        help="criterion 6: on every set, T2w and FLAIR lesion/WM above 1 and its error grown by at "
                             "most POINTS percentage points")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    args = parser.parse_args(argv)
    limits = Thresholds(args.max_in_dist_loss, args.max_rmse_rise, args.max_anatomy_loss, args.max_acquisition_loss,
                        args.lesion_tolerance, args.lesion_closer, args.min_mean_gain, args.lesion_every_set)
    try:
        base = load(args.base)
        verdicts = []
        for item in args.candidates:
            path, _, name = item.partition(":")
            verdicts.append(compare(base, load(path), name or path, limits))
    except ValueError as exc:
        print(f"compare_eval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([v.to_dict() for v in verdicts], indent=2))
    else:
        print(f"base {args.base}: mean {verdicts[0].mean_base:.2f} dB over its (set, target) pairs")
        for v in verdicts:
            print(_line(v))
    return 0 if all(v.passed for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Fit the lesion detector's probability-to-fraction table and write a calibrated checkpoint copy.

The detector is trained with binary cross-entropy on lesion *fractions*, positives weighted
``pos_weight`` (30), plus a Dice term: for a voxel that is a fraction f lesion the loss is least
at p = 30 f / (30 f + 1 - f), so a voxel half lesion gets p near 0.97 and, composed as it is, a
lesion's partial-volume edge comes out as bright as its core. This tool measures what fraction
a probability stands for, on training-split subjects only (the evaluation's case sets, cut and
acquired as ``rtfsyn evaluate`` does, seeds from :func:`synthesis.evaluate.train_seeds`): the
brain voxels' p, found as inference finds it (:meth:`synthesis.Synthesizer.lesion_probability`),
are binned, each bin's mean true lesion fraction taken, and the means made non-decreasing by
isotonic regression (scikit-learn, weighted by the bins' voxel counts). The knots, from (0, 0)
to (1, the last bin's fraction), go into the copy's ``lesion_fraction_p`` / ``lesion_fraction_f``
(:class:`synthesis.nets.config.RTFSynConfig`), with ``--level`` as its ``lesion_level``; every
weight is kept and ``extra.lesion_calibration`` records the fit (bins, subjects, sets, source).

Usage::

    python bench/lesion_calibration.py default --out runs/calib/model.pt --level output --note "rule 23"
    python bench/lesion_calibration.py default --out runs/calib/model.pt --subjects 4 --sets in_distribution,lesions_30
    python bench/lesion_calibration.py default --out runs/calib/level.pt --level output --no-table
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lesion_gain import calibrated_copy  # noqa: E402
from synthesis import checkpoint as ckpt  # noqa: E402

#: Bin edges of the probability: finer near 1, where most lesion voxels lie.
EDGES = tuple(np.concatenate([[0.0], np.linspace(0.02, 0.98, 25), [0.99, 0.995, 1.0 + 1e-6]]).tolist())


def fit_table(p: np.ndarray, fraction: np.ndarray, edges: Sequence[float] = EDGES
              ) -> tuple[list[float], list[float], dict]:
    """``(p knots, fraction knots, bins)`` for voxels' probabilities ``p`` and true lesion
    fractions: the bins' mean p and their isotonic (non-decreasing, weighted by count) mean
    fraction, between (0, 0) and (1, the last fitted fraction). ``bins``: each non-empty bin's
    mean p, mean fraction and count. ValueError when no voxel is given or no lesion is among them."""
    from sklearn.isotonic import IsotonicRegression

    p = np.asarray(p, dtype=np.float64).ravel()
    fraction = np.asarray(fraction, dtype=np.float64).ravel()
    if p.size == 0 or p.shape != fraction.shape:
        raise ValueError(f"p and fraction must be non-empty and of one size. Found {p.size} and {fraction.size}.")
    if not (fraction > 0.5).any():
        raise ValueError("no voxel is more than half lesion; the table would say nothing about lesions")
    index = np.clip(np.digitize(p, edges) - 1, 0, len(edges) - 2)
    count = np.bincount(index, minlength=len(edges) - 1).astype(np.float64)
    keep = count > 0
    mean_p = np.bincount(index, weights=p, minlength=len(edges) - 1)[keep] / count[keep]
    mean_f = np.bincount(index, weights=fraction, minlength=len(edges) - 1)[keep] / count[keep]
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0).fit(mean_p, mean_f, sample_weight=count[keep]).predict(mean_p)
    inner = mean_p[(mean_p > 0.0) & (mean_p < 1.0)]
    values = fitted[(mean_p > 0.0) & (mean_p < 1.0)]
    knots_p = [0.0, *inner.round(5).tolist(), 1.0]
    knots_f = [0.0, *values.round(5).tolist(), float(np.round(fitted[-1], 5))]
    bins = {"p": mean_p.round(5).tolist(), "fraction": mean_f.round(5).tolist(), "voxels": count[keep].astype(int).tolist()}
    return knots_p, knots_f, bins


def samples(checkpoint: str, seeds: Iterable[int], sets: str, crop: Sequence[int] | None
            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The detector's p and the true lesion fraction of the brain voxels of the cases of
    ``sets`` x ``seeds`` (one target each: the source is the same for all), and the cases'
    names. ValueError for a case whose source is not on a 1 mm grid (p lives on the working grid)."""
    from synthesis import Synthesizer
    from synthesis.eval_sets import build_cases, from_box, select_sets

    syn = Synthesizer(checkpoint, "cpu")
    ps, fs, names = [], [], []
    for case in build_cases(select_sets(sets), seeds, crop=crop, targets=["T2w"]):
        p, work_spacing = syn.lesion_probability(case.source, case.source_spacing, source_peak=case.source_peak)
        if not np.allclose(work_spacing, 1.0) or not np.allclose(case.source_spacing, 1.0):
            raise ValueError(f"set {case.set_name}: the source is on a {case.source_spacing} mm grid; use sets "
                             "acquired at 1 mm")
        mask = case.mask.astype(bool)
        ps.append(from_box(p, case.source_origin_mm, case.truth.shape)[mask])
        fs.append(np.asarray(case.tissues["lesion"], dtype=np.float32)[mask])
        names.append(f"{case.set_name}/{case.subject_seed}")
    return np.concatenate(ps), np.concatenate(fs), names


def main(argv: Sequence[str] | None = None) -> int:
    from synthesis.evaluate import train_seeds

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint path or 'default'")
    parser.add_argument("--out", required=True, type=Path, help="where to write the calibrated copy")
    parser.add_argument("--subjects", type=int, default=4, help="training-split subjects to fit on (default 4)")
    parser.add_argument("--sets", default="in_distribution,lesions_30",
                        help="evaluation case sets, acquired at 1 mm (default in_distribution,lesions_30)")
    parser.add_argument("--crop", default="80,96,80", help="scoring crop as rtfsyn evaluate's (default 80,96,80)")
    parser.add_argument("--level", choices=("weight", "output"), default="weight",
                        help="the copy's lesion_level (default weight: the behaviour before)")
    parser.add_argument("--no-table", action="store_true",
                        help="fit nothing: only set the level (the detector's p is composed as it is)")
    parser.add_argument("--note", default="", help="why (recorded in extra.lesion_calibration)")
    args = parser.parse_args(argv)
    try:
        if args.subjects < 1:
            raise ValueError(f"--subjects must be >= 1. Found {args.subjects}.")
        crop = [int(v) for v in args.crop.split(",")] if args.crop else None
        source = str(ckpt.default_checkpoint_path()) if args.checkpoint == "default" else args.checkpoint
        command = "python bench/lesion_calibration.py " + " ".join(sys.argv[1:] if argv is None else argv)
        if args.no_table:
            knots_p, knots_f = [], []
            record = {"command": command, "method": "none (level only)", "level": args.level, "note": args.note}
        else:
            seeds = train_seeds(args.subjects)
            p, fraction, names = samples(source, seeds, args.sets, crop)
            knots_p, knots_f, bins = fit_table(p, fraction)
            record = {"command": command, "method": "binned means, isotonic", "subjects": seeds, "cases": names,
                      "crop": crop, "level": args.level, "bins": bins, "note": args.note}
        written = calibrated_copy(args.checkpoint, {"lesion_fraction_p": knots_p, "lesion_fraction_f": knots_f,
                                                    "lesion_level": args.level}, args.out, record)
    except (OSError, ValueError) as exc:
        print(f"lesion_calibration: {exc}", file=sys.stderr)
        return 2
    for x, y in zip(knots_p, knots_f):
        print(f"p {x:.4f} -> fraction {y:.4f}")
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How well the lesion detector finds white-matter lesions on a T1 alone (validation subjects).

The detector (:class:`synthesis.nets.lesion.LesionNet`, trained with ``rtfsyn train
--lesion-net``) is scored on whole heads of validation-split subjects it never saw, acquired
as the evaluation's in-distribution source (3 T T1 preset, 1 mm, SNR 30) and normalized as
inference does, each twice: rendered with the subject's own tissue parameters, as the
evaluation renders its sources (``"source": "nominal"``), and with a training-like contrast
spread of them (``"jittered"``, :func:`synthesis.simulate.acquisition.source_params`):

* ``lesions_30`` subjects: average precision and ROC AUC of the lesion probability for
  voxels with lesion fraction > 0.5 among brain voxels; Dice at p > 0.5; the mean
  probability inside lesions, in grey matter and in white matter (fraction > 0.9); and on the
  voxels that are more than 0.9 lesion (those the evaluation's lesion/WM ratio averages),
  the share the detector misses (p < 0.1), the share it finds (p > 0.9), and their mean p;
* the same subjects without lesions: the share of brain voxels at p > 0.5 (false lesions).

Beside it, a per-voxel logistic regression on the T1 value and its 5^3 mean, fitted on a
training subject with 30 lesions and scored the same way. Usage::

    python bench/lesion_detector.py --checkpoint runs/lesion/model.pt --out bench/results/lesion_net.json
    python bench/lesion_detector.py --state runs/lesion/lesion_last.pt   # a run's detector, mid-way
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from synthesis.eval_sets import BASE_EDITS, CASE_SETS, held_out_seeds, make_case_subject
from synthesis.nets.lesion import LesionNet
from synthesis.physics import TISSUES
from synthesis.protocol import preset
from synthesis.simulate import SPLIT_SEEDS
from synthesis.simulate.acquisition import Acquisition
from synthesis.stream import acquired_source

log = logging.getLogger("lesion_detector")
LESION = TISSUES.index("lesion")


def infer(net: LesionNet, volume: np.ndarray) -> np.ndarray:
    """Whole-volume lesion probability, as the Synthesizer finds it."""
    return net.probability(torch.from_numpy(volume.astype(np.float32))[None, None])[0, 0].numpy()


def _ap_auc(score: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Average precision and ROC AUC (scikit-learn's: tied scores count as ties)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return float(average_precision_score(label, score)), float(roc_auc_score(label, score))


def eval_subject(prob: np.ndarray, subject) -> dict:
    brain = subject.brain_mask
    lesion = subject.fractions[LESION] > 0.5
    gm = subject.fractions[TISSUES.index("gm")] > 0.9
    wm = subject.fractions[TISSUES.index("wm")] > 0.9
    out = {"lesion_voxels": int(lesion.sum()), "false_share": float((prob[brain & ~lesion] > 0.5).mean()),
           "p_gm": float(prob[gm].mean()), "p_wm": float(prob[wm].mean())}
    pure = brain & (subject.fractions[LESION] > 0.9)
    if pure.any():
        out.update(pure_lesion_voxels=int(pure.sum()), p_pure_lesion=float(prob[pure].mean()),
                   pure_missed=float((prob[pure] < 0.1).mean()), pure_found=float((prob[pure] > 0.9).mean()))
    if lesion.any():
        ap, auc = _ap_auc(prob[brain], lesion[brain])
        hit = prob > 0.5
        out.update(ap=ap, auc=auc, p_lesion=float(prob[lesion].mean()),
                   dice=float(2 * (hit & lesion & brain).sum() / max((hit & brain).sum() + lesion.sum(), 1)),
                   prevalence=float(lesion[brain].mean()))
    return out


def _features(volume: np.ndarray) -> np.ndarray:
    return np.stack([volume, ndimage.uniform_filter(volume, 5)], -1)


SOURCES = ("nominal", "jittered")


def eval_sets(seeds: list[int]) -> list[tuple[str, int, str, object, np.ndarray]]:
    """(set, seed, source kind, subject, normalized T1) for the validation subjects (lesions_30,
    and no lesions), each source kind of :data:`SOURCES`."""
    acq = Acquisition(snr=30.0)
    protocol = preset("T1", 3.0)
    cases = []
    for seed in seeds:
        for name, edits in (("lesions_30", CASE_SETS["lesions_30"].edits), ("no_lesions", replace(BASE_EDITS, lesions=0))):
            subject = make_case_subject(seed, edits)
            for kind in SOURCES:
                source = acquired_source(subject, protocol, acq, np.random.default_rng([seed, 5]),
                                         jitter=kind == "jittered")
                cases.append((name, seed, kind, subject, source))
    return cases


def logistic_baseline(train_seed: int, cases) -> list[dict]:
    from sklearn.linear_model import LogisticRegression

    subject = make_case_subject(train_seed, CASE_SETS["lesions_30"].edits)
    source = acquired_source(subject, preset("T1", 3.0), Acquisition(snr=30.0), np.random.default_rng([train_seed, 5]))
    brain = subject.brain_mask
    x, y = _features(source)[brain], subject.fractions[LESION][brain] > 0.5
    clf = LogisticRegression(class_weight="balanced", max_iter=500).fit(x, y)
    rows = []
    for name, seed, kind, subj, src in cases:
        prob = np.zeros(src.shape, np.float32)
        prob[subj.brain_mask] = clf.predict_proba(_features(src)[subj.brain_mask])[:, 1]
        rows.append({"set": name, "seed": seed, "source": kind, **eval_subject(prob, subj)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path, help="a model with a lesion detector (lesion_net = true)")
    which.add_argument("--state", type=Path, help="a detector run's lesion_last.pt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-subjects", type=int, default=2, help="validation subjects (default 2)")
    ap.add_argument("--first-subject", type=int, default=0,
                    help="skip this many validation subjects first (as rtfsyn evaluate --first-subject)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the logistic-regression baseline")
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        from synthesis import checkpoint

        model, meta = checkpoint.load(args.checkpoint)
        if model.lesion is None:
            raise SystemExit(f"{args.checkpoint}: this model has no lesion detector (lesion_net = false).")
        net, record = model.lesion, meta["extra"].get("lesion_net", {})
        what = {"checkpoint": str(args.checkpoint), "sha256": meta["sha256"]}
    else:
        saved = torch.load(args.state, weights_only=False)
        net = LesionNet()
        net.load_state_dict(saved["model"])
        record = {"steps": saved["state"]["step"], "train_minutes": round(saved["state"]["seconds"] / 60, 2)}
        what = {"state": str(args.state)}
    net.eval()
    seeds = held_out_seeds(args.eval_subjects, "validation", args.first_subject)
    cases = eval_sets(seeds)
    rows = [{"set": name, "seed": seed, "source": kind, **eval_subject(infer(net, src), subj)}
            for name, seed, kind, subj, src in cases]
    base = None if args.no_baseline else logistic_baseline(list(SPLIT_SEEDS["train"])[0], cases)
    result = {**what, "training": record, "threads": args.threads, "probe": rows, "logistic_baseline": base}
    print(json.dumps({"probe": rows, "logistic_baseline": base}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

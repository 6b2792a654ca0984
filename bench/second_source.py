"""What a T2w second source can tell the model about lesions, and what a model makes of it.

Three measurements on validation-split subjects with white-matter lesions (seeds from
1,000,000: never trained on), on lesion-centred 64^3 crops whose draw also acquires a T2w of
the subject as training does (``second_source_share = 1``: its own random protocol,
acquisition and tissue-parameter jitter):

* ``mixing``: the weights with which the model mixes its eight tissue bases for the 3 T
  preset targets (FLAIR, PD, T2) from a 3 T MPRAGE, beside the physics prior's (the
  target's nominal tissue signals). A lesion shows on the output only as far as its weight
  exceeds white matter's; with a second source, a two-source model's ``mix_second`` shift
  is included.
* ``sources``: per subject, the mean normalized T1 and T2w in lesions (fraction > 0.5) and
  in grey matter, white matter and CSF (> 0.9).
* ``separability``: how far the voxels' own values tell a lesion (fraction > 0.5) from the
  rest of the brain: a logistic regression on the T1 and T2w values and their 5^3 means,
  fitted on all subjects but the last and scored on the last (ROC AUC and average
  precision; the share of lesion voxels is the AP of a guess). The per-voxel information a
  network has, before any shape or place.
* ``model`` (two-source checkpoints): the lesion basis in lesions, white and grey matter, and
  the output's lesion/WM, from the T1 alone and with the T2w (``bench/bases.py`` measures
  the same from the T1 alone).

scikit-learn (installed with nilearn) fits the regression.

Usage::

    python bench/second_source.py                                   # the shipped model
    python bench/second_source.py --checkpoint runs/r11/exports/step-000300.pt --model-only
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bench.bases import GM, LESION, WM, emit, lesion_subjects, load_model  # noqa: E402
from synthesis.physics import TISSUES  # noqa: E402
from synthesis.stream import StreamConfig, draw_crops  # noqa: E402
from synthesis.train import make_batch  # noqa: E402

SHOWN = ("csf", "gm", "wm", "lesion")


@torch.no_grad()
def mixing(model) -> dict[str, Any]:
    """Prior and learnt mixing weights of the shown tissues for the 3 T preset targets."""
    from synthesis.condition import PHYSICS_DIM, pair_features, prompt
    from synthesis.protocol import preset
    from synthesis.text import get_text_encoder

    if not model.uses_physics_mix:
        return {}
    source = preset("T1", 3.0)
    out: dict[str, Any] = {}
    for name in ("FLAIR", "PD", "T2"):
        target = preset(name, 3.0)
        features = torch.from_numpy(pair_features(source, target)[: model.config.feature_dim])[None]
        text = get_text_encoder().encode([prompt(source, target)])
        cond = model.condition(text.pooled, features)
        prior = features[:, -PHYSICS_DIM:-1].float()
        learnt = model.head.mixing_weights(cond, prior)
        row = {"prior": prior[0], "alone": learnt[0]}
        if getattr(model, "mix_second", None) is not None:
            row["with_second"] = learnt[0] + model.mix_second(cond)[0]
        out[name] = {k: {t: round(float(v[TISSUES.index(t)]), 3) for t in SHOWN} for k, v in row.items()}
    return out


def _voxels(crop) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 4): T1, T2w, their 5^3 means; lesion labels (N,)) of the crop's brain voxels."""
    first = np.asarray(crop.source, np.float32)
    second = np.asarray(crop.second, np.float32)
    brain = crop.mask > 0
    columns = [first, second, ndimage.uniform_filter(first, 5), ndimage.uniform_filter(second, 5)]
    return np.stack([c[brain] for c in columns], 1), crop.fractions[LESION][brain] > 0.5


def sources(per_subject: list[list[Any]]) -> list[dict[str, Any]]:
    """Per subject: the mean T1 and T2w (normalized) in lesions, GM, WM and CSF of its crops."""
    out = []
    for crops in per_subject:
        row: dict[str, Any] = {}
        for name, key in (("T1", "source"), ("T2w", "second")):
            values = np.concatenate([np.asarray(getattr(c, key), np.float32).ravel() for c in crops])
            row[name] = {}
            for tissue in SHOWN:
                fraction = np.concatenate([c.fractions[TISSUES.index(tissue)].ravel() for c in crops])
                inside = fraction > (0.5 if tissue == "lesion" else 0.9)
                row[name][tissue] = round(float(values[inside].mean()), 3) if inside.any() else None
        out.append(row)
    return out


def separability(per_subject: list[list[Any]]) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    data = [[_voxels(c) for c in crops] for crops in per_subject]
    x_fit = np.concatenate([x for subject in data[:-1] for x, _ in subject])
    y_fit = np.concatenate([y for subject in data[:-1] for _, y in subject])
    x_test = np.concatenate([x for x, _ in data[-1]])
    y_test = np.concatenate([y for _, y in data[-1]])
    out: dict[str, Any] = {"lesion_share_fit": round(float(y_fit.mean()), 5),
                           "lesion_share_test": round(float(y_test.mean()), 5), "test_voxels": int(y_test.size)}
    for name, cols in (("T1 alone", [0, 2]), ("T2w alone", [1, 3]), ("T1 and T2w", [0, 1, 2, 3])):
        scale = StandardScaler().fit(x_fit[:, cols])
        fit = LogisticRegression(max_iter=500, class_weight="balanced").fit(scale.transform(x_fit[:, cols]), y_fit)
        p = fit.predict_proba(scale.transform(x_test[:, cols]))[:, 1]
        out[name] = {"roc_auc": round(float(roc_auc_score(y_test, p)), 3),
                     "average_precision": round(float(average_precision_score(y_test, p)), 3)}
    return out


@torch.no_grad()
def model_on(model, crops: list[Any]) -> dict[str, Any]:
    """Lesion basis (lesions / WM / GM) and output lesion/WM, alone and with the T2w."""
    sums: dict[str, list[float]] = {}
    for crop in crops:
        lesion, wm, gm = (crop.fractions[i] > t for i, t in ((LESION, 0.5), (WM, 0.9), (GM, 0.9)))
        batch = make_batch([crop], torch.device("cpu"), model.config.feature_dim)
        truth = np.asarray(crop.target, np.float32)
        sums.setdefault("truth lesion/WM", []).append(float(truth[lesion].mean() / truth[wm].mean()))
        for name, kw in (("alone", {}), ("with T2w", {"second": batch["second"], "present": batch["present"]})):
            feats = model.encode(batch["source"], batch["text"], batch["features"], **kw)
            out, bases = model.render_grid(feats, with_bases=True)
            out, basis = out[0, 0].float().numpy(), bases[0, LESION].float().numpy()
            sums.setdefault(f"{name}: lesion basis in lesions", []).append(float(basis[lesion].mean()))
            sums.setdefault(f"{name}: lesion basis in WM", []).append(float(basis[wm].mean()))
            if gm.sum() >= 20:
                sums.setdefault(f"{name}: lesion basis in GM", []).append(float(basis[gm].mean()))
            if out[wm].mean() > 0:
                sums.setdefault(f"{name}: lesion/WM", []).append(float(out[lesion].mean() / out[wm].mean()))
    return {k: round(float(np.mean(v)), 3) for k, v in sums.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="default", help="checkpoint path or 'default'")
    parser.add_argument("--subjects", type=int, default=4, help="validation subjects with lesions (the last is scored)")
    parser.add_argument("--target", default="FLAIR", help="target contrast of the crops")
    parser.add_argument("--seed", type=int, default=12345, help="draws of protocols, acquisitions and crops")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="also write the JSON result here")
    parser.add_argument("--model-only", action="store_true",
                        help="only the model's lesion basis and lesion/WM (two-source checkpoints)")
    args = parser.parse_args(argv)
    if args.subjects < 2:
        parser.error("--subjects must be at least 2 (fit on all but the last, score on the last).")
    torch.set_num_threads(args.threads)
    model, path, meta = load_model(args.checkpoint)
    cfg = StreamConfig(patch=64, target_contrasts=(args.target,), targets_per_draw=1, crops_per_target=2,
                       lesion_crop_share=1.0, split="validation", draws_per_subject=1, second_source_share=1.0)
    per_subject = []
    for draw in lesion_subjects(args.subjects):
        crops = [c for c in draw_crops(cfg, draw, seed=args.seed) if (c.fractions[LESION] > 0.5).sum() >= 20]
        if crops:
            per_subject.append(crops)
    if len(per_subject) < 2:
        print("Fewer than two subjects had crops with 20 or more lesion voxels.", file=sys.stderr)
        return 1
    result: dict[str, Any] = {"checkpoint": str(path), "sha256": meta["sha256"], "subjects": args.subjects,
                              "seed": args.seed, "target": args.target,
                              "crops": sum(len(c) for c in per_subject)}
    if not args.model_only:
        result.update(mixing=mixing(model), sources=sources(per_subject), separability=separability(per_subject))
    if model.config.second_source:
        result["model"] = model_on(model, [c for crops in per_subject for c in crops])
    return emit(result, args.output)


if __name__ == "__main__":
    sys.exit(main())

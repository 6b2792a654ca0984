"""The dark rim at the edge of the ventricles: where a synthesized image undershoots.

On the evaluation's cases of validation-split subjects (seeds from 1,000,001: never trained
on, not the report's test subjects), through the Synthesizer path ``rtfsyn evaluate`` uses,
this bench counts the brain voxels that the output renders darker than the truth's own 0.5th
percentile in the brain by more than ``--margin`` (brain-relative units). The metrics
normalize each image by its 0.5-99.5th brain percentiles, so such voxels set the output's
dark end, and on a target whose brain spans a narrow band (PDw: about 0.16 of its bright end)
they move every other voxel's score as well.

For each case it reports:

* ``dark_voxels`` and ``dark_share`` (of the brain mask in the scoring crop);
* ``dark_csf_fraction``: the mean true CSF fraction of those voxels, and
  ``dark_depth_in_csf_mm``: the median distance from them to the nearest voxel that is
  not CSF-dominated (1 mm: the first layer of CSF at an edge);
* ``bases_sum``: percentiles 5/50/95 of the sum of the decoder's eight output bases (with
  the physics mix they stand for tissue fractions, which add up to 1 inside the head) on
  the dark voxels and on pure CSF, GM and WM (fraction > 0.95), and ``dark_bases``: the mean
  of each basis on the dark voxels (which tissue the model puts there), on 1 mm sources, where
  the working grid is the source grid;
* ``pure_ratio``: per tissue (CSF, GM, WM; fraction > 0.95), the output's mean over the
  truth's, the output first scaled to the truth by least squares in the brain (the metric's
  normalization removes a common scale, not a tissue's own error);
* ``wm_over_weight``: the output's mean in pure white matter over the model's mixing weight of
  white matter (models with the physics mix). The lesion detector's voxels get the lesion/WM
  signal ratio times that weight (:func:`synthesis.nets.lesion.compose`), so where this is above
  1 the output's lesion/WM contrast falls short of the ratio by as much;
* ``psnr``: the case's PSNR as ``rtfsyn evaluate`` scores it.

Usage::

    python bench/rim.py                                    # the shipped model
    python bench/rim.py --checkpoint runs/x/model.pt --sets in_distribution,ventricles_6mm \\
        --subjects 1 --output bench/results/rim.json
    python bench/rim.py --checkpoint runs/x/model.pt --sets in_distribution --first-subject 2 --subjects 2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthesis import Synthesizer, intensity  # noqa: E402
from synthesis.condition import prompt  # noqa: E402
from synthesis.eval_sets import EvalCase, build_cases, from_box, held_out_seeds, select_sets  # noqa: E402
from synthesis.evaluate import synthesizer_predictor  # noqa: E402
from synthesis.metrics import score  # noqa: E402
from synthesis.physics import TISSUES  # noqa: E402
from bench.mixing_weights import weights_and_prior  # noqa: E402

PURE = 0.95  # a voxel is pure tissue above this fraction


def _percentiles(values: np.ndarray) -> list[float] | None:
    return [round(float(v), 3) for v in np.percentile(values, [5, 50, 95])] if values.size else None


@torch.inference_mode()
def bases_on_case(syn: Synthesizer, case: EvalCase) -> np.ndarray | None:
    """The decoder's output bases on the case's scoring region ``(8, D, H, W)``, or None where
    the source is not on a 1 mm grid (the working grid is then not the output grid)."""
    if not np.allclose(case.source_spacing, 1.0):
        return None
    work = intensity.scale_source(case.source, case.source_peak)
    text, features = syn.condition(prompt(case.source_protocol, case.target_protocol), case.source_protocol,
                                    case.target_protocol)
    feats = syn._encode(work, text, features, lambda *_: None)
    _, bases = syn.model.render_grid(feats, with_bases=True)
    return np.stack([from_box(b, case.source_origin_mm, case.truth.shape) for b in bases[0].float().cpu().numpy()])


def rim_metrics(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, tissues: dict[str, np.ndarray],
                bases: np.ndarray | None, margin: float, wm_weight: float | None = None) -> dict[str, Any]:
    """The module's metrics of one output ``pred`` against ``truth`` in ``mask`` (bool), with the
    true tissue fractions ``tissues`` (csf, gm, wm at least), the decoder's bases ``(8, ...)`` on
    the same grid (None: no bases metrics) and the model's white-matter mixing weight (None: no
    ``wm_over_weight``)."""
    floor = float(np.percentile(truth[mask], 0.5))
    dark = mask & (pred < floor - margin)
    csf = tissues["csf"].astype(np.float32)
    depth = ndimage.distance_transform_edt(csf > 0.5)
    out: dict[str, Any] = {
        "psnr": round(score(pred, truth, mask).psnr, 2),
        "truth_p0.5": round(floor, 4), "output_p0.5": round(float(np.percentile(pred[mask], 0.5)), 4),
        "dark_voxels": int(dark.sum()), "dark_share": round(float(dark.sum() / mask.sum()), 5),
        "dark_csf_fraction": round(float(csf[dark].mean()), 3) if dark.any() else None,
        "dark_depth_in_csf_mm": round(float(np.median(depth[dark])), 2) if dark.any() else None,
        "pure_ratio": _pure_ratio(pred, truth, mask, tissues),
    }
    pure_wm = mask & (tissues["wm"] > PURE)
    if wm_weight and pure_wm.any():
        out["wm_over_weight"] = round(float(pred[pure_wm].mean()) / wm_weight, 4)
    if bases is not None:
        total = bases.sum(0)
        out["bases_sum"] = {"dark": _percentiles(total[dark])}
        for tissue in ("csf", "gm", "wm"):
            out["bases_sum"][tissue] = _percentiles(total[mask & (tissues[tissue] > PURE)])
        out["dark_bases"] = {t: round(float(bases[i][dark].mean()), 3) if dark.any() else None
                             for i, t in enumerate(TISSUES)}
    return out


def _pure_ratio(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                tissues: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Per tissue of CSF, GM and WM: the mean of ``pred`` (scaled to ``truth`` by least squares
    in ``mask``) over the mean of ``truth`` where the tissue's fraction exceeds ``PURE``; None
    where no voxel does."""
    p, t = pred[mask].astype(np.float64), truth[mask].astype(np.float64)
    scale = float((p * t).sum() / max(float((p * p).sum()), 1e-12))
    out: dict[str, float | None] = {}
    for tissue in ("csf", "gm", "wm"):
        pure = mask & (tissues[tissue] > PURE)
        out[tissue] = round(scale * float(pred[pure].mean()) / float(truth[pure].mean()), 4) if pure.any() else None
    return out


def wm_weight(syn: Synthesizer, case: EvalCase) -> float | None:
    """The model's mixing weight of white matter for the case's protocols, or None for a model
    without the physics mix."""
    if not syn.model.uses_physics_mix:
        return None
    weights, _ = weights_and_prior(syn, case.source_protocol, case.target_protocol)
    return float(weights[TISSUES.index("wm")])


def case_metrics(syn: Synthesizer, case: EvalCase, margin: float) -> dict[str, Any]:
    """:func:`rim_metrics` of the Synthesizer's output on an evaluation case."""
    pred = synthesizer_predictor(syn)(case)
    return {"set": case.set_name, "target": case.target_contrast, "subject": case.subject_seed,
            **rim_metrics(pred, case.truth, case.mask.astype(bool), case.tissues, bases_on_case(syn, case), margin,
                          wm_weight(syn, case))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="default", help="checkpoint path, or 'default'")
    parser.add_argument("--sets", default="in_distribution,ventricles_3mm,ventricles_6mm,atrophy_1.5mm")
    parser.add_argument("--targets", default="PDw",
                        help="target contrasts (default PDw: there CSF, the darkest brain tissue, sits at the "
                             "edge, so a voxel below the truth's dark end is an undershoot; on FLAIR and T2w "
                             "the count also takes in CSF or white matter rendered a little too dark)")
    parser.add_argument("--subjects", type=int, default=1, help="validation-split subjects")
    parser.add_argument("--first-subject", type=int, default=0,
                        help="skip this many validation subjects first (as rtfsyn evaluate --first-subject)")
    parser.add_argument("--crop", default="80,96,80", help="scoring region D,H,W (as rtfsyn evaluate)")
    parser.add_argument("--margin", type=float, default=0.02, help="brain-relative units below the truth's p0.5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    syn = Synthesizer(args.checkpoint, "cpu")
    crop = tuple(int(v) for v in args.crop.split(","))
    cases = build_cases(select_sets(args.sets), held_out_seeds(args.subjects, "validation", args.first_subject), crop=crop,
                        cache_dir=None, targets=args.targets.split(","))
    rows = [case_metrics(syn, case, args.margin) for case in cases]
    result = {"checkpoint": args.checkpoint, "model_sha256": syn.info["checkpoint_sha256"],
              "split": "validation", "first_subject": args.first_subject, "margin": args.margin, "crop": list(crop), "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

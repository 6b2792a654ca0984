"""Source normalization against the field of view: the same brain, four coverages.

For one simulated head (``synthesis.simulate.make_subject``) and each preset
contrast at 3 T, the head is rendered with its scalp, skull-stripped (every
extra-cerebral tissue and everything outside the brain mask zeroed), with a
neck-like block (a muscle core in a fat sleeve) below it, and with the lower
third of the head cut off. Each is normalized three ways and the median of the
normalized white matter (pure WM voxels in the slices all four share) is
reported:

* ``percentile``: the whole volume's 0.5/99.5 percentiles to 0/1 (the
  Synthesizer before the tissue peak);
* ``whole-head peak``: the tallest histogram mode above the median of every head
  voxel (``synthesis.intensity`` with a core depth of 0 mm);
* ``head-core peak``: the same on the head's core (``synthesis.intensity.tissue_peak``,
  what the Synthesizer does).

Usage::

    python bench/normalization.py              # markdown table on stdout, JSON in bench/results
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from synthesis import grid, intensity  # noqa: E402
from synthesis.physics import TISSUES  # noqa: E402
from synthesis.protocol import preset  # noqa: E402
from synthesis.simulate import Subject, make_subject, render, tissue_weights  # noqa: E402

BRAIN_TISSUES = ("csf", "gm", "wm", "lesion")
NECK_SLICES = 70
CONTRASTS = ("T1", "T2", "FLAIR", "PD")


def stripped(subject: Subject, weights: np.ndarray) -> np.ndarray:
    """The image with every extra-cerebral tissue and the outside of the brain mask zeroed."""
    out = np.zeros(subject.shape, dtype=np.float32)
    for name in BRAIN_TISSUES:
        out += np.float32(weights[TISSUES.index(name)]) * subject.tissue(name)
    return out * subject.brain_mask


def neck(subject: Subject, weights: np.ndarray) -> np.ndarray:
    """A neck-like block ``(NECK_SLICES, H, W)``: an elliptic muscle core in a fat sleeve."""
    _, height, width = subject.shape
    _, yy, xx = np.mgrid[0:NECK_SLICES, 0:height, 0:width]
    radius = np.sqrt(((yy - 0.55 * height) / 55.0) ** 2 + ((xx - 0.5 * width) / 60.0) ** 2)
    block = np.zeros((NECK_SLICES, height, width), dtype=np.float32)
    block[radius < 1.0] = weights[TISSUES.index("fat")]
    block[radius < 0.85] = weights[TISSUES.index("muscle")]
    return block


def coverage_variants(subject: Subject, contrast: str) -> tuple[dict[str, tuple[np.ndarray, int]], int]:
    """``({name: (volume, z index of the subject's slice 0 in it)}, first subject slice that
    every variant holds)`` for one preset contrast at 3 T."""
    protocol = preset(contrast, 3.0)
    full = render(subject, protocol)
    weights = tissue_weights(subject, protocol)
    z_head = np.flatnonzero(full.max(axis=(1, 2)) > 0)
    z_cut = int(z_head[0] + (z_head[-1] - z_head[0]) // 3)  # the lower third of the head cut away
    variants = {
        "with scalp": (full, 0),
        "skull-stripped": (stripped(subject, weights), 0),
        "with a neck": (np.concatenate([neck(subject, weights), full]), NECK_SLICES),
        "cropped": (full[z_cut:], -z_cut),
    }
    return variants, z_cut


METHODS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "percentile": lambda v: grid.percentile_normalize(v)[0],
    "whole-head peak": lambda v: intensity.scale_source(v, intensity.tissue_peak(v, core_depth_mm=0.0)),
    "head-core peak": lambda v: intensity.normalize_source(v)[0],
}


def measure(seed: int, contrasts: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """``{contrast: {method: {variant: normalized WM median}}}``."""
    subject = make_subject(seed)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for contrast in contrasts:
        variants, z_common = coverage_variants(subject, contrast)
        wm = subject.tissue("wm")[z_common:] > 0.95
        results[contrast] = {}
        for method, normalize in METHODS.items():
            results[contrast][method] = {
                name: float(np.median(normalize(volume)[z_common + z0:][wm]))
                for name, (volume, z0) in variants.items()}
    return results


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: one row per contrast and method, the normalized WM per coverage and the spread."""
    names = list(next(iter(next(iter(results.values())).values())))
    lines = ["| contrast | method | " + " | ".join(names) + " | max/min |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |"]
    for contrast, methods in results.items():
        for method, values in methods.items():
            spread = max(values.values()) / min(values.values())
            cells = " | ".join(f"{values[n]:.3f}" for n in names)
            lines.append(f"| {contrast} | {method} | {cells} | {spread:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="simulated subject (default 7)")
    parser.add_argument("--contrast", nargs="+", default=list(CONTRASTS), choices=CONTRASTS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON")
    args = parser.parse_args(argv)
    results = measure(args.seed, args.contrast)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "normalization.json"
    path.write_text(json.dumps({"benchmark": "bench/normalization.py", "seed": args.seed,
                                "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "normalized_wm_median": results}, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""N4 bias-field correction (``synthesis.bias.n4_correct``): time and effect on a simulated head.

A simulated T1 MPRAGE head (``make_subject(seed)``, 3 T), centre-cropped or
padded to 182x218x182 at 1 mm, times a known smooth multiplicative field of
about +-30 % (:func:`bias_field`), scaled to uint16 like a scanner's. For each
``--shrink`` factor: wall and CPU seconds of one ``n4_correct`` call, and the
coefficient of variation of pure white-matter intensities before and after
(and of the clean image, the floor).

Usage::

    python bench/bias.py                  # shrink 4 (the default) and 8; JSON in bench/results/bias.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from synthesis.bias import n4_correct  # noqa: E402
from synthesis.protocol import preset  # noqa: E402
from synthesis.simulate import make_subject, render  # noqa: E402

SHAPE = (182, 218, 182)


def bias_field(shape: Sequence[int], strength: float = 0.3) -> np.ndarray:
    """A smooth multiplicative field ``exp(strength * (0.8x + 0.6y - 0.5z + 0.4xy))`` over
    ``[-1, 1]`` per axis, float32 ``shape`` (about +-30 % for the default strength)."""
    z, y, x = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    return np.exp(strength * (0.8 * x + 0.6 * y - 0.5 * z + 0.4 * x * y)).astype(np.float32)


def white_matter_cv(volume: np.ndarray, wm: np.ndarray) -> float:
    """Coefficient of variation of ``volume`` over the bool mask ``wm``."""
    values = np.asarray(volume, dtype=np.float64)[wm]
    return float(values.std() / values.mean())


def _fit(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``volume`` centre-cropped or zero-padded to ``shape``."""
    out = np.zeros(tuple(shape), dtype=volume.dtype)
    src = tuple(slice(max(0, (a - b) // 2), max(0, (a - b) // 2) + min(a, b)) for a, b in zip(volume.shape, shape))
    dst = tuple(slice(max(0, (b - a) // 2), max(0, (b - a) // 2) + min(a, b)) for a, b in zip(volume.shape, shape))
    out[dst] = volume[src]
    return out


def measure(seed: int, shrinks: Sequence[int]) -> dict:
    subject = make_subject(seed)
    clean = _fit(render(subject, preset("T1", 3.0)), SHAPE)
    wm = _fit(np.asarray(subject.tissue("wm")) > 0.95, SHAPE)
    biased = (clean * bias_field(SHAPE) * (4000.0 / clean.max())).astype(np.uint16)
    result = {"benchmark": "bench/bias.py", "seed": seed, "shape": list(SHAPE),
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "wm_cv_clean": white_matter_cv(clean, wm), "wm_cv_biased": white_matter_cv(biased, wm),
              "runs": []}
    for shrink in shrinks:
        load = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        corrected = n4_correct(biased, (1.0, 1.0, 1.0), shrink=shrink)
        result["runs"].append({"shrink": shrink, "wall_s": time.perf_counter() - wall,
                               "cpu_s": time.process_time() - cpu, "load_average_1m_before": load,
                               "wm_cv_corrected": white_matter_cv(corrected, wm)})
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="simulated subject (default 7)")
    parser.add_argument("--shrink", type=int, nargs="+", default=[4, 8], help="shrink factors (default 4 8)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON")
    args = parser.parse_args(argv)
    result = measure(args.seed, args.shrink)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bias.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"WM coefficient of variation: clean {result['wm_cv_clean']:.4f}, biased {result['wm_cv_biased']:.4f}")
    for run in result["runs"]:
        print(f"shrink {run['shrink']}: corrected {run['wm_cv_corrected']:.4f}, {run['wall_s']:.1f} s wall, "
              f"{run['cpu_s']:.1f} s CPU (load average {run['load_average_1m_before']:.1f})")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Lesion/white-matter contrast of random T1 sources: the lesion's source jitter drawn apart
from white matter's (before 2026-12-07) and tied to it (``acquisition.source_params``).

Pure-tissue signals (``physics.tissue_signal``) of 2,000 random training T1 protocols, each with
a new subject's parameters (``physics.jittered_params``); prints the 5th/50th/95th percentile of
lesion/WM and the share within 10 % of white matter, per sequence kind. Usage::

    python bench/source_jitter.py
"""
from __future__ import annotations

import numpy as np

from synthesis.physics import TISSUES, jittered_params, tissue_signal
from synthesis.protocol import Contrast
from synthesis.simulate import random_protocol
from synthesis.simulate.acquisition import source_params

WM, LESION = TISSUES.index("wm"), TISSUES.index("lesion")


def independent(params: np.ndarray, rng: np.random.Generator, spread: float = 0.25) -> np.ndarray:
    """The earlier draw: every tissue, lesion included, with a factor of its own."""
    common = rng.uniform(1 - 0.6 * spread, 1 + 0.6 * spread, size=(1, params.shape[1]))
    each = rng.uniform(1 - 0.45 * spread, 1 + 0.45 * spread, size=params.shape)
    return (params * common * each).astype(np.float32)


def main(n: int = 2000) -> None:
    for name, draw in (("independent", independent), ("tied", source_params)):
        rng = np.random.default_rng(11)
        ratios, kinds = [], []
        for _ in range(n):
            params = jittered_params(rng)
            field = float(rng.choice([1.5, 3.0]))
            protocol = random_protocol(Contrast.T1w, rng, field_t=field, split="train", preset_share=0.3)
            signal = tissue_signal(draw(params[field], rng), protocol)
            ratios.append(signal[LESION] / signal[WM])
            kinds.append(protocol.sequence.name)
        r, k = np.array(ratios), np.array(kinds)
        print(f"{name}: lesion/WM 5-50-95 % {np.percentile(r, [5, 50, 95]).round(2)}, "
              f"within 10 % of WM {np.mean(r > 0.9):.3f}")
        for kind in np.unique(k):
            sel = k == kind
            print(f"  {kind} ({sel.sum()}): {np.percentile(r[sel], [5, 50, 95]).round(2)}, "
                  f"within 10 % {np.mean(r[sel] > 0.9):.3f}")


if __name__ == "__main__":
    main()

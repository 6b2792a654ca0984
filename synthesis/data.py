"""Paired training/evaluation samples drawn from simulated subjects.

A sample is a (source, target) pair on the 1 mm working grid: the source is
rendered with a random source protocol and degraded by acquisition effects
(then brought back to the working grid, as the :class:`~synthesis.Synthesizer`
does at inference), the target is rendered clean.

Intensity units:

* source: the way inference normalizes, the whole volume's tissue peak
  (:func:`synthesis.intensity.tissue_peak`) mapped to :data:`synthesis.intensity.PEAK_LEVEL`;
* target: **brain-relative units**, the signal divided by the brain's 99.5
  percentile. Zero stays "no signal" (air, bone), the bright end of the brain
  is 1, and the scale does not depend on what lies outside the brain (scalp
  fat), which is how evaluation (and a reader) compares images: inside the
  brain. ``Pair.target_brain_range`` is the width of the brain's 0.5-99.5
  percentile band in these units, so an error ``e`` counts ``e / range`` in
  the units of :mod:`synthesis.metrics`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from synthesis.grid import percentile_normalize, resample
from synthesis.intensity import scale_source, tissue_peak
from synthesis.protocol import Contrast, MRProtocol
from synthesis.simulate import Effects, Subject, degrade, random_effects, random_protocol, render
from synthesis.simulate.protocols import PRESET_SHARE

__all__ = ["Pair", "PairSampler", "VolumeStats", "volume_scale", "volume_stats", "fit_to_shape"]

_STRIDE = 3  # sub-sampling of the whole volume when estimating percentiles


@dataclass
class Pair:
    """A source/target pair of patches, (P, P, P) each, normalized intensities."""

    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    source_protocol: MRProtocol
    target_protocol: MRProtocol
    target_brain_range: float = 1.0  # width of the target's brain 0.5-99.5 percentiles, target units


@dataclass(frozen=True)
class VolumeStats:
    """Intensity statistics of a clean render (every third voxel), in its own units.

    lo, hi: the whole-volume 0.5/99.5 percentiles; brain_lo, brain_hi: the same
    percentiles inside the brain mask; peak: the tissue peak (how a source is normalized).
    """

    lo: float
    hi: float
    brain_lo: float
    brain_hi: float
    peak: float = 1.0

    @property
    def brain_range(self) -> float:
        """Width of the brain's percentile band in brain-relative units (``/ brain_hi``)."""
        return float(max((self.brain_hi - self.brain_lo) / max(self.brain_hi, 1e-12), 1e-3))


def volume_scale(subject: Subject, protocol: MRProtocol) -> tuple[float, float]:
    """(p_lo, p_hi): the whole-volume 0.5/99.5 percentiles of a clean render."""
    stats = volume_stats(subject, protocol)
    return stats.lo, stats.hi


def volume_stats(subject: Subject, protocol: MRProtocol) -> VolumeStats:
    """:class:`VolumeStats` of the clean render of ``subject`` under ``protocol``."""
    strided = tuple(slice(None, None, _STRIDE) for _ in range(3))
    image = render(subject, protocol, region=strided)
    _, (lo, hi) = percentile_normalize(image)
    b_lo, b_hi = np.percentile(image[subject.brain_mask[strided].astype(bool)], [0.5, 99.5])
    return VolumeStats(float(lo), float(hi), float(b_lo), float(b_hi), tissue_peak(image, (_STRIDE,) * 3))


def fit_to_shape(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Crop or edge-pad ``volume`` at the far end of each axis to ``shape``.

    Grids here share their first voxel edge (see :func:`synthesis.grid.resample`),
    so trimming the far end keeps them aligned.
    """
    out = volume
    for axis, n in enumerate(shape):
        have = out.shape[axis]
        if have > n:
            out = np.take(out, range(n), axis=axis)
        elif have < n:
            pad = [(0, 0)] * out.ndim
            pad[axis] = (0, n - have)
            out = np.pad(out, pad, mode="edge")
    return out


def acquire_source(clean: np.ndarray, effects: Effects, rng: np.random.Generator, axis: int) -> np.ndarray:
    """Degrade a clean working-grid image and bring it back to the working grid."""
    degraded, spacing = degrade(clean, (1.0, 1.0, 1.0), effects, rng, axis=axis)
    if tuple(spacing) != (1.0, 1.0, 1.0):
        degraded = resample(degraded, tuple(spacing), (1.0, 1.0, 1.0))
    return fit_to_shape(degraded, clean.shape)


class PairSampler:
    """Draws random (source, target) patch pairs from a list of subjects.

    source_contrasts / target_contrasts: contrast families to draw from;
    split: the protocol split ("train" avoids the zero-shot band, "zeroshot" draws from it);
    effects: "random" (``random_effects``), or a fixed :class:`Effects`;
    target_weights: relative sampling weight of each target contrast (uniform when None);
    source_preset_share / target_preset_share: how often a protocol is a clinical preset
    (jittered) rather than drawn from the realistic ranges. The node asks for preset
    targets; its sources come from any scanner.
    """

    def __init__(
        self,
        subjects: Sequence[Subject],
        *,
        patch: int,
        target_contrasts: Sequence[str] = ("T2w", "PDw", "FLAIR"),
        source_contrasts: Sequence[str] = ("T1w",),
        split: str = "train",
        effects: str | Effects = "random",
        target_weights: Sequence[float] | None = None,
        source_preset_share: float = PRESET_SHARE,
        target_preset_share: float = PRESET_SHARE,
    ) -> None:
        if not subjects:
            raise ValueError("PairSampler needs at least one subject.")
        if patch < 8:
            raise ValueError(f"patch must be at least 8 voxels. Found {patch}.")
        self.subjects = list(subjects)
        self.patch = patch
        self.targets = [Contrast(c) for c in target_contrasts]
        self.sources = [Contrast(c) for c in source_contrasts]
        self.split = split
        self.target_p = _weights(target_weights, len(self.targets))
        self.effects = effects
        self.preset_share = {"source": float(source_preset_share), "target": float(target_preset_share)}
        self._scales: dict[tuple[int, MRProtocol], VolumeStats] = {}
        self._brain_boxes = [self._box(s.brain_mask) for s in self.subjects]

    @staticmethod
    def _box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.argwhere(mask)
        return idx.min(0), idx.max(0)

    def _stats(self, i: int, protocol: MRProtocol) -> VolumeStats:
        key = (i, protocol)
        if key not in self._scales:
            if len(self._scales) > 4096:
                self._scales.clear()
            self._scales[key] = volume_stats(self.subjects[i], protocol)
        return self._scales[key]

    def _region(self, i: int, rng: np.random.Generator) -> tuple[slice, slice, slice]:
        """A patch whose centre lies inside the brain's bounding box."""
        shape = np.array(self.subjects[i].brain_mask.shape)
        lo, hi = self._brain_boxes[i]
        centre = rng.integers(lo, hi + 1)
        start = np.clip(centre - self.patch // 2, 0, np.maximum(shape - self.patch, 0))
        return tuple(slice(int(s), int(s) + self.patch) for s in start)  # type: ignore[return-value]

    def sample(self, rng: np.random.Generator, *, target: str | None = None) -> Pair:
        i = int(rng.integers(len(self.subjects)))
        subject = self.subjects[i]
        field = float(rng.choice([1.5, 3.0]))
        src_c = self.sources[int(rng.integers(len(self.sources)))]
        if target:
            tgt_c = Contrast(target)
        elif self.target_p is None:
            tgt_c = self.targets[int(rng.integers(len(self.targets)))]
        else:
            tgt_c = self.targets[int(rng.choice(len(self.targets), p=self.target_p))]
        src_p = random_protocol(src_c, rng, field_t=field, split=self.split,
                                preset_share=self.preset_share["source"])
        tgt_p = random_protocol(tgt_c, rng, field_t=field, split=self.split,
                                preset_share=self.preset_share["target"])
        effects = random_effects(rng) if self.effects == "random" else self.effects
        region = self._region(i, rng)
        src_stats, tgt_stats = self._stats(i, src_p), self._stats(i, tgt_p)
        src_clean = scale_source(render(subject, src_p, region=region), src_stats.peak)
        tgt = render(subject, tgt_p, region=region) * np.float32(1.0 / max(tgt_stats.brain_hi, 1e-12))
        src = acquire_source(src_clean, effects, rng, axis=int(rng.integers(3)))
        shape = (self.patch,) * 3
        src_p = src_p.with_(slice_thickness_mm=max(effects.slice_thickness_mm, 1.0))
        return Pair(
            source=fit_to_shape(src, shape),
            target=fit_to_shape(tgt, shape),
            mask=fit_to_shape(subject.brain_mask[region], shape),
            source_protocol=src_p,
            target_protocol=tgt_p,
            target_brain_range=tgt_stats.brain_range,
        )


def _weights(weights: Sequence[float] | None, n: int) -> np.ndarray | None:
    """Sampling probabilities from relative weights (None: uniform)."""
    if weights is None:
        return None
    w = np.asarray([float(x) for x in weights], dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"target_weights needs {n} non-negative numbers, not all zero "
                         f"(one per target contrast). Found {list(weights)}.")
    return w / w.sum()

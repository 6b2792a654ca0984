"""Acquisition effects applied to a clean simulated image (the source side only).

In acquisition order: a smooth multiplicative **bias field**, **thick slices**
(box slice profile, resampled along one axis), k-space effects in the plane
orthogonal to that axis (**Gibbs ringing** by hard k-space truncation, **motion
ghosting** by phase errors on random phase-encode lines), then **Rician
noise**. Effect strengths (:class:`Effects`):

* ``noise``: noise sigma relative to the image's 99th percentile (0.03 = 3%).
* ``bias``: peak log-amplitude of the bias field over the image extent
  (0.2 → gains between about 0.82 and 1.22).
* ``ghosting``: fraction of phase-encode lines acquired with the head
  displaced by 1–4 mm along the phase-encode axis (0.05 = 5% of lines).
* ``gibbs``: fraction of k-space cut off along each in-plane axis (0.3 keeps
  the central 70%; no apodization, so edges ring).
* ``slice_thickness_mm``: acquired slice thickness; > the input spacing means
  box averaging and resampling to that spacing (slices without gaps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import scipy.fft

from synthesis.protocol import MRProtocol
from synthesis.simulate.fields import smooth_field

__all__ = ["Effects", "SEVERITIES", "random_effects", "degrade", "with_acquisition", "kspace_effects",
           "thick_slices"]


@dataclass(frozen=True)
class Effects:
    """Strengths of the acquisition effects (see the module docstring); defaults are clean."""

    noise: float = 0.0
    bias: float = 0.0
    ghosting: float = 0.0
    gibbs: float = 0.0
    slice_thickness_mm: float = 1.0

    def __post_init__(self) -> None:
        for name, low, high in (("noise", 0.0, 1.0), ("bias", 0.0, 2.0), ("ghosting", 0.0, 0.5),
                                ("gibbs", 0.0, 0.9)):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"Effects.{name} must be in [{low}, {high}]. Found {value!r}.")
        thick = float(self.slice_thickness_mm)
        if not (math.isfinite(thick) and 0.0 < thick <= 20.0):
            raise ValueError(f"Effects.slice_thickness_mm must be in (0, 20] mm. Found {thick!r}.")

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


#: Fixed evaluation severities: clean; Rician noise 3% of the 99th percentile;
#: bias field ±20%; motion ghosting on 5% of phase-encode lines; Gibbs ringing
#: with 30% of k-space cut; 5 mm thick slices.
SEVERITIES: dict[str, Effects] = {
    "clean": Effects(),
    "noise": Effects(noise=0.03),
    "bias": Effects(bias=0.2),
    "ghosting": Effects(ghosting=0.05),
    "gibbs": Effects(gibbs=0.3),
    "thick_slices": Effects(slice_thickness_mm=5.0),
}


def random_effects(rng: np.random.Generator, protocol: MRProtocol | None = None) -> Effects:
    """A realistic random mix for training: usually mild noise and bias, sometimes
    ghosting, Gibbs ringing or thick slices (1.5–5.5 mm; a 2-D ``protocol``'s own
    slice thickness when given)."""
    noise = 0.0 if rng.random() < 0.15 else float(np.exp(rng.uniform(np.log(0.005), np.log(0.05))))
    bias = 0.0 if rng.random() < 0.3 else float(rng.uniform(0.02, 0.3))
    ghosting = 0.0 if rng.random() < 0.65 else float(rng.uniform(0.01, 0.08))
    gibbs = 0.0 if rng.random() < 0.7 else float(rng.uniform(0.05, 0.4))
    thick = 1.0 if rng.random() < 0.65 else float(rng.uniform(1.5, 5.5))
    if protocol is not None and protocol.dimension == "2D" and protocol.slice_thickness_mm:
        thick = float(protocol.slice_thickness_mm)
    return Effects(noise=round(noise, 4), bias=round(bias, 4), ghosting=round(ghosting, 4),
                   gibbs=round(gibbs, 4), slice_thickness_mm=round(thick, 2))


def with_acquisition(protocol: MRProtocol, effects: Effects,
                     spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), *,
                     axis: int = 0) -> MRProtocol:
    """``protocol`` with its voxel size and slice thickness set to what ``degrade`` produced."""
    in_plane = [float(s) for i, s in enumerate(spacing) if i != axis]
    thick = max(float(effects.slice_thickness_mm), float(spacing[axis]))
    return protocol.with_(slice_thickness_mm=thick, voxel_mm=(in_plane[0], in_plane[1], thick))


def thick_slices(img: np.ndarray, spacing_mm: float, thickness_mm: float, axis: int) -> np.ndarray:
    """Box-profile slices of ``thickness_mm`` without gaps along ``axis``, float32.

    ``n_out = max(1, round(n * spacing / thickness))``; slice ``j`` averages the
    input over ``[j, j + 1) * thickness`` mm from the input's first voxel edge
    (exact for a piecewise-constant input; edge slices average what exists).
    """
    moved = np.moveaxis(np.asarray(img, dtype=np.float64), axis, 0)
    n = moved.shape[0]
    n_out = max(1, int(round(n * spacing_mm / thickness_mm)))
    cumulative = np.concatenate([np.zeros((1, *moved.shape[1:])), np.cumsum(moved, axis=0)])
    step = thickness_mm / spacing_mm
    starts = np.clip(np.arange(n_out) * step, 0.0, n)
    stops = np.clip((np.arange(n_out) + 1) * step, 0.0, n)

    def integral(pos: np.ndarray) -> np.ndarray:
        low = np.minimum(np.floor(pos).astype(int), n - 1)
        frac = (pos - low).reshape(-1, *([1] * (moved.ndim - 1)))
        return cumulative[low] * (1 - frac) + cumulative[low + 1] * frac

    width = np.maximum(stops - starts, 1e-9).reshape(-1, *([1] * (moved.ndim - 1)))
    out = (integral(stops) - integral(starts)) / width
    return np.moveaxis(out, 0, axis).astype(np.float32)


def kspace_effects(img: np.ndarray, effects: Effects, rng: np.random.Generator,
                    in_plane: tuple[int, int], spacing: tuple[float, ...]) -> np.ndarray:
    """Gibbs truncation and motion ghosting in the 2-D k-space of the ``in_plane`` axes."""
    kspace = scipy.fft.fftn(img.astype(np.complex64), axes=in_plane, workers=1)
    shape = [1, 1, 1]
    if effects.gibbs > 0:
        for ax in in_plane:
            freq = np.abs(np.fft.fftfreq(img.shape[ax]))  # cycles per voxel, 0 .. 0.5
            keep = (freq <= 0.5 * (1.0 - effects.gibbs)).astype(np.float32)
            view = list(shape)
            view[ax] = img.shape[ax]
            kspace *= keep.reshape(view)
    if effects.ghosting > 0:
        pe_axis = int(in_plane[int(rng.integers(2))])
        n = img.shape[pe_axis]
        corrupted = rng.random(n) < effects.ghosting
        shift_mm = rng.uniform(1.0, 4.0, size=n) * rng.choice([-1.0, 1.0], size=n)
        shift_vox = shift_mm / spacing[pe_axis]
        phase = np.where(corrupted, np.exp(-2j * np.pi * np.fft.fftfreq(n) * shift_vox), 1.0)
        view = list(shape)
        view[pe_axis] = n
        kspace *= phase.astype(np.complex64).reshape(view)
    return np.abs(scipy.fft.ifftn(kspace, axes=in_plane, workers=1)).astype(np.float32)


def degrade(img: np.ndarray, spacing: tuple[float, float, float], effects: Effects,
            rng: np.random.Generator, *, axis: int = 0
            ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The acquired source image: ``(volume float32, spacing (dz, dy, dx) mm)``.

    ``img`` is a clean magnitude image ``(D, H, W)`` on ``spacing`` mm; thick
    slices are along ``axis`` (the returned grid is coarser there); all
    randomness comes from ``rng``.
    """
    vol = np.asarray(img, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"degrade needs a 3-D image (D, H, W). Found shape {vol.shape}.")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2. Found {axis!r}.")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers in mm. Found {spacing!r}.")
    out_spacing = [float(s) for s in spacing]
    if effects.bias > 0:
        gain = np.exp(np.float32(effects.bias) * smooth_field(vol.shape, rng, n_ctrl=3)[0])
        vol = vol * gain
    if effects.slice_thickness_mm > spacing[axis] * (1 + 1e-6):
        vol = thick_slices(vol, float(spacing[axis]), float(effects.slice_thickness_mm), axis)
        out_spacing[axis] = float(effects.slice_thickness_mm)
    if effects.gibbs > 0 or effects.ghosting > 0:
        in_plane = tuple(a for a in range(3) if a != axis)
        vol = kspace_effects(vol, effects, rng, in_plane,  # type: ignore[arg-type]
                              tuple(out_spacing))
    if effects.noise > 0:
        sigma = np.float32(effects.noise * max(float(np.percentile(vol, 99)), 1e-12))
        real = vol + sigma * rng.standard_normal(vol.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(vol.shape, dtype=np.float32)
        vol = np.sqrt(real * real + imag * imag)
    spacing_out = (out_spacing[0], out_spacing[1], out_spacing[2])
    return np.ascontiguousarray(vol, dtype=np.float32), spacing_out

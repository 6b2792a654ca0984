"""Random acquisition of a whole simulated head (the source side), before any cropping.

:func:`random_acquisition` draws how a source was acquired; :func:`acquire`
applies it to a clean whole-head image, in acquisition order:

1. a smooth multiplicative bias field over the head (a 4³ Gaussian grid,
   exponentiated);
2. the acquired grid: in-plane voxels of 0.8-1.4 mm (anti-aliased), and along
   the slice axis either thin partitions (3-D) or 2-D slices of 3-6 mm with a box
   slice profile;
3. k-space effects on that grid: Gibbs ringing and motion ghosting;
4. Rician noise at an SNR of 10-40 (white-matter-like signal over sigma);
5. a random gamma on the intensities (the source's look varies).

Sub-millimetre voxels are not simulated (the tissue maps are 1 mm): the network
works on a ~1 mm grid, so a 0.5 mm scan reaches it anti-aliased to 1 mm anyway.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from synthesis.grid import resample_antialiased
from synthesis.physics import TISSUES
from synthesis.protocol import MRProtocol
from synthesis.simulate.artifacts import Effects, kspace_effects, thick_slices
from synthesis.simulate.fields import smooth_field

__all__ = ["Acquisition", "random_acquisition", "acquire", "source_params"]

_WM, _LESION = TISSUES.index("wm"), TISSUES.index("lesion")


@dataclass(frozen=True)
class Acquisition:
    """How a source was acquired (see the module docstring).

    bias: peak log-gain of the bias field; slice_axis: 0, 1 or 2; slice_mm: slice
    thickness (= spacing, no gap) along it; in_plane_mm: the other two spacings;
    snr: white-matter-like signal (the 60th percentile of the head) over the noise
    sigma, 0 for no noise; ghosting, gibbs: as :class:`~synthesis.simulate.Effects`;
    gamma: exponent applied to the intensities.
    """

    bias: float = 0.0
    slice_axis: int = 0
    slice_mm: float = 1.0
    in_plane_mm: tuple[float, float] = (1.0, 1.0)
    snr: float = 0.0
    ghosting: float = 0.0
    gibbs: float = 0.0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"Acquisition.slice_axis must be 0, 1 or 2. Found {self.slice_axis!r}.")
        for name, low, high in (("bias", 0.0, 1.0), ("slice_mm", 0.5, 10.0), ("snr", 0.0, 1000.0),
                                ("ghosting", 0.0, 0.5), ("gibbs", 0.0, 0.9), ("gamma", 0.3, 3.0)):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"Acquisition.{name} must be in [{low}, {high}]. Found {value!r}.")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """The acquired grid's spacing ``(dz, dy, dx)`` mm."""
        sp = list(self.in_plane_mm)
        sp.insert(self.slice_axis, float(self.slice_mm))
        return tuple(float(s) for s in sp)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def random_acquisition(rng: np.random.Generator, protocol: MRProtocol | None = None) -> Acquisition:
    """The training distribution: 2-D slices of 3-6 mm for a 2-D ``protocol`` (and for 30% of
    the others), else 0.8-1.4 mm partitions; in-plane 0.8-1.4 mm; SNR 10-40 (8% noiseless);
    bias in 70%, ghosting in 25%, Gibbs in 25%; gamma exp(U(-0.2, 0.2))."""
    two_d = (protocol is not None and protocol.dimension == "2D") or rng.random() < 0.3
    slice_mm = float(rng.uniform(3.0, 6.0)) if two_d else float(rng.uniform(0.8, 1.4))
    return Acquisition(
        bias=float(rng.uniform(0.05, 0.4)) if rng.random() < 0.7 else 0.0,
        slice_axis=int(rng.integers(3)),
        slice_mm=round(slice_mm, 2),
        in_plane_mm=tuple(round(float(v), 2) for v in rng.uniform(0.8, 1.4, size=2)),  # type: ignore[arg-type]
        snr=0.0 if rng.random() < 0.08 else float(rng.uniform(10.0, 40.0)),
        ghosting=float(rng.uniform(0.01, 0.08)) if rng.random() < 0.25 else 0.0,
        gibbs=float(rng.uniform(0.05, 0.35)) if rng.random() < 0.25 else 0.0,
        gamma=float(math.exp(rng.uniform(-0.2, 0.2))),
    )


def source_params(params: np.ndarray, rng: np.random.Generator, spread: float = 0.25) -> np.ndarray:
    """Tissue parameters ``(T, 4)`` for rendering a source: the subject's, each scaled by a
    common factor within ±0.6·spread and a per-tissue one within ±0.45·spread (at most about
    ±``spread``), so the source's contrast varies more than the target's.

    A lesion is white matter changed by disease, so it takes white matter's per-tissue factor
    times one of its own within ±0.1·spread: its contrast to white matter stays the subject's.
    Drawn apart (as before 2026-12-07), the two factors put the lesion/WM ratio of 13% of random
    T1 sources above 0.9 (``python bench/source_jitter.py``): the label said lesion where the
    source showed white matter."""
    common = rng.uniform(1 - 0.6 * spread, 1 + 0.6 * spread, size=(1, params.shape[1]))
    each = rng.uniform(1 - 0.45 * spread, 1 + 0.45 * spread, size=params.shape)
    own = rng.uniform(1 - 0.1 * spread, 1 + 0.1 * spread, size=params.shape[1])
    if params.shape[0] == len(TISSUES):
        each[_LESION] = each[_WM] * own
    return (params * common * each).astype(np.float32)


def acquire(image: np.ndarray, acq: Acquisition, rng: np.random.Generator
            ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The acquired source ``(volume float32, spacing (dz, dy, dx) mm)`` of a clean 1 mm
    whole-head ``image``; all randomness from ``rng``."""
    vol = np.asarray(image, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"acquire needs a 3-D image (D, H, W). Found shape {vol.shape}.")
    if acq.bias > 0:                                                           # 1
        vol = vol * np.exp(np.float32(acq.bias) * smooth_field(vol.shape, rng, n_ctrl=4)[0])
    spacing = acq.spacing                                                      # 2
    in_plane = [1.0 if a == acq.slice_axis else s for a, s in enumerate(spacing)]
    vol = resample_antialiased(vol, (1.0, 1.0, 1.0), in_plane)
    if acq.slice_mm > 1.5:
        vol = thick_slices(vol, 1.0, acq.slice_mm, acq.slice_axis)
    else:
        vol = resample_antialiased(vol, in_plane, spacing)
    spacing = tuple(float(s) for s in spacing)
    if acq.gibbs > 0 or acq.ghosting > 0:                                      # 3
        effects = Effects(ghosting=acq.ghosting, gibbs=acq.gibbs)
        axes = tuple(a for a in range(3) if a != acq.slice_axis)
        vol = kspace_effects(vol, effects, rng, axes, spacing)  # type: ignore[arg-type]
    top = float(np.percentile(vol[::2, ::2, ::2], 99.0))
    if acq.snr > 0 and top > 0:                                                # 4
        head = vol[::2, ::2, ::2]
        signal = float(np.percentile(head[head > 0.1 * top], 60.0))
        sigma = np.float32(signal / acq.snr)
        real = vol + sigma * rng.standard_normal(vol.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(vol.shape, dtype=np.float32)
        vol = np.sqrt(real * real + imag * imag)
    if acq.gamma != 1.0 and top > 0:                                           # 5
        vol = np.power(np.maximum(vol, 0.0) / np.float32(top), np.float32(acq.gamma)) * np.float32(top)
    return np.ascontiguousarray(vol, dtype=np.float32), spacing  # type: ignore[return-value]

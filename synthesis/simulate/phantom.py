"""Seeded head phantoms built from nilearn's bundled MNI152 2009 maps.

A :class:`Subject` is a set of tissue-fraction maps on a 1 mm grid indexed
``(z, y, x)``: z inferior→superior, y anterior→posterior, x right→left (LPS,
as DICOM patient coordinates). Brain tissue comes from the MNI152 T1, GM and WM
templates (CSF = brain − GM − WM), deformed by a small random affine and a
smooth random displacement; around the brain are shells of random thickness
(CSF rim, inner skull table, marrow, outer table, muscle, subcutaneous fat,
skin) and inside the white matter random lesions. Nothing is downloaded: the
templates ship inside the nilearn package.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from synthesis.simulate.fields import smooth_field
from synthesis.physics import FIELDS_T, TISSUES, jittered_params

__all__ = ["Subject", "make_subject", "load_or_make_subject", "PHANTOM_VERSION"]

logger = logging.getLogger(__name__)

#: Bumped whenever a change would alter the subject made from a seed (cache key).
PHANTOM_VERSION = 1
_MARGIN_MM = 26  # head room around the template brain for the extra-cerebral shells
_TEMPLATE_SHAPE_ZYX = (189, 233, 197)
# (tissue, min thickness mm, max thickness mm), from the brain surface outwards
_SHELLS = (("csf", 1.5, 3.5), ("bone", 1.0, 2.0), ("fat", 1.5, 4.0), ("bone", 1.0, 2.0),
           ("muscle", 0.5, 3.0), ("fat", 1.5, 4.0), ("skin", 1.0, 2.5))
_IDX = {name: i for i, name in enumerate(TISSUES)}


@dataclass
class Subject:
    """A simulated head.

    ``fractions``: ``(T, D, H, W)`` float16 tissue fractions in ``TISSUES`` order,
    summing to at most 1 per voxel (the rest is air); ``brain_mask``: ``(D, H, W)``
    bool; ``params``: ``{field_t: (T, 4)}`` float32 of ``(T1 ms, T2 ms, T2* ms, PD)``;
    ``origin_mm``: LPS position ``(x, y, z)`` mm of voxel ``(0, 0, 0)``; spacing 1 mm.
    """

    fractions: np.ndarray
    brain_mask: np.ndarray
    params: dict[float, np.ndarray]
    seed: int
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spacing: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)`` of the voxel grid."""
        return tuple(self.fractions.shape[1:])  # type: ignore[return-value]

    def tissue(self, name: str) -> np.ndarray:
        """The fraction map ``(D, H, W)`` of one tissue by name (see ``TISSUES``)."""
        if name not in _IDX:
            raise ValueError(f"Unknown tissue {name!r}. Known tissues: {', '.join(TISSUES)}.")
        return self.fractions[_IDX[name]]


@functools.lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[slice, slice, slice], tuple]:
    """MNI152 GM, WM, CSF maps in LPS ``(z, y, x)``, the crop box and its LPS origin (mm)."""
    from nilearn import datasets

    def load(img: object) -> np.ndarray:
        data = np.asarray(img.dataobj, dtype=np.float32)  # type: ignore[attr-defined]
        # RAS (i, j, k) -> LPS (z, y, x)
        return np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])

    t1 = load(datasets.load_mni152_template(resolution=1))
    gm = load(datasets.load_mni152_gm_template(resolution=1))
    wm = load(datasets.load_mni152_wm_template(resolution=1))
    if t1.shape != _TEMPLATE_SHAPE_ZYX:
        raise RuntimeError(f"nilearn's MNI152 template must be {_TEMPLATE_SHAPE_ZYX} (z, y, x) at "
                           f"1 mm. Found {t1.shape}.")
    t1 /= max(float(np.percentile(t1, 99.9)), 1e-6)
    brain = ndimage.binary_fill_holes(t1 > 0.02)
    gm *= brain
    wm *= brain
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    nz = [np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    box = tuple(slice(max(int(n[0]) - _MARGIN_MM, 0), min(int(n[-1]) + 1 + _MARGIN_MM, size))
                for n, size in zip(nz, brain.shape))
    # RAS (i, j, k) = (196 - x, 232 - y, z) with affine offset (-98, -134, -72) -> LPS origin
    origin = (float(box[2].start - 98), float(box[1].start - 98), float(box[0].start - 72))
    return gm, wm, csf, box, origin  # type: ignore[return-value]


def _sampling_coords(shape: tuple[int, int, int], offset: tuple[int, int, int],
                     rng: np.random.Generator) -> np.ndarray:
    """Template coordinates ``(3, D, H, W)`` for each output voxel: affine + smooth warp."""
    angles = np.deg2rad(rng.uniform(-5.0, 5.0, size=3))
    scale = rng.uniform(0.95, 1.04) * rng.uniform(0.98, 1.02, size=3)
    shift = rng.uniform(-3.0, 3.0, size=3)
    rot = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [i for i in range(3) if i != axis]
        r = np.eye(3)
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
        rot = rot @ r
    matrix = (rot * scale[None, :]).astype(np.float32)
    warp = smooth_field(shape, rng, n_fields=3, n_ctrl=6) * np.float32(rng.uniform(1.0, 3.5))
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    coords = warp
    for i in range(3):
        coords[i] += centre[i] + offset[i] + shift[i]
        for j in range(3):
            grid = np.arange(shape[j], dtype=np.float32) - centre[j]
            view = [1, 1, 1]
            view[j] = shape[j]
            coords[i] += matrix[i, j] * grid.reshape(view)
    return coords


def _shells(brain_frac: np.ndarray, brain_mask: np.ndarray, rng: np.random.Generator
            ) -> list[tuple[str, np.ndarray]]:
    """Extra-cerebral shell fractions (tissue name, ``(D, H, W)``) outside the brain."""
    outside = ndimage.distance_transform_edt(~brain_mask).astype(np.float32)
    modulation = 1.0 + 0.2 * smooth_field(brain_mask.shape, rng, n_ctrl=5)[0]
    rest = 1.0 - brain_frac
    boundary = np.zeros_like(outside)
    inner_ramp = np.ones_like(outside)
    layers = []
    for name, low, high in _SHELLS:
        boundary += np.float32(rng.uniform(low, high)) * modulation
        outer_ramp = np.clip(outside - boundary + 0.5, 0.0, 1.0)
        layers.append((name, (inner_ramp - outer_ramp) * rest))
        inner_ramp = outer_ramp
    return layers


def _lesions(wm: np.ndarray, rng: np.random.Generator, n_lesions: int) -> np.ndarray:
    """Lesion fraction ``(D, H, W)``: soft ellipsoids centred in deep white matter."""
    lesion = np.zeros_like(wm)
    candidates = np.argwhere(ndimage.binary_erosion(wm > 0.9, iterations=2))
    if len(candidates) == 0 or n_lesions == 0:
        return lesion
    for centre in candidates[rng.choice(len(candidates), size=n_lesions)]:
        radii = rng.uniform(2.0, 6.0, size=3)
        lo = np.maximum(centre - np.ceil(radii).astype(int) - 1, 0)
        hi = np.minimum(centre + np.ceil(radii).astype(int) + 2, wm.shape)
        grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        rho = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))
        blob = np.clip((1.0 - rho) * 3.0, 0.0, 1.0).astype(np.float32)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        lesion[box] = np.maximum(lesion[box], blob)
    return np.minimum(lesion, wm)


def make_subject(seed: int, *, n_lesions: int | None = None) -> Subject:
    """A seeded head phantom (a few seconds); the same seed gives the same subject.

    ``n_lesions`` fixes the number of white-matter lesions (default: random,
    0 with probability 0.2, else 1–10).
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer. Found {seed!r}.")
    started = time.perf_counter()
    rng = np.random.default_rng([int(seed), PHANTOM_VERSION])
    gm0, wm0, csf0, box, origin = _template()
    shape = tuple(s.stop - s.start for s in box)
    offset = tuple(s.start for s in box)
    coords = _sampling_coords(shape, offset, rng)  # type: ignore[arg-type]
    gm, wm, csf = (ndimage.map_coordinates(m, coords, order=1, cval=0.0, output=np.float32)
                   for m in (gm0, wm0, csf0))
    del coords
    if n_lesions is None:
        n_lesions = 0 if rng.random() < 0.2 else int(rng.integers(1, 11))
    lesion = _lesions(wm, rng, int(n_lesions))
    wm -= lesion
    brain_frac = np.clip(gm + wm + csf + lesion, 0.0, 1.0)
    brain_mask = brain_frac > 0.5
    fractions = np.zeros((len(TISSUES), *shape), dtype=np.float16)
    fractions[_IDX["gm"]] = gm
    fractions[_IDX["wm"]] = wm
    fractions[_IDX["lesion"]] = lesion
    extra = {"csf": csf}
    for name, layer in _shells(brain_frac, brain_mask, rng):
        extra[name] = extra[name] + layer if name in extra else layer
    for name, layer in extra.items():
        fractions[_IDX[name]] = layer
    params = jittered_params(rng)
    logger.debug("Made subject %d %s in %.1f s", seed, shape, time.perf_counter() - started)
    return Subject(fractions=fractions, brain_mask=brain_mask, params=params, seed=int(seed),
                   origin_mm=origin)


def _cache_path(cache_dir: Path, seed: int) -> Path:
    return Path(cache_dir) / f"subject-v{PHANTOM_VERSION}-{int(seed):07d}.npz"


def load_or_make_subject(seed: int, cache_dir: Path | None = None) -> Subject:
    """:func:`make_subject`, cached as ``.npz`` in ``cache_dir`` (float16 fractions, ~130 MB)."""
    if cache_dir is None:
        return make_subject(seed)
    path = _cache_path(cache_dir, seed)
    if path.exists():
        with np.load(path) as data:
            return Subject(fractions=data["fractions"], brain_mask=data["brain_mask"],
                           params={f: data[f"params_{f}"] for f in FIELDS_T},
                           seed=int(data["seed"]), origin_mm=tuple(data["origin_mm"].tolist()))
    subject = make_subject(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, fractions=subject.fractions, brain_mask=subject.brain_mask,
                 seed=np.int64(subject.seed), origin_mm=np.asarray(subject.origin_mm),
                 **{f"params_{f}": subject.params[f] for f in FIELDS_T})
    os.replace(tmp, path)
    return subject

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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from synthesis.physics import FIELDS_T, TISSUES, jittered_params
from synthesis.simulate.anatomy import (
    AnatomyEdits,
    BrainMaps,
    Coverage,
    affine_coords,
    apply_edits,
    label_phantom,
    random_affine,
    rotation,
    svf_displacement,
    warp,
)
from synthesis.simulate.fields import smooth_field

__all__ = ["Subject", "make_subject", "load_or_make_subject", "with_coverage", "PHANTOM_VERSION"]

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
    matrix = (rotation(angles) * scale[None, :]).astype(np.float32)
    warp = smooth_field(shape, rng, n_fields=3, n_ctrl=6) * np.float32(rng.uniform(1.0, 3.5))
    return affine_coords(warp, matrix, tuple(o + t for o, t in zip(offset, shift)))


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


def make_subject(seed: int, *, n_lesions: int | None = None, edits: AnatomyEdits | None = None) -> Subject:
    """A seeded head phantom (seconds); the same seed (and ``edits``) gives the same subject.

    Without ``edits``: the template lightly warped, with ``n_lesions`` white-matter
    lesions (default: random, 0 with probability 0.2, else 1-10). With ``edits``
    (:class:`~synthesis.simulate.anatomy.AnatomyEdits`, e.g. from
    :func:`~synthesis.simulate.anatomy.random_edits`): a strong random affine and
    nonlinear warp, the shape edits, a label phantom or the template, and the field
    of view of ``edits.coverage``; ``n_lesions`` is then ignored.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer. Found {seed!r}.")
    if edits is not None:
        return _make_randomized(int(seed), edits)
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
    subject = _assemble(BrainMaps(csf, gm, wm, lesion), rng, int(seed), origin)
    logger.debug("Made subject %d %s in %.1f s", seed, shape, time.perf_counter() - started)
    return subject


def _assemble(maps: BrainMaps, rng: np.random.Generator, seed: int, origin: tuple[float, float, float]
              ) -> Subject:
    """A :class:`Subject` from brain maps: extra-cerebral shells and tissue parameters."""
    brain_frac = np.clip(maps.brain, 0.0, 1.0)
    brain_mask = brain_frac > 0.5
    fractions = np.zeros((len(TISSUES), *brain_mask.shape), dtype=np.float16)
    fractions[_IDX["gm"]] = maps.gm
    fractions[_IDX["wm"]] = maps.wm
    fractions[_IDX["lesion"]] = maps.lesion
    extra = {"csf": maps.csf}
    for name, layer in _shells(brain_frac, brain_mask, rng):
        extra[name] = extra[name] + layer if name in extra else layer
    for name, layer in extra.items():
        fractions[_IDX[name]] = layer
    params = jittered_params(rng)
    return Subject(fractions=fractions, brain_mask=brain_mask, params=params, seed=seed, origin_mm=origin)


def _warp_coords(shape: tuple[int, int, int], offset: tuple[int, ...], rng: np.random.Generator,
                 strength: float) -> np.ndarray:
    """Template coordinates ``(3, D, H, W)``: a strong random affine plus a diffeomorphic warp."""
    matrix = random_affine(rng, strength).astype(np.float32)
    shift = rng.uniform(-5.0, 5.0, size=3) * strength
    coords = svf_displacement(shape, rng, max_std_mm=3.0 * strength) if strength > 0 else \
        np.zeros((3, *shape), dtype=np.float32)
    return affine_coords(coords, matrix, tuple(o + t for o, t in zip(offset, shift)))


def _make_randomized(seed: int, edits: AnatomyEdits) -> Subject:
    """:func:`make_subject` with ``edits`` (see there)."""
    started = time.perf_counter()
    rng = np.random.default_rng([seed, PHANTOM_VERSION, 1])
    gm0, wm0, csf0, box, origin = _template()
    shape = tuple(s.stop - s.start for s in box)
    offset = tuple(s.start for s in box)
    coords = _warp_coords(shape, offset, rng, edits.deformation)  # type: ignore[arg-type]
    warped = warp([csf0, gm0, wm0], coords)
    del coords
    if edits.phantom:
        maps = label_phantom(sum(warped) > 0.5, rng)
    else:
        maps = BrainMaps(*warped, lesion=np.zeros_like(warped[0]))
    apply_edits(maps, edits, rng)
    subject = _assemble(maps, rng, seed, origin)
    subject = with_coverage(subject, edits.coverage, rng)
    logger.debug("Made randomized subject %d %s in %.1f s", seed, subject.shape,
                 time.perf_counter() - started)
    return subject


def with_coverage(subject: Subject, coverage: Coverage, rng: np.random.Generator) -> Subject:
    """The subject with the field of view of ``coverage`` (see :class:`Coverage`)."""
    frac = subject.fractions
    if coverage is Coverage.STRIPPED:
        keep = subject.brain_mask.astype(np.float16)
        out = np.zeros_like(frac)
        for name in ("csf", "gm", "wm", "lesion"):
            out[_IDX[name]] = frac[_IDX[name]] * keep
        return replace(subject, fractions=out)
    if coverage is Coverage.CROPPED:
        idx = np.argwhere(subject.brain_mask)
        lo, hi = idx.min(0), idx.max(0) + 1
        axis = int(rng.choice([0, 0, 1, 2]))
        depth = int(rng.uniform(5.0, 35.0))
        cut = [slice(None)] * 3
        if rng.random() < 0.5 or axis == 0:  # the vertex, or the far side
            cut[axis] = slice(0, int(hi[axis]) - depth)
        else:
            cut[axis] = slice(int(lo[axis]) + depth, None)
        region = tuple(cut)
        origin = list(subject.origin_mm)
        start = region[axis].start or 0
        origin[2 - axis] += float(start)  # origin is (x, y, z); axes are (z, y, x)
        return replace(subject, fractions=np.ascontiguousarray(frac[(slice(None),) + region]),
                       brain_mask=np.ascontiguousarray(subject.brain_mask[region]),
                       origin_mm=tuple(origin))
    if coverage is Coverage.NECK:
        return _add_neck(subject, rng)
    return subject


def _add_neck(subject: Subject, rng: np.random.Generator) -> Subject:
    """Pad the volume below the head by 30-50 mm and fill a neck there: muscle, a fat
    layer, skin and a vertebral column (bone), only where the head left air."""
    pad = int(rng.integers(30, 51))
    frac = np.concatenate([np.zeros((len(TISSUES), pad, *subject.shape[1:]), dtype=np.float16),
                           subject.fractions], axis=1)
    mask = np.concatenate([np.zeros((pad, *subject.shape[1:]), dtype=bool), subject.brain_mask], axis=0)
    idx = np.argwhere(subject.brain_mask)
    centre_y, centre_x = idx[:, 1].mean() + rng.uniform(5.0, 15.0), idx[:, 2].mean()
    lowest = int(idx[:, 0].min()) + pad
    ry, rx = rng.uniform(40.0, 52.0), rng.uniform(45.0, 58.0)
    fat, skin = rng.uniform(4.0, 10.0), rng.uniform(1.5, 3.0)
    yy, xx = np.ogrid[:frac.shape[2], :frac.shape[3]]
    rho = np.sqrt(((yy - centre_y) / ry) ** 2 + ((xx - centre_x) / rx) ** 2)  # 1 at the neck surface
    depth = (1.0 - rho) * min(ry, rx)                                        # mm inside, roughly
    spine = np.sqrt((yy - (centre_y + 0.35 * ry)) ** 2 + (xx - centre_x) ** 2) < rng.uniform(7.0, 10.0)
    layers = {"skin": (depth >= 0) & (depth < skin), "fat": (depth >= skin) & (depth < skin + fat),
              "muscle": (depth >= skin + fat) & ~spine, "bone": (depth >= skin + fat) & spine}
    for z in range(min(lowest, frac.shape[1])):
        free = 1.0 - frac[:, z].astype(np.float32).sum(0)
        for name, where in layers.items():
            frac[_IDX[name], z] += (where * np.clip(free, 0.0, 1.0)).astype(np.float16)
    origin = (subject.origin_mm[0], subject.origin_mm[1], subject.origin_mm[2] - pad)
    return replace(subject, fractions=frac, brain_mask=mask, origin_mm=origin)


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

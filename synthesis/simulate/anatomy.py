"""Randomized anatomy, SynthSeg / SynthMorph style, on brain tissue-fraction maps.

One template is one anatomy; a network trained on it lightly warped learns that
anatomy. These functions make brains that differ from it:

* :func:`random_affine` and :func:`svf_displacement`: a strong random affine
  (rotations about ±15°, scaling 0.85–1.15, small shears) and a nonlinear warp
  from a stationary velocity field drawn on a coarse 10³ grid (its standard
  deviation itself random), integrated by scaling and squaring;
* shape edits on the fraction maps: :func:`enlarge_ventricles`,
  :func:`thin_cortex` (cortical thinning and sulcal widening),
  :func:`add_lesions` (white-matter lesions of varied number, size and place),
  :func:`add_cavities` (fluid-filled) and :func:`add_masses` (solid, sometimes
  with a fluid core);
* :func:`label_phantom`: a random-shape CSF/GM/WM/lesion label map, the argmax of
  a few dozen smooth random fields, inside a brain outline.

Fraction maps are float32 ``(D, H, W)`` arrays on a 1 mm grid; the functions
work in place where they say so and keep ``csf + gm + wm + lesion`` unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from synthesis.simulate.fields import smooth_field

__all__ = ["Coverage", "AnatomyEdits", "random_edits", "random_affine", "rotation", "affine_coords", "svf_displacement",
           "BrainMaps", "enlarge_ventricles", "thin_cortex", "add_lesions", "add_cavities", "add_masses",
           "label_phantom", "ventricle_mask", "apply_edits", "distance_mm", "resize", "warp"]


def resize(volume: np.ndarray, shape: tuple[int, ...], *, mode: str = "trilinear") -> np.ndarray:
    """``volume`` ``(D, H, W)`` or ``(C, D, H, W)`` resized to ``shape`` (D, H, W) with torch
    (``trilinear``, corners of the grids aligned by their edges, or ``nearest``), float32."""
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    t = t[None, None] if t.ndim == 3 else t[None]
    kw = {"align_corners": False} if mode == "trilinear" else {}
    out = F.interpolate(t, size=tuple(int(n) for n in shape), mode=mode, **kw)[0]
    return out[0].numpy() if np.ndim(volume) == 3 else out.numpy()


def warp(volumes: list[np.ndarray], coords: np.ndarray) -> list[np.ndarray]:
    """Trilinear samples of each ``(D0, H0, W0)`` volume at voxel coordinates ``coords``
    ``(3, D, H, W)`` (z, y, x); 0 outside. Same result as ``map_coordinates(order=1)``."""
    stack = torch.from_numpy(np.stack(volumes).astype(np.float32))[None]      # (1, C, D0, H0, W0)
    sizes = torch.tensor(stack.shape[2:], dtype=torch.float32).view(3, 1, 1, 1)
    grid = torch.from_numpy(np.asarray(coords, dtype=np.float32)) * 2 / (sizes - 1) - 1
    grid = grid.flip(0).permute(1, 2, 3, 0)[None]                              # (1, D, H, W, 3) as x, y, z
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    return [o.numpy() for o in out]


class Coverage(str, Enum):
    """What the field of view holds around the brain."""

    HEAD = "head"          # the brain and its extra-cerebral shells
    NECK = "neck"          # the head plus a neck below it
    STRIPPED = "stripped"  # brain only (a skull-stripped image)
    CROPPED = "cropped"    # the head cut by a plane through it (a short field of view)


@dataclass(frozen=True)
class AnatomyEdits:
    """What :func:`synthesis.simulate.make_subject` changes of the template anatomy.

    deformation: strength of the random affine and nonlinear warp (0 none, 1 the
    training distribution's, up to 1.5); ventricles_mm: ventricle enlargement;
    atrophy_mm: cortical thinning / sulcal widening; lesions: number of white-matter
    lesions of radius ``lesion_radius_mm`` (low, high); cavities, masses: counts;
    phantom: a random-shape label phantom instead of the template brain; coverage:
    the field of view.
    """

    deformation: float = 1.0
    ventricles_mm: float = 0.0
    atrophy_mm: float = 0.0
    lesions: int = 0
    lesion_radius_mm: tuple[float, float] = (1.5, 6.0)
    cavities: int = 0
    masses: int = 0
    phantom: bool = False
    coverage: Coverage = Coverage.HEAD

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "coverage", Coverage(self.coverage))
        except ValueError:
            allowed = ", ".join(c.value for c in Coverage)
            raise ValueError(f"AnatomyEdits.coverage must be one of {allowed}. "
                             f"Found {self.coverage!r}.") from None
        for name, high in (("deformation", 1.5), ("ventricles_mm", 12.0), ("atrophy_mm", 4.0)):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and 0.0 <= value <= high):
                raise ValueError(f"AnatomyEdits.{name} must be in [0, {high}]. Found {value!r}.")
        for name, high in (("lesions", 80), ("cavities", 4), ("masses", 3)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= high:
                raise ValueError(f"AnatomyEdits.{name} must be an integer in [0, {high}]. Found {value!r}.")
        low, high = (float(v) for v in self.lesion_radius_mm)
        if not 0.5 <= low <= high <= 20.0:
            raise ValueError(f"AnatomyEdits.lesion_radius_mm must satisfy 0.5 <= low <= high <= 20. "
                             f"Found {self.lesion_radius_mm!r}.")

    def to_dict(self) -> dict[str, object]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["coverage"] = self.coverage.value
        out["lesion_radius_mm"] = list(self.lesion_radius_mm)
        return out


def random_edits(rng: np.random.Generator) -> AnatomyEdits:
    """The training distribution of anatomy edits (each edit present in part of the subjects)."""
    coverage = rng.choice([c.value for c in Coverage], p=[0.55, 0.15, 0.15, 0.15])
    return AnatomyEdits(
        deformation=float(rng.uniform(0.3, 1.3)),
        ventricles_mm=0.0 if rng.random() < 0.4 else float(rng.uniform(0.5, 8.0)),
        atrophy_mm=0.0 if rng.random() < 0.5 else float(rng.uniform(0.3, 2.5)),
        lesions=0 if rng.random() < 0.25 else int(rng.integers(1, 41)),
        lesion_radius_mm=(1.0, float(rng.uniform(3.0, 10.0))),
        cavities=int(rng.random() < 0.15),
        masses=int(rng.random() < 0.15),
        phantom=bool(rng.random() < 0.15),
        coverage=Coverage(coverage),
    )


# -- deformation -----------------------------------------------------------------
def rotation(angles: np.ndarray) -> np.ndarray:
    """``(3, 3)`` rotation: about axis 0, then 1, then 2 (voxel axes z, y, x) by ``angles`` (rad),
    composed as ``R0 @ R1 @ R2``."""
    out = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = math.cos(float(angle)), math.sin(float(angle))
        a, b = [i for i in range(3) if i != axis]
        r = np.eye(3)
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
        out = out @ r
    return out


def affine_coords(base: np.ndarray, matrix: np.ndarray, offset: tuple[float, ...]) -> np.ndarray:
    """Add to ``base`` ``(3, D, H, W)`` (in place, returned) the coordinates of an affine map
    about the grid's centre: ``matrix @ (x - centre) + centre + offset`` per voxel ``x``."""
    shape = base.shape[1:]
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    for i in range(3):
        base[i] += centre[i] + offset[i]
        for j in range(3):
            axis = np.arange(shape[j], dtype=np.float32) - centre[j]
            view = [1, 1, 1]
            view[j] = shape[j]
            base[i] += np.float32(matrix[i, j]) * axis.reshape(view)
    return base


def random_affine(rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A ``(3, 3)`` matrix (voxel axes z, y, x): rotations about ±15°, scaling 0.85–1.15
    (a common factor and per axis), shears ±0.05, all scaled by ``strength``."""
    angles = np.deg2rad(rng.uniform(-15.0, 15.0, size=3) * strength)
    common = 1.0 + rng.uniform(-0.10, 0.10) * strength
    scale = common * (1.0 + rng.uniform(-0.05, 0.05, size=3) * strength)
    matrix = rotation(angles) @ np.diag(scale)
    shear = np.eye(3) + np.triu(rng.uniform(-0.05, 0.05, size=(3, 3)) * strength, 1)
    return (matrix @ shear).astype(np.float64)


def svf_displacement(shape: tuple[int, int, int], rng: np.random.Generator, *, max_std_mm: float = 3.0,
                     control: int = 10, steps: int = 6, factor: int = 4) -> np.ndarray:
    """Displacement ``(3, D, H, W)`` float32 (voxels) of a diffeomorphic random warp.

    A velocity field with standard deviation ``U(0, max_std_mm)`` is drawn on a
    ``control``³ grid, upsampled to a grid ``factor`` times coarser than ``shape``,
    integrated there by scaling and squaring (``steps`` squarings), and the
    displacement upsampled linearly to ``shape``.
    """
    coarse = tuple(max(4, math.ceil(n / factor)) for n in shape)
    std = rng.uniform(0.0, max_std_mm)
    velocity = rng.standard_normal((3, control, control, control)) * std
    zoom = [c / control for c in coarse]
    field = np.stack([ndimage.zoom(v, zoom, order=3, mode="nearest") for v in velocity])
    field = field[:, :coarse[0], :coarse[1], :coarse[2]] / factor / 2 ** steps  # coarse voxels
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in coarse), indexing="ij"))
    for _ in range(steps):  # phi = phi o phi
        moved = grid + field
        field = field + np.stack([ndimage.map_coordinates(f, moved, order=1, mode="nearest") for f in field])
    return resize(field * factor, shape)


# -- shape edits -----------------------------------------------------------------
@dataclass
class BrainMaps:
    """Brain tissue fractions ``(D, H, W)`` float32: CSF, GM, WM and lesion."""

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    lesion: np.ndarray

    @property
    def brain(self) -> np.ndarray:
        return self.csf + self.gm + self.wm + self.lesion

    def replace_with(self, target: str, amount: np.ndarray, region: tuple[slice, ...] = ()) -> None:
        """Turn the fraction ``amount`` (0–1) of every tissue in ``region`` into ``target``."""
        region = region or tuple(slice(None) for _ in range(3))
        for name in ("csf", "gm", "wm", "lesion"):
            if name != target:
                part = getattr(self, name)[region]
                getattr(self, target)[region] += part * amount
                part *= 1.0 - amount


def distance_mm(mask: np.ndarray, factor: int = 2) -> np.ndarray:
    """Distance (mm, 1 mm voxels) of every voxel to the nearest voxel outside ``mask``,
    float32; computed ``factor`` times coarser and interpolated (about ±1 mm)."""
    coarse = np.asarray(mask[::factor, ::factor, ::factor], dtype=bool)
    dist = ndimage.distance_transform_edt(coarse).astype(np.float32) * factor
    return resize(dist, mask.shape)


def ventricle_mask(maps: BrainMaps, min_depth_mm: float = 12.0) -> np.ndarray:
    """The lateral and third ventricles: CSF-dominated voxels deep inside the brain, bool."""
    inside = distance_mm(maps.brain > 0.5)
    fluid = (maps.csf > 0.5) & (inside > min_depth_mm)
    labels, n = ndimage.label(fluid)
    if n == 0:
        return fluid
    sizes = ndimage.sum_labels(fluid, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= max(200.0, 0.05 * sizes.max())) + 1
    return np.isin(labels, keep)


def enlarge_ventricles(maps: BrainMaps, mm: float) -> None:
    """Grow the ventricles by ``mm`` (in place): tissue within ``mm`` of them becomes CSF,
    not closer than 3 mm to the brain's outer surface."""
    if mm <= 0:
        return
    vent = ventricle_mask(maps)
    if not vent.any():
        return
    distance = distance_mm(~vent)
    depth = distance_mm(maps.brain > 0.5)
    amount = np.clip(mm - distance + 0.5, 0.0, 1.0) * np.clip(depth - 3.0, 0.0, 1.0)
    maps.replace_with("csf", amount.astype(np.float32))


def thin_cortex(maps: BrainMaps, mm: float) -> None:
    """Cortical thinning and sulcal widening (in place): grey matter within ``mm`` of CSF or
    the outside becomes CSF."""
    if mm <= 0:
        return
    solid = (maps.gm + maps.wm + maps.lesion) > 0.5
    distance = distance_mm(solid, factor=1) if mm < 1.5 else distance_mm(solid)
    amount = np.clip(mm - distance + 0.5, 0.0, 1.0) * (maps.gm > maps.wm)
    maps.replace_with("csf", amount.astype(np.float32))


def _blob(shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray, rng: np.random.Generator,
          roughness: float = 0.3) -> tuple[tuple[slice, ...], np.ndarray]:
    """A soft irregular ellipsoid: its bounding box and fractions (0–1) in that box."""
    reach = np.ceil(radii * (1 + roughness)).astype(int) + 2
    lo = np.maximum(centre - reach, 0)
    hi = np.minimum(centre + reach + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    grids = np.ogrid[box]
    rho = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))
    size = tuple(int(b - a) for a, b in zip(lo, hi))
    if min(size) >= 2 and roughness > 0:
        rho = rho * (1.0 + roughness * smooth_field(size, rng, n_ctrl=4)[0])
    mean_radius = float(np.mean(radii))
    return box, np.clip((1.0 - rho) * mean_radius + 0.5, 0.0, 1.0).astype(np.float32)


def add_lesions(maps: BrainMaps, rng: np.random.Generator, count: int,
                radius_mm: tuple[float, float] = (1.5, 6.0)) -> None:
    """White-matter lesions (in place): ``count`` irregular blobs, periventricular,
    deep or juxtacortical, radius drawn log-uniformly in ``radius_mm``; they replace
    white matter (and a little grey matter at their edge)."""
    if count <= 0:
        return
    white = maps.wm > 0.6
    candidates = np.argwhere(white[::2, ::2, ::2]) * 2
    if len(candidates) == 0:
        return
    vent = ventricle_mask(maps)
    near_vent = distance_mm(~vent)[tuple(candidates.T)] < 10 if vent.any() else None
    near_gm = distance_mm(~(maps.gm > 0.5))[tuple(candidates.T)] <= 3
    for _ in range(count):
        place = rng.choice(["periventricular", "deep", "juxtacortical"], p=[0.5, 0.3, 0.2])
        pool = candidates
        if place == "periventricular" and near_vent is not None and near_vent.any():
            pool = candidates[near_vent]
        elif place == "juxtacortical" and near_gm.any():
            pool = candidates[near_gm]
        centre = pool[rng.integers(len(pool))]
        radius = math.exp(rng.uniform(math.log(radius_mm[0]), math.log(radius_mm[1])))
        radii = radius * rng.uniform(0.6, 1.4, size=3)
        box, blob = _blob(maps.wm.shape, centre, radii, rng)
        blob *= np.clip((maps.wm[box] + 0.3 * maps.gm[box]) / np.maximum(maps.brain[box], 1e-6), 0, 1)
        maps.replace_with("lesion", np.maximum(blob - maps.lesion[box], 0.0) /
                          np.maximum(1.0 - maps.lesion[box], 1e-3), box)


def _brain_centres(maps: BrainMaps, rng: np.random.Generator, depth_mm: float) -> np.ndarray:
    inside = ndimage.distance_transform_edt(maps.brain[::4, ::4, ::4] > 0.5) * 4
    pool = np.argwhere(inside > depth_mm) * 4
    if len(pool) == 0:
        pool = np.argwhere(maps.brain > 0.5)
    return pool[rng.integers(len(pool))]


def add_cavities(maps: BrainMaps, rng: np.random.Generator, count: int) -> None:
    """Fluid-filled cavities (resection, porencephaly; in place): blobs of radius 5–20 mm
    inside the brain turned to CSF."""
    for _ in range(count):
        radius = rng.uniform(5.0, 20.0)
        centre = _brain_centres(maps, rng, radius * 0.6)
        box, blob = _blob(maps.csf.shape, centre, radius * rng.uniform(0.7, 1.3, size=3), rng)
        maps.replace_with("csf", blob * (maps.brain[box] > 0.05), box)


def add_masses(maps: BrainMaps, rng: np.random.Generator, count: int) -> None:
    """Solid masses (in place): blobs of radius 6–20 mm of lesion-like tissue (long T1 and
    T2), half of them with a fluid (necrotic) core."""
    for _ in range(count):
        radius = rng.uniform(6.0, 20.0)
        centre = _brain_centres(maps, rng, radius * 0.7)
        radii = radius * rng.uniform(0.7, 1.3, size=3)
        box, blob = _blob(maps.lesion.shape, centre, radii, rng)
        maps.replace_with("lesion", blob * (maps.brain[box] > 0.05), box)
        if rng.random() < 0.5:
            core_box, core = _blob(maps.lesion.shape, centre, radii * rng.uniform(0.3, 0.6), rng)
            maps.replace_with("csf", core * (maps.brain[core_box] > 0.05), core_box)


def label_phantom(brain_mask: np.ndarray, rng: np.random.Generator, *, n_labels: int | None = None,
                  factor: int = 2) -> BrainMaps:
    """A random-shape phantom inside ``brain_mask``: the argmax of ``n_labels`` (20–40)
    smooth random fields, each label a random brain tissue (CSF 25%, GM 35%, WM 30%,
    lesion 10%), fractions softened over about a voxel. Fields are drawn ``factor``
    times coarser and the labels upsampled."""
    n_labels = int(rng.integers(20, 41)) if n_labels is None else int(n_labels)
    shape = brain_mask.shape
    coarse = tuple(max(2, math.ceil(n / factor)) for n in shape)
    best = np.full(coarse, -np.inf, dtype=np.float32)
    label = np.zeros(coarse, dtype=np.int16)
    for k in range(n_labels):
        field = smooth_field(coarse, rng, n_ctrl=int(rng.integers(4, 12)))[0]
        better = field > best
        best[better] = field[better]
        label[better] = k
    label = ndimage.zoom(label, [n / c for n, c in zip(shape, coarse)], order=0)[:shape[0], :shape[1], :shape[2]]
    tissue_of = rng.choice(4, size=n_labels, p=[0.25, 0.35, 0.30, 0.10])
    tissue = tissue_of[label]
    inside = brain_mask.astype(np.float32)
    maps = []
    for t in range(4):
        soft = ndimage.gaussian_filter((tissue == t).astype(np.float32), 0.7)
        maps.append(soft * inside)
    return BrainMaps(*maps)


def apply_edits(maps: BrainMaps, edits: AnatomyEdits, rng: np.random.Generator) -> None:
    """The shape edits of ``edits`` in their order (in place): atrophy, ventricles,
    lesions, cavities, masses."""
    thin_cortex(maps, edits.atrophy_mm)
    enlarge_ventricles(maps, edits.ventricles_mm)
    add_lesions(maps, rng, edits.lesions, edits.lesion_radius_mm)
    add_cavities(maps, rng, edits.cavities)
    add_masses(maps, rng, edits.masses)

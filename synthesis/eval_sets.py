"""The evaluation's case sets: held-out subjects, whole heads acquired, then scored on a crop.

Every case starts from a test-split subject (``SPLIT_SEEDS["test"]``) made with
:class:`~synthesis.simulate.anatomy.AnatomyEdits`; its T1w source (3 T MPRAGE preset,
the subject's own tissue parameters) is rendered on the *whole head* and acquired there
(:func:`~synthesis.simulate.acquisition.acquire`: bias, voxel size, slices, k-space
effects, noise), and its tissue peak taken from that whole acquired head, as the
node sees it. The source is then cut to a box around the scoring region (whole voxels
of the acquired grid, aligned with the 1 mm truth grid) to keep runtime in check.

Sets (``CASE_SETS``), each relative to ``in_distribution`` of the same seed:

* ``in_distribution``: the generator's own kind of anatomy (deformation 1.0, a few
  lesions, the head), a 1 mm source at SNR 30;
* anatomy shift: the same subject with enlarged ventricles (3, 6 mm), cortical
  atrophy (1.5 mm), a lesion load (30) or a random-shape label phantom;
* acquisition shift: the in-distribution subject acquired at other voxel sizes, with
  3 or 5 mm slices, without noise or at SNR 20/10, with a bias field or motion ghosting,
  or a different field of view (skull-stripped, neck included, cropped head);
* ``zeroshot``: the in-distribution case with target protocols from the held-out band.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from synthesis.intensity import tissue_peak
from synthesis.physics import FIELDS_T
from synthesis.protocol import Contrast, MRProtocol, preset
from synthesis.simulate import SPLIT_SEEDS, Subject, make_subject, random_protocol, render, thick_slices
from synthesis.simulate.acquisition import Acquisition, acquire
from synthesis.simulate.anatomy import AnatomyEdits, Coverage

log = logging.getLogger(__name__)

__all__ = ["TARGETS", "CaseSet", "CASE_SETS", "GROUPS", "EvalCase", "select_sets", "build_cases",
           "brain_relative", "make_case_subject", "scoring_region", "aligned_box", "from_box", "held_out_seeds"]

TARGETS = {"T2w": "T2", "PDw": "PD", "FLAIR": "FLAIR"}  # target contrast -> preset name
FIELD_T = 3.0
CONTRAST_TISSUES = ("csf", "gm", "wm", "lesion")
GROUPS = ("in_distribution", "anatomy", "acquisition", "protocol")
#: The in-distribution anatomy: the training generator's deformation, a few small lesions, the head.
BASE_EDITS = AnatomyEdits(deformation=1.0, lesions=6, lesion_radius_mm=(1.5, 5.0), coverage=Coverage.HEAD)
#: The in-distribution acquisition: 1 mm, Rician noise at SNR 30 (every real scan has noise; a
#: noiseless crisp phantom is its own set, ``noiseless``).
BASE_ACQ = Acquisition(snr=30.0)


@dataclass(frozen=True)
class CaseSet:
    """One evaluation set: how its subjects and sources differ from ``in_distribution``."""

    name: str
    group: str
    description: str
    edits: AnatomyEdits = BASE_EDITS
    acquisition: Acquisition = BASE_ACQ
    zero_shot: bool = False

    @property
    def resamples(self) -> bool:
        """True when the source is acquired on another grid than 1 mm (a sliced oracle applies)."""
        return not np.allclose(self.acquisition.spacing, 1.0)


CASE_SETS: dict[str, CaseSet] = {s.name: s for s in (
    CaseSet("in_distribution", "in_distribution",
            "deformation 1.0, 6 lesions, head; 1 mm source at SNR 30"),
    CaseSet("ventricles_3mm", "anatomy", "ventricles enlarged by 3 mm",
            edits=replace(BASE_EDITS, ventricles_mm=3.0)),
    CaseSet("ventricles_6mm", "anatomy", "ventricles enlarged by 6 mm",
            edits=replace(BASE_EDITS, ventricles_mm=6.0)),
    CaseSet("atrophy_1.5mm", "anatomy", "cortical thinning and sulcal widening by 1.5 mm",
            edits=replace(BASE_EDITS, atrophy_mm=1.5)),
    CaseSet("lesions_30", "anatomy", "30 white-matter lesions (radius 1.5-6 mm)",
            edits=replace(BASE_EDITS, lesions=30, lesion_radius_mm=(1.5, 6.0))),
    CaseSet("phantom", "anatomy", "random-shape CSF/GM/WM/lesion label phantom in the brain outline",
            edits=replace(BASE_EDITS, phantom=True)),
    CaseSet("voxel_1.4mm", "acquisition", "1.4 mm isotropic voxels",
            acquisition=replace(BASE_ACQ, slice_mm=1.4, in_plane_mm=(1.4, 1.4))),
    CaseSet("voxel_0.8x1.2mm", "acquisition", "0.8 x 0.8 mm in plane, 1.2 mm partitions",
            acquisition=replace(BASE_ACQ, slice_mm=1.2, in_plane_mm=(0.8, 0.8))),
    CaseSet("slices_3mm", "acquisition", "axial 2-D slices of 3 mm (box profile)",
            acquisition=replace(BASE_ACQ, slice_mm=3.0)),
    CaseSet("slices_5mm", "acquisition", "axial 2-D slices of 5 mm (box profile)",
            acquisition=replace(BASE_ACQ, slice_mm=5.0)),
    CaseSet("noiseless", "acquisition", "no noise at all (a simulation-only source)",
            acquisition=replace(BASE_ACQ, snr=0.0)),
    CaseSet("snr_20", "acquisition", "Rician noise at SNR 20", acquisition=replace(BASE_ACQ, snr=20.0)),
    CaseSet("snr_10", "acquisition", "Rician noise at SNR 10", acquisition=replace(BASE_ACQ, snr=10.0)),
    CaseSet("bias_0.3", "acquisition", "smooth bias field, peak log-gain 0.3 (gains ~0.74-1.35)",
            acquisition=replace(BASE_ACQ, bias=0.3)),
    CaseSet("ghosting", "acquisition", "motion ghosting on 5% of phase-encode lines",
            acquisition=replace(BASE_ACQ, ghosting=0.05)),
    CaseSet("skull_stripped", "acquisition", "field of view: brain only (skull-stripped)",
            edits=replace(BASE_EDITS, coverage=Coverage.STRIPPED)),
    CaseSet("with_neck", "acquisition", "field of view: head and neck",
            edits=replace(BASE_EDITS, coverage=Coverage.NECK)),
    CaseSet("cropped_head", "acquisition", "field of view: the head cut by a plane",
            edits=replace(BASE_EDITS, coverage=Coverage.CROPPED)),
    CaseSet("zeroshot", "protocol", "in-distribution case, target protocol from the held-out band",
            zero_shot=True),
)}


def select_sets(text: str) -> list[CaseSet]:
    """Sets named in a comma-separated list of set names and/or group names ('all': every set);
    ``in_distribution`` is always included (the shifts are measured against it)."""
    names: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item == "all":
            names += list(CASE_SETS)
        elif item in GROUPS:
            names += [s.name for s in CASE_SETS.values() if s.group == item]
        elif item in CASE_SETS:
            names.append(item)
        else:
            raise ValueError(f"unknown set {item!r}; known sets: {', '.join(CASE_SETS)}; groups: "
                             f"{', '.join(GROUPS)}, all")
    names = ["in_distribution"] + [n for n in dict.fromkeys(names) if n != "in_distribution"]
    return [CASE_SETS[n] for n in names]


def held_out_seeds(n: int, split: str = "test", first: int = 0) -> list[int]:
    """``n`` subject seeds of the test split from its ``first``-th on; ``split="validation"``: of
    the validation split, skipping its first seed (training's own validation subject), for
    choosing among checkpoints without looking at the test subjects. ``first`` > 0 passes over
    subjects a model was already chosen on, which would favour that model."""
    if isinstance(first, bool) or int(first) < 0:
        raise ValueError(f"first must be an integer >= 0. Found {first!r}.")
    if split == "test":
        return list(SPLIT_SEEDS["test"])[first:first + n]
    if split == "validation":
        return list(SPLIT_SEEDS["validation"])[1 + first:1 + first + n]
    raise ValueError(f"split must be 'test' or 'validation'. Found {split!r}.")


@dataclass
class EvalCase:
    """One source/target pair; arrays on the 1 mm scoring region unless said otherwise.

    source: the acquired source cut to whole acquired voxels around the region
    (``source_spacing`` mm), its first voxel edge ``source_origin_mm`` (integer mm, z y x)
    from the region's first edge (<= 0); source_peak: the tissue peak of the whole
    acquired head. truth / oracle / sliced_oracle: clean target, nominal-parameter render,
    and that render through the source's acquisition grid (None on a 1 mm source), all in
    brain-relative units (each divided by its own brain 99.5th percentile). tissues:
    ``{csf, gm, wm, lesion}`` fractions (float16). source_1mm: the source on the region
    (linear resampling, for pictures and the look-up baseline). acquired_head, source_box:
    the whole acquired source and where ``source`` lies in it (whole-head preprocessing: N4).
    second, second_peak, second_protocol: a second source of the subject (the 3 T T2 preset,
    acquired like the first on the same grid and cut to the same box; its whole head's tissue
    peak), when the cases were built with one.
    """

    set_name: str
    group: str
    subject_seed: int
    target_contrast: str
    source: np.ndarray
    source_spacing: tuple[float, float, float]
    source_origin_mm: tuple[int, int, int]
    source_protocol: MRProtocol
    source_peak: float
    source_1mm: np.ndarray
    truth: np.ndarray
    target_protocol: MRProtocol
    mask: np.ndarray
    tissues: dict[str, np.ndarray]
    oracle: np.ndarray
    sliced_oracle: np.ndarray | None = None
    acquired_head: np.ndarray | None = None  # the whole acquired source (``source`` is its ``source_box``)
    source_box: tuple[slice, ...] | None = None
    second: np.ndarray | None = None
    second_peak: float | None = None
    second_protocol: MRProtocol | None = None


def brain_relative(volume: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """``volume`` divided by its 99.5th percentile inside ``brain_mask`` (float32)."""
    hi = float(np.percentile(volume[brain_mask], 99.5))
    return (np.asarray(volume, dtype=np.float32) / np.float32(max(hi, 1e-12))).astype(np.float32)


def scoring_region(mask: np.ndarray, size: Sequence[int] | None) -> tuple[slice, slice, slice]:
    """A box centred on the brain, at most ``size`` voxels (None: the brain box + 4 voxels)."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    shape = np.array(mask.shape)
    if size is None:
        lo, hi = np.maximum(lo - 4, 0), np.minimum(hi + 4, shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]
    want = np.minimum(np.array(size), shape)
    start = np.clip((lo + hi) // 2 - want // 2, 0, shape - want)
    return tuple(slice(int(s), int(s + n)) for s, n in zip(start, want))  # type: ignore[return-value]


def aligned_box(region: tuple[slice, ...], spacing: Sequence[float], shape: Sequence[int],
                margin_mm: float = 8.0) -> tuple[tuple[slice, ...], tuple[int, int, int]]:
    """Acquired-grid voxels covering ``region`` (1 mm voxels) plus ``margin_mm``, starting on a
    voxel edge that lies on a whole millimetre: ``(box, first edge in mm)`` per axis."""
    box, origin = [], []
    for sl, sp, n in zip(region, spacing, shape):
        step = next(q for q in range(1, 51) if abs(q * sp - round(q * sp)) < 1e-6)
        start = max(0, int(math.floor((sl.start - margin_mm) / (step * sp))) * step)
        stop = min(int(n), int(math.ceil((sl.stop + margin_mm) / sp)))
        box.append(slice(start, stop))
        origin.append(int(round(start * sp)))
    return tuple(box), tuple(origin)  # type: ignore[return-value]


def from_box(volume: np.ndarray, origin_mm: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """The scoring region ``(shape)`` of a 1 mm ``volume`` whose first voxel edge lies at
    ``origin_mm`` (z, y, x) from the region's first edge; edge-padded where it falls short."""
    out = volume
    for axis, (o, n) in enumerate(zip(origin_mm, shape)):
        start, have = -int(o), out.shape[axis]
        pad = (max(0, -start), max(0, start + int(n) - have))
        if any(pad):
            widths = [(0, 0)] * out.ndim
            widths[axis] = pad
            out = np.pad(out, widths, mode="edge")
            start += pad[0]
        out = np.take(out, range(start, start + int(n)), axis=axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def _subject_key(seed: int, edits: AnatomyEdits) -> str:
    from synthesis.simulate import PHANTOM_VERSION

    text = json.dumps({"seed": int(seed), "v": PHANTOM_VERSION, **edits.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_case_subject(seed: int, edits: AnatomyEdits, cache_dir: Path | None = None) -> Subject:
    """``make_subject(seed, edits=edits)``, cached as ``.npz`` in ``cache_dir`` when given."""
    if cache_dir is None:
        return make_subject(seed, edits=edits)
    path = Path(cache_dir) / f"eval-subject-{seed}-{_subject_key(seed, edits)}.npz"
    if path.exists():
        with np.load(path) as data:
            return Subject(fractions=data["fractions"], brain_mask=data["brain_mask"],
                           params={f: data[f"params_{f}"] for f in FIELDS_T}, seed=int(seed),
                           origin_mm=tuple(data["origin_mm"].tolist()))
    subject = make_subject(seed, edits=edits)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, fractions=subject.fractions, brain_mask=subject.brain_mask,
                 origin_mm=np.asarray(subject.origin_mm), **{f"params_{f}": subject.params[f] for f in FIELDS_T})
    os.replace(tmp, path)
    return subject


def _through_grid(volume: np.ndarray, acq: Acquisition) -> np.ndarray:
    """A clean 1 mm volume put through the acquisition's grid only (slices or voxels, no bias,
    noise or k-space effects) and linearly back to 1 mm: the best a predictor that only
    resamples could give."""
    from synthesis.grid import resample

    grid_only = replace(acq, bias=0.0, snr=0.0, ghosting=0.0, gibbs=0.0, gamma=1.0)
    coarse, spacing = acquire(volume, grid_only, np.random.default_rng(0))
    return resample(coarse, spacing, (1.0, 1.0, 1.0))


def _source(subject: Subject, case_set: CaseSet, region: tuple[slice, ...], rng: np.random.Generator
            ) -> tuple[np.ndarray, tuple, tuple[float, float, float], tuple[int, int, int], float, MRProtocol]:
    """The acquired whole-head source and the box around ``region``:
    (head, box, spacing, origin, peak, protocol)."""
    acq = case_set.acquisition
    protocol = preset("T1", FIELD_T)
    acquired, spacing = acquire(render(subject, protocol), acq, rng)
    peak = tissue_peak(acquired, spacing)
    box, origin = aligned_box(region, spacing, acquired.shape)
    if case_set.resamples:
        protocol = protocol.with_(slice_thickness_mm=acq.slice_mm, voxel_mm=(*acq.in_plane_mm, acq.slice_mm))
    rel = tuple(o - sl.start for o, sl in zip(origin, region))
    return acquired, box, spacing, rel, peak, protocol  # type: ignore[return-value]


def _second_source(subject: Subject, case_set: CaseSet, box: tuple[slice, ...], contrast: str,
                   rng: np.random.Generator) -> tuple[np.ndarray, float, MRProtocol]:
    """A second source (the 3 T preset of ``contrast``) acquired as the first, cut to its box."""
    acq = case_set.acquisition
    protocol = preset(TARGETS[contrast], FIELD_T)
    acquired, spacing = acquire(render(subject, protocol), acq, rng)
    if case_set.resamples:
        protocol = protocol.with_(slice_thickness_mm=acq.slice_mm, voxel_mm=(*acq.in_plane_mm, acq.slice_mm))
    return np.ascontiguousarray(acquired[box]), tissue_peak(acquired, spacing), protocol


def build_cases(case_sets: Iterable[CaseSet], seeds: Iterable[int], *, crop: Sequence[int] | None,
                cache_dir: Path | None = None, targets: Iterable[str] = tuple(TARGETS),
                second_source: str | None = None) -> Iterable[EvalCase]:
    """Yield every case of ``case_sets`` x ``seeds`` x ``targets`` (subjects made one at a time);
    ``second_source`` (a target contrast, e.g. ``"T2w"``): each case also carries that second
    source (its own noise draw), for models that take one."""
    if second_source is not None and second_source not in TARGETS:
        raise ValueError(f"second_source must be one of {', '.join(TARGETS)}. Found {second_source!r}.")
    from synthesis.data import fit_to_shape
    from synthesis.grid import resample

    targets = list(targets)
    for seed in seeds:
        for case_set in case_sets:
            subject = make_case_subject(seed, case_set.edits, cache_dir)
            region = scoring_region(subject.brain_mask, crop)
            rng = np.random.default_rng([seed, zlib.crc32(case_set.name.encode())])
            head, box, spacing, origin, peak, src_protocol = _source(subject, case_set, region, rng)
            source = np.ascontiguousarray(head[box])
            shape = tuple(sl.stop - sl.start for sl in region)
            source_1mm = from_box(resample(source, spacing, (1.0, 1.0, 1.0)), origin, shape)
            second = (None, None, None)
            if second_source is not None:
                second = _second_source(subject, case_set, box, second_source,
                                        np.random.default_rng([seed, zlib.crc32(case_set.name.encode()), 2]))
            brain = subject.brain_mask
            tissues = {t: subject.tissue(t)[region] for t in CONTRAST_TISSUES}
            for target in targets:
                if case_set.zero_shot:
                    trng = np.random.default_rng([seed, list(TARGETS).index(target)])
                    tgt_protocol = random_protocol(Contrast(target), trng, field_t=FIELD_T, split="zeroshot")
                else:
                    tgt_protocol = preset(TARGETS[target], FIELD_T)
                truth = brain_relative(render(subject, tgt_protocol), brain)
                oracle = brain_relative(render(subject, tgt_protocol, nominal=True), brain)
                sliced = None
                if case_set.resamples:
                    sliced = brain_relative(fit_to_shape(_through_grid(oracle, case_set.acquisition),
                                                         oracle.shape), brain)[region]
                yield EvalCase(case_set.name, case_set.group, seed, target, source, spacing, origin,
                               src_protocol, peak, source_1mm, truth[region], tgt_protocol,
                               brain[region], tissues, oracle[region], sliced, head, box, *second)
            del subject


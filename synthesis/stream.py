"""Training crops from randomized whole heads (issue: learn contrast, not one template).

A *draw* is one randomized subject (:func:`synthesis.simulate.anatomy.random_edits`,
never the same anatomy twice: subject seeds run on through the training split)
rendered as a source with its own contrast spread and acquired as a whole head
(:mod:`synthesis.simulate.acquisition`), normalized as inference does
(:mod:`synthesis.intensity`), brought back to the 1 mm grid, and rendered clean as
targets in brain-relative units. Crops of that whole head are what the network
trains on: the degradations and the normalization saw the whole field of view. A share
of draws (``second_source_share``) also acquires a second source of the same subject (a
T2w by default, with its own protocol and acquisition, normalized the same way) for
models that take one.

:class:`CropStream` runs draws in a DataLoader worker process, so simulation and
the optimizer step overlap.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np
import torch
from scipy import ndimage

from synthesis.grid import resample_antialiased
from synthesis.intensity import normalize_source
from synthesis.physics import TISSUES
from synthesis.protocol import Contrast, MRProtocol
from synthesis.simulate import SPLIT_SEEDS, Subject, make_subject, random_protocol, render
from synthesis.simulate.acquisition import Acquisition, acquire, random_acquisition, source_params
from synthesis.simulate.anatomy import AnatomyEdits, random_edits

__all__ = ["Crop", "StreamConfig", "draw_crops", "CropStream", "subject_for_draw", "subject_edits"]

log = logging.getLogger(__name__)


@dataclass
class Crop:
    """One training crop, ``(P, P, P)`` arrays on the 1 mm grid.

    source: normalized source; target: clean target (brain-relative units); second: a second
    normalized source of the same subject (its own protocol and acquisition; None when the draw
    has none, or when the target has the second source's contrast);
    target_cell: the target blurred to an output voxel of ``cell`` mm (for queries
    with that cell size); fractions: ``(T, P, P, P)`` float16 tissue fractions;
    mask: brain mask; brain_range: width of the target's brain percentile band.
    """

    source: np.ndarray
    target: np.ndarray
    target_cell: np.ndarray
    cell: float
    fractions: np.ndarray
    mask: np.ndarray
    source_protocol: MRProtocol
    target_protocol: MRProtocol
    brain_range: float
    acquisition: Acquisition | None = None
    second: np.ndarray | None = None
    second_protocol: MRProtocol | None = None


@dataclass(frozen=True)
class StreamConfig:
    """What a draw contains: contrasts, protocol preset shares, crop size and counts."""

    patch: int = 64
    source_contrasts: tuple[str, ...] = ("T1w",)
    target_contrasts: tuple[str, ...] = ("T2w", "PDw", "FLAIR")
    second_source_contrasts: tuple[str, ...] = ("T2w",)
    second_source_share: float = 0.0  # share of draws that also acquire a second source
    target_weights: tuple[float, ...] | None = None
    source_preset_share: float = 0.3
    target_preset_share: float = 0.6
    split: str = "train"
    draws_per_subject: int = 3
    targets_per_draw: int = 2
    crops_per_target: int = 3
    brain_crop_share: float = 0.85
    lesion_crop_share: float = 0.0  # share of crops centred on a lesion voxel (when the subject has one)
    max_cell: float = 2.0
    first_subject: int = 0
    shuffle_draws: int = 1  # the shuffle buffer holds this many draws' crops before it yields
    # subjects without label phantoms or masses (the lesion detector trains on this): both are
    # drawn with the lesion tissue, a phantom's as arbitrary regions (a tenth of its labels),
    # a mass as a blob of radius 6-20 mm; in the first 40 training subjects one phantom and
    # three masses held 118 of the lesion tissue's 211 ml, the white-matter lesions the rest
    wm_lesions_only: bool = False
    gm_crop_share: float = 0.0  # share of crops centred on grey matter (the detector's hard negatives)
    # those centres only at least this deep inside the brain mask (mm): deep grey matter and the
    # depths of sulci, where a lesion detector's false lesions lie on the evaluation's T1
    gm_crop_depth_mm: float = 0.0


def subject_for_draw(cfg: StreamConfig, draw: int) -> int:
    """The subject seed of draw number ``draw``: a new randomized subject every
    ``draws_per_subject`` draws, seeds running through the split."""
    seeds = SPLIT_SEEDS[cfg.split if cfg.split in SPLIT_SEEDS else "train"]
    return seeds[cfg.first_subject + draw // cfg.draws_per_subject]


def _targets(cfg: StreamConfig, rng: np.random.Generator) -> list[Contrast]:
    contrasts = [Contrast(c) for c in cfg.target_contrasts]
    p = None
    if cfg.target_weights is not None:
        w = np.asarray(cfg.target_weights, dtype=np.float64)
        p = w / w.sum()
    k = min(cfg.targets_per_draw, len(contrasts))
    return [contrasts[i] for i in rng.choice(len(contrasts), size=k, replace=False, p=p)]


def _crop_starts(mask: np.ndarray, head: np.ndarray, patch: int, n: int, brain_share: float,
                 rng: np.random.Generator, lesion_voxels: np.ndarray | None = None,
                 lesion_share: float = 0.0, gm_voxels: np.ndarray | None = None,
                 gm_share: float = 0.0) -> list[tuple[slice, slice, slice]]:
    """``n`` crop regions: a share ``gm_share`` centred on one of ``gm_voxels`` (grey matter,
    where a lesion detector's false lesions lie), a share ``lesion_share`` of the rest centred
    near one of ``lesion_voxels`` (``(K, 3)`` indices; lesions are a small part of a brain, and a
    crop of random place rarely holds one), then ``brain_share`` of the rest centred in the
    brain's bounding box, the others in the head's."""
    shape = np.array(mask.shape)
    boxes = []
    for region in (mask, head):
        idx = np.argwhere(region[::4, ::4, ::4]) * 4
        boxes.append((idx.min(0), idx.max(0)) if len(idx) else (np.zeros(3, int), shape - 1))
    out = []
    for _ in range(n):
        if gm_voxels is not None and len(gm_voxels) and gm_share > 0 and rng.random() < gm_share:
            centre = gm_voxels[rng.integers(len(gm_voxels))]
        elif lesion_voxels is not None and len(lesion_voxels) and rng.random() < lesion_share:
            centre = lesion_voxels[rng.integers(len(lesion_voxels))] + rng.integers(-patch // 4, patch // 4 + 1, 3)
        else:
            lo, hi = boxes[0] if rng.random() < brain_share else boxes[1]
            centre = rng.integers(lo, hi + 1)
        start = np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))
        out.append(tuple(slice(int(s), int(s) + patch) for s in start))
    return out


def _grey_centres(gm: np.ndarray, brain: np.ndarray, min_depth_mm: float = 0.0) -> np.ndarray:
    """``(K, 3)`` indices of grey-matter voxels (fraction > 0.5) on the 2x subgrid of a 1 mm
    volume, those at least ``min_depth_mm`` inside ``brain`` (distance to its edge) when > 0."""
    grey = gm[::2, ::2, ::2] > 0.5
    if min_depth_mm > 0:
        grey &= ndimage.distance_transform_edt(brain[::2, ::2, ::2], sampling=2.0) >= min_depth_mm
    return np.argwhere(grey) * 2


def _pad(array: np.ndarray, patch: int) -> np.ndarray:
    """Zero-pad the last three axes up to ``patch`` (a crop of a small volume)."""
    pads = [(0, 0)] * (array.ndim - 3) + [(0, max(0, patch - n)) for n in array.shape[-3:]]
    return np.pad(array, pads) if any(p[1] for p in pads) else array


def acquired_source(subject: Subject, protocol: MRProtocol, acq: Acquisition,
                    rng: np.random.Generator, *, jitter: bool = True) -> np.ndarray:
    """The source as the network sees it: rendered with a contrast spread (``jitter=False``:
    with the subject's own tissue parameters, as the evaluation renders its sources), acquired
    as a whole head, normalized by its tissue peak, anti-aliased back to the 1 mm grid."""
    field_t = 1.5 if (protocol.field_t or 3.0) < 2.25 else 3.0
    params = source_params(subject.params[field_t], rng) if jitter else None
    clean = render(subject, protocol, params=params)
    acquired, spacing = acquire(clean, acq, rng)
    normalized, _ = normalize_source(acquired, spacing)
    back = resample_antialiased(normalized, spacing, (1.0, 1.0, 1.0))
    out = np.zeros(subject.shape, dtype=np.float32)
    region = tuple(slice(0, min(a, b)) for a, b in zip(back.shape, subject.shape))
    out[region] = back[region]
    return out


def draw_crops(cfg: StreamConfig, draw: int, seed: int, subject: Subject | None = None) -> list[Crop]:
    """The crops of draw number ``draw`` (deterministic in ``seed`` and ``draw``)."""
    rng = np.random.default_rng([seed, draw, 77])
    if subject is None:
        subject = make_randomized_subject(subject_for_draw(cfg, draw), wm_lesions_only=cfg.wm_lesions_only)
    field_t = float(rng.choice([1.5, 3.0]))
    src_c = Contrast(cfg.source_contrasts[int(rng.integers(len(cfg.source_contrasts)))])
    src_p = random_protocol(src_c, rng, field_t=field_t, split=cfg.split, preset_share=cfg.source_preset_share)
    acq = random_acquisition(rng, src_p)
    source = acquired_source(subject, src_p, acq, rng)
    src_p = src_p.with_(slice_thickness_mm=acq.slice_mm, voxel_mm=(*acq.in_plane_mm, acq.slice_mm))
    mask = subject.brain_mask
    head = subject.fractions.sum(0) > 0.5
    # found once per draw, used by every target's crops
    lesion = np.argwhere(subject.fractions[TISSUES.index("lesion")] > 0.5) if cfg.lesion_crop_share > 0 else None
    grey = _grey_centres(subject.fractions[TISSUES.index("gm")], mask, cfg.gm_crop_depth_mm) \
        if cfg.gm_crop_share > 0 else None
    second, second_p = _second_source(cfg, draw, seed, subject, field_t)
    crops = []
    for tgt_c in _targets(cfg, rng):
        tgt_p = random_protocol(tgt_c, rng, field_t=field_t, split=cfg.split,
                                preset_share=cfg.target_preset_share)
        target = render(subject, tgt_p)
        lo, hi = np.percentile(target[::2, ::2, ::2][mask[::2, ::2, ::2]], [0.5, 99.5])
        target *= np.float32(1.0 / max(float(hi), 1e-12))
        brain_range = float(max((hi - lo) / max(hi, 1e-12), 1e-3))
        for region in _crop_starts(mask, head, cfg.patch, cfg.crops_per_target, cfg.brain_crop_share, rng,
                                   lesion, cfg.lesion_crop_share, grey, cfg.gm_crop_share):
            cell = float(np.exp(rng.uniform(np.log(0.5), np.log(cfg.max_cell))))
            tgt = _pad(target[region], cfg.patch)
            blurred = ndimage.gaussian_filter(tgt, 0.5 * np.sqrt(cell**2 - 1)) if cell > 1 else tgt
            paired = second is not None and second_p.contrast != tgt_c
            crops.append(Crop(
                source=_pad(source[region], cfg.patch), target=tgt, target_cell=blurred, cell=cell,
                fractions=_pad(subject.fractions[(slice(None), *region)], cfg.patch),
                mask=_pad(mask[region], cfg.patch), source_protocol=src_p, target_protocol=tgt_p,
                brain_range=brain_range, acquisition=acq,
                second=_pad(second[region], cfg.patch) if paired else None,
                second_protocol=second_p if paired else None))
    return crops


def _second_source(cfg: StreamConfig, draw: int, seed: int, subject: Subject,
                   field_t: float) -> tuple[np.ndarray | None, MRProtocol | None]:
    """A second source of the draw's subject, for a share ``second_source_share`` of draws: a
    random protocol of one of ``second_source_contrasts`` at the same field strength, with its
    own acquisition (voxel size, slices, noise, bias), normalized and brought to the 1 mm grid
    as the first is. Its own random stream, so draws without one are as before."""
    if cfg.second_source_share <= 0:
        return None, None
    rng = np.random.default_rng([seed, draw, 78])
    if rng.random() >= cfg.second_source_share:
        return None, None
    contrast = Contrast(cfg.second_source_contrasts[int(rng.integers(len(cfg.second_source_contrasts)))])
    protocol = random_protocol(contrast, rng, field_t=field_t, split=cfg.split, preset_share=cfg.source_preset_share)
    acq = random_acquisition(rng, protocol)
    volume = acquired_source(subject, protocol, acq, rng)
    return volume, protocol.with_(slice_thickness_mm=acq.slice_mm, voxel_mm=(*acq.in_plane_mm, acq.slice_mm))


def subject_edits(seed: int, *, wm_lesions_only: bool = False) -> AnatomyEdits:
    """The anatomy edits of the randomized subject of ``seed``. ``wm_lesions_only``: the same
    edits without a label phantom or solid masses, so that the lesion label marks white-matter
    lesions only (the lesion detector's task; see :class:`StreamConfig`)."""
    edits = random_edits(np.random.default_rng([seed, 4242]))
    return replace(edits, phantom=False, masses=0) if wm_lesions_only else edits


def make_randomized_subject(seed: int, *, wm_lesions_only: bool = False) -> Subject:
    """The randomized subject of ``seed`` (anatomy edits drawn from the seed)."""
    return make_subject(seed, edits=subject_edits(seed, wm_lesions_only=wm_lesions_only))


class CropStream(torch.utils.data.IterableDataset):
    """Batches (lists of ``batch`` :class:`Crop`) from consecutive draws, mixed through a
    shuffle buffer that yields while it holds ``shuffle_draws`` draws' crops (with the default
    1, each batch mixes at most two draws); starts at draw ``first_draw`` (resuming)."""

    def __init__(self, cfg: StreamConfig, *, seed: int, batch: int, first_draw: int = 0) -> None:
        super().__init__()
        self.cfg, self.seed, self.batch, self.first_draw = cfg, int(seed), int(batch), int(first_draw)

    @property
    def crops_per_draw(self) -> int:
        return min(self.cfg.targets_per_draw, len(self.cfg.target_contrasts)) * self.cfg.crops_per_target

    def __iter__(self) -> Iterator[list[Crop]]:
        torch.set_num_threads(1)
        rng = np.random.default_rng([self.seed, self.first_draw, 99])
        buffer: list[Crop] = []
        draw = self.first_draw
        subject, subject_seed = None, None
        while True:
            seed_now = subject_for_draw(self.cfg, draw)
            if seed_now != subject_seed:
                subject = make_randomized_subject(seed_now, wm_lesions_only=self.cfg.wm_lesions_only)
                subject_seed = seed_now
            buffer.extend(draw_crops(self.cfg, draw, self.seed, subject))
            draw += 1
            while len(buffer) >= max(self.batch, self.crops_per_draw * max(1, self.cfg.shuffle_draws)):
                picks = sorted(rng.choice(len(buffer), size=self.batch, replace=False), reverse=True)
                yield [buffer.pop(int(i)) for i in picks]


def stream_batches(cfg: StreamConfig, *, seed: int, batch: int, first_draw: int = 0,
                   workers: int = 1) -> Iterator[list[Crop]]:
    """An endless iterator of batches, simulated in a background process (``workers=1``) or
    inline (``workers=0``); one stream has one worker (more would repeat its draws)."""
    if workers not in (0, 1):
        raise ValueError(f"workers must be 0 or 1. Found {workers!r}.")
    dataset = CropStream(cfg, seed=seed, batch=batch, first_draw=first_draw)
    if workers <= 0:
        return iter(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=4,
                                         persistent_workers=False)
    return iter(loader)

"""Evaluation on held-out simulated subjects, as the field reports it.

For each test subject a T1w source (3 T MPRAGE preset) is rendered, degraded
at a fixed severity and run through the real :class:`~synthesis.Synthesizer`
path (percentile normalization, working grid, model, output grid); the
result is compared with the clean target render inside the brain mask
(:func:`synthesis.metrics.score`).  Also: the zero-shot protocol band, a
per-intensity look-up-table baseline, and ablation checkpoints.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterable

import numpy as np

from synthesis.data import fit_to_shape, volume_scale
from synthesis.grid import percentile_normalize
from synthesis.metrics import Scores, score
from synthesis.protocol import Contrast, MRProtocol, preset
from synthesis.simulate import SEVERITIES, SPLIT_SEEDS, Subject, degrade, load_or_make_subject, random_protocol, render

log = logging.getLogger(__name__)

__all__ = ["EvalCase", "Evaluation", "evaluation_cases", "evaluate", "LookupBaseline", "oracle_predictor",
           "synthesizer_predictor"]

TARGETS = {"T2w": "T2", "PDw": "PD", "FLAIR": "FLAIR"}


@dataclass
class EvalCase:
    """One source/target volume pair on a crop of a test subject (1 mm grid)."""

    subject_seed: int
    target_contrast: str
    condition: str  # "clean", a severity name, or "zeroshot"
    source: np.ndarray  # acquired source (may be coarser along one axis)
    source_spacing: tuple[float, float, float]
    source_protocol: MRProtocol
    source_range: tuple[float, float]  # whole-volume 0.5/99.5 percentiles of the clean source
    truth: np.ndarray  # clean target, 1 mm
    target_protocol: MRProtocol
    mask: np.ndarray
    nominal: np.ndarray  # the target rendered with nominal tissue parameters (physics oracle)


Predictor = Callable[[EvalCase], np.ndarray]  # a case -> its prediction on the truth's grid


@dataclass
class Evaluation:
    """Scores per (model, condition, target), plus timings."""

    rows: list[dict] = field(default_factory=list)

    def add(self, model: str, case: EvalCase, scores: Scores, seconds: float) -> None:
        self.rows.append({"model": model, "condition": case.condition, "target": case.target_contrast,
                          "subject": case.subject_seed, **scores.to_dict(), "seconds": round(seconds, 2)})

    def summary(self) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """model -> condition -> target -> mean metrics (and n)."""
        out: dict = {}
        for row in self.rows:
            out.setdefault(row["model"], {}).setdefault(row["condition"], {}).setdefault(row["target"], []).append(row)
        for model, conds in out.items():
            for cond, targets in conds.items():
                for target, rows in targets.items():
                    targets[target] = {k: round(float(np.mean([r[k] for r in rows])), 4)
                                       for k in ("psnr", "ssim", "mae")} | {"n": len(rows)}
        return out


def _crop(subject: Subject, size: tuple[int, int, int] | None) -> tuple[slice, slice, slice]:
    """A crop centred on the brain, at most ``size`` voxels (None: the brain box + 4 voxels)."""
    idx = np.argwhere(subject.brain_mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    shape = np.array(subject.brain_mask.shape)
    if size is None:
        lo, hi = np.maximum(lo - 4, 0), np.minimum(hi + 4, shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]
    centre = (lo + hi) // 2
    want = np.minimum(np.array(size), shape)
    start = np.clip(centre - want // 2, 0, shape - want)
    return tuple(slice(int(s), int(s + n)) for s, n in zip(start, want))  # type: ignore[return-value]


def evaluation_cases(subject_seeds: Iterable[int], *, cache_dir: Path | None, crop: tuple[int, int, int] | None,
                     conditions: Iterable[str], targets: Iterable[str] = tuple(TARGETS),
                     field_t: float = 3.0) -> Iterable[EvalCase]:
    """Yield cases; conditions are SEVERITIES names and/or "zeroshot"."""
    conditions = list(conditions)
    for seed in subject_seeds:
        subject = load_or_make_subject(seed, cache_dir)
        region = _crop(subject, crop)
        mask = subject.brain_mask[region]
        source_protocol = preset("T1", field_t)
        clean_source = render(subject, source_protocol, region=region)
        source_range = volume_scale(subject, source_protocol)
        for target in targets:
            rng = np.random.default_rng([seed, list(TARGETS).index(target)])
            for condition in conditions:
                if condition == "zeroshot":
                    tgt_protocol = random_protocol(Contrast(target), rng, field_t=field_t, split="zeroshot")
                    effects = SEVERITIES["clean"]
                else:
                    tgt_protocol = preset(TARGETS[target], field_t)
                    effects = SEVERITIES[condition]
                src, spacing = degrade(clean_source, (1.0, 1.0, 1.0), effects, np.random.default_rng([seed, 7]))
                src_protocol = source_protocol
                if effects.slice_thickness_mm > 1:
                    src_protocol = source_protocol.with_(slice_thickness_mm=effects.slice_thickness_mm)
                yield EvalCase(seed, target, condition, src, tuple(spacing), src_protocol, source_range,
                               render(subject, tgt_protocol, region=region), tgt_protocol, mask,
                               render(subject, tgt_protocol, region=region, nominal=True))


def synthesizer_predictor(synthesizer) -> Predictor:
    """The :class:`~synthesis.Synthesizer` path: the acquired source in, a 1 mm volume out."""
    def predict(case: EvalCase) -> np.ndarray:
        return synthesizer(case.source, case.source_spacing, case.source_protocol, case.target_protocol,
                           output_spacing=(1.0, 1.0, 1.0), input_range=case.source_range).volume
    return predict


def oracle_predictor(case: EvalCase) -> np.ndarray:
    """Physics oracle: the subject's *true* tissue fractions rendered with *nominal* tissue
    parameters. What no model can know from a T1w source is left: the subject's own
    relaxation times and proton densities (jittered by up to ±10%), so its error is
    a reference for what the data allow, not a competitor."""
    return case.nominal


class LookupBaseline:
    """Per-intensity look-up table: mean normalized target intensity per source bin.

    Fitted on training subjects rendered with the evaluation's own preset
    protocols (the most favourable setting for this baseline).
    """

    def __init__(self, bins: int = 256) -> None:
        self.bins = bins
        self.tables: dict[str, np.ndarray] = {}

    def fit(self, subjects: Iterable[Subject], field_t: float = 3.0) -> "LookupBaseline":
        sums = {t: np.zeros(self.bins) for t in TARGETS}
        counts = {t: np.zeros(self.bins) for t in TARGETS}
        for subject in subjects:
            head = subject.fractions.sum(0) > 0.05
            src, _ = percentile_normalize(render(subject, preset("T1", field_t)))
            idx = np.clip((src[head] * (self.bins - 1)).round().astype(int), 0, self.bins - 1)
            for target, name in TARGETS.items():
                tgt, _ = percentile_normalize(render(subject, preset(name, field_t)))
                tgt = tgt[head]
                sums[target] += np.bincount(idx, weights=tgt, minlength=self.bins)
                counts[target] += np.bincount(idx, minlength=self.bins)
        for target in TARGETS:
            filled = counts[target] > 0
            table = np.interp(np.arange(self.bins), np.flatnonzero(filled),
                              sums[target][filled] / counts[target][filled])
            self.tables[target] = table.astype(np.float32)
        return self

    def predictor(self) -> Predictor:
        from synthesis.grid import resample, scale_to_range

        def predict(case: EvalCase) -> np.ndarray:
            source = case.source
            if tuple(case.source_spacing) != (1.0, 1.0, 1.0):
                source = resample(source, case.source_spacing, (1.0, 1.0, 1.0))
            norm = scale_to_range(source, *case.source_range)
            idx = np.clip((norm * (self.bins - 1)).round().astype(int), 0, self.bins - 1)
            return self.tables[case.target_protocol.contrast.value][idx]
        return predict


def evaluate(predictors: dict[str, Predictor], cases: Iterable[EvalCase], *,
             on_case: Callable[[EvalCase, dict[str, np.ndarray]], None] | None = None,
             progress: bool = True, clean_only: Collection[str] = ()) -> Evaluation:
    """Run every predictor on every case; ``on_case`` sees each case's predictions (for pictures).

    Predictors named in ``clean_only`` (references compared only on the clean source) skip the
    degraded and zero-shot cases.
    """
    from tqdm import tqdm

    result = Evaluation()
    for case in tqdm(list(cases) if progress else cases, desc="evaluate", disable=not progress):
        preds = {}
        for name, predict in predictors.items():
            if name == "lookup" and case.condition == "zeroshot":
                continue  # the LUT is fitted per preset; it has no notion of other protocols
            if name in clean_only and case.condition != "clean":
                continue
            t0 = time.perf_counter()
            pred = fit_to_shape(predict(case), case.truth.shape)
            seconds = time.perf_counter() - t0
            preds[name] = pred
            result.add(name, case, score(pred, case.truth, case.mask), seconds)
        if on_case is not None:
            on_case(case, preds)
    return result


def test_seeds(n: int) -> list[int]:
    return list(SPLIT_SEEDS["test"])[:n]


def train_seeds(n: int) -> list[int]:
    return list(SPLIT_SEEDS["train"])[:n]


def make_case_subjects(seeds: Iterable[int], cache_dir: Path | None) -> list[Subject]:
    return [load_or_make_subject(s, cache_dir) for s in seeds]

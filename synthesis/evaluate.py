"""Evaluation on held-out simulated subjects: predictors, scores, summaries.

The cases come from :mod:`synthesis.eval_sets` (whole heads acquired, scored on a crop).
Predictors map a case to a 1 mm volume on the case's scoring region, in brain-relative
units: the real :class:`~synthesis.Synthesizer` path (tissue-peak normalization of the
whole acquired head, working grid, model, 1 mm output), the physics oracle (also put
through the source's grid: the *sliced* oracle), and a per-intensity look-up table.
Each case is scored with :func:`synthesis.metrics.score` (PSNR, SSIM, MAE after
percentile normalization in the brain), :func:`~synthesis.metrics.brain_relative_rmse`
and the tissue contrast ratios of prediction and truth.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterable, Mapping

import numpy as np

from synthesis.eval_sets import BASE_ACQ, BASE_EDITS, FIELD_T, TARGETS, EvalCase, brain_relative, from_box, make_case_subject
from synthesis.intensity import SOURCE_MAX, normalize_source, scale_source
from synthesis.metrics import brain_relative_rmse, contrast_ratios, error_split, score
from synthesis.protocol import preset
from synthesis.simulate import SPLIT_SEEDS, Subject, render
from synthesis.simulate.acquisition import acquire

log = logging.getLogger(__name__)

__all__ = ["Predictor", "Evaluation", "evaluate", "LookupBaseline", "oracle_predictor", "sliced_oracle_predictor",
           "synthesizer_predictor", "paired_predictor", "n4_predictor", "train_seeds", "seed_groups",
           "group_summary", "METRICS"]

Predictor = Callable[[EvalCase], "np.ndarray | None"]  # a case -> its prediction on the region (None: n/a)
METRICS = ("psnr", "ssim", "mae", "rmse_pct")
_SEED_NAME = re.compile(r"^(?P<group>.+)/seed(?P<seed>\d+)$")


@dataclass
class Evaluation:
    """Scores per (model, set, target, subject), plus timings."""

    rows: list[dict] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)

    def add_source(self, case: EvalCase) -> None:
        """Record how the case's source was normalized: its tissue peak over the mean of its
        white matter (voxels > 90% WM; 1.0 means the peak found the white matter)."""
        wm = case.mask & (case.tissues["wm"].astype(np.float32) > 0.9)
        wm_mean = float(case.source_1mm[wm].mean()) if wm.any() else float("nan")
        self.sources.append({"set": case.set_name, "subject": case.subject_seed, "peak": round(case.source_peak, 6),
                             "peak_over_wm": round(case.source_peak / wm_mean, 3) if wm.any() else None})

    def normalization(self) -> dict[str, float | None]:
        """set -> mean tissue peak over white-matter mean of its sources."""
        by_set: dict[str, list] = {}
        for src in self.sources:
            by_set.setdefault(src["set"], []).append(src["peak_over_wm"])
        return {name: _mean(values) for name, values in by_set.items()}

    def add(self, model: str, case: EvalCase, pred: np.ndarray, seconds: float) -> None:
        scores = score(pred, case.truth, case.mask).to_dict()
        self.rows.append({
            "model": model, "set": case.set_name, "group": case.group, "target": case.target_contrast,
            "subject": case.subject_seed, **{k: round(v, 4) for k, v in scores.items()},
            "rmse_pct": round(brain_relative_rmse(pred, case.truth, case.mask), 3),
            "ratios": _rounded(contrast_ratios(pred, case.tissues, case.mask)),
            "truth_ratios": _rounded(contrast_ratios(case.truth, case.tissues, case.mask)),
            "error_split": _rounded(error_split(pred, case.truth, case.tissues, case.mask) or {}),
            "seconds": round(seconds, 2)})

    def summary(self) -> dict[str, dict[str, dict[str, dict]]]:
        """model -> set -> target -> mean metrics, mean contrast ratios (prediction and truth), n."""
        grouped: dict = {}
        for row in self.rows:
            grouped.setdefault(row["model"], {}).setdefault(row["set"], {}).setdefault(row["target"], []).append(row)
        out: dict = {}
        for model, sets in grouped.items():
            for name, targets in sets.items():
                for target, rows in targets.items():
                    entry = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in METRICS}
                    for key in ("ratios", "truth_ratios", "error_split"):
                        if key in rows[0]:  # results written before error_split have none
                            entry[key] = {r: _mean([row[key].get(r) for row in rows]) for r in rows[0][key]}
                    entry["n"] = len(rows)
                    out.setdefault(model, {}).setdefault(name, {})[target] = entry
        return out


def _rounded(values: Mapping[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(float(v), 4) for k, v in values.items()}


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def synthesizer_predictor(synthesizer) -> Predictor:
    """The :class:`~synthesis.Synthesizer` path: the acquired source crop in (normalized by the
    whole head's tissue peak), a 1 mm volume out, cut to the scoring region."""
    def predict(case: EvalCase) -> np.ndarray:
        out = synthesizer(case.source, case.source_spacing, case.source_protocol, case.target_protocol,
                          output_spacing=(1.0, 1.0, 1.0), source_peak=case.source_peak).volume
        return from_box(out, case.source_origin_mm, case.truth.shape)
    return predict


def paired_predictor(synthesizer) -> Predictor:
    """:func:`synthesizer_predictor` with the case's second source as well (None for a case
    without one, or whose target is the second source's own contrast)."""
    def predict(case: EvalCase) -> np.ndarray | None:
        if case.second is None or case.second_protocol.contrast.value == case.target_contrast:
            return None
        out = synthesizer(case.source, case.source_spacing, case.source_protocol, case.target_protocol,
                          output_spacing=(1.0, 1.0, 1.0), source_peak=case.source_peak,
                          second=case.second, second_peak=case.second_peak).volume
        return from_box(out, case.source_origin_mm, case.truth.shape)
    return predict


def n4_predictor(synthesizer) -> Predictor:
    """:func:`synthesizer_predictor` after N4 bias correction of the whole acquired head
    (:func:`synthesis.bias.n4_correct`), its tissue peak taken after the correction."""
    from synthesis.bias import n4_correct
    from synthesis.intensity import tissue_peak

    memo: dict[int, tuple[np.ndarray, float]] = {}

    def predict(case: EvalCase) -> np.ndarray:
        key = id(case.acquired_head)
        if key not in memo:  # one correction per acquired head (the cases of its targets)
            memo.clear()
            corrected = n4_correct(case.acquired_head, case.source_spacing)
            memo[key] = (corrected, tissue_peak(corrected, case.source_spacing))
        corrected, peak = memo[key]
        source = np.ascontiguousarray(corrected[case.source_box])
        out = synthesizer(source, case.source_spacing, case.source_protocol, case.target_protocol,
                          output_spacing=(1.0, 1.0, 1.0), source_peak=peak).volume
        return from_box(out, case.source_origin_mm, case.truth.shape)
    return predict


def oracle_predictor(case: EvalCase) -> np.ndarray:
    """Physics oracle: the subject's *true* tissue fractions rendered with *nominal* tissue
    parameters. What no model can know from a T1w source is left out: the subject's own
    relaxation times and proton densities (jittered by up to ±10%). A reference for what
    the data allow, not a competitor."""
    return case.oracle


def sliced_oracle_predictor(case: EvalCase) -> np.ndarray | None:
    """The oracle put through the source's acquisition grid (thick slices, coarse voxels) and
    linearly back to 1 mm; None on a 1 mm source."""
    return case.sliced_oracle


def train_seeds(n: int) -> list[int]:
    """The first ``n`` subject seeds of the training split."""
    return list(SPLIT_SEEDS["train"])[:n]


class LookupBaseline:
    """Per-intensity look-up table: mean brain-relative target per normalized source bin.

    Fitted on training-split subjects with the in-distribution anatomy and acquisition, their
    T1w source normalized by its tissue peak as the Synthesizer does, targets the evaluation's own
    presets (the most favourable setting for this baseline).
    """

    def __init__(self, bins: int = 256) -> None:
        self.bins = bins
        self.tables: dict[str, np.ndarray] = {}

    def _index(self, normalized: np.ndarray) -> np.ndarray:
        return np.clip((normalized / SOURCE_MAX * (self.bins - 1)).round().astype(int), 0, self.bins - 1)

    def fit(self, subjects: Iterable[Subject]) -> "LookupBaseline":
        sums = {t: np.zeros(self.bins) for t in TARGETS}
        counts = {t: np.zeros(self.bins) for t in TARGETS}
        for subject in subjects:
            head = subject.fractions.astype(np.float32).sum(0) > 0.05
            acquired, spacing = acquire(render(subject, preset("T1", FIELD_T)), BASE_ACQ,
                                        np.random.default_rng([subject.seed, 5]))
            src, _ = normalize_source(acquired, spacing)
            idx = self._index(src[head])
            for target, name in TARGETS.items():
                tgt = brain_relative(render(subject, preset(name, FIELD_T)), subject.brain_mask)[head]
                sums[target] += np.bincount(idx, weights=tgt, minlength=self.bins)
                counts[target] += np.bincount(idx, minlength=self.bins)
        for target in TARGETS:
            filled = counts[target] > 0
            table = np.interp(np.arange(self.bins), np.flatnonzero(filled), sums[target][filled] / counts[target][filled])
            self.tables[target] = table.astype(np.float32)
        return self

    def predictor(self) -> Predictor:
        def predict(case: EvalCase) -> np.ndarray | None:
            table = self.tables.get(case.target_protocol.contrast.value)
            if table is None or case.set_name == "zeroshot":
                return None  # fitted per preset: no notion of other protocols
            return table[self._index(scale_source(case.source_1mm, case.source_peak))]
        return predict

    @classmethod
    def fitted(cls, n_subjects: int, cache_dir: Path | None) -> "LookupBaseline":
        """A table fitted on the first ``n_subjects`` training seeds (in-distribution anatomy)."""
        return cls().fit(make_case_subject(s, BASE_EDITS, cache_dir) for s in train_seeds(n_subjects))


def evaluate(predictors: Mapping[str, Predictor], cases: Iterable[EvalCase], *,
             on_case: Callable[[EvalCase, dict[str, np.ndarray]], None] | None = None,
             progress: bool = True, sets_of: Mapping[str, Collection[str]] | None = None) -> Evaluation:
    """Run every predictor on every case; ``on_case`` sees each case's predictions (pictures).

    ``sets_of``: predictor name -> the set names it runs on (absent: every set).
    """
    from tqdm import tqdm

    result = Evaluation()
    seen: set[tuple[str, int]] = set()
    for case in tqdm(cases, desc="evaluate", disable=not progress, unit="case"):
        if (case.set_name, case.subject_seed) not in seen:
            seen.add((case.set_name, case.subject_seed))
            result.add_source(case)
        preds: dict[str, np.ndarray] = {}
        for name, predict in predictors.items():
            if sets_of and name in sets_of and case.set_name not in sets_of[name]:
                continue
            t0 = time.perf_counter()
            pred = predict(case)
            if pred is None:
                continue
            preds[name] = pred
            result.add(name, case, pred, time.perf_counter() - t0)
        if on_case is not None:
            on_case(case, preds)
    return result


def seed_groups(models: Iterable[str]) -> dict[str, list[str]]:
    """Group ``NAME/seedK`` model names by NAME (sorted by K); other names are left out."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for model in models:
        m = _SEED_NAME.match(model)
        if m:
            groups.setdefault(m["group"], []).append((int(m["seed"]), model))
    return {g: [name for _, name in sorted(items)] for g, items in groups.items()}


def group_summary(summary: Mapping[str, Mapping], members: list[str], sets: Collection[str],
                  targets: Iterable[str]) -> dict[str, dict[str, float | int]]:
    """Mean ± spread over seeds of the PSNR averaged over ``sets``: target -> {mean, spread, n}.

    Each seed's value is its PSNR averaged over the sets it was evaluated on (all of
    ``sets`` present); spread is the sample standard deviation over seeds (0 for one seed).
    """
    out: dict[str, dict[str, float | int]] = {}
    for target in targets:
        per_seed = []
        for model in members:
            values = [summary[model][s][target]["psnr"] for s in sets if target in summary.get(model, {}).get(s, {})]
            if values:
                per_seed.append(float(np.mean(values)))
        if per_seed:
            spread = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
            out[target] = {"mean": round(float(np.mean(per_seed)), 3), "spread": round(spread, 3), "n": len(per_seed)}
    return out

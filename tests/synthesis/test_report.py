"""The evaluation report's target checks and tables (synthetic results, no model)."""
from __future__ import annotations

from synthesis.report import check_targets, render_markdown

TARGETS = ["T2w", "PDw", "FLAIR"]
RATIOS = {"GM/WM": 1.4, "CSF/GM": 2.0, "lesion/WM": 2.0}


def _m(psnr: float, ssim: float = 0.96, rmse: float = 1.5, lesion: float = 2.0) -> dict:
    return {"psnr": psnr, "ssim": ssim, "mae": 0.02, "rmse_pct": rmse, "n": 1,
            "ratios": {**RATIOS, "lesion/WM": lesion}, "truth_ratios": dict(RATIOS)}


def _sets() -> list[dict]:
    return [{"name": n, "group": g, "description": n} for n, g in (
        ("in_distribution", "in_distribution"), ("ventricles_6mm", "anatomy"), ("lesions_30", "anatomy"),
        ("snr_10", "acquisition"), ("slices_5mm", "acquisition"))]


def _result(**extra) -> dict:
    full = {"in_distribution": {t: _m(31.0) for t in TARGETS},
            "ventricles_6mm": {t: _m(28.0) for t in TARGETS},           # drop 3 dB: missed
            "lesions_30": {t: _m(30.5, lesion=2.2) for t in TARGETS},   # +10%: met
            "snr_10": {t: _m(30.0) for t in TARGETS},
            "slices_5mm": {t: _m(25.0) for t in TARGETS}}
    summary = {
        "rtfsyn": full,
        "oracle": {"in_distribution": {"T2w": _m(45.0), "PDw": _m(32.5), "FLAIR": _m(44.0)}},
        "oracle-sliced": {"slices_5mm": {t: _m(24.0) for t in TARGETS}},
        "lookup": {"ventricles_6mm": {t: _m(24.0) for t in TARGETS}, "lesions_30": {t: _m(28.0) for t in TARGETS}},
        "full/seed0": {s: {t: _m(26.0) for t in TARGETS} for s in full},
        "full/seed1": {s: {t: _m(28.0) for t in TARGETS} for s in full},
        "no-text/seed0": {s: {t: _m(26.5) for t in TARGETS} for s in full},
        "no-text/seed1": {s: {t: _m(26.5) for t in TARGETS} for s in full},
    }
    return {"summary": summary, "targets": TARGETS, "sets": _sets(), "subjects": [2000000], "crop": "brain",
            "model": {"checkpoint": "default"}, "notes": ["a note"], "ablation_reference": "full",
            "ablation_sets": [s["name"] for s in _sets()], "ablation_commands": ["rtfsyn train --x"], **extra}


def _checks(result: dict) -> dict:
    return {statement: (met, measured) for _, statement, met, measured in check_targets(result)}


def test_targets_are_met_or_missed_as_measured() -> None:
    checks = _checks(_result())
    assert checks["T1w→T2w: PSNR ≥ 30 dB and SSIM ≥ 0.95"] == (True, "31.00 dB, 0.9600")
    assert checks["T1w→PDw within 3 dB of its physics oracle"] == (True, "31.00 vs oracle 32.50 dB")
    assert checks["T1w→FLAIR: brain-relative RMSE ≤ 2%"] == (True, "1.50%")
    assert checks["T1w→T2w: worst drop from in distribution ≤ 2 dB"] == (False, "3.00 dB (ventricles_6mm)")
    assert checks["ventricles_6mm: ≥ 3 dB above the look-up baseline"] == (True, "smallest margin +4.00 dB (T2w)")
    assert checks["lesions_30: ≥ 3 dB above the look-up baseline"] == (False, "smallest margin +2.50 dB (T2w)")
    assert checks["lesions_30, T1w→FLAIR: lesion/WM contrast within ±15% of the truth"] == (
        True, "2.200 vs truth 2.000 (+10.0%)")
    assert checks["snr_10: ≤ 1.5 dB below in distribution"] == (True, "worst drop 1.00 dB (T2w)")
    assert checks["slices_5mm: at or above the sliced oracle"] == (True, "smallest margin +1.00 dB (T2w)")
    # full 27.0 ± 1.4 vs no-text 26.5 on the shift sets: a margin of 0.5 dB
    assert checks["full model (full, same budget) beats no-text by ≥ 1 dB on the shift sets (mean of 2 seeds)"] \
        == (False, "smallest margin +0.50 dB (T2w)")


def test_targets_not_measured_are_listed_not_dropped() -> None:
    result = _result()
    result["sets"] = result["sets"][:1]
    checks = _checks(result)
    assert checks["bias_0.3: ≤ 1.5 dB below in distribution"] == (None, "not measured")
    assert checks["slices_3mm: at or above the sliced oracle"] == (None, "not measured")
    assert checks["anatomy shift sets"] == (None, "not measured (no anatomy set evaluated)")


def test_markdown_has_every_section_and_marks_misses() -> None:
    real = {"file": "nibabel/tests/data/anatomical.nii", "package": "nibabel 5", "licence": "MIT",
            "description": "real.", "shape": [25, 41, 33], "spacing_mm": [2.0, 2.0, 2.0],
            "source_class_fractions": {"csf": 0.2, "gm": 0.4, "wm": 0.4},
            "models": {"rtfsyn": {"T2w": {"order_observed": "csf > wm > gm", "order_expected": "csf > gm > wm",
                                          "order_ok": False, "ratios": {"GM/WM": 0.9, "CSF/GM": 1.2},
                                          "physics_ratios": {"GM/WM": 1.45, "CSF/GM": 1.99},
                                          "dice": {"csf": 0.5, "gm": 0.6, "wm": 0.1}, "sharpness_ratio": 0.5,
                                          "stability_pct": {"scaled x2": 0.0}}}}}
    text = render_markdown(_result(real_t1=real), command="rtfsyn evaluate --x", pictures={"k": "img/k.png"})
    assert text.startswith("# Evaluation\n\nReproduce: `rtfsyn evaluate --x`")
    for heading in ("## Method", "## Targets", "## In distribution", "## Anatomy shift", "## Acquisition shift",
                    "## Ablations", "## Real T1 without a truth", "## Notes", "## Pictures"):
        assert heading in text
    assert "| anatomy shift | T1w→T2w: worst drop from in distribution ≤ 2 dB | **no** | 3.00 dB (ventricles_6mm) |" in text
    assert "| full (reference) | 2 | 27.00 ± 1.41 |" in text
    assert "csf > wm > gm (physics: csf > gm > wm) **wrong**" in text
    assert "rtfsyn train --x" in text and "![k](img/k.png)" in text
    assert "**28.00** (-3.00), 0.960; lookup 24.00" in text

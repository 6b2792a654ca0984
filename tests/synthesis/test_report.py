"""The evaluation report's target checks (synthetic summaries, no model)."""
from __future__ import annotations

from synthesis.report import check_targets, render_markdown


def _m(psnr: float, ssim: float = 0.9) -> dict:
    return {"psnr": psnr, "ssim": ssim, "mae": 0.05}


def _summary() -> dict:
    return {
        "rtfsyn": {"clean": {"T2w": _m(31.0, 0.96), "PDw": _m(29.0, 0.96)},
                   "noise": {"T2w": _m(30.0), "PDw": _m(27.0)}},
        "lookup": {"clean": {"T2w": _m(25.0), "PDw": _m(28.5)}},
        "full-900": {"clean": {"T2w": _m(22.0), "PDw": _m(20.0)}},
        "no-text": {"clean": {"T2w": _m(21.5), "PDw": _m(18.0)}},
        "oracle": {"clean": {"T2w": _m(40.0), "PDw": _m(21.0)}},
    }


def test_targets_compare_the_model_with_its_baselines():
    checks = {s: (met, measured) for s, met, measured in check_targets(_summary(), ["T2w", "PDw"])}
    assert checks["T1w→T2w: PSNR ≥ 30.0 dB and SSIM ≥ 0.95"] == (True, "31.00 dB, 0.9600")
    assert checks["T1w→PDw: PSNR ≥ 30.0 dB and SSIM ≥ 0.95"][0] is False
    assert checks["noise: ≤ 1.5 dB below clean"] == (False, "worst drop 2.00 dB")
    assert checks["full model beats lookup by ≥ 1.0 dB"] == (False, "smallest margin 0.50 dB")
    # without a reference, an ablation is compared with the evaluated (shipped) model
    assert checks["full model beats no-text by ≥ 1.0 dB"] == (True, "smallest margin 9.50 dB")
    assert not any("oracle" in s for s in checks)  # a reference for the data, not a competitor


def test_ablations_are_compared_with_the_same_budget_reference():
    checks = {s: (met, measured) for s, met, measured
              in check_targets(_summary(), ["T2w", "PDw"], ablation_reference="full-900")}
    assert checks["full model (full-900, same budget) beats no-text by ≥ 1.0 dB"] == (
        False, "smallest margin 0.50 dB")
    assert checks["full model beats lookup by ≥ 1.0 dB"][0] is False  # lookup: vs the shipped model
    assert not any("beats full-900" in s for s in checks)


def test_markdown_lists_every_model_and_target():
    result = {"summary": _summary(), "targets": ["T2w", "PDw"], "conditions": ["clean", "noise"],
              "model": {"checkpoint": "default"}, "subjects": [2000000], "crop": "brain",
              "severities": {"noise": "Effects(noise=0.03)"}, "notes": ["a note"],
              "ablation_reference": "full-900"}
    text = render_markdown(result, command="rtfsyn evaluate", pictures={})
    for model in ("rtfsyn", "lookup", "full-900", "no-text"):
        assert f"| {model} |" in text
    assert "| full model (full-900, same budget) beats no-text by ≥ 1.0 dB | **no** | smallest margin 0.50 dB |" in text
    assert "- a note" in text

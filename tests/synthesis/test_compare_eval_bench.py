"""bench/compare_eval.py: the selection rule of docs/TRAINING.md applied to two evaluations."""
from __future__ import annotations

import copy
import json

import pytest

from bench.compare_eval import Thresholds, compare, main

SETS = {"in_distribution": "in_distribution", "ventricles_3mm": "anatomy", "lesions_30": "anatomy",
        "snr_10": "acquisition", "ghosting": "acquisition"}
TARGETS = ("T2w", "PDw", "FLAIR")


def _evaluation(psnr: float = 20.0, lesion: float = 1.5, truth_lesion: float = 1.6) -> dict:
    summary = {}
    for s in SETS:
        for t in TARGETS:
            entry = {"psnr": psnr, "ssim": 0.9, "mae": 0.05, "rmse_pct": 3.0, "n": 2,
                     "ratios": {"GM/WM": 1.2, "CSF/GM": 1.5, "lesion/WM": lesion if s == "lesions_30" else None},
                     "truth_ratios": {"GM/WM": 1.2, "CSF/GM": 1.5,
                                      "lesion/WM": truth_lesion if s == "lesions_30" else None}}
            summary.setdefault(s, {})[t] = entry
    rows = [{"model": "rtfsyn", "set": s, "target": t, "subject": n} for s in SETS for t in TARGETS for n in (1, 2)]
    return {"summary": {"rtfsyn": summary}, "rows": rows,
            "sets": [{"name": s, "group": g} for s, g in SETS.items()]}


def test_the_same_evaluation_fails_only_the_mean_gain_and_passes_once_no_gain_is_asked() -> None:
    base = _evaluation()
    verdict = compare(base, copy.deepcopy(base), "same")
    assert not verdict.passed and len(verdict.failures) == 1 and "mean of the 15 pairs" in verdict.failures[0]
    assert compare(base, copy.deepcopy(base), "same", Thresholds(min_mean_gain=0.0)).passed


def test_each_criterion_fails_on_its_own_loss() -> None:
    base = _evaluation()
    better = _evaluation(psnr=21.0)
    assert compare(base, better, "better").passed

    cand = copy.deepcopy(better)
    cand["summary"]["rtfsyn"]["in_distribution"]["PDw"]["psnr"] = 19.6        # -0.4 dB in distribution
    assert compare(base, cand, "x").failures == ["in distribution PDw: -0.40 dB"]

    cand = copy.deepcopy(better)
    cand["summary"]["rtfsyn"]["in_distribution"]["T2w"]["rmse_pct"] = 3.4     # +0.4 points of RMSE
    assert compare(base, cand, "x").failures == ["in distribution T2w: RMSE +0.40 points"]

    cand = copy.deepcopy(better)                                              # one anatomy set -1.4, the other +1.0
    cand["summary"]["rtfsyn"]["ventricles_3mm"]["FLAIR"]["psnr"] = 18.6
    assert compare(base, cand, "x").passed and compare(base, cand, "x").group_deltas["anatomy"]["FLAIR"] == -0.2
    cand["summary"]["rtfsyn"]["ventricles_3mm"]["FLAIR"]["psnr"] = 18.0       # mean -0.5
    assert compare(base, cand, "x").failures == ["anatomy mean FLAIR: -0.50 dB"]

    cand = copy.deepcopy(better)
    cand["summary"]["rtfsyn"]["ghosting"]["T2w"]["psnr"] = 19.4               # one acquisition pair -0.6
    assert compare(base, cand, "x").failures == ["ghosting T2w: -0.60 dB"]


def test_lesion_contrast_is_judged_as_the_report_reads_it_or_against_the_base() -> None:
    base = _evaluation(lesion=1.44, truth_lesion=1.6)                          # -10 % of the truth
    assert compare(base, _evaluation(psnr=21.0, lesion=1.44), "x").passed
    far = _evaluation(psnr=21.0, lesion=1.28)                                 # -20 %
    assert compare(base, far, "x").failures == ["lesion/WM T2w: -20.0% of the truth",
                                               "lesion/WM FLAIR: -20.0% of the truth"]
    closer = Thresholds(lesion_closer=True)
    assert not compare(base, _evaluation(psnr=21.0, lesion=1.44), "x", closer).passed   # not closer: equal
    assert compare(base, _evaluation(psnr=21.0, lesion=1.52), "x", closer).passed
    assert compare(base, _evaluation(psnr=21.0, lesion=1.68), "x", closer).passed      # +5 %: closer than -10 %


def test_every_set_must_keep_lesions_brighter_than_white_matter_and_their_error_from_growing() -> None:
    def with_small_lesions(ev: dict, ratio: float) -> dict:               # ventricles_3mm has a few lesions too
        for t in TARGETS:
            entry = ev["summary"]["rtfsyn"]["ventricles_3mm"][t]
            entry["ratios"]["lesion/WM"], entry["truth_ratios"]["lesion/WM"] = ratio, 1.6
        return ev

    base = with_small_lesions(_evaluation(lesion=1.44), 1.2)                  # -25 % there
    every = Thresholds(min_mean_gain=0.0, lesion_every_set=5.0)
    assert compare(base, with_small_lesions(_evaluation(lesion=1.44), 1.15), "x", every).passed   # +3.1 points
    grown = compare(base, with_small_lesions(_evaluation(lesion=1.44), 1.1), "x", every)           # +6.3 points
    assert grown.failures == ["ventricles_3mm T2w: lesion/WM error -31.2%, was -25.0%",
                              "ventricles_3mm FLAIR: lesion/WM error -31.2%, was -25.0%"]
    dark = compare(base, with_small_lesions(_evaluation(lesion=1.44), 0.95), "x", every)
    assert dark.failures[0] == "ventricles_3mm T2w: lesion/WM 0.950, lesions not brighter than white matter"
    # without the option the same candidate passes: criterion 6 is what catches it
    assert compare(base, with_small_lesions(_evaluation(lesion=1.44), 0.95), "x", Thresholds(min_mean_gain=0.0)).passed
    no_lesions = _evaluation()
    for s in SETS:
        for t in TARGETS:
            no_lesions["summary"]["rtfsyn"][s][t]["ratios"]["lesion/WM"] = None
    assert "lesion/WM on every set: no set with lesions scored" in compare(
        no_lesions, copy.deepcopy(no_lesions), "x", every).unjudged


def test_a_criterion_without_cases_is_not_judged_and_different_cases_are_refused() -> None:
    base = _evaluation()
    for ev in (base, cand := _evaluation(psnr=21.0)):
        ev["summary"]["rtfsyn"].pop("lesions_30")
        ev["rows"] = [r for r in ev["rows"] if r["set"] != "lesions_30"]
    verdict = compare(base, cand, "x")
    assert not verdict.passed and not verdict.failures
    assert verdict.unjudged == ["lesion/WM T2w: lesions_30 not scored", "lesion/WM FLAIR: lesions_30 not scored"]
    other = _evaluation(psnr=21.0)
    other["rows"] = [r for r in other["rows"] if r["subject"] == 1]
    with pytest.raises(ValueError, match="different cases"):
        compare(_evaluation(), other, "x")


def test_the_command_line_names_the_file_and_exits_by_the_verdict(tmp_path, capsys) -> None:
    base, good, bad = (tmp_path / f"{n}.json" for n in ("base", "good", "bad"))
    base.write_text(json.dumps(_evaluation()))
    good.write_text(json.dumps(_evaluation(psnr=21.0)))
    bad.write_text("{}")
    assert main([str(base), f"{good}:step300"]) == 0
    assert "step300: PASS" in capsys.readouterr().out
    assert main([str(base), str(good), "--min-mean-gain", "2", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["mean_delta"] == pytest.approx(1.0)
    assert main([str(base), str(bad)]) == 2
    assert f"{bad}: not an 'rtfsyn evaluate --output' file" in capsys.readouterr().err

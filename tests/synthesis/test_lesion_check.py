"""The lesion check: which targets a model shows white-matter lesions for, bound to its file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthesis import checkpoint as ckpt
from synthesis.inference import Synthesizer
from synthesis.lesion_check import checks_path, lesion_checks, load_checks, refusal, write_checks

# ratios as the evaluation summary holds them (the shipped model of 2026-12-06 before lesion weighting)
SUMMARY = {"lesions_30": {
    "T2w": {"ratios": {"lesion/WM": 1.9006}, "truth_ratios": {"lesion/WM": 2.3352}},
    "PDw": {"ratios": {"lesion/WM": 1.0235}, "truth_ratios": {"lesion/WM": 1.2109}},
    "FLAIR": {"ratios": {"lesion/WM": 0.3376}, "truth_ratios": {"lesion/WM": 1.59}},
    "T1w": {"ratios": {"lesion/WM": 0.99}, "truth_ratios": {"lesion/WM": 1.01}},   # no contrast to show
}}


def test_a_target_passes_with_half_the_truths_lesion_contrast_and_its_sign() -> None:
    checks = lesion_checks(SUMMARY)
    assert set(checks) == {"T2w", "PDw", "FLAIR"}                  # T1w: truth shows no lesion
    assert checks["T2w"]["passed"] and checks["T2w"]["contrast_share"] == pytest.approx(0.9006 / 1.3352, abs=1e-3)
    assert not checks["PDw"]["passed"]                              # 11 % of the contrast
    assert not checks["FLAIR"]["passed"] and checks["FLAIR"]["contrast_share"] < 0   # darker than WM
    assert refusal(checks, "T2w") is None and refusal(checks, "T1w") is None
    reason = refusal(checks, "FLAIR")
    assert reason is not None and "0.34" in reason and "1.59" in reason and "FLAIR" in reason


def test_checks_are_bound_to_the_checkpoint_file(tmp_path: Path, tiny_checkpoint: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(tiny_checkpoint.read_bytes())
    digest = ckpt.sha256(model)
    written = write_checks(model, digest, SUMMARY, "rtfsyn evaluate --write-checks")
    assert written == checks_path(model) == tmp_path / "model.checks.json"
    assert set(load_checks(model, digest)) == {"T2w", "PDw", "FLAIR"}
    assert load_checks(model, "f" * 64) == {}                      # written for another file: ignored
    syn = Synthesizer(model, "cpu")                                 # the node's synthesizer reads them
    assert syn.target_refusal("FLAIR") is not None and syn.target_refusal("T2w") is None
    written.write_text("{not json")
    with pytest.raises(ValueError, match="model.checks.json"):
        load_checks(model, digest)


def test_no_lesion_set_no_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lesions_30"):
        write_checks(tmp_path / "m.pt", "0" * 64, {"in_distribution": {}}, "x")
    assert not (tmp_path / "m.checks.json").exists()
    assert json.loads(json.dumps(lesion_checks({}))) == {}


def test_a_second_source_has_checks_of_its_own(tmp_path: Path, tiny_checkpoint: Path) -> None:
    paired = {"lesions_30": {"FLAIR": {"ratios": {"lesion/WM": 1.45}, "truth_ratios": {"lesion/WM": 1.59}},
                             "PDw": {"ratios": {"lesion/WM": 1.02}, "truth_ratios": {"lesion/WM": 1.21}}}}
    model = tmp_path / "model.pt"
    model.write_bytes(tiny_checkpoint.read_bytes())
    write_checks(model, ckpt.sha256(model), SUMMARY, "x", {"T2w": paired})
    checks = load_checks(model, ckpt.sha256(model))
    assert set(checks) == {"T2w", "PDw", "FLAIR", "FLAIR+T2w", "PDw+T2w"}
    assert refusal(checks, "FLAIR") is not None                    # from the T1 alone: refused
    assert refusal(checks, "FLAIR", "T2w") is None                 # with the T2w: shown
    reason = refusal(checks, "PDw", "T2w")
    assert reason is not None and "with a T2w second source" in reason
    assert refusal(checks, "FLAIR", "PDw") == refusal(checks, "FLAIR")   # never checked: the T1's verdict
    assert refusal(checks, "T2w", "PDw") is None

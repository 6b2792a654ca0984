"""``rtfsyn evaluate``: the JSON it prints is what the report shows, and the committed
report (docs/EVALUATION.md) is the one its committed JSON result renders."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dicom_node.cli import main
from synthesis.report import render_markdown

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_evaluate_json_matches_its_report(tiny_checkpoint: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "EVAL.md"
    argv = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--subjects", "1", "--crop", "24,24,24",
            "--conditions", "clean,noise", "--no-lookup", "--no-progress", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--json", "--report", str(report)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    summary = result["summary"]
    assert set(summary) == {"rtfsyn", "oracle"}
    assert set(summary["rtfsyn"]) == {"clean", "noise"}
    assert set(summary["oracle"]) == {"clean"}  # references run on the clean source only
    text = report.read_text()
    assert result["command"] in text
    for model in summary:
        for target, m in summary[model]["clean"].items():  # an untrained model's SSIM may be < 0
            assert m["n"] == 1 and -1.0 <= m["ssim"] <= 1.0 and m["mae"] >= 0.0
            assert f"{m['psnr']:.2f} / {m['ssim']:.4f} / {m['mae']:.4f}" in text, (model, target)
    assert (tmp_path / "img" / "eval_T2w.png").stat().st_size > 1000


def test_the_committed_report_is_rendered_from_the_committed_result() -> None:
    result = json.loads((ROOT / "bench" / "results" / "evaluation.json").read_text())
    doc = (ROOT / "docs" / "EVALUATION.md").read_text()
    pictures = dict(re.findall(r"!\[(\w+)\]\((img/eval_\w+\.png)\)", doc))
    assert render_markdown(result, command=result["command"], pictures=pictures) == doc
    for rel in pictures.values():
        assert (ROOT / "docs" / rel).is_file()

"""Bad files for ``rtfsyn synthesize``: a non-DICOM file beside a series is skipped (and
counted in the log), a truncated file is refused with a message naming the file, and nothing
is written."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dicom_node.cli import main
from tests.reliability.figures import input_tried
from tests.reliability.helpers import small_series


def _synthesize(src: Path, out: Path, checkpoint: Path) -> int:
    return main(["synthesize", str(src), str(out), "--target", "T2", "--device", "cpu",
                 "--checkpoint", str(checkpoint)])


def test_non_dicom_file_beside_a_series_is_skipped(tmp_path: Path, tiny_checkpoint: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    files = small_series(tmp_path / "src", n_slices=10)  # 20 mm: what a volume must cover
    (tmp_path / "src" / "junk.dcm").write_bytes(b"not DICOM at all " * 64)
    with caplog.at_level(logging.INFO):
        code = _synthesize(tmp_path / "src", tmp_path / "out", tiny_checkpoint)
    assert code == 0
    assert "Skipped 1 files" in caplog.text
    assert len(list((tmp_path / "out").iterdir())) > 0 and len(files) == 10
    input_tried("CLI: non-DICOM file in the folder", "skipped (logged); series processed")


def test_truncated_pixel_data_is_refused_naming_the_file(tmp_path: Path, tiny_checkpoint: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    files = small_series(tmp_path / "src")
    victim = sorted(files)[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 300])
    code = _synthesize(tmp_path / "src", tmp_path / "out", tiny_checkpoint)
    err = capsys.readouterr().err
    assert code == 2 and victim.name in err, err
    assert not (tmp_path / "out").exists()
    input_tried("CLI: truncated file (pixel data cut)", err.strip()[:90])


def test_truncated_header_is_refused(tmp_path: Path, tiny_checkpoint: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    files = small_series(tmp_path / "src")
    victim = sorted(files)[0]
    victim.write_bytes(victim.read_bytes()[:400])
    code = _synthesize(tmp_path / "src", tmp_path / "out", tiny_checkpoint)
    err = capsys.readouterr().err
    assert code == 2 and "rtfsyn synthesize: error" in err, err
    assert not (tmp_path / "out").exists()
    input_tried("CLI: truncated file (header cut)", err.strip()[:90])

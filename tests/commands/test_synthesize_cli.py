"""``rtfsyn synthesize`` in-process: a simulated series in, a dciodvfy-clean derived series out;
bad input gives a clear message, a non-zero exit and no output."""
from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.helpers.dicom_factory import DCIODVFY, T2_TSE, dciodvfy_errors, make_series
from dicom_node.cli import main
from dicom_node.tools.simseries import write_series
from synthesis.protocol import preset


@pytest.fixture()
def simulated_t1(tmp_path: Path) -> Path:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (20, 16, 16)), indexing="ij")
    volume = np.where(z**2 + y**2 + x**2 < 0.6, 900.0, 80.0) + 50.0 * (y + 1)
    folder = tmp_path / "t1"
    write_series(volume, (1.0, 1.0, 1.0), preset("T1"), folder, seed=11)
    (folder / "README.txt").write_text("not DICOM; skipped")
    return folder


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("output_format", ["mr", "enhanced-mr", "parametric-map"])
def test_synthesize_writes_a_valid_derived_series(tmp_path: Path, simulated_t1: Path,
                                                  tiny_checkpoint: Path, output_format: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "derived" / "t2"
    code = main(["synthesize", str(simulated_t1), str(out), "--target", "t2", "--device", "cpu",
                 "--checkpoint", str(tiny_checkpoint), "--format", output_format])
    assert code == 0
    files = sorted(out.iterdir())
    expected = 20 if output_format == "mr" else 1
    assert len(files) == expected
    assert str(out) in capsys.readouterr().out
    ds = pydicom.dcmread(files[0])
    mark = {"mr": "", "enhanced-mr": " MF", "parametric-map": " MAP"}[output_format]
    assert ds.SyntheticData == "YES"
    assert ds.SeriesDescription.startswith(f"SYN T2w{mark} (RTFSyn)")
    assert _leftovers(out.parent) == []
    if shutil.which(DCIODVFY):
        for path in files:
            assert dciodvfy_errors(path) == [], path.name


def test_bias_correction_flag_runs_n4_on_the_source(tmp_path: Path, simulated_t1: Path,
                                                    tiny_checkpoint: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import synthesis.bias

    real, shapes = synthesis.bias.n4_correct, []

    def spy(volume: np.ndarray, spacing: tuple) -> np.ndarray:
        shapes.append(volume.shape)
        return real(volume, spacing)

    monkeypatch.setattr(synthesis.bias, "n4_correct", spy)

    def synthesize(out: str, *flags: str) -> int:
        return main(["synthesize", str(simulated_t1), str(tmp_path / out), "--target", "T2",
                     "--device", "cpu", "--checkpoint", str(tiny_checkpoint), *flags])

    assert synthesize("plain") == 0 and shapes == []
    assert synthesize("n4", "--bias-correction") == 0
    assert shapes == [(20, 16, 16)] and len(list((tmp_path / "n4").iterdir())) == 20


def test_blank_series_is_refused_with_the_reason(tmp_path: Path, tiny_checkpoint: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    # 24 slices of 1 mm: enough for a volume, so the blank pixels are what is refused (by the
    # eligibility rules, before the model is asked)
    write_series(np.zeros((24, 16, 16)), (1.0, 1.0, 1.0), preset("T1"), tmp_path / "blank",
                 seed=3)
    code, err = _run_failing([str(tmp_path / "blank"), str(tmp_path / "out"), "--target", "T2",
                              "--checkpoint", str(tiny_checkpoint)], capsys)
    assert code != 0 and "not eligible (blank)" in err and str(tmp_path / "blank") in err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def _run_failing(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["synthesize", *args, "--device", "cpu"])
    return code, capsys.readouterr().err


def test_two_series_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_series(tmp_path / "src" / "a")
    make_series(tmp_path / "src" / "b", tags=T2_TSE)
    uids = {pydicom.dcmread(next((tmp_path / "src" / d).iterdir())).SeriesInstanceUID
            for d in ("a", "b")}
    code, err = _run_failing([str(tmp_path / "src"), str(tmp_path / "out"), "--target", "T2"],
                             capsys)
    assert code != 0 and "holds 2 series, one is expected" in err
    assert all(f"5 files, UID {uid})" in err for uid in uids)
    assert "'t1_mprage_sag' (series number 7, folder a," in err  # description and folder
    assert "'t2_tse_ax' (series number 7, folder b," in err
    assert not (tmp_path / "out").exists()


def test_rejected_series_names_the_rule(tmp_path: Path, tiny_checkpoint: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    def tilt(ds: pydicom.Dataset, k: int) -> None:
        if k == 2:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]

    make_series(tmp_path / "src", mutate=tilt)
    code, err = _run_failing([str(tmp_path / "src"), str(tmp_path / "out"), "--target", "FLAIR",
                              "--checkpoint", str(tiny_checkpoint)], capsys)
    assert code != 0 and "mixed orientations" in err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_corrupt_file_is_named(tmp_path: Path, tiny_checkpoint: Path,
                               capsys: pytest.CaptureFixture) -> None:
    paths = make_series(tmp_path / "src")
    ds = pydicom.dcmread(paths[0])
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(paths[0])
    code, err = _run_failing([str(tmp_path / "src"), str(tmp_path / "out"), "--target", "T2",
                              "--checkpoint", str(tiny_checkpoint)], capsys)
    assert code != 0 and paths[0].name in err and "cannot be decoded" in err
    assert not (tmp_path / "out").exists()


def test_a_damaged_deflated_file_beside_the_series_is_skipped_by_name(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from dicom_node.commands.synthesize import find_series_files

    paths = make_series(tmp_path / "src" / "a")
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    damaged = tmp_path / "src" / "damaged.dcm"
    ds.save_as(damaged, enforce_file_format=True)
    raw = damaged.read_bytes()
    damaged.write_bytes(raw[:len(raw) - len(raw) // 3])  # the deflate stream cut short
    with pytest.raises(zlib.error):  # what the file does to pydicom itself
        pydicom.dcmread(damaged, stop_before_pixels=True)
    series = find_series_files(tmp_path / "src")
    assert list(series.values()) == [sorted(paths)]
    assert "damaged.dcm" in caplog.text and "a damaged DICOM file (error:" in caplog.text


@pytest.mark.parametrize("case", ["empty source", "missing source", "output not empty",
                                  "missing checkpoint"])
def test_bad_input_is_explained(tmp_path: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    src, out, checkpoint = tmp_path / "src", tmp_path / "out", "default"
    if case != "missing source":
        make_series(src) if case != "empty source" else src.mkdir()
    if case == "output not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if case == "missing checkpoint":
        checkpoint = str(tmp_path / "nope.pt")
    code, err = _run_failing([str(src), str(out), "--target", "PD", "--checkpoint", checkpoint],
                             capsys)
    expected = {"empty source": "no DICOM files found", "missing source": "is not a folder",
                "output not empty": "is not an empty folder",
                "missing checkpoint": "nope.pt"}[case]
    assert code != 0 and expected in err
    if case == "output not empty":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()


def test_synthesize_shows_stages_and_bars(tmp_path: Path, simulated_t1: Path,
                                          tiny_checkpoint: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    code = main(["synthesize", str(simulated_t1), str(tmp_path / "out"), "--target", "T2",
                 "--device", "cpu", "--checkpoint", str(tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 0
    stages = [line for line in err.splitlines() if line.startswith("[")]
    assert [line[:5] for line in stages] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    assert "encode: 100%" in err and "decode: 100%" in err  # the synthesis bars finished

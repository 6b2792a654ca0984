"""``rtfsyn demo`` in-process with the tiny checkpoint: derived files, PNG, job log."""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.cli import main

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
             ) -> tuple[int, str, Path]:
    """One small demo run (8 slices of 4 mm): exit code, stdout, workdir."""
    workdir = tmp_path_factory.mktemp("demo")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["demo", "--workdir", str(workdir), "--checkpoint", str(tiny_checkpoint),
                     "--device", "cpu", "--target", "T2", "--voxel-mm", "4", "--slices", "8",
                     "--timeout", "240"])
    DEMO_STDERR.append(err.getvalue())
    return code, out.getvalue(), workdir


DEMO_STDERR: list[str] = []  # what the module's demo run wrote on stderr (stages, bars)


def test_demo_shows_its_stages_and_synthesis_progress(demo_run: tuple[int, str, Path]) -> None:
    from dicom_node.tools.demo import DEMO_STAGES

    [err] = DEMO_STDERR
    stages = [line for line in err.splitlines() if re.match(r"^\[\d+/\d+\] ", line)]
    assert [line.split("] ", 1)[1] for line in stages] == list(DEMO_STAGES.values())
    assert "encode: 100%" in err and "decode: 100%" in err


def _printed_path(stdout: str, label: str) -> Path:
    match = re.search(rf"^\s*{re.escape(label)}\s+(\S+)", stdout, flags=re.MULTILINE)
    assert match, f"no line {label!r} in:\n{stdout}"
    return Path(match.group(1))


def test_demo_exits_zero_and_prints_where_everything_is(demo_run: tuple[int, str, Path]) -> None:
    code, stdout, workdir = demo_run
    assert code == 0, stdout
    for label in ("simulated source series", "synthetic T2 received", "node's copy of the result",
                  "job log (SQLite)", "preview (source | synthetic)"):
        path = _printed_path(stdout, label)
        assert path.exists(), label
        assert workdir in path.parents


def test_demo_receives_a_synthetic_series_of_the_source_study(
        demo_run: tuple[int, str, Path]) -> None:
    _, stdout, _ = demo_run
    source = sorted(_printed_path(stdout, "simulated source series").glob("*.dcm"))
    received = sorted(_printed_path(stdout, "synthetic T2 received").glob("*.dcm"))
    assert len(source) == 8
    assert len(received) == len(source)
    first_source = pydicom.dcmread(source[0], stop_before_pixels=True)
    for path in received:
        ds = pydicom.dcmread(path)
        assert ds.SyntheticData == "YES"
        assert ds.StudyInstanceUID == first_source.StudyInstanceUID
        assert ds.SeriesInstanceUID != first_source.SeriesInstanceUID
        assert ds.pixel_array.shape == (first_source.Rows, first_source.Columns)


def test_demo_preview_png_decodes(demo_run: tuple[int, str, Path]) -> None:
    import matplotlib.image

    _, stdout, _ = demo_run
    png = _printed_path(stdout, "preview (source | synthetic)")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert float(np.std(image[..., :3])) > 0.01  # not a blank picture


def test_demo_job_log_answers_rtfsyn_status(demo_run: tuple[int, str, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, stdout, _ = demo_run
    config = re.search(r"rtfsyn status --config (\S+)", stdout)
    assert config, stdout
    assert main(["status", "--config", config.group(1), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(j["state"], j["target"], j["destination"]) for j in report["jobs"]] == [
        ("done", "T2", "DEMO")]


def test_demo_without_a_checkpoint_fails_with_the_fix(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.pt"
    assert main(["demo", "--workdir", str(tmp_path), "--checkpoint", str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not any(tmp_path.glob("run-*")), "nothing may be started without a checkpoint"

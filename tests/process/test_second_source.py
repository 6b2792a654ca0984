"""A T2w series of the same study as a second source: resampled onto the first series' grid in
patient coordinates, checked (study, frame of reference, contrast, coverage), recorded."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicom_node.cli import main
from dicom_node.errors import RejectedSeries
from dicom_node.process.assemble import assemble_series
from dicom_node.process.pipeline import process_series
from dicom_node.process.volume import resample_onto
from dicom_node.tools.simseries import write_series
from synthesis import checkpoint
from synthesis.inference import Synthesizer
from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig
from synthesis.protocol import preset

STUDY, FOR = "1.2.826.0.1.3680043.8.498.71", "1.2.826.0.1.3680043.8.498.72"


def _head(shape: tuple[int, int, int], spacing: tuple[float, float, float], origin: tuple[float, ...],
          inside: float, outside: float) -> np.ndarray:
    """A ball of radius 9 mm around LPS (16, 16, 14) on a grid, with a ramp along x."""
    k, i, j = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    x, y, z = origin[0] + j * spacing[2], origin[1] + i * spacing[1], origin[2] + k * spacing[0]
    ball = (x - 16) ** 2 + (y - 16) ** 2 + (z - 14) ** 2 < 81
    return (np.where(ball, inside, outside) + 4.0 * x).astype(np.float32)


def _series(tmp_path: Path, name: str, protocol: str, *, shape=(28, 32, 32), spacing=(1.0, 1.0, 1.0),
            origin=(0.0, 0.0, 0.0), study=STUDY, frame=FOR, number=1, inside=900.0, outside=80.0) -> Path:
    folder = tmp_path / name
    write_series(_head(shape, spacing, origin, inside, outside), spacing, preset(protocol), folder,
                 study_uid=study, frame_of_reference_uid=frame, series_number=number, origin_mm=origin, seed=number)
    return folder


@pytest.fixture(scope="module")
def two_source_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("weights") / "two.pt"
    model = RTFSyn(RTFSynConfig.tiny(second_source=True))
    with torch.no_grad():
        model.stem_second.weight.normal_(0.0, 0.2)  # as if trained: the T2w changes the output
    checkpoint.save(model, path, extra={"purpose": "tests"})
    return path


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm")) or sorted(p for p in folder.iterdir() if p.is_file())


def test_the_second_series_is_resampled_onto_the_first_in_patient_coordinates(tmp_path: Path) -> None:
    first = assemble_series(_files(_series(tmp_path, "t1", "T1")))
    # 2 mm slices and 0.8 mm pixels, shifted by half a voxel; slice centres z 4..30 mm, so its
    # slabs cover z 3..31 mm and the first's slices (z 0..27 mm) from 3 mm on
    second = assemble_series(_files(_series(tmp_path, "t2", "T2", shape=(14, 40, 40), spacing=(2.0, 0.8, 0.8),
                                            origin=(0.4, 0.4, 4.0), number=2, inside=300.0, outside=300.0)))
    values, inside = resample_onto(second, first)
    assert values.shape == inside.shape == first.volume.shape
    covered = np.argwhere(inside.any(axis=(1, 2))).ravel()
    assert covered.tolist() == list(range(3, 28))
    # a ramp along x (4 per mm) comes through in patient coordinates, away from the borders
    truth = _head(first.volume.shape, first.spacing, first.geometry.origin, 300.0, 300.0)
    core = np.zeros_like(inside)
    core[6:25, 2:-2, 2:-2] = True
    assert inside[core].all()
    np.testing.assert_allclose(values[core], truth[core], atol=1.0)  # 1/4 mm of the ramp


def test_a_paired_series_is_synthesized_and_recorded(tmp_path: Path, two_source_checkpoint: Path) -> None:
    t1 = _files(_series(tmp_path, "t1", "T1"))
    t2 = _files(_series(tmp_path, "t2", "T2", spacing=(2.0, 1.0, 1.0), shape=(16, 32, 32), number=2,
                        origin=(0.0, 0.0, -1.0), inside=300.0, outside=20.0))
    syn = Synthesizer(two_source_checkpoint, "cpu")
    out = process_series(t1, "FLAIR", tmp_path / "out", syn, second_files=t2)
    alone = process_series(t1, "FLAIR", tmp_path / "alone", syn)
    ds = pydicom.dcmread(out.files[0])
    t2_uid = str(pydicom.dcmread(t2[0], stop_before_pixels=True).SeriesInstanceUID)
    assert f"and the T2w series {t2_uid} of the same study" in ds.DerivationDescription
    paired = np.stack([pydicom.dcmread(p).pixel_array for p in out.files])
    single = np.stack([pydicom.dcmread(p).pixel_array for p in alone.files])
    assert not np.array_equal(paired, single)                  # the second source was used


@pytest.mark.parametrize("case, message", [
    ("other study", "another study"),
    ("other frame", "another frame of reference"),
    ("PD", "it must be T2w; this series reads as PDw"),
    ("partial", "covers"),
    ("T2 target", "the second source's own contrast"),
])
def test_a_second_source_that_does_not_fit_is_refused_with_the_reason(
        tmp_path: Path, two_source_checkpoint: Path, case: str, message: str) -> None:
    t1 = _files(_series(tmp_path, "t1", "T1"))
    kwargs = {"other study": dict(study="1.2.826.0.1.3680043.8.498.73"),
              "other frame": dict(frame="1.2.826.0.1.3680043.8.498.74"),
              "partial": dict(shape=(22, 32, 32))}.get(case, {})
    second = _files(_series(tmp_path, "second", "PD" if case == "PD" else "T2", number=2, inside=300.0,
                            outside=20.0, **kwargs))
    with pytest.raises(RejectedSeries, match=message):
        process_series(t1, "T2" if case == "T2 target" else "FLAIR", tmp_path / "out",
                       Synthesizer(two_source_checkpoint, "cpu"), second_files=second)


def test_a_one_source_model_refuses_a_second_source(tmp_path: Path, tiny_checkpoint: Path) -> None:
    t1 = _files(_series(tmp_path, "t1", "T1"))
    t2 = _files(_series(tmp_path, "t2", "T2", number=2))
    with pytest.raises(RejectedSeries, match="takes one source"):
        process_series(t1, "FLAIR", tmp_path / "out", Synthesizer(tiny_checkpoint, "cpu"), second_files=t2)


def test_the_cli_takes_a_second_source_folder(tmp_path: Path, two_source_checkpoint: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    t1 = _series(tmp_path, "t1", "T1")
    t2 = _series(tmp_path, "t2", "T2", number=2, inside=300.0, outside=20.0)
    base = ["synthesize", str(t1), "--target", "FLAIR", "--device", "cpu", "--checkpoint", str(two_source_checkpoint)]
    assert main(base[:2] + [str(tmp_path / "out")] + base[2:] + ["--second-source", str(t2)]) == 0
    assert "and a T2w series (28 files)" in capsys.readouterr().out
    assert main(base[:2] + [str(tmp_path / "out2")] + base[2:] + ["--second-source", str(tmp_path / "nope")]) == 2
    assert "--second-source" in capsys.readouterr().err and not (tmp_path / "out2").exists()
    pd = _series(tmp_path, "pd", "PD", number=3)
    assert main(base[:2] + [str(tmp_path / "out3")] + base[2:] + ["--second-source", str(pd)]) == 2
    assert "it must be T2w" in capsys.readouterr().err and not (tmp_path / "out3").exists()


def _gated(tmp_path: Path, two_source_checkpoint: Path) -> Path:
    """A copy of the two-source checkpoint whose lesion checks refuse FLAIR from a T1 alone and
    pass FLAIR with a T2w (the checks file binds to the copy's SHA-256)."""
    from synthesis.lesion_check import write_checks

    model = tmp_path / "gated.pt"
    model.write_bytes(two_source_checkpoint.read_bytes())
    alone = {"lesions_30": {"FLAIR": {"ratios": {"lesion/WM": 0.74}, "truth_ratios": {"lesion/WM": 1.59}}}}
    paired = {"lesions_30": {"FLAIR": {"ratios": {"lesion/WM": 1.5}, "truth_ratios": {"lesion/WM": 1.59}}}}
    write_checks(model, checkpoint.sha256(model), alone, "test", {"T2w": paired})
    return model


@pytest.mark.parametrize("second_source", ["auto", "off", "auto, another frame"])
def test_the_node_pairs_a_t1_with_the_t2w_of_its_study(tmp_path: Path, pacs, two_source_checkpoint: Path,
                                                       second_source: str) -> None:
    from sqlalchemy import select

    from dicom_node.config import load_config
    from dicom_node.node import Node
    from dicom_node.store import db
    from tests.helpers.node import node_settings, send_files, wait_for, write_config

    settings = node_settings(
        tmp_path, model={"second_source": second_source.split(",")[0], "second_source_wait_seconds": 10.0},
        destinations={"PACS": {"ae_title": "TESTPACS", "host": "127.0.0.1", "port": pacs.port}},
        routes=[{"name": "t1", "match": {"Modality": "MR", "SeriesDescription": "T1"}, "targets": ["FLAIR"],
                 "destination": "PACS"}])
    config = load_config(write_config(settings, tmp_path / "node.toml"))
    t1 = _files(_series(tmp_path, "t1", "T1"))
    frame = "1.2.826.0.1.3680043.8.498.75" if "another frame" in second_source else FOR
    t2 = _files(_series(tmp_path, "t2", "T2", number=2, inside=300.0, outside=20.0, frame=frame))
    syn = Synthesizer(_gated(tmp_path, two_source_checkpoint), "cpu")
    with Node(config, synthesizer=syn) as node:
        send_files(t2, node.address[1])   # no route matches the T2w: it is kept, ignored
        send_files(t1, node.address[1])

        def finished() -> list:
            with node.log.session() as s:
                jobs = list(s.scalars(select(db.Job)))
            return jobs if jobs and all(j.state in (db.JobState.DONE, db.JobState.REJECTED) for j in jobs) else []

        (job,) = wait_for(finished, timeout=60, what="the FLAIR job finished")
    if second_source == "off":
        assert job.state == db.JobState.REJECTED and "does not show white-matter lesions" in job.reason
        assert "second source" not in job.reason
        return
    if "another frame" in second_source:  # found, not usable: the T1 alone, refused, and why
        assert job.state == db.JobState.REJECTED and "does not show white-matter lesions" in job.reason
        assert "(the study's second source: another frame of reference" in job.reason
        return
    assert job.state == db.JobState.DONE, job.reason
    t2_uid = str(pydicom.dcmread(t2[0], stop_before_pixels=True).SeriesInstanceUID)
    assert pacs.count == len(t1)
    assert all(f"and the T2w series {t2_uid}" in ds.DerivationDescription for ds in pacs.datasets)


class _Log:
    """A job log whose T2w companion is still arriving for the first ``arriving`` looks."""

    def __init__(self, files: list[Path], arriving: int) -> None:
        self.files, self.arriving, self.looks = files, arriving, 0

    def study_companions(self, series_uid: str) -> list:
        from dicom_node.store.db import SeriesState

        self.looks += 1
        state = SeriesState.RECEIVING if self.looks <= self.arriving else SeriesState.IGNORED
        return [("1.2.3.4", state)]

    def is_derived_series(self, uid: str) -> bool:
        return False

    def released_instances(self, uid: str) -> list[Path]:
        return self.files


@pytest.mark.parametrize("arriving, wait, found", [(0, 5.0, True), (3, 5.0, True), (1000, 0.3, False)])
def test_a_job_waits_for_a_t2w_still_arriving_within_its_limit(tmp_path: Path, two_source_checkpoint: Path,
                                                               arriving: int, wait: float, found: bool) -> None:
    import dataclasses

    from dicom_node.config import Config
    from dicom_node.process.processor import SynthesisProcessor
    from types import SimpleNamespace

    t2 = _files(_series(tmp_path, "t2", "T2", number=2))
    base = Config()
    config = dataclasses.replace(base, node=dataclasses.replace(base.node, stable_seconds=0.25),
                                 model=dataclasses.replace(base.model, second_source_wait_seconds=wait))
    processor = SynthesisProcessor(config, Synthesizer(two_source_checkpoint, "cpu"))
    processor.log = _Log(t2, arriving)
    job = SimpleNamespace(id=1, series_uid="1.2.3", target="FLAIR")   # what the lookup reads of a job
    assert (processor.second_source_files(job) == t2) is found
    assert processor.second_source_files(SimpleNamespace(id=2, series_uid="1.2.3", target="T2")) is None

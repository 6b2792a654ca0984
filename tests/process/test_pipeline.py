"""process_series: assemble → condition → synthesize → encode, with a stub and the tiny model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from tests.helpers.dicom_factory import T2_TSE, make_series
from dicom_node.errors import RejectedSeries
from dicom_node.process.eligibility import EligibilityRules
from dicom_node.process.pipeline import NodeInfo, process_series
from dicom_node.tools.simseries import write_series
from synthesis.protocol import Contrast, preset
from tests.helpers.node import StubSynthesizer

STAGES = {"assembly", "conditioning", "synthesis", "encoding"}
# The test volumes are a few slices thin; the eligibility limits for real series would refuse
# them (tests/node/test_eligibility.py tests those limits).
TINY = EligibilityRules(min_slices=2, min_coverage_mm=0.0)


def _phantom(shape: tuple[int, int, int] = (12, 16, 16)) -> np.ndarray:
    """A bright ellipsoid in a dark background (z, y, x)."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return np.where(z**2 + y**2 + x**2 < 0.6, 800.0, 50.0) + 100.0 * (x + 1)


def test_stub_pipeline_stages_and_target(tmp_path: Path) -> None:
    files = make_series(tmp_path / "src", spacing=(2.0, 1.0, 1.0), tags=T2_TSE)
    stub = StubSynthesizer()
    derived = process_series(files, "flair", tmp_path / "out", stub,
                             node=NodeInfo(ae_title="NODE"), eligibility=TINY)
    (call,) = stub.calls
    assert call["source"].contrast is Contrast.T2w and call["output_spacing"] == (1.0, 1.0, 1.0)
    target = derived.target_protocol
    assert target.contrast is Contrast.FLAIR and target.tr_ms == preset("FLAIR", 1.5).tr_ms
    assert target.voxel_mm == (1.0, 1.0, 1.0) and target.slice_thickness_mm == 1.0
    assert derived.source_protocol.field_t == 1.5
    assert set(derived.timings) == STAGES and all(t >= 0 for t in derived.timings.values())
    assert len(derived.files) == 10  # 5 slices of 2 mm -> 10 of 1 mm
    ds = pydicom.dcmread(derived.files[0])
    assert ds.SeriesInstanceUID == derived.series_instance_uid
    assert derived.prompt in ds.DerivationDescription and ds.StationName == "NODE"


def test_output_spacing_override_keeps_the_source_grid(tmp_path: Path) -> None:
    files = make_series(tmp_path / "src", spacing=(2.0, 1.0, 1.0), tags=T2_TSE)
    derived = process_series(files, "T1", tmp_path / "out", StubSynthesizer(),
                             output_spacing=(2.0, 1.0, 1.0), series_uid="1.2.826.0.1.3680043.9",
                             eligibility=TINY)
    assert len(derived.files) == 5 and derived.series_instance_uid == "1.2.826.0.1.3680043.9"
    assert derived.target_protocol.voxel_mm == (1.0, 1.0, 2.0)


def test_rejected_series_writes_nothing(tmp_path: Path) -> None:
    files = make_series(tmp_path / "src", mutate=lambda ds, k: setattr(ds, "SyntheticData", "YES"))
    stub = StubSynthesizer()
    with pytest.raises(RejectedSeries, match="synthetic"):
        process_series(files, "T2", tmp_path / "out", stub)
    assert stub.calls == [] and not (tmp_path / "out").exists()


def test_target_that_failed_its_lesion_check_is_refused_unless_allowed(tmp_path: Path, caplog) -> None:
    files = make_series(tmp_path / "src", spacing=(2.0, 1.0, 1.0), tags=T2_TSE)
    stub = StubSynthesizer(refusals={"FLAIR": "this model's FLAIR does not show white-matter lesions"})
    with pytest.raises(RejectedSeries, match="target refused: this model's FLAIR does not show"):
        process_series(files, "FLAIR", tmp_path / "out", stub, eligibility=TINY)
    assert stub.calls == [] and not (tmp_path / "out").exists()
    # other targets of the same model are not affected
    process_series(files, "T2", tmp_path / "t2", stub, eligibility=TINY)
    assert len(stub.calls) == 1
    # the administrator's override: synthesized, and the log says why it was doubtful
    derived = process_series(files, "FLAIR", tmp_path / "flair", stub, eligibility=TINY,
                             unvalidated_targets="allow")
    assert derived.files and len(stub.calls) == 2
    assert "does not show white-matter lesions" in caplog.text and "allow" in caplog.text


def test_unknown_target_is_refused(tmp_path: Path) -> None:
    files = make_series(tmp_path / "src")
    with pytest.raises(ValueError, match="Unknown target 'DWI'"):
        process_series(files, "DWI", tmp_path / "out", StubSynthesizer(), eligibility=TINY)


def test_tiny_model_on_a_simulated_series(tmp_path: Path, tiny_synthesizer: Any) -> None:
    """The must-show path without networking: geometry equals the source's, provenance, pixels."""
    src_files = write_series(_phantom(), (1.0, 1.0, 1.0), preset("T1"), tmp_path / "src", seed=3)
    derived = process_series(src_files, "T2", tmp_path / "out", tiny_synthesizer,
                             eligibility=TINY)
    source = [pydicom.dcmread(p) for p in src_files]
    out = [pydicom.dcmread(p) for p in derived.files]
    assert len(out) == len(source)
    for got, want in zip(out, source):
        assert [float(v) for v in got.ImagePositionPatient] == pytest.approx(
            [float(v) for v in want.ImagePositionPatient], abs=1e-4)
        assert got.ImageOrientationPatient == want.ImageOrientationPatient
        assert got.PixelSpacing == want.PixelSpacing
        assert got.pixel_array.shape == want.pixel_array.shape
        assert got.SyntheticData == "YES"
        assert got.StudyInstanceUID == want.StudyInstanceUID
    info = tiny_synthesizer.info
    assert info["checkpoint_sha256"] in out[0].DerivationDescription
    assert derived.source_protocol.contrast is Contrast.T1w
    assert derived.target_protocol.contrast is Contrast.T2w

"""Output format ``parametric-map``: the float32 model intensities as a Parametric Map
(``highdicom.pm.ParametricMap``) on the grid of the classic derived slices, for quantitative use,
with the provenance of the classic series."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.process.volume import AssembledVolume
from dicom_node.process.encode.classic_mr import MRSeries, sop_instance_uid, window_from_percentiles
from dicom_node.process.encode.provenance import carry_provenance
from dicom_node.process.encode.write import write_and_verify

__all__ = ["build_parametric_map", "write_parametric_map"]


def _source_metadata(assembled: AssembledVolume) -> list[Dataset]:
    """Metadata-only stand-ins for the source instances (what highdicom references)."""
    header = assembled.header
    if assembled.references[0].frame_number is not None:  # one Enhanced MR instance
        return [header]
    out = []
    for k, ref in enumerate(assembled.references):
        ds = copy.deepcopy(header)
        ds.SOPClassUID = ref.sop_class_uid
        ds.SOPInstanceUID = ref.sop_instance_uid
        position = assembled.geometry.position((k * assembled.spacing[0], 0.0, 0.0))
        ds.ImagePositionPatient = [float(v) for v in position]
        out.append(ds)
    return out


def _output_volume(volume: np.ndarray, first: Dataset, spacing_z: float,
                   frame_of_reference_uid: str) -> hd.Volume:
    """The float32 output as a highdicom Volume on the derived slices' grid."""
    orientation = [float(v) for v in first.ImageOrientationPatient]
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    direction = np.stack([np.cross(row, col), col, row], axis=1)
    spacing = (float(spacing_z), *(float(v) for v in first.PixelSpacing))
    return hd.Volume.from_components(
        np.ascontiguousarray(volume, dtype=np.float32), spacing=spacing,
        coordinate_system="PATIENT", position=[float(v) for v in first.ImagePositionPatient],
        direction=direction,
        frame_of_reference_uid=frame_of_reference_uid)


def build_parametric_map(volume: np.ndarray, datasets: Sequence[Dataset],
                         assembled: AssembledVolume, *, series_uid: str,
                         series_number: int) -> Dataset:
    """A float32 Parametric Map of ``volume`` (z, y, x, model intensity units) on the grid of
    the classic derived slices ``datasets``."""
    first = datasets[0]
    values = np.asarray(volume, dtype=np.float32)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="RTFSYN", lut_explanation="synthesized intensity (normalized, unitless)",
        unit=codes.UCUM.NoUnits, value_range=(float(values.min()), float(values.max())),
        slope=1.0, intercept=0.0)
    centre, width = window_from_percentiles(values)
    pm = hd.pm.ParametricMap(
        source_images=_source_metadata(assembled),
        pixel_array=_output_volume(values, first, float(first.SpacingBetweenSlices),
                                   assembled.geometry.frame_of_reference_uid),
        series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid(series_uid, 0), instance_number=1,
        manufacturer=str(first.Manufacturer),
        manufacturer_model_name=str(first.ManufacturerModelName),
        software_versions=str(first.SoftwareVersions[0]),
        device_serial_number=str(first.ContributingEquipmentSequence[-1].DeviceUID)[-16:],
        contains_recognizable_visual_features=True,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(
            window_center=centre, window_width=max(width, 1e-3),
            window_explanation="RTFSyn percentile window", voi_lut_function="LINEAR_EXACT")],
        content_description=str(first.SeriesDescription)[:64],
        content_label="RTFSYN",
        derivation=codes.DCM.ImageProcessing)
    carry_provenance(pm, first)
    pm.SeriesDescription = first.SeriesDescription
    pm.SoftwareVersions = first.SoftwareVersions
    return pm


def write_parametric_map(series: MRSeries, volume: np.ndarray, assembled: AssembledVolume,
                         out_dir: Path, stem: str) -> list[Path]:
    """Write ``volume`` (z, y, x, model intensities) as one Parametric Map on the grid of
    ``series`` into ``out_dir`` and read it back."""
    template = series.template
    pm = build_parametric_map(volume, series.part10_datasets(), assembled,
                              series_uid=str(template.SeriesInstanceUID),
                              series_number=int(template.SeriesNumber))
    return write_and_verify([pm], out_dir, stem)

"""Output format ``enhanced-mr``: the classic slices of a derived series converted into one
Legacy Converted Enhanced MR instance (``highdicom.legacy.LegacyConvertedEnhancedMRImage``),
carrying the provenance of the classic series (Synthetic Data YES, derivation description and
codes, Contributing Equipment (109100), the source references)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.process.encode.classic_mr import MRSeries, sop_instance_uid
from dicom_node.process.encode.provenance import carry_provenance
from dicom_node.process.encode.write import write_and_verify

__all__ = ["build_enhanced_mr", "write_enhanced_mr"]

def build_enhanced_mr(datasets: Sequence[Dataset], *, series_uid: str,
                      series_number: int) -> Dataset:
    """One Legacy Converted Enhanced MR instance from the classic derived slices."""
    image = hd.legacy.LegacyConvertedEnhancedMRImage(
        list(datasets), series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid(series_uid, 0), instance_number=1,
        transfer_syntax_uid=ExplicitVRLittleEndian)
    carry_provenance(image, datasets[0])
    image.SourceImageEvidenceSequence = _evidence(datasets[0])
    image.Manufacturer = datasets[0].Manufacturer
    image.ManufacturerModelName = datasets[0].ManufacturerModelName
    image.SoftwareVersions = datasets[0].SoftwareVersions
    return image


def _evidence(first: Dataset) -> DicomSequence:
    """Source Image Evidence Sequence (hierarchical SOP instance reference) of the source."""
    study = Dataset()
    study.StudyInstanceUID = first.StudyInstanceUID
    series = []
    for ref in first.ReferencedSeriesSequence:
        item = Dataset()
        item.SeriesInstanceUID = ref.SeriesInstanceUID
        item.ReferencedSOPSequence = copy.deepcopy(ref.ReferencedInstanceSequence)
        series.append(item)
    study.ReferencedSeriesSequence = DicomSequence(series)
    return DicomSequence([study])




def write_enhanced_mr(series: MRSeries, out_dir: Path, stem: str) -> list[Path]:
    """Write ``series`` as one Enhanced MR instance into ``out_dir`` and read it back."""
    datasets = series.part10_datasets()
    template = series.template
    single = build_enhanced_mr(datasets, series_uid=str(template.SeriesInstanceUID),
                               series_number=int(template.SeriesNumber))
    return write_and_verify([single], out_dir, stem)

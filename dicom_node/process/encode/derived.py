"""Synthesized volume → derived DICOM series with provenance (DESIGN §4).

:func:`write_derived_series` writes the synthesized volume as a new series of
the source's study, clearly marked as synthetic (Synthetic Data YES, DERIVED
image type, ``SYN <target> (RTFSyn) …`` description), with

* what produced it — Derivation Description (model, version, checkpoint
  hash, prompt) and Derivation Code Sequence; Contributing Equipment with
  purpose (109100, DCM, "Synthesizing Equipment") and a Device UID that is
  new for every model version;
* what it came from — Source Image Sequence per slice (purpose 121322) and
  Referenced Series Sequence;
* what it pretends to be — the MR acquisition attributes of the target
  protocol, on the output voxel grid.

Output formats: ``"mr"`` (classic MR Image Storage, one file per slice; the
default), ``"enhanced-mr"`` (one Legacy Converted Enhanced MR instance) and
``"parametric-map"`` (float32 Parametric Map); see :mod:`dicom_node.derive_formats`.
Every written file is read back and checked before returning
(:mod:`dicom_node.derive_write`).
"""
from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_node.process.assemble import NODE_MANUFACTURER, AssembledVolume
from dicom_node.process.encode.classic_mr import OutputGrid, build_mr_series, code_item
from dicom_node.process.encode.write import (IMPLEMENTATION_CLASS_UID, file_meta,  # re-exported
                                             write_and_verify, write_mr_series)
from synthesis.protocol import MRProtocol

__all__ = ["NodeInfo", "Provenance", "OUTPUT_FORMATS", "write_derived_series",
           "derived_series_description", "IMPLEMENTATION_CLASS_UID"]

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("mr", "enhanced-mr", "parametric-map")
ST_MAX = 1024  # Short Text
LO_MAX = 64  # Long String


@dataclass(frozen=True)
class NodeInfo:
    """How the node names itself in what it writes (General/Contributing Equipment)."""

    ae_title: str = "RTFSYN"
    station_name: str | None = None
    institution: str | None = None


def _software_version() -> str:
    try:
        return importlib.metadata.version("rtfsyn-node")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _clip(text: str, limit: int) -> str:
    text = text.replace("\\", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_architecture(value: Any) -> str:
    """A short text for ``info['architecture']`` (a string or a dict of hyper-parameters)."""
    if not value:
        return "architecture unknown"
    if isinstance(value, Mapping):
        parts = []
        for key, item in value.items():
            if isinstance(item, (list, tuple)):
                item = "-".join(str(v) for v in item)
            parts.append(f"{key} {item}")
        return ", ".join(parts)
    return str(value)


@dataclass(frozen=True)
class Provenance:
    """What produced a derived series; :meth:`apply` writes it into a dataset."""

    model_name: str
    model_version: str
    checkpoint_sha256: str
    derivation_description: str
    contribution_description: str
    device_uid: str
    node: NodeInfo
    when: datetime
    source_equipment: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, model_info: Mapping[str, Any], *, prompt: str, target: MRProtocol,
              source: MRProtocol | None, node: NodeInfo, when: datetime,
              source_equipment: Mapping[str, str]) -> "Provenance":
        name = str(model_info.get("model_name") or "RTFSyn")
        version = str(model_info.get("model_version") or "unknown")
        sha = str(model_info.get("checkpoint_sha256") or "unknown")
        arch = _describe_architecture(model_info.get("architecture"))
        device = str(model_info.get("device") or "unknown")
        made_from = f" from a {source.contrast.value} series" if source is not None else ""
        # the prompt before the architecture: truncation at the VR limit cuts the latter
        derivation = (f"SYNTHETIC {target.contrast.value} image, not acquired: computed by "
                      f"{name} {version} (checkpoint sha256 {sha}) on {device}{made_from}. "
                      f"Prompt: {prompt} Architecture: {arch}.")
        contribution = (f"Synthesized a {target.contrast.value} series with {name} {version} "
                        f"(checkpoint sha256 {sha[:16]}) on {device}")
        device_uid = generate_uid(entropy_srcs=["rtfsyn-device", name, version, sha])
        return cls(name, version, sha, _clip(derivation, ST_MAX), _clip(contribution, ST_MAX),
                   device_uid, node, when, dict(source_equipment))

    def contributing_equipment(self) -> DicomSequence:
        """Items for the Contributing Equipment Sequence: the scanner, then this node."""
        items = []
        if self.source_equipment.get("Manufacturer"):
            items.append(hd.ContributingEquipment(
                manufacturer=self.source_equipment["Manufacturer"],
                purpose_of_reference=codes.DCM.AcquisitionEquipment,
                manufacturer_model_name=self.source_equipment.get("ManufacturerModelName"),
                contribution_description="Acquired the source series"))
        ours = hd.ContributingEquipment(
            manufacturer=NODE_MANUFACTURER,
            purpose_of_reference=codes.DCM.SynthesizingEquipment,
            manufacturer_model_name=_clip(self.model_name, LO_MAX),
            software_versions=[_clip(f"rtfsyn-node {_software_version()}", LO_MAX),
                               _clip(f"model {self.model_version}", LO_MAX)],
            station_name=self.node.station_name or self.node.ae_title,
            institution_name=self.node.institution,
            contribution_datetime=self.when,
            contribution_description=self.contribution_description)
        ours.DeviceUID = self.device_uid
        items.append(ours)
        return DicomSequence(items)

    def apply(self, ds: Dataset) -> None:
        """General Equipment, derivation, Synthetic Data and Contributing Equipment."""
        ds.Manufacturer = NODE_MANUFACTURER
        ds.ManufacturerModelName = _clip(self.model_name, LO_MAX)
        ds.SoftwareVersions = [_clip(f"rtfsyn-node {_software_version()}", LO_MAX),
                               _clip(f"model {self.model_version}", LO_MAX)]
        ds.StationName = (self.node.station_name or self.node.ae_title)[:16]
        if self.node.institution:
            ds.InstitutionName = _clip(self.node.institution, LO_MAX)
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER", "SYNTHETIC"]
        ds.SyntheticData = "YES"
        ds.DerivationDescription = self.derivation_description
        ds.DerivationCodeSequence = DicomSequence(
            [code_item(codes.DCM.ImageProcessing), code_item(codes.DCM.ArtificialIntelligence)])
        ds.ImageComments = "SYNTHETIC IMAGE - computed by RTFSyn, not acquired by a scanner"
        ds.ContributingEquipmentSequence = self.contributing_equipment()


def derived_series_description(target: MRProtocol, source_description: str) -> str:
    """``SYN <target> (RTFSyn) <source description>``, at most 64 characters."""
    text = f"SYN {target.contrast.value} (RTFSyn) {source_description}".strip()
    return text.replace("\\", "/")[:LO_MAX]


def _check_result(volume: np.ndarray, spacing: Sequence[float],
                  offset: Sequence[float]) -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"result.volume must be a non-empty (z, y, x) array. Found {vol.shape}.")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"result.spacing must be 3 positive numbers (dz, dy, dx) mm. "
                         f"Found {tuple(spacing)!r}.")
    if len(offset) != 3 or not all(np.isfinite(v) for v in offset):
        raise ValueError(f"result.origin_offset_mm must be 3 finite numbers. "
                         f"Found {tuple(offset)!r}.")
    return vol


def write_derived_series(result: Any, assembled: AssembledVolume, target: MRProtocol,
                         out_dir: Path, *, prompt: str, model_info: Mapping[str, Any],
                         node: NodeInfo = NodeInfo(), output_format: str = "mr",
                         series_number_offset: int = 1000, series_uid: str | None = None,
                         source: MRProtocol | None = None) -> list[Path]:
    """Write ``result`` (a ``SynthesisResult``: volume (z, y, x), spacing (dz, dy, dx) mm,
    origin_offset_mm (z, y, x)) as a derived series of ``assembled``'s study into ``out_dir``.

    ``series_uid`` reuses a Series Instance UID (a re-run after a crash writes
    the same UIDs: SOP UIDs derive from it); ``model_info`` is
    ``Synthesizer.info``. Returns the written paths in slice order.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}. "
                         f"Found {output_format!r}.")
    volume = _check_result(result.volume, result.spacing, result.origin_offset_mm)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).astimezone()
    header = assembled.header
    provenance = Provenance.build(
        model_info, prompt=prompt, target=target, source=source, node=node, when=now,
        source_equipment={k: str(header.get(k, "") or "")
                          for k in ("Manufacturer", "ManufacturerModelName")})
    series_uid = str(series_uid or generate_uid())
    series_number = int(series_number_offset) + int(header.get("SeriesNumber", 0) or 0)
    description = derived_series_description(target, str(header.get("SeriesDescription", "")))
    grid = OutputGrid.from_result(assembled, result.spacing, result.origin_offset_mm)
    series = build_mr_series(volume, assembled, target, grid, provenance=provenance,
                             series_uid=series_uid, series_number=series_number,
                             description=description, now=now)
    if output_format == "mr":
        paths = write_mr_series(series, out_dir, "SYN")
    else:
        from dicom_node.process.encode.formats import build_enhanced_mr, build_parametric_map

        datasets = series.datasets()
        for ds in datasets:
            ds.file_meta = file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        if output_format == "enhanced-mr":
            single = build_enhanced_mr(datasets, series_uid=series_uid,
                                       series_number=series_number)
        else:
            single = build_parametric_map(volume, datasets, assembled, series_uid=series_uid,
                                          series_number=series_number)
        paths = write_and_verify([single], out_dir, "SYN")
    logger.info("Wrote derived %s series (%d files, series number %d) to %s",
                output_format, len(paths), series_number, out_dir)
    return paths

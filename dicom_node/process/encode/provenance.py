"""What produced a derived series, written into every instance of it (DESIGN §4).

:class:`Provenance` names the model (name, version, checkpoint hash), the
prompt and the device, and writes General Equipment, Synthetic Data YES, the
DERIVED image type, the Derivation Description and Code Sequence and the
Contributing Equipment (the scanner, then this node with purpose 109100
"Synthesizing Equipment" and a Device UID that is new for every model version).
:class:`NodeInfo` is how the node names itself there.
"""
from __future__ import annotations

import copy
import importlib.metadata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_node.dicom.elements import code_item
from dicom_node.dicom.identity import NODE_MANUFACTURER
from synthesis.protocol import MRProtocol

__all__ = ["NodeInfo", "Provenance", "carry_provenance", "LO_MAX", "ST_MAX"]

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
              source_equipment: Mapping[str, str],
              second_source: tuple[str, str] | None = None) -> "Provenance":
        name = str(model_info.get("model_name") or "RTFSyn")
        version = str(model_info.get("model_version") or "unknown")
        sha = str(model_info.get("checkpoint_sha256") or "unknown")
        arch = _describe_architecture(model_info.get("architecture"))
        device = str(model_info.get("device") or "unknown")
        made_from = f" from a {source.contrast.value} series" if source is not None else ""
        if second_source is not None:
            made_from += f" and the {second_source[0]} series {second_source[1]} of the same study"
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


# provenance, plus the series attributes highdicom does not copy from the classic slices
_CARRIED_KEYWORDS = ("SyntheticData", "DerivationDescription", "DerivationCodeSequence",
                     "ImageComments", "ContributingEquipmentSequence", "Laterality",
                     "BodyPartExamined")


def carry_provenance(target: Dataset, template: Dataset) -> None:
    """Copy the provenance attributes of a classic derived slice ``template`` onto ``target`` (a
    single-instance output format built from the classic slices)."""
    for keyword in _CARRIED_KEYWORDS:
        if keyword in template:
            target[keyword] = copy.deepcopy(template[keyword])

"""What the eligibility rules read from one instance's header (classic or Enhanced MR).

:func:`header_facts` normalises the standard attributes (Image Type and the
Enhanced MR Frame Type, Scanning Sequence, Sequence/Pulse Sequence Name,
Acquisition Contrast, Complex Image Component, Diffusion b-value, Number of
Temporal Positions, Body Part Examined, Synthetic Data, Series Description and
Protocol Name) and the vendors' documented private tags (Siemens ``SIEMENS MR
HEADER`` mosaic count and b-value, GE ``GEMS_PARM_01`` image type and b-value, GE
``GEMS_ACQU_01`` pulse sequence name, Philips ``Philips Imaging DD 001``
b-factor) into a :class:`HeaderFacts`. No patient attribute is read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

__all__ = ["HeaderFacts", "header_facts"]

_SIEMENS_HEADER = "SIEMENS MR HEADER"   # private creator of (0019,xx0A) mosaic, (0019,xx0C) b
_GE_PARAMS = "GEMS_PARM_01"             # (0043,xx2F) image type (0 magnitude, 1 phase, 2 real,
                                        # 3 imaginary); (0043,xx39) b-value
_GE_ACQU = "GEMS_ACQU_01"               # (0019,xx9C) pulse sequence name
_PHILIPS_IMAGING = "Philips Imaging DD 001"  # (2001,xx03) diffusion b-factor



@dataclass(frozen=True)
class HeaderFacts:
    """The attributes the rules read from one instance, normalised (upper case)."""

    image_type: tuple[str, ...] = ()      # Image Type, plus Enhanced MR Frame Type values
    description: str = ""                 # Series Description + Protocol Name (never quoted)
    sequence_name: str = ""               # Sequence Name / Pulse Sequence Name (+ GE private)
    scanning: frozenset[str] = frozenset()
    echo_planar: bool = False             # Enhanced MR Echo Planar Pulse Sequence YES
    contrast_kind: str = ""               # Enhanced MR Acquisition Contrast
    complex_component: str = ""           # Enhanced MR Complex Image Component / GE private
    b_value: float | None = None
    mosaic_images: int | None = None
    temporal_positions: int | None = None
    body_part: str = ""
    synthetic: bool = False


def _upper_values(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    values = [value] if isinstance(value, (str, bytes)) else list(value)
    return tuple(str(v).strip().upper() for v in values if str(v).strip())


def _groups(ds: Dataset) -> list[Dataset]:
    """The shared and the first per-frame functional group items of an Enhanced instance."""
    items = []
    for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items += list(ds.get(name, []))[:1]
    return items


def _nested(ds: Dataset, sequence: str, keyword: str) -> Any:
    """``keyword`` from the top level, else from ``sequence`` in the functional groups."""
    if keyword in ds and ds[keyword].VM:
        return ds[keyword].value
    for group in _groups(ds):
        for item in group.get(sequence, [])[:1]:
            if keyword in item and item[keyword].VM:
                return item[keyword].value
    return None


def _private(ds: Dataset, group: int, offset: int, creator: str) -> Any:
    try:
        return ds.get_private_item(group, offset, creator).value
    except (KeyError, ValueError):
        return None


def _first_number(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None
    try:
        number = float(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError, AttributeError):
        return None
    return number if math.isfinite(number) else None


def header_facts(ds: Dataset) -> HeaderFacts:
    """Read what the header rules need from one instance (classic or Enhanced MR)."""
    image_type = list(_upper_values(ds.get("ImageType")))
    image_type += _upper_values(_nested(ds, "MRImageFrameTypeSequence", "FrameType"))
    b_value = _first_number(_nested(ds, "MRDiffusionSequence", "DiffusionBValue"))
    for group, offset, creator in ((0x0019, 0x0C, _SIEMENS_HEADER),
                                   (0x2001, 0x03, _PHILIPS_IMAGING),
                                   (0x0043, 0x39, _GE_PARAMS)):
        if b_value is None:
            b_value = _first_number(_private(ds, group, offset, creator))
    if b_value is not None and b_value >= 1e9:  # GE adds 10^9 to the b-value (slop_int_6)
        b_value = b_value % 1e9
    ge_type = _first_number(_private(ds, 0x0043, 0x2F, _GE_PARAMS))
    complex_component = str(_nested(ds, "MRImageFrameTypeSequence", "ComplexImageComponent")
                            or "").upper()
    if not complex_component and ge_type is not None:
        complex_component = {0: "MAGNITUDE", 1: "PHASE", 2: "REAL", 3: "IMAGINARY"}.get(
            int(ge_type), "")
    mosaic = _first_number(_private(ds, 0x0019, 0x0A, _SIEMENS_HEADER))
    temporal = _first_number(ds.get("NumberOfTemporalPositions"))
    names = [ds.get("SequenceName"), ds.get("PulseSequenceName"),
             _private(ds, 0x0019, 0x9C, _GE_ACQU)]
    return HeaderFacts(
        image_type=tuple(image_type),
        description=" ".join(str(ds.get(k, "") or "") for k in ("SeriesDescription",
                                                                  "ProtocolName")).upper(),
        sequence_name=" ".join(str(n) for n in names if n).upper(),
        scanning=frozenset(_upper_values(ds.get("ScanningSequence"))),
        echo_planar=str(ds.get("EchoPlanarPulseSequence", "")).upper() == "YES",
        contrast_kind=str(ds.get("AcquisitionContrast", "") or "").upper(),
        complex_component=complex_component,
        b_value=b_value,
        mosaic_images=int(mosaic) if mosaic is not None else None,
        temporal_positions=int(temporal) if temporal is not None else None,
        body_part=str(ds.get("BodyPartExamined", "") or "").strip().upper(),
        synthetic=str(ds.get("SyntheticData", "")).strip().upper() == "YES",
    )

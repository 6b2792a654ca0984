"""MR acquisition protocols, clinical presets, prompts and numeric features.

An :class:`MRProtocol` describes *how* an image was (or is to be) acquired.
It never holds patient data: only sequence physics and scanner descriptors.
The condition built from a (source, target) pair lives in
:mod:`synthesis.condition`; tissue physics in :mod:`synthesis.physics`.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any, Mapping


__all__ = [
    "Contrast",
    "SequenceKind",
    "MRProtocol",
    "PRESETS",
    "preset",
]


class Contrast(str, Enum):
    """Contrast family (what the image is weighted by)."""

    T1w = "T1w"
    T2w = "T2w"
    PDw = "PDw"
    FLAIR = "FLAIR"
    T2starw = "T2*w"


class SequenceKind(str, Enum):
    """Pulse-sequence kind."""

    SE = "SE"
    TSE = "TSE"
    GRE = "GRE"
    SPGR = "SPGR"
    IR = "IR"
    MPRAGE = "MPRAGE"


_CONTRAST_WORDS = {
    Contrast.T1w: "T1-weighted",
    Contrast.T2w: "T2-weighted",
    Contrast.PDw: "proton-density-weighted",
    Contrast.FLAIR: "T2-weighted FLAIR",
    Contrast.T2starw: "T2*-weighted",
}
_SEQUENCE_WORDS = {
    SequenceKind.SE: "spin echo",
    SequenceKind.TSE: "turbo spin echo",
    SequenceKind.GRE: "gradient echo",
    SequenceKind.SPGR: "spoiled gradient echo",
    SequenceKind.IR: "inversion recovery",
    SequenceKind.MPRAGE: "MPRAGE",
}
_SAFE_TEXT = re.compile(r"[^A-Za-z0-9 .\-_+]")


def _clean_text(value: str | None, max_len: int = 32) -> str | None:
    """Keep a short printable scanner descriptor (no free text beyond that)."""
    if value is None:
        return None
    text = _SAFE_TEXT.sub("", str(value)).strip()
    return text[:max_len] or None


def _positive(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number. Found {value!r}.")
    return value


@dataclass(frozen=True)
class MRProtocol:
    """An MR acquisition protocol; every field but ``contrast`` is optional.

    Times are in ms, the flip angle in degrees, the field in tesla,
    ``voxel_mm`` is the acquired voxel size (row, column, slice direction) in
    mm and ``slice_thickness_mm`` the nominal slice thickness.
    """

    contrast: Contrast
    sequence: SequenceKind | None = None
    dimension: str | None = None  # "2D" or "3D"
    tr_ms: float | None = None
    te_ms: float | None = None
    ti_ms: float | None = None
    flip_deg: float | None = None
    field_t: float | None = None
    manufacturer: str | None = None
    model: str | None = None
    voxel_mm: tuple[float, float, float] | None = None
    slice_thickness_mm: float | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "contrast", Contrast(self.contrast))
        if self.sequence is not None:
            set_(self, "sequence", SequenceKind(self.sequence))
        if self.dimension is not None:
            dim = str(self.dimension).upper()
            if dim not in ("2D", "3D"):
                raise ValueError(f"dimension must be '2D' or '3D'. Found {self.dimension!r}.")
            set_(self, "dimension", dim)
        for name in ("tr_ms", "te_ms", "ti_ms", "field_t", "slice_thickness_mm"):
            set_(self, name, _positive(name, getattr(self, name)))
        if self.flip_deg is not None:
            flip = float(self.flip_deg)
            if not math.isfinite(flip) or not 0 < flip <= 180:
                raise ValueError(f"flip_deg must be in (0, 180]. Found {self.flip_deg!r}.")
            set_(self, "flip_deg", flip)
        if self.tr_ms is not None and self.te_ms is not None and self.te_ms > self.tr_ms:
            raise ValueError(
                f"te_ms must not exceed tr_ms. Found TE {self.te_ms} ms > TR {self.tr_ms} ms."
            )
        if self.voxel_mm is not None:
            voxel = tuple(_positive("voxel_mm", v) for v in self.voxel_mm)
            if len(voxel) != 3:
                raise ValueError(f"voxel_mm must have 3 values. Found {self.voxel_mm!r}.")
            set_(self, "voxel_mm", voxel)
        set_(self, "manufacturer", _clean_text(self.manufacturer))
        set_(self, "model", _clean_text(self.model))

    # -- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["contrast"] = self.contrast.value
        out["sequence"] = self.sequence.value if self.sequence else None
        out["voxel_mm"] = list(self.voxel_mm) if self.voxel_mm else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MRProtocol":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown MRProtocol fields: {sorted(unknown)}.")
        values = dict(data)
        if values.get("voxel_mm") is not None:
            values["voxel_mm"] = tuple(values["voxel_mm"])
        return cls(**values)

    def with_(self, **changes: Any) -> "MRProtocol":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def describe(self) -> str:
        """A noun phrase, e.g. '3D T1-weighted MPRAGE image (TR 2300 ms, ...)'."""
        words = []
        if self.dimension:
            words.append(self.dimension)
        words.append(_CONTRAST_WORDS[self.contrast])
        if self.sequence:
            words.append(_SEQUENCE_WORDS[self.sequence])
        details = []
        for label, value, unit in (
            ("TR", self.tr_ms, " ms"),
            ("TE", self.te_ms, " ms"),
            ("TI", self.ti_ms, " ms"),
            ("flip angle", self.flip_deg, " degrees"),
        ):
            if value is not None:
                details.append(f"{label} {_fmt(value)}{unit}")
        if self.field_t is not None:
            details.append(f"{_fmt(self.field_t)} T")
        scanner = " ".join(s for s in (self.manufacturer, self.model) if s)
        if scanner:
            details.append(scanner)
        if self.voxel_mm is not None:
            details.append("voxel " + " x ".join(_fmt(v) for v in self.voxel_mm) + " mm")
        if self.slice_thickness_mm is not None:
            details.append(f"slice thickness {_fmt(self.slice_thickness_mm)} mm")
        text = " ".join(words) + " image"
        if details:
            text += " (" + ", ".join(details) + ")"
        return text


def _fmt(value: float) -> str:
    """Numbers printed the same way every time: at most 3 significant decimals."""
    return f"{value:.4g}"


# -- presets -----------------------------------------------------------
_PRESET_TABLE: dict[tuple[str, float], MRProtocol] = {}


def _add(name: str, field_t: float, **kw: Any) -> None:
    _PRESET_TABLE[(name, field_t)] = MRProtocol(field_t=field_t, **kw)


for _f, (_t1tr, _t1te, _t1ti) in ((1.5, (2000.0, 3.5, 1000.0)), (3.0, (2300.0, 2.98, 900.0))):
    _add("T1", _f, contrast=Contrast.T1w, sequence=SequenceKind.MPRAGE, dimension="3D",
         tr_ms=_t1tr, te_ms=_t1te, ti_ms=_t1ti, flip_deg=9.0,
         voxel_mm=(1.0, 1.0, 1.0), slice_thickness_mm=1.0)
    _add("T1SE", _f, contrast=Contrast.T1w, sequence=SequenceKind.SE, dimension="2D",
         tr_ms=550.0 if _f == 1.5 else 650.0, te_ms=12.0 if _f == 1.5 else 10.0, flip_deg=90.0,
         voxel_mm=(1.0, 1.0, 5.0), slice_thickness_mm=5.0)
    _add("T2", _f, contrast=Contrast.T2w, sequence=SequenceKind.TSE, dimension="3D",
         tr_ms=3500.0 if _f == 1.5 else 3200.0, te_ms=100.0 if _f == 1.5 else 95.0, flip_deg=90.0,
         voxel_mm=(1.0, 1.0, 1.0), slice_thickness_mm=1.0)
    _add("PD", _f, contrast=Contrast.PDw, sequence=SequenceKind.TSE, dimension="3D",
         tr_ms=3000.0 if _f == 1.5 else 3500.0, te_ms=15.0 if _f == 1.5 else 12.0, flip_deg=90.0,
         voxel_mm=(1.0, 1.0, 1.0), slice_thickness_mm=1.0)
    _add("FLAIR", _f, contrast=Contrast.FLAIR, sequence=SequenceKind.IR, dimension="3D",
         tr_ms=9000.0 if _f == 1.5 else 5000.0, te_ms=110.0 if _f == 1.5 else 390.0,
         ti_ms=2500.0 if _f == 1.5 else 1800.0, flip_deg=90.0 if _f == 1.5 else 120.0,
         voxel_mm=(1.0, 1.0, 1.0), slice_thickness_mm=1.0)

PRESETS: tuple[str, ...] = ("T1", "T1SE", "T2", "PD", "FLAIR")


def preset(name: str, field_t: float = 3.0) -> MRProtocol:
    """A named clinical target protocol (``T1``, ``T1SE``, ``T2``, ``PD``, ``FLAIR``).

    ``field_t`` picks the 1.5 T or 3 T variant (the nearer one).
    """
    key = str(name).upper()
    if key not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Known presets: {', '.join(PRESETS)}.")
    nearest = 1.5 if float(field_t) < 2.25 else 3.0
    return _PRESET_TABLE[(key, nearest)]

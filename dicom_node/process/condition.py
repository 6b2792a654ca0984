"""DICOM tags → :class:`~synthesis.protocol.MRProtocol` (the source condition).

:func:`protocol_from_dataset` reads the acquisition attributes of a classic MR
instance, or of an Enhanced MR instance (where they live in the shared or
per-frame functional groups), and classifies the source contrast with two
tables:

* :data:`CONTRAST_RULES` — physics rules on the sequence kind, TR, TE, TI and
  flip angle, tried in order; the first that applies decides;
* :data:`KEYWORD_RULES` — Series Description keywords, used only when no
  physics rule applies (e.g. TR/TE missing). The description itself never
  enters the protocol, the prompt or the logs.

Absurd values: a single implausible number (non-numeric, NaN, ≤ 0, flip
angle > 180°, field > 12 T after a gauss → tesla correction, TR above
60 s, TE above 5 s, TI above 10 s, TI without an inversion) is dropped with a
warning (logged, and collected in ``notes`` for the job log), and so are both
TR and TE when TE ≥ TR (one of them is wrong and we cannot tell which). The protocol stays
meaningful because every field but the contrast is optional. When nothing is
left to classify the contrast — no rule and no keyword applies — the series
is rejected (:class:`~dicom_node.errors.RejectedSeries`): a prompt with a
guessed source contrast would condition the network on a falsehood.

Patient data never enters the protocol: only sequence physics, scanner
manufacturer/model and voxel size are read.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pydicom.dataset import Dataset

from dicom_node.errors import RejectedSeries
from synthesis.protocol import Contrast, MRProtocol, SequenceKind

__all__ = ["AcquisitionTags", "read_acquisition", "classify_contrast", "classify_sequence",
           "protocol_from_dataset", "CONTRAST_RULES", "KEYWORD_RULES", "SEQUENCE_RULES"]

logger = logging.getLogger(__name__)

FLAIR_MIN_TI_MS = 1400.0
STIR_MAX_TI_MS = 250.0
MAX_FIELD_T = 12.0
# Upper limits of a plausible clinical value (ms); above them a value is a unit or entry error.
MAX_TR_MS = 60000.0
MAX_TE_MS = 5000.0
MAX_TI_MS = 10000.0


@dataclass(frozen=True)
class AcquisitionTags:
    """The acquisition descriptors the classifier needs (no patient data).

    ``scanning`` holds Scanning Sequence terms (SE, IR, GR, EP, RM),
    ``variant`` Sequence Variant terms (SK, MTC, SS, TRSS, SP, MP, OSP),
    ``options`` Scan Options terms; times in ms, flip in degrees, field in T.
    ``description`` is the upper-cased Series Description, kept only for the
    keyword tie-breaker.
    """

    scanning: frozenset[str] = frozenset()
    variant: frozenset[str] = frozenset()
    options: frozenset[str] = frozenset()
    dimension: str | None = None
    tr: float | None = None
    te: float | None = None
    ti: float | None = None
    flip: float | None = None
    field: float | None = None
    echo_train: int | None = None
    description: str = ""

    @property
    def inversion(self) -> bool:
        return "IR" in self.scanning or "IR" in self.options

    @property
    def gradient(self) -> bool:
        return "GR" in self.scanning


def _lt(value: float | None, limit: float) -> bool:
    return value is not None and value < limit


def _ge(value: float | None, limit: float) -> bool:
    return value is not None and value >= limit


# (rule text, contrast, predicate); the first predicate that holds decides.
CONTRAST_RULES: tuple[tuple[str, Contrast, Callable[[AcquisitionTags], bool]], ...] = (
    ("magnetization-prepared gradient echo (MPRAGE) is T1w", Contrast.T1w,
     lambda t: t.gradient and (t.inversion or "MP" in t.variant)),
    (f"inversion recovery with long TI (>= {FLAIR_MIN_TI_MS:g} ms) is FLAIR", Contrast.FLAIR,
     lambda t: t.inversion and _ge(t.ti, FLAIR_MIN_TI_MS)),
    (f"inversion recovery with short TI (< {STIR_MAX_TI_MS:g} ms, STIR) is T2w", Contrast.T2w,
     lambda t: t.inversion and _lt(t.ti, STIR_MAX_TI_MS)),
    ("inversion recovery with intermediate TI and short TE is T1w", Contrast.T1w,
     lambda t: t.inversion and t.ti is not None and _lt(t.te, 30.0)),
    ("gradient echo with long TE (>= 15 ms) and low flip (<= 40 deg) is T2*w", Contrast.T2starw,
     lambda t: t.gradient and _ge(t.te, 15.0) and t.flip is not None and t.flip <= 40.0),
    ("short TR (< 1000 ms) and short TE (< 30 ms) is T1w", Contrast.T1w,
     lambda t: _lt(t.tr, 1000.0) and _lt(t.te, 30.0)),
    ("long TR (>= 1500 ms) and long TE (>= 60 ms) is T2w", Contrast.T2w,
     lambda t: _ge(t.tr, 1500.0) and _ge(t.te, 60.0)),
    ("long TR (>= 1500 ms) and short TE (< 40 ms) is PDw", Contrast.PDw,
     lambda t: _ge(t.tr, 1500.0) and _lt(t.te, 40.0)),
)

# Series Description keywords (regular expressions on upper-case text), in order.
_NOT_LETTER_BEFORE, _NOT_LETTER_AFTER = r"(?<![A-Z])", r"(?![A-Z])"
KEYWORD_RULES: tuple[tuple[str, Contrast], ...] = (
    (r"FLAIR", Contrast.FLAIR),
    (r"T2\*|T2[ _-]?STAR|SWI|" + _NOT_LETTER_BEFORE + r"GRE" + _NOT_LETTER_AFTER, Contrast.T2starw),
    (r"MP-?RAGE|BRAVO|T1", Contrast.T1w),
    (_NOT_LETTER_BEFORE + r"PD" + _NOT_LETTER_AFTER + r"|PROTON", Contrast.PDw),
    (r"T2", Contrast.T2w),
)

# (sequence kind, predicate); first match wins.
SEQUENCE_RULES: tuple[tuple[SequenceKind, Callable[[AcquisitionTags], bool]], ...] = (
    (SequenceKind.MPRAGE, lambda t: t.gradient and (t.inversion or "MP" in t.variant)),
    (SequenceKind.IR, lambda t: t.inversion),
    (SequenceKind.SPGR, lambda t: t.gradient and "SP" in t.variant),
    (SequenceKind.GRE, lambda t: t.gradient),
    (SequenceKind.TSE, lambda t: "SE" in t.scanning and ((t.echo_train or 1) > 1
                                                        or "SK" in t.variant)),
    (SequenceKind.SE, lambda t: "SE" in t.scanning),
)


def classify_contrast(tags: AcquisitionTags) -> tuple[Contrast, str]:
    """The contrast and the rule that decided it; :class:`RejectedSeries` when none applies."""
    for text, contrast, applies in CONTRAST_RULES:
        if applies(tags):
            keyword = _keyword_contrast(tags.description)
            if keyword is not None and keyword is not contrast:
                logger.info("Contrast %s from physics (%s); description keywords suggest %s",
                            contrast.value, text, keyword.value)
            return contrast, text
    keyword = _keyword_contrast(tags.description)
    if keyword is not None:
        return keyword, "Series Description keyword"
    raise RejectedSeries(
        "source contrast cannot be classified: no rule applies to "
        f"ScanningSequence {'/'.join(sorted(tags.scanning)) or '-'}, TR {tags.tr}, TE {tags.te}, "
        f"TI {tags.ti}, flip {tags.flip}, and the Series Description has no contrast keyword")


def _keyword_contrast(description: str) -> Contrast | None:
    for pattern, contrast in KEYWORD_RULES:
        if re.search(pattern, description):
            return contrast
    return None


def classify_sequence(tags: AcquisitionTags) -> SequenceKind | None:
    """The pulse-sequence kind, or None (e.g. pure EPI or missing Scanning Sequence)."""
    for kind, applies in SEQUENCE_RULES:
        if applies(tags):
            return kind
    return None


# -- reading the tags -------------------------------------------------
_FG_SEQUENCES = ("MRTimingAndRelatedParametersSequence", "MREchoSequence", "MRModifierSequence",
                 "PixelMeasuresSequence", "MRFOVGeometrySequence")


def _find(ds: Dataset, keyword: str) -> Any:
    """A value from the top level, else the shared, else the first per-frame functional group."""
    if keyword in ds and ds[keyword].VM:
        return ds[keyword].value
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(groups, [])[:1]:
            for name in _FG_SEQUENCES:
                for item in group.get(name, [])[:1]:
                    if keyword in item and item[keyword].VM:
                        return item[keyword].value
    return None


def _terms(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    values = [value] if isinstance(value, str) else list(value)
    return frozenset(str(v).strip().upper() for v in values if str(v).strip()) - {"NONE"}


def _note(notes: list[str] | None, message: str) -> None:
    """Log a dropped or corrected value and add it to ``notes`` (the job log's warnings)."""
    logger.warning("%s", message)
    if notes is not None:
        notes.append(message)


def _number(name: str, value: Any, *, upper: float | None = None,
            notes: list[str] | None = None) -> float | None:
    """A positive finite float, or None (dropped with a warning in ``notes``) when absurd."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None
        if value is None:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        _note(notes, f"dropped {name}: not a number ({str(value)[:16]!r})")
        return None
    if not math.isfinite(number) or number <= 0 or (upper is not None and number > upper):
        limit = f" and at most {upper:g}" if upper is not None else ""
        _note(notes, f"dropped {name}: must be finite, positive{limit}. Found {number:g}")
        return None
    return number


def _field_strength(value: Any, notes: list[str] | None = None) -> float | None:
    field = _number("MagneticFieldStrength", value, notes=notes)
    if field is not None and field > 100 and 0.1 <= field / 10000.0 <= MAX_FIELD_T:
        _note(notes, f"MagneticFieldStrength {field:g} looks like gauss; using "
                     f"{field / 10000.0:g} T")
        field = field / 10000.0
    if field is not None and field > MAX_FIELD_T:
        _note(notes, f"dropped MagneticFieldStrength: must be at most {MAX_FIELD_T:g} T. "
                     f"Found {field:g}")
        return None
    return field


def _enhanced_terms(ds: Dataset) -> tuple[set[str], set[str]]:
    """Scanning Sequence / Sequence Variant equivalents of Enhanced MR attributes."""
    scanning: set[str] = set()
    variant: set[str] = set()
    pulse = str(ds.get("EchoPulseSequence", "")).upper()
    if pulse in ("SPIN", "BOTH"):
        scanning.add("SE")
    if pulse in ("GRADIENT", "BOTH"):
        scanning.add("GR")
    if str(_find(ds, "InversionRecovery") or "").upper() == "YES":
        scanning.add("IR")
    if str(ds.get("Spoiling", "")).upper() not in ("", "NONE"):
        variant.add("SP")
    if str(ds.get("SegmentedKSpaceTraversal", "")).upper() not in ("", "SINGLE"):
        variant.add("SK")
    if str(ds.get("SteadyStateFreePrecession", "")).upper() not in ("", "NONE"):
        variant.add("SS")
    return scanning, variant


def read_acquisition(ds: Dataset, notes: list[str] | None = None) -> AcquisitionTags:
    """Normalise the acquisition attributes of ``ds`` (classic or Enhanced MR); every value
    dropped as impossible is described in ``notes`` (patient-free text)."""
    scanning = set(_terms(_find(ds, "ScanningSequence")))
    variant = set(_terms(_find(ds, "SequenceVariant")))
    if not scanning:
        extra_scanning, extra_variant = _enhanced_terms(ds)
        scanning |= extra_scanning
        variant |= extra_variant
    tr = _number("RepetitionTime", _find(ds, "RepetitionTime"), upper=MAX_TR_MS, notes=notes)
    te = _number("EchoTime", _find(ds, "EchoTime") or _find(ds, "EffectiveEchoTime"),
                 upper=MAX_TE_MS, notes=notes)
    if tr is not None and te is not None and te >= tr:
        _note(notes, f"dropped RepetitionTime and EchoTime: TE {te:g} ms must be shorter than "
                     f"TR {tr:g} ms")
        tr = te = None
    options = _terms(_find(ds, "ScanOptions"))
    inversion = "IR" in scanning or "IR" in options
    ti = _number("InversionTime", _find(ds, "InversionTime") or _find(ds, "InversionTimes"),
                 upper=MAX_TI_MS, notes=notes)
    if ti is not None and not inversion:
        _note(notes, f"dropped InversionTime {ti:g} ms: the sequence has no inversion")
        ti = None
    train = _number("EchoTrainLength", _find(ds, "EchoTrainLength"), notes=notes)
    dimension = str(ds.get("MRAcquisitionType", "") or "").upper()
    return AcquisitionTags(
        scanning=frozenset(scanning), variant=frozenset(variant), options=options,
        dimension=dimension if dimension in ("2D", "3D") else None,
        tr=tr, te=te, ti=ti,
        flip=_number("FlipAngle", _find(ds, "FlipAngle"), upper=180.0, notes=notes),
        field=_field_strength(_find(ds, "MagneticFieldStrength"), notes),
        echo_train=int(train) if train is not None else None,
        description=str(ds.get("SeriesDescription", "") or "").upper(),
    )


def _voxel(ds: Dataset, slice_spacing_mm: float | None) -> tuple[tuple[float, float, float] | None,
                                                                 float | None]:
    """(voxel_mm (row, column, slice), slice thickness) from the tags, or None parts."""
    thickness = _number("SliceThickness", _find(ds, "SliceThickness"))
    spacing = _find(ds, "PixelSpacing")
    pixel: Iterable[float | None] = ()
    if spacing is not None and len(spacing) == 2:
        pixel = [_number("PixelSpacing", v) for v in spacing]
    slice_mm = thickness or (_number("slice spacing", slice_spacing_mm)
                             if slice_spacing_mm is not None else None)
    pixel = list(pixel)
    if len(pixel) == 2 and None not in pixel and slice_mm is not None:
        return (float(pixel[0]), float(pixel[1]), float(slice_mm)), thickness
    return None, thickness


def protocol_from_dataset(ds: Dataset, *, slice_spacing_mm: float | None = None,
                          notes: list[str] | None = None) -> MRProtocol:
    """The source :class:`MRProtocol` described by ``ds``'s acquisition tags.

    ``slice_spacing_mm`` (the assembled slice spacing) stands in for a missing
    Slice Thickness in ``voxel_mm``; ``notes`` collects a line for every value
    dropped as impossible. Raises :class:`RejectedSeries` when the contrast
    cannot be classified.
    """
    tags = read_acquisition(ds, notes)
    contrast, rule = classify_contrast(tags)
    voxel, thickness = _voxel(ds, slice_spacing_mm)
    protocol = MRProtocol(
        contrast=contrast,
        sequence=classify_sequence(tags),
        dimension=tags.dimension,
        tr_ms=tags.tr,
        te_ms=tags.te,
        ti_ms=tags.ti,
        flip_deg=tags.flip,
        field_t=tags.field,
        manufacturer=str(ds.get("Manufacturer", "") or "") or None,
        model=str(ds.get("ManufacturerModelName", "") or "") or None,
        voxel_mm=voxel,
        slice_thickness_mm=thickness,
    )
    logger.info("Source protocol: %s (%s)", protocol.contrast.value, rule)
    return protocol

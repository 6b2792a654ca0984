"""Eligibility: which series the node may synthesize from, decided before any synthesis.

A synthesized contrast is only as good as the anatomy it starts from. The
network was trained on single structural head volumes (T1w, T2w, PDw, FLAIR,
T2*w magnitude images); anything else — a diffusion mosaic, a phase map, a
localizer, a blank volume — yields a plausible-looking series that means
nothing. Such series are refused with a reason that names the rule and the
value found; nothing is synthesized and nothing is sent.

The rules are data: :data:`HEADER_RULES` (tags of one instance, applied when a
complete series is routed and again by the pipeline) and :data:`VOLUME_RULES`
(the assembled volume, applied after assembly and before synthesis). Each has a
name; a route switches rules off or changes their limits with an
``eligibility`` table (``config/node.toml``), parsed by
:meth:`EligibilityRules.with_overrides`. ``docs/ELIGIBILITY.md`` lists them.

Reasons never quote free text from the header (a Series Description may hold
anything): they name the attribute, the rule and the keyword or value that
matched.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.errors import RejectedSeries
from dicom_node.process.header_facts import HeaderFacts, header_facts

__all__ = ["EligibilityRules", "Rule", "HeaderVerdict", "HEADER_RULES", "VOLUME_RULES",
           "RULE_NAMES", "DEFAULT_RULES", "check_header", "check_volume", "header_facts",
           "HeaderFacts"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EligibilityRules:
    """Which rules apply and their limits.

    ``disabled``: rule names switched off; ``min_slices``: slices (frames) a
    volume needs; ``min_coverage_mm``: extent along the slice normal, mm
    (number of slices x slice spacing); ``body_parts``: accepted Body Part
    Examined values (upper case; an absent value is accepted);
    ``min_relative_range``: the 0.5-99.5 percentile range of the voxel values
    must be at least this fraction of the 99.5th percentile's magnitude.
    """

    disabled: frozenset[str] = frozenset()
    min_slices: int = 8
    min_coverage_mm: float = 20.0
    body_parts: tuple[str, ...] = ("HEAD", "BRAIN", "SKULL", "HEADNECK")
    min_relative_range: float = 0.05

    def enabled(self, name: str) -> bool:
        return name not in self.disabled

    def with_overrides(self, raw: Mapping[str, Any], key: str = "eligibility"
                       ) -> "EligibilityRules":
        """These rules changed by a route's ``eligibility`` table; ``ValueError`` names the
        key and the value found."""
        known = {"disable", "min_slices", "min_coverage_mm", "body_parts", "min_relative_range"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{key} has unknown key(s) {', '.join(unknown)}; known keys: "
                             f"{', '.join(sorted(known))}.")
        changes: dict[str, Any] = {}
        if "disable" in raw:
            names = raw["disable"]
            if not isinstance(names, list) or not all(n in RULE_NAMES for n in names):
                raise ValueError(f"{key}.disable must be a list of rule names "
                                 f"({', '.join(RULE_NAMES)}). Found {names!r}.")
            changes["disabled"] = frozenset(names)
        if "min_slices" in raw:
            changes["min_slices"] = _integer(f"{key}.min_slices", raw["min_slices"], 1)
        for name in ("min_coverage_mm", "min_relative_range"):
            if name in raw:
                changes[name] = _non_negative(f"{key}.{name}", raw[name])
        if "body_parts" in raw:
            parts = raw["body_parts"]
            if not isinstance(parts, list) or not parts or \
                    not all(isinstance(p, str) and p.strip() for p in parts):
                raise ValueError(f"{key}.body_parts must be a non-empty list of Body Part "
                                 f"Examined values (e.g. HEAD, BRAIN). Found {parts!r}.")
            changes["body_parts"] = tuple(p.strip().upper() for p in parts)
        return replace(self, **changes)


def _integer(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}. Found {value!r}.")
    return value


def _non_negative(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} must be a finite number >= 0. Found {value!r}.")
    return float(value)


def _words(pattern: str) -> re.Pattern[str]:
    """A keyword regex matched as a whole token (letters/digits around it do not count)."""
    return re.compile(r"(?<![A-Z0-9])(?:" + pattern + r")(?![A-Z])")


def _keyword(facts: HeaderFacts, pattern: re.Pattern[str]) -> str | None:
    match = pattern.search(facts.description)
    return match.group(0) if match else None


def _image_type_hit(facts: HeaderFacts, values: Sequence[str]) -> str | None:
    return next((v for v in facts.image_type if v in values), None)


# -- the header rules --------------------------------------------------------------------
_DIFFUSION_TYPES = ("DIFFUSION", "ADC", "TRACEW", "TRACE", "FA", "EADC", "EXP", "ISODWI",
                    "DWI", "DTI", "COLFA", "TENSOR", "B0")
_DIFFUSION_WORDS = _words(r"DWI|DTI|ADC|DIFF(?:USION)?|TRACEW?|TENSOR|DBSI|IVIM|RESOLVE")
_EPI_WORDS = _words(r"BOLD|FMRI|F-MRI|RESTING|RS-?FMRI|EP2D|EPI")
_PERFUSION_TYPES = ("PERFUSION", "PERF", "TTP", "RCBV", "RCBF", "CBV", "CBF", "MTT", "ASL")
_PERFUSION_WORDS = _words(r"PERF(?:USION)?|DSC|DCE|PWI|P?C?ASL|CBF|CBV|TTP|DYNAMIC|DYN")
_SPECTRO_WORDS = _words(r"SVS|CSI|SPECTRO(?:SCOPY)?|MRS|MRSI|PRESS|STEAM")
_LOCALIZER_WORDS = _words(r"LOCALI[ZS]ER|LOC|SCOUT|SURVEY|3[- ]?PL(?:ANE)?|TRI[- ]?PILOT|"
                          r"PILOT|AA ?HEAD ?SCOUT|AAHEAD_SCOUT|CAL(?:IBRATION)?")
_PHASE_TYPES = ("P", "PHASE", "PHASE MAP", "FIELD_MAP", "FM", "R", "I", "REAL", "IMAGINARY",
                "B0 MAP", "B1 MAP", "B0MAP", "B1MAP")
_PHASE_WORDS = _words(r"FIELD[ _-]?MAP(?:PING)?|B0[ _-]?MAP|B1[ _-]?MAP|PHASE|PHA|SWI[ _-]?PHA")


def _synthetic(f: HeaderFacts, _r: EligibilityRules) -> str | None:
    if f.synthetic:
        return "Synthetic Data (0008,001C) is YES"
    return None


def _derived(f: HeaderFacts, _r: EligibilityRules) -> str | None:
    if f.image_type[:1] == ("DERIVED",):
        return f"Image Type is DERIVED ({'/'.join(f.image_type[:3])})"
    if f.image_type[1:2] == ("SECONDARY",):
        return f"Image Type is SECONDARY ({'/'.join(f.image_type[:3])})"
    if "SYNTHETIC" in f.image_type:
        return "Image Type says SYNTHETIC"
    return None


def _signature(f: HeaderFacts, types: Sequence[str] = (), contrasts: Sequence[str] = (),
               words: re.Pattern[str] | None = None) -> str | None:
    """Why ``f`` bears a class's signature: an Image Type value, an Enhanced MR Acquisition
    Contrast, or a keyword of the Series Description / Protocol Name; None if none."""
    hit = _image_type_hit(f, types)
    if hit:
        return f"Image Type contains {hit}"
    if f.contrast_kind and f.contrast_kind in contrasts:
        return f"Acquisition Contrast is {f.contrast_kind}"
    word = _keyword(f, words) if words is not None else None
    return f"Series Description/Protocol Name keyword {word}" if word else None


def _diffusion(f: HeaderFacts, _r: EligibilityRules) -> str | None:
    if f.b_value is not None and f.b_value > 0:
        return f"diffusion b-value {f.b_value:g} s/mm2"
    return _signature(f, _DIFFUSION_TYPES, ("DIFFUSION",), _DIFFUSION_WORDS)


def _mosaic(f: HeaderFacts, _r: EligibilityRules) -> str | None:
    if f.mosaic_images is not None and f.mosaic_images > 1:
        return f"Siemens mosaic of {f.mosaic_images} images in one instance"
    return _signature(f, ("MOSAIC",))


def _epi(f: HeaderFacts, _r: EligibilityRules) -> str | None:
    if "EP" in f.scanning:
        return "Scanning Sequence EP (echo planar)"
    if f.echo_planar:
        return "Echo Planar Pulse Sequence is YES"
    if re.search(r"(^|[ *])EP(I|2D|3D|_|\d)", f.sequence_name):
        return "Sequence Name says echo planar"
    return _signature(f, words=_EPI_WORDS)


def _perfusion(f: HeaderFacts, _r: EligibilityRules) -> str | None:
    if f.temporal_positions is not None and f.temporal_positions > 1:
        return f"dynamic series: {f.temporal_positions} temporal positions"
    return _signature(f, _PERFUSION_TYPES, ("PERFUSION", "FLOW_ENCODED"), _PERFUSION_WORDS)


def _spectroscopy(f: HeaderFacts, _r: EligibilityRules) -> str | None:
    return _signature(f, ("SPECTROSCOPY", "CSI", "SPECTRUM"), ("SPECTROSCOPY",), _SPECTRO_WORDS)


def _localizer(f: HeaderFacts, _r: EligibilityRules) -> str | None:
    return _signature(f, ("LOCALIZER",), (), _LOCALIZER_WORDS)


def _phase(f: HeaderFacts, _r: EligibilityRules) -> str | None:
    if f.complex_component in ("PHASE", "REAL", "IMAGINARY"):
        return f"complex image component is {f.complex_component}, not MAGNITUDE"
    return _signature(f, _PHASE_TYPES, (), _PHASE_WORDS)


def _body_part(f: HeaderFacts, r: EligibilityRules) -> str | None:
    if f.body_part and f.body_part.replace(" ", "") not in r.body_parts:
        return (f"Body Part Examined is {f.body_part[:16]}; accepted: "
                f"{', '.join(r.body_parts)}")
    return None


@dataclass(frozen=True)
class Rule:
    """One refusal rule: ``name`` (what configs and the job log use), ``summary`` (the
    class of series it refuses), ``check(facts, rules) -> reason or None``."""

    name: str
    summary: str
    check: Callable[..., str | None] = field(repr=False)

    def enabled_in(self, rules: EligibilityRules) -> bool:
        """True unless ``rules`` switch this rule off."""
        return rules.enabled(self.name)


# In order: the first rule that refuses gives the reason.
HEADER_RULES: tuple[Rule, ...] = (
    Rule("synthetic", "synthetic input (Synthetic Data YES)", _synthetic),
    Rule("derived", "derived, secondary or synthetic images (Image Type)", _derived),
    Rule("mosaic", "Siemens mosaics (slices tiled into one image)", _mosaic),
    Rule("diffusion", "diffusion: DWI, ADC, trace, FA, any b-value > 0", _diffusion),
    Rule("epi", "echo-planar acquisitions (BOLD/fMRI, EPI)", _epi),
    Rule("perfusion", "perfusion and dynamic series (DSC, DCE, ASL, maps)", _perfusion),
    Rule("spectroscopy", "spectroscopy (SVS, CSI)", _spectroscopy),
    Rule("localizer", "localizers, scouts, surveys, calibration scans", _localizer),
    Rule("phase", "phase, real/imaginary and field maps", _phase),
    Rule("body_part", "a body part other than the head when Body Part Examined says so",
         _body_part),
)


# -- the volume rules --------------------------------------------------------------------
def _blank(volume: np.ndarray, _spacing: Sequence[float], r: EligibilityRules) -> str | None:
    finite = np.asarray(volume)[np.isfinite(volume)]
    if finite.size == 0:
        return "no finite voxel value"
    low, high = (float(v) for v in np.percentile(finite, (0.5, 99.5)))
    scale = max(abs(high), abs(low))
    if scale == 0.0:
        return "every voxel is 0 (blank pixel data)"
    if high - low < r.min_relative_range * scale:
        return (f"near-constant pixel data: the 0.5-99.5 percentile range {high - low:.4g} is "
                f"below {r.min_relative_range:.0%} of {scale:.4g}")
    return None


def _slices(volume: np.ndarray, _spacing: Sequence[float], r: EligibilityRules) -> str | None:
    n = int(np.asarray(volume).shape[0])
    if n < r.min_slices:
        return f"{n} slice(s); a volume needs at least {r.min_slices}"
    return None


def _coverage(volume: np.ndarray, spacing: Sequence[float], r: EligibilityRules) -> str | None:
    extent = int(np.asarray(volume).shape[0]) * float(spacing[0])
    if extent < r.min_coverage_mm:
        return (f"coverage {extent:.1f} mm along the slice normal; at least "
                f"{r.min_coverage_mm:g} mm is needed")
    return None


VOLUME_RULES: tuple[Rule, ...] = (
    Rule("slices", "too few slices for a volume (min_slices)", _slices),
    Rule("coverage", "too small a coverage along the slice normal (min_coverage_mm)",
         _coverage),
    Rule("blank", "blank or near-constant pixel data (min_relative_range)", _blank),
)
CONTRAST_RULE = Rule("contrast", "a source contrast that cannot be classified",
                     lambda _f, _r: None)  # applied by check_header via process.condition
RULE_NAMES: tuple[str, ...] = tuple(r.name for r in (*HEADER_RULES, CONTRAST_RULE,
                                                     *VOLUME_RULES))
DEFAULT_RULES = EligibilityRules()


@dataclass(frozen=True)
class HeaderVerdict:
    """What the header rules decided: ``refusal`` (``"rule: reason"``) or None; the
    source ``contrast`` (e.g. ``"T1w"``) when classified; ``warnings`` about impossible
    protocol values that were dropped."""

    refusal: str | None = None
    contrast: str | None = None
    warnings: tuple[str, ...] = ()


def check_header(ds: Dataset, rules: EligibilityRules = DEFAULT_RULES) -> HeaderVerdict:
    """Apply :data:`HEADER_RULES`, then classify the source contrast (rule ``contrast``)."""
    from dicom_node.process.condition import protocol_from_dataset

    facts = header_facts(ds)
    for rule in HEADER_RULES:
        if rule.enabled_in(rules):
            reason = rule.check(facts, rules)
            if reason:
                return HeaderVerdict(refusal=f"not eligible ({rule.name}): {reason}")
    notes: list[str] = []
    try:
        protocol = protocol_from_dataset(ds, notes=notes)
    except RejectedSeries as exc:
        if rules.enabled(CONTRAST_RULE.name):
            return HeaderVerdict(refusal=f"not eligible ({CONTRAST_RULE.name}): {exc.reason}",
                                 warnings=tuple(notes))
        return HeaderVerdict(warnings=tuple(notes))
    return HeaderVerdict(contrast=protocol.contrast.value, warnings=tuple(notes))


def check_volume(volume: np.ndarray, spacing: Sequence[float],
                 rules: EligibilityRules = DEFAULT_RULES) -> None:
    """Apply :data:`VOLUME_RULES` to an assembled volume ``(z, y, x)`` with spacing
    ``(dz, dy, dx)`` mm; raises :class:`RejectedSeries` with the first refusal."""
    for rule in VOLUME_RULES:
        if rule.enabled_in(rules):
            reason = rule.check(volume, spacing, rules)
            if reason:
                raise RejectedSeries(f"not eligible ({rule.name}): {reason}")

"""Random realistic protocols, the held-out zero-shot band, and the data splits by seed.

Zero-shot band (held out of training), one protocol parameter per contrast
(``ZERO_SHOT_BAND``):

* T2w: TE in [120, 140] ms (training draws 80–120 and 140.5–150.5 ms);
* PDw: TE in [32, 40] ms (training: 10–30 ms);
* FLAIR: TR in [6700, 7800] ms with the CSF-nulling TI, about 2.1 s at 1.5 T
  (training: TR 4.8–6.5 s and 8–11 s);
* T1w: SPGR flip angle in [32, 40] degrees (training: 15–30).

``random_protocol(..., split="train")`` (and ``"validation"``/``"test"``)
never returns a protocol in the band; ``split="zeroshot"`` always does.

Splits: subjects are made by seed; ``SPLIT_SEEDS`` gives disjoint seed
ranges, so train, validation and test never share a deformation.
"""
from __future__ import annotations

import math

import numpy as np

from synthesis.protocol import Contrast, MRProtocol, SequenceKind, preset
from synthesis.physics import NOMINAL_PARAMS, TISSUES, nearest_field

__all__ = ["SPLIT_SEEDS", "ZERO_SHOT_BAND", "in_zero_shot_band", "random_protocol",
           "parse_contrast", "SPLITS"]

SPLIT_SEEDS: dict[str, range] = {
    "train": range(0, 1_000_000),
    "validation": range(1_000_000, 1_001_000),
    "test": range(2_000_000, 2_001_000),
}
SPLITS = ("train", "validation", "test", "zeroshot")

#: contrast -> (protocol field, low, high): values held out of training (inclusive).
ZERO_SHOT_BAND: dict[Contrast, tuple[str, float, float]] = {
    Contrast.T2w: ("te_ms", 120.0, 140.0),
    Contrast.PDw: ("te_ms", 32.0, 40.0),
    Contrast.FLAIR: ("tr_ms", 6700.0, 7800.0),
    Contrast.T1w: ("flip_deg", 32.0, 40.0),
}

_ALIASES = {"T1": Contrast.T1w, "T2": Contrast.T2w, "PD": Contrast.PDw,
            "T2*": Contrast.T2starw, "T2STAR": Contrast.T2starw}
_SCANNERS = {
    1.5: (("SIEMENS", "Avanto"), ("SIEMENS", "Aera"), ("GE MEDICAL SYSTEMS", "Optima MR450w"),
          ("Philips", "Ingenia"), ("Philips", "Achieva")),
    3.0: (("SIEMENS", "Prisma"), ("SIEMENS", "Skyra"), ("GE MEDICAL SYSTEMS", "Discovery MR750"),
          ("GE MEDICAL SYSTEMS", "SIGNA Premier"), ("Philips", "Ingenia")),
}


def parse_contrast(value: str | Contrast) -> Contrast:
    """``Contrast`` from a name such as ``"T2"``, ``"T2w"``, ``"FLAIR"`` or a ``Contrast``."""
    if isinstance(value, Contrast):
        return value
    text = str(value).strip()
    if text.upper() in _ALIASES:
        return _ALIASES[text.upper()]
    for contrast in Contrast:
        if contrast.value.lower() == text.lower():
            return contrast
    raise ValueError(f"Unknown contrast {value!r}. Use one of T1, T2, PD, FLAIR "
                     f"(or {', '.join(c.value for c in Contrast)}).")


def in_zero_shot_band(protocol: MRProtocol) -> bool:
    """True for protocols inside the held-out band of their contrast (``ZERO_SHOT_BAND``)."""
    band = ZERO_SHOT_BAND.get(protocol.contrast)
    if band is None:
        return False
    name, low, high = band
    value = getattr(protocol, name)
    return value is not None and low <= value <= high


def _csf_null_ti(tr_ms: float, field_t: float) -> float:
    """TI (ms) that nulls nominal CSF for a given TR: ``T1 ln(2 / (1 + e^(-TR/T1)))``."""
    t1 = float(NOMINAL_PARAMS[field_t][TISSUES.index("csf"), 0])
    return t1 * math.log(2.0 / (1.0 + math.exp(-tr_ms / t1)))


def _t1w(rng: np.random.Generator, field_t: float, split: str) -> dict:
    if split == "zeroshot":
        return dict(sequence=SequenceKind.SPGR, dimension="3D", tr_ms=rng.uniform(15, 30),
                    te_ms=rng.uniform(2.0, 5.0), flip_deg=rng.uniform(32, 40))
    kind = rng.choice(["MPRAGE", "MPRAGE", "SPGR", "SE"])
    if kind == "MPRAGE":
        tr = rng.uniform(1900, 2200) if field_t == 1.5 else rng.uniform(2000, 2500)
        return dict(sequence=SequenceKind.MPRAGE, dimension="3D", tr_ms=tr,
                    te_ms=rng.uniform(2.3, 4.5), ti_ms=rng.uniform(0.36, 0.52) * tr,
                    flip_deg=rng.uniform(7, 12))
    if kind == "SPGR":
        return dict(sequence=SequenceKind.SPGR, dimension="3D", tr_ms=rng.uniform(8, 25),
                    te_ms=rng.uniform(2.0, 5.0), flip_deg=rng.uniform(15, 30))
    return dict(sequence=SequenceKind.SE, dimension="2D", tr_ms=rng.uniform(400, 700),
                te_ms=rng.uniform(8, 20), flip_deg=90.0)


def _t2w(rng: np.random.Generator, field_t: float, split: str) -> dict:
    dimension = "2D" if rng.random() < 0.6 else "3D"
    if split == "zeroshot":
        te = round(rng.uniform(120.0, 140.0), 2)
    else:  # 80-150 ms without the band: [80, 120) or [140.5, 150.5)
        te = round(rng.uniform(80.0, 130.0), 2)
        te = te if te < 120.0 else round(te + 20.5, 2)
    return dict(sequence=SequenceKind.TSE, dimension=dimension, tr_ms=rng.uniform(2500, 6000),
                te_ms=te, flip_deg=90.0 if dimension == "2D" else 120.0)


def _pdw(rng: np.random.Generator, field_t: float, split: str) -> dict:
    dimension = "2D" if rng.random() < 0.6 else "3D"
    tr = rng.uniform(2800, 8000) if field_t == 1.5 else rng.uniform(2800, 9000)
    te = rng.uniform(32, 40) if split == "zeroshot" else rng.uniform(10, 30)
    return dict(sequence=SequenceKind.TSE, dimension=dimension, tr_ms=tr,
                te_ms=te, flip_deg=90.0 if dimension == "2D" else 120.0)


def _flair(rng: np.random.Generator, field_t: float, split: str) -> dict:
    if split == "zeroshot":
        tr, te, flip, dimension = rng.uniform(6700, 7800), rng.uniform(80, 140), 90.0, "2D"
    elif rng.random() < 0.5:
        tr, te, flip, dimension = rng.uniform(8000, 11000), rng.uniform(80, 140), 90.0, "2D"
    else:
        tr, te, dimension = rng.uniform(4800, 6500), rng.uniform(300, 420), "3D"
        flip = 120.0
    ti = _csf_null_ti(tr, field_t) * rng.uniform(0.97, 1.03)
    return dict(sequence=SequenceKind.IR, dimension=dimension, tr_ms=tr, te_ms=te, ti_ms=ti,
                flip_deg=flip)


PRESET_SHARE = 0.3
_PRESET_OF = {Contrast.T1w: "T1", Contrast.T2w: "T2", Contrast.PDw: "PD", Contrast.FLAIR: "FLAIR"}


def _jittered_preset(name: str, field: float, rng: np.random.Generator) -> MRProtocol:
    """A clinical preset with TR, TE and TI each scaled by a factor in [0.95, 1.05]."""
    base = preset(name, field)
    changes = {k: round(float(getattr(base, k)) * rng.uniform(0.95, 1.05), 2)
               for k in ("tr_ms", "te_ms", "ti_ms") if getattr(base, k) is not None}
    return base.with_(**changes)


def random_protocol(contrast: str | Contrast, rng: np.random.Generator, *,
                    field_t: float | None = None, split: str = "train",
                    preset_share: float = PRESET_SHARE) -> MRProtocol:
    """A realistic random protocol of ``contrast`` (T1w, T2w, PDw or FLAIR).

    With probability ``preset_share`` (training splits only) the protocol is a
    clinical preset of :mod:`synthesis.protocol` with TR/TE/TI jittered by ±5 %,
    so the protocols the node actually asks for are well covered.
    T1w: MPRAGE (1/2), 3-D SPGR (1/4) or 2-D SE (1/4); T2w and PDw: 2-D or 3-D
    TSE (PDw with TR 2.8–8 s at 1.5 T, 2.8–9 s at 3 T); FLAIR: 2-D or
    3-D IR with a TI that nulls CSF (±3%). ``field_t`` 1.5 or 3 (random when None). 3-D protocols
    have 1 mm voxels; 2-D ones 2–5 mm slices (apply the same thickness with
    :class:`~synthesis.simulate.artifacts.Effects` for a consistent source, or
    use :func:`~synthesis.simulate.artifacts.with_acquisition`). ``split``
    ``"zeroshot"`` returns a protocol inside its contrast's band; any other
    split never does.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}. Found {split!r}.")
    contrast = parse_contrast(contrast)
    field = nearest_field(field_t) if field_t is not None else float(rng.choice([1.5, 3.0]))
    if not 0.0 <= preset_share <= 1.0:
        raise ValueError(f"preset_share must be in [0, 1]. Found {preset_share!r}.")
    if split != "zeroshot" and contrast in _PRESET_OF and rng.random() < preset_share:
        return _jittered_preset(_PRESET_OF[contrast], field, rng)
    if contrast is Contrast.T1w:
        values = _t1w(rng, field, split)
    elif contrast is Contrast.T2w:
        values = _t2w(rng, field, split)
    elif contrast is Contrast.PDw:
        values = _pdw(rng, field, split)
    elif contrast is Contrast.FLAIR:
        values = _flair(rng, field, split)
    else:
        raise ValueError(f"random_protocol simulates T1w, T2w, PDw and FLAIR. "
                         f"Found {contrast.value}.")
    make, model = _SCANNERS[field][int(rng.integers(len(_SCANNERS[field])))]
    thickness = 1.0 if values["dimension"] == "3D" else float(rng.choice([2.0, 3.0, 4.0, 5.0]))
    rounded = {k: (round(float(v), 2) if isinstance(v, (float, np.floating)) else v)
               for k, v in values.items()}
    return MRProtocol(contrast=contrast, field_t=field, manufacturer=make, model=model,
                      voxel_mm=(1.0, 1.0, thickness), slice_thickness_mm=thickness, **rounded)

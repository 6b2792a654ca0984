"""The condition the network sees for a (source, target) protocol pair.

* a deterministic English sentence (:func:`prompt`), and
* a normalized numeric vector with missing-value flags (:func:`pair_features`),
  because sentence encoders tokenize numbers badly; it ends with what each
  protocol's signal equation predicts for the simulated tissue classes
  (:func:`physics_features`).
"""
from __future__ import annotations

import math

import numpy as np

from synthesis.physics import NOMINAL_PARAMS, nearest_field, tissue_signal
from synthesis.protocol import Contrast, MRProtocol, SequenceKind

__all__ = ["prompt", "protocol_features", "physics_features", "pair_features", "FEATURE_DIM",
           "PHYSICS_DIM", "PAIR_FEATURE_DIM"]


def prompt(source: MRProtocol, target: MRProtocol) -> str:
    """The deterministic sentence that conditions synthesis of ``target`` from ``source``."""
    return f"Synthesize a {target.describe()} from a {source.describe()}."


_CONTRASTS = list(Contrast)
_SEQUENCES = list(SequenceKind)
# (attribute, scale for log1p(value)/log1p(scale)) -- roughly maps clinical ranges to [0, 1]
_NUMERIC = (
    ("tr_ms", 10000.0),
    ("te_ms", 500.0),
    ("ti_ms", 5000.0),
    ("flip_deg", 180.0),
    ("field_t", 7.0),
    ("slice_thickness_mm", 10.0),
)
FEATURE_DIM = 2 * len(_NUMERIC) + len(_CONTRASTS) + len(_SEQUENCES) + 1
PHYSICS_DIM = 9  # nominal signal of the 8 simulated tissue classes, then a "computable" flag
#: source and target :func:`protocol_features`, then source and target :func:`physics_features`
#: (a model built with ``feature_dim = 2 * FEATURE_DIM`` reads only the first part)
PAIR_FEATURE_DIM = 2 * FEATURE_DIM + 2 * PHYSICS_DIM


def protocol_features(protocol: MRProtocol) -> np.ndarray:
    """Normalized numeric description of one protocol, shape ``(FEATURE_DIM,)``.

    For each numeric field: ``log1p(value)/log1p(scale)`` and a present flag
    (0 and flag 0 when missing); then one-hot contrast, one-hot sequence kind
    and a 3-D flag.
    """
    out = np.zeros(FEATURE_DIM, dtype=np.float32)
    for i, (name, scale) in enumerate(_NUMERIC):
        value = getattr(protocol, name)
        if value is not None:
            out[2 * i] = math.log1p(value) / math.log1p(scale)
            out[2 * i + 1] = 1.0
    base = 2 * len(_NUMERIC)
    out[base + _CONTRASTS.index(protocol.contrast)] = 1.0
    base += len(_CONTRASTS)
    if protocol.sequence is not None:
        out[base + _SEQUENCES.index(protocol.sequence)] = 1.0
    base += len(_SEQUENCES)
    out[base] = 1.0 if protocol.dimension == "3D" else 0.0
    return out


def physics_features(protocol: MRProtocol, *, relative_to: str) -> np.ndarray:
    """The contrast the protocol's signal equation predicts, shape ``(PHYSICS_DIM,)``.

    The signal of each tissue class of :data:`synthesis.physics.TISSUES`
    (CSF, GM, WM, lesion, fat, muscle, skin, bone) with nominal (literature)
    relaxation times at the protocol's field, divided by the largest signal of
    the brain tissues (``relative_to="brain"``, how targets are scaled) or of all
    tissues (``"all"``, how a source is scaled), then a flag that is 1. Numbers
    tokenize badly; this tells the network outright which tissue is bright. All
    zeros when the protocol lacks a parameter its sequence needs (e.g. TI).
    """
    if relative_to not in ("brain", "all"):
        raise ValueError(f"relative_to must be 'brain' or 'all'. Found {relative_to!r}.")
    out = np.zeros(PHYSICS_DIM, dtype=np.float32)
    try:
        signal = tissue_signal(NOMINAL_PARAMS[nearest_field(protocol.field_t)], protocol)
    except ValueError:  # a parameter the signal equation needs is missing
        return out
    top = float(signal[:4].max() if relative_to == "brain" else signal.max())
    if not (math.isfinite(top) and top > 0):
        return out
    out[:-1] = signal / top
    out[-1] = 1.0
    return out


def pair_features(source: MRProtocol, target: MRProtocol) -> np.ndarray:
    """Numeric condition, shape ``(PAIR_FEATURE_DIM,)``: the source's and the target's
    :func:`protocol_features`, then their :func:`physics_features`."""
    return np.concatenate([protocol_features(source), protocol_features(target),
                           physics_features(source, relative_to="all"),
                           physics_features(target, relative_to="brain")])

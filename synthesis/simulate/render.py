"""Clean magnitude images of a :class:`~synthesis.simulate.phantom.Subject` for a protocol."""
from __future__ import annotations

import numpy as np

from synthesis.protocol import MRProtocol
from synthesis.simulate.phantom import Subject
from synthesis.physics import NOMINAL_PARAMS, nearest_field, tissue_signal

__all__ = ["render", "tissue_weights"]


def tissue_weights(subject: Subject, protocol: MRProtocol, *, nominal: bool = False) -> np.ndarray:
    """Signal of each pure tissue of ``subject`` under ``protocol``, shape ``(T,)`` float32
    (``nominal``: with the nominal tissue parameters instead of the subject's own)."""
    field = nearest_field(protocol.field_t)
    return tissue_signal(NOMINAL_PARAMS[field] if nominal else subject.params[field], protocol)


def render(subject: Subject, protocol: MRProtocol, *,
           region: tuple[slice, slice, slice] | None = None, nominal: bool = False,
           params: np.ndarray | None = None) -> np.ndarray:
    """The clean magnitude image, float32 ``(D, H, W)`` (of ``region`` when given).

    Each tissue's signal (see :mod:`synthesis.physics`) at the field
    nearest ``protocol.field_t`` (1.5 or 3 T), weighted by its fraction and
    summed; air gives 0. Values are on the physical scale (PD of CSF = 1).
    ``nominal``: use the nominal tissue parameters, not the subject's jittered ones
    (the anatomy is the subject's: the evaluation's physics oracle). ``params``: tissue
    parameters ``(T, 4)`` to use instead (a source rendered with its own contrast spread).
    """
    if params is not None:
        weights = tissue_signal(np.asarray(params), protocol)
    else:
        weights = tissue_weights(subject, protocol, nominal=nominal)
    fractions = subject.fractions
    if region is not None:
        fractions = fractions[(slice(None),) + tuple(region)]
    out = np.zeros(fractions.shape[1:], dtype=np.float32)
    for weight, fraction in zip(weights, fractions):
        if weight != 0.0:
            out += np.float32(weight) * fraction  # float16 fraction promotes to float32
    return out

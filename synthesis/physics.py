"""Tissue classes, their relaxation parameters at 1.5 T and 3 T, and the signal equations.

Parameters per tissue are ``(T1 ms, T2 ms, T2* ms, PD)`` with PD relative to
CSF = 1. Nominal values follow DESIGN.md §3 (BrainWeb-like literature values);
each subject jitters them by at most ±10% (a common factor per parameter kind
of ±7% times a per-tissue factor of ±3%, so contrast orderings survive).

Signal equations (magnitude, per tissue, summed by tissue fraction):

* SE / TSE: ``PD (1 - e^(-TR/T1)) e^(-TE/T2)``
* GRE / SPGR: ``PD sin(a) (1 - E1) / (1 - cos(a) E1) e^(-TE/T2*)``, ``E1 = e^(-TR/T1)``
* IR (FLAIR, STIR, IR-SE): ``PD |1 - 2 e^(-TI/T1) + e^(-TR/T1)| e^(-TE/T2)``
* MPRAGE: the longitudinal magnetization followed through inversion, recovery and a
  train of ``n`` low-flip GRE readouts (spacing ``esp``) centred on TI, repeated every
  TR until steady state; the signal is that of the centre readout (linear phase
  encoding), ``PD sin(a) M_centre e^(-TE/T2*)``. The readout train's saturation is what
  keeps fat (short T1) near white matter, as on real MPRAGE images; the simpler
  ``|1 - 2 e^(-TI/T1) + e^(-TR/T1)|`` made fat 3.4x white matter.

Gradient-echo fat (GRE, SPGR, MPRAGE) is scaled by ``FAT_GRE_FACTOR``: fat's
spectrum has several peaks besides the main methylene one, and at the short
echo times of these sequences they dephase against it (no refocusing pulse).
With it MPRAGE fat is about 1.3x (1.5 T) to 1.6x (3 T) white matter.

3-D variable-flip-angle TSE (SPACE/CUBE-like, nominal TE > 200 ms) has the T2
weighting of a conventional echo at ``0.3 x TE`` (the "equivalent TE").
"""
from __future__ import annotations

import numpy as np

from synthesis.protocol import Contrast, MRProtocol, SequenceKind

__all__ = ["TISSUES", "NOMINAL_PARAMS", "FIELDS_T", "nearest_field", "jittered_params",
           "tissue_signal", "equivalent_te_ms"]

#: Tissue classes, in the order of ``Subject.fractions`` (air is what is left over).
TISSUES: tuple[str, ...] = ("csf", "gm", "wm", "lesion", "fat", "muscle", "skin", "bone")
FIELDS_T: tuple[float, ...] = (1.5, 3.0)

#: Nominal ``(T1 ms, T2 ms, T2* ms, PD)`` per tissue (rows in ``TISSUES`` order) and field.
NOMINAL_PARAMS: dict[float, np.ndarray] = {
    1.5: np.array([
        [4000.0, 2000.0, 1500.0, 1.00],   # csf
        [1100.0, 95.0, 80.0, 0.80],       # gm
        [700.0, 75.0, 65.0, 0.69],        # wm
        [1300.0, 180.0, 140.0, 0.86],     # lesion (WM hyperintensity: long T1 and T2)
        [350.0, 80.0, 40.0, 0.90],        # fat / marrow
        [1000.0, 45.0, 30.0, 0.75],       # muscle
        [600.0, 50.0, 30.0, 0.70],        # skin
        [1000.0, 5.0, 1.0, 0.05],         # bone (cortical: almost no signal)
    ], dtype=np.float64),
    3.0: np.array([
        [4300.0, 1800.0, 1300.0, 1.00],
        [1400.0, 90.0, 60.0, 0.80],
        [900.0, 70.0, 50.0, 0.69],
        [1650.0, 160.0, 110.0, 0.86],
        [380.0, 70.0, 30.0, 0.90],
        [1400.0, 40.0, 25.0, 0.75],
        [800.0, 45.0, 25.0, 0.70],
        [1100.0, 4.0, 0.8, 0.05],
    ], dtype=np.float64),
}

_EQUIVALENT_TE_FACTOR = 0.3
FAT_GRE_FACTOR = 0.65        # multi-peak fat dephasing on gradient echoes
_MPRAGE_READOUTS = 176        # GRE readouts per inversion (one partition line each)
_MPRAGE_ESP_MS = 8.0          # readout spacing (the GRE TR)
_MPRAGE_INVERSION = 0.96      # inversion efficiency
_LONG_TE_MS = 200.0


def nearest_field(field_t: float | None) -> float:
    """The tabulated field (1.5 or 3.0 T) nearest ``field_t``; 3.0 when unknown."""
    if field_t is None:
        return 3.0
    return 1.5 if float(field_t) < 2.25 else 3.0


def jittered_params(rng: np.random.Generator, max_jitter: float = 0.10) -> dict[float, np.ndarray]:
    """Per-subject tissue parameters: ``{field_t: (T, 4)}`` within ±``max_jitter`` of nominal."""
    common_part = 0.7 * max_jitter
    tissue_part = 0.3 * max_jitter
    out: dict[float, np.ndarray] = {}
    for field in FIELDS_T:
        common = rng.uniform(1 - common_part, 1 + common_part, size=(1, 4))
        each = rng.uniform(1 - tissue_part, 1 + tissue_part, size=(len(TISSUES), 4))
        out[field] = (NOMINAL_PARAMS[field] * common * each).astype(np.float32)
    return out


def equivalent_te_ms(protocol: MRProtocol) -> float:
    """The TE (ms) whose plain ``e^(-TE/T2)`` matches the protocol's T2 weighting."""
    te = float(protocol.te_ms or 0.0)
    if protocol.dimension == "3D" and te > _LONG_TE_MS and protocol.sequence in (
            SequenceKind.TSE, SequenceKind.SE, SequenceKind.IR):
        return _EQUIVALENT_TE_FACTOR * te
    return te


def _sequence_of(protocol: MRProtocol) -> SequenceKind:
    if protocol.sequence is not None:
        return protocol.sequence
    return {Contrast.T1w: SequenceKind.SE, Contrast.FLAIR: SequenceKind.IR,
            Contrast.T2starw: SequenceKind.GRE}.get(protocol.contrast, SequenceKind.TSE)


def _required(protocol: MRProtocol, name: str) -> float:
    value = getattr(protocol, name)
    if value is None:
        raise ValueError(f"Simulating a {_sequence_of(protocol).value} image needs {name}; "
                         f"the protocol has {name}=None.")
    return float(value)


def tissue_signal(params: np.ndarray, protocol: MRProtocol) -> np.ndarray:
    """Signal of a voxel full of each tissue, shape ``(T,)``, for ``params`` ``(T, 4)``."""
    t1, t2, t2s, pd = (params[:, i].astype(np.float64) for i in range(4))
    seq = _sequence_of(protocol)
    tr = _required(protocol, "tr_ms")
    te = equivalent_te_ms(protocol)
    e1 = np.exp(-tr / t1)
    if seq in (SequenceKind.SE, SequenceKind.TSE):
        signal = pd * (1 - e1) * np.exp(-te / t2)
    elif seq in (SequenceKind.GRE, SequenceKind.SPGR):
        alpha = np.deg2rad(_required(protocol, "flip_deg"))
        signal = pd * np.sin(alpha) * (1 - e1) / (1 - np.cos(alpha) * e1) * np.exp(-te / t2s)
    elif seq is SequenceKind.IR:
        ti = _required(protocol, "ti_ms")
        signal = pd * np.abs(1 - 2 * np.exp(-ti / t1) + e1) * np.exp(-te / t2)
    elif seq is SequenceKind.MPRAGE:
        ti = _required(protocol, "ti_ms")
        alpha = np.deg2rad(protocol.flip_deg or 9.0)
        signal = pd * np.sin(alpha) * _mprage_centre(t1, tr, ti, alpha) * np.exp(-te / t2s)
    else:  # pragma: no cover - SequenceKind is closed
        raise ValueError(f"No signal equation for sequence {seq!r}.")
    if seq in (SequenceKind.GRE, SequenceKind.SPGR, SequenceKind.MPRAGE) and len(signal) == len(TISSUES):
        signal = signal.copy()
        signal[TISSUES.index("fat")] *= FAT_GRE_FACTOR
    return signal.astype(np.float32)


def _mprage_centre(t1: np.ndarray, tr: float, ti: float, alpha: float) -> np.ndarray:
    """Steady-state longitudinal magnetization (``M0 = 1``) at the centre readout of an
    MPRAGE train, per tissue ``t1`` (ms); magnitude. See the module docstring."""
    half = min(_MPRAGE_READOUTS // 2, int(0.9 * ti / _MPRAGE_ESP_MS),
               int(0.9 * max(tr - ti, _MPRAGE_ESP_MS) / _MPRAGE_ESP_MS))
    half = max(half, 1)
    n = 2 * half
    before = ti - half * _MPRAGE_ESP_MS                  # inversion -> first readout
    after = max(tr - ti - half * _MPRAGE_ESP_MS, 0.0)    # last readout -> next inversion
    e_esp = np.exp(-_MPRAGE_ESP_MS / t1)
    a = np.cos(alpha) * e_esp                            # M_{k+1} = a M_k + b within the train
    b = 1.0 - e_esp

    def train(m0: np.ndarray, k: int) -> np.ndarray:
        ak = a ** k
        return ak * m0 + b * (1.0 - ak) / (1.0 - a)

    def recover(m: np.ndarray, t: float) -> np.ndarray:
        return 1.0 - (1.0 - m) * np.exp(-t / t1)

    m = np.ones_like(t1)
    for _ in range(6):  # a few repetitions reach the steady state
        first = recover(-_MPRAGE_INVERSION * m, before)
        centre = train(first, half)
        m = recover(train(first, n), after)
    return np.abs(centre)

"""Physics simulation of paired multi-contrast brain MRI (DESIGN.md §3).

``make_subject(seed)`` builds a head phantom (tissue fractions on a 1 mm LPS
grid) from nilearn's bundled MNI152 maps; ``render(subject, protocol)`` gives
its clean image for any :class:`~synthesis.protocol.MRProtocol`;
``degrade(img, spacing, effects, rng)`` adds the acquisition effects of a
source image. Protocols come from ``random_protocol``; ``SPLIT_SEEDS`` and the
zero-shot band (``in_zero_shot_band``) separate training from evaluation.
"""
from __future__ import annotations

from synthesis.simulate.artifacts import (
    SEVERITIES,
    Effects,
    degrade,
    random_effects,
    thick_slices,
    with_acquisition,
)
from synthesis.simulate.phantom import (
    PHANTOM_VERSION,
    Subject,
    load_or_make_subject,
    make_subject,
)
from synthesis.simulate.protocols import (
    SPLIT_SEEDS,
    ZERO_SHOT_BAND,
    in_zero_shot_band,
    parse_contrast,
    random_protocol,
)
from synthesis.simulate.render import render, tissue_weights
from synthesis.physics import NOMINAL_PARAMS, TISSUES, tissue_signal

__all__ = [
    "Subject", "make_subject", "load_or_make_subject", "PHANTOM_VERSION",
    "render", "tissue_weights", "tissue_signal", "TISSUES", "NOMINAL_PARAMS",
    "Effects", "SEVERITIES", "random_effects", "degrade", "with_acquisition", "thick_slices",
    "random_protocol", "in_zero_shot_band", "parse_contrast", "SPLIT_SEEDS", "ZERO_SHOT_BAND",
]

"""RTFSyn synthesis: protocols, text condition, network, simulation, training.

This package knows arrays, spacings and protocols; it never imports pydicom.
Heavy parts are imported lazily so ``import synthesis.protocol`` stays cheap.
"""
from __future__ import annotations

from typing import Any

from synthesis.version import __version__
__all__ = ["Synthesizer", "SynthesisResult", "MRProtocol", "preset", "prompt", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Synthesizer", "SynthesisResult"):
        from synthesis import inference

        return getattr(inference, name)
    if name in ("MRProtocol", "preset"):
        from synthesis import protocol

        return getattr(protocol, name)
    if name == "prompt":
        from synthesis import condition

        return condition.prompt
    raise AttributeError(f"module 'synthesis' has no attribute {name!r}")

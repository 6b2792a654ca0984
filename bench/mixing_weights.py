"""A model's output mixing weights beside the physics prior's, per target contrast.

With the physics mix the decoder's bases are mixed by the target protocol's nominal tissue
signals (the prior) plus a learned correction from the condition. This prints, for the 3 T
T2w, PDw and FLAIR presets from the 3 T T1 preset, the correction on the brain tissues (CSF,
GM, WM, lesion), the prior, and their ratio: a correction that is a common scale of the prior
changes only the output's unit; one that differs per tissue gives the output contrasts of its
own (docs/TRAINING.md, *The bases and the mix drift apart from the physics*).

Usage::

    python bench/mixing_weights.py default runs/mixshape/model.pt
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import torch

BRAIN = ("csf", "gm", "wm", "lesion")


@torch.inference_mode()
def weights_and_prior(synthesizer: Any, source: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's mixing weights of its bases and the physics prior for a protocol pair,
    ``(bases,)`` each in float32 (they depend on the condition only, so a zero volume of the
    network's smallest size is encoded). ValueError for a model without the physics mix."""
    from synthesis.condition import prompt

    model = synthesizer.model
    text, features = synthesizer.condition(prompt(source, target), source, target)
    feats = model.encode(torch.zeros(1, 1, *(model.config.size_multiple,) * 3), text, features)
    return model.mixing_weights(feats)[0], feats.mix_prior.float()[0]


def mixing_weights(synthesizer: Any) -> dict[str, dict[str, list[float]]]:
    """target -> {"correction", "prior", "ratio"} on the brain tissues, rounded to 3 decimals."""
    from synthesis.eval_sets import FIELD_T, TARGETS
    from synthesis.protocol import preset

    source = preset("T1", FIELD_T)
    out = {}
    for target_name in ("T2w", "PDw", "FLAIR"):
        weights, prior = weights_and_prior(synthesizer, source, preset(TARGETS[target_name], FIELD_T))
        weights, prior = weights[:len(BRAIN)].numpy(), prior[:len(BRAIN)].numpy()
        correction = weights - prior
        ratio = np.divide(correction + prior, prior, out=np.full_like(prior, np.nan), where=prior > 1e-6)
        out[target_name] = {name: [round(float(v), 3) for v in values]
                            for name, values in (("correction", correction), ("prior", prior), ("ratio", ratio))}
    return out


def main(argv: list[str] | None = None) -> int:
    from synthesis.inference import Synthesizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint paths or 'default'")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {"tissues": list(BRAIN)}
    for checkpoint in args.checkpoints:
        result[checkpoint] = mixing_weights(Synthesizer(checkpoint, "cpu"))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

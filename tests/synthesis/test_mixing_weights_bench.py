"""bench/mixing_weights.py: a model's learned mixing correction beside the physics prior."""
from __future__ import annotations

import pytest
import torch

from bench.mixing_weights import BRAIN, mixing_weights
from synthesis.inference import Synthesizer
from synthesis.nets import RTFSyn, RTFSynConfig


def test_a_correction_that_scales_the_prior_reads_as_one_ratio_per_target() -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny())
    with torch.no_grad():                      # the learned correction: none
        model.head.mix.weight.zero_()
        model.head.mix.bias.zero_()
    out = mixing_weights(Synthesizer.from_model(model))
    assert set(out) == {"T2w", "PDw", "FLAIR"}
    for target, row in out.items():
        assert len(row["prior"]) == len(BRAIN) and max(row["prior"]) == pytest.approx(1.0, abs=1e-3), target
        assert row["correction"] == [0.0] * len(BRAIN)
        assert all(r == pytest.approx(1.0) for r, p in zip(row["ratio"], row["prior"]) if p > 1e-6)
    with torch.no_grad():
        model.head.mix.bias[1] = 0.25          # grey matter raised, nothing else
    row = mixing_weights(Synthesizer.from_model(model))["T2w"]
    assert row["correction"][1] == pytest.approx(0.25) and row["correction"][2] == 0.0
    assert row["ratio"][1] == pytest.approx((row["prior"][1] + 0.25) / row["prior"][1], abs=2e-3)

"""Ablations: the no-dynamic-conv switch, seed grouping, and the commands that train them."""
from __future__ import annotations

import json
import shlex

import pytest
import torch

from bench import ablations
from synthesis.blocks.dynconv import DynamicConv3d
from synthesis.evaluate import group_summary, seed_groups
from synthesis.condition import PAIR_FEATURE_DIM
from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig
from synthesis.text import TEXT_DIM, TextCondition


def _text() -> TextCondition:
    tokens = torch.randn(1, 5, TEXT_DIM)
    return TextCondition(tokens, torch.ones(1, 5, dtype=torch.bool), tokens.mean(1))


def test_kernel_bank_zero_leaves_only_the_dynamic_convolution_out() -> None:
    torch.manual_seed(0)
    full, ablated = RTFSyn(RTFSynConfig.tiny()), RTFSyn(RTFSynConfig.tiny(kernel_bank=0))
    assert any(isinstance(m, DynamicConv3d) for m in full.modules())
    assert not any(isinstance(m, DynamicConv3d) for m in ablated.modules())
    assert len(ablated.fuse) == len(full.fuse)  # cross-attention is still there
    assert all(hasattr(block, "attention") for block in ablated.fuse.values())
    feats = ablated.encode(torch.rand(1, 1, 16, 16, 16), _text(), torch.rand(1, PAIR_FEATURE_DIM))
    coords = torch.rand(1, 64, 3) * 15
    (ablated.render_grid(feats).mean() + ablated.query(feats, coords, torch.full((1, 3), 0.5)).square().mean()).backward()
    missing = [name for name, p in ablated.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    with pytest.raises(ValueError, match="kernel_bank must be an integer >= 0"):
        RTFSynConfig.tiny(kernel_bank=-1)


def test_seed_entries_are_grouped_by_name_in_seed_order() -> None:
    models = ["rtfsyn", "no-text/seed2", "no-text/seed0", "full/seed1", "lookup", "odd/seedx"]
    assert seed_groups(models) == {"no-text": ["no-text/seed0", "no-text/seed2"], "full": ["full/seed1"]}


def _entry(psnr: float) -> dict:
    return {"psnr": psnr}


def test_group_summary_is_the_mean_and_sample_spread_over_seeds() -> None:
    summary = {  # seed value = mean over the two sets: 20, 22, 24
        "a/seed0": {"s1": {"T2w": _entry(19.0)}, "s2": {"T2w": _entry(21.0)}},
        "a/seed1": {"s1": {"T2w": _entry(22.0)}, "s2": {"T2w": _entry(22.0)}},
        "a/seed2": {"s1": {"T2w": _entry(25.0)}, "s2": {"T2w": _entry(23.0)}},
    }
    g = group_summary(summary, ["a/seed0", "a/seed1", "a/seed2"], ["s1", "s2"], ["T2w", "FLAIR"])
    assert g == {"T2w": {"mean": 22.0, "spread": 2.0, "n": 3}}  # FLAIR: not evaluated, left out
    assert group_summary(summary, ["a/seed0"], ["s1"], ["T2w"])["T2w"]["spread"] == 0.0


def test_commands_train_every_variant_from_scratch_and_evaluate_the_seeds() -> None:
    lines = ablations.commands(["full", "no-dynconv"], seeds=(0, 1), steps=50, root="r")
    assert len(lines) == 5
    train = shlex.split(lines[2])  # no-dynconv, seed 0
    assert train[:2] == ["rtfsyn", "train"]
    assert json.loads(train[train.index("--set") + 1].partition("=")[2]) == {"kernel_bank": 0}
    assert "seed=0" in train and "init_checkpoint=null" in train
    assert train[train.index("--steps") + 1] == "50" and train[train.index("--out-dir") + 1] == "r/no-dynconv-s0"
    evaluate = shlex.split(lines[-1])
    assert "no-dynconv/seed1=r/no-dynconv-s1/model.pt" in evaluate
    assert evaluate[evaluate.index("--ablation-reference") + 1] == "full"
    with pytest.raises(ValueError, match="Unknown ablation variant 'nope'"):
        ablations.train_argv("nope", 0, steps=1)
    tuned = ablations.train_argv("no-text", 2, steps=80, init="default")
    assert "init_checkpoint=\"default\"" in tuned and "init_checkpoint=null" not in tuned
    assert json.loads(tuned[tuned.index("--set") + 1].partition("=")[2]) == {"fusion": "none",
                                                                            "lesion_net": False}


def test_every_variant_config_is_a_valid_architecture() -> None:
    for name, overrides in ablations.VARIANTS.items():
        RTFSynConfig.tiny(**overrides)  # raises on an invalid switch


def test_dry_run_prints_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert ablations.main(["--dry-run", "--variants", "no-text", "--seeds", "3", "--steps", "7",
                           "--train-set", "patch=16"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("rtfsyn train") and "seed=3" in out[0] and "patch=16" in out[0]
    assert out[1].startswith("rtfsyn evaluate") and "no-text/seed3=" in out[1]
    assert ablations.main(["--dry-run", "--variants", "bogus"]) == 2

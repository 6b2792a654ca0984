"""The RTFSyn network: config, shapes, gradients, conditioning, ablations."""
from __future__ import annotations

import itertools

import pytest
import torch

from synthesis.nets.rtfsyn import Features, RTFSyn, RTFSynConfig
from synthesis.condition import PAIR_FEATURE_DIM
from synthesis.text import TEXT_DIM, TextCondition


def fake_text(batch: int, length: int = 9, seed: int = 0) -> TextCondition:
    """Random token states standing in for the frozen encoder (its own tests cover it)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, TEXT_DIM, generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1:, length - 3:] = False
    tokens[~mask] = 0
    pooled = torch.nn.functional.normalize(torch.randn(batch, TEXT_DIM, generator=gen), dim=1)
    return TextCondition(tokens, mask, pooled)


def features(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, PAIR_FEATURE_DIM, generator=torch.Generator().manual_seed(seed))


ABLATIONS = [
    dict(refinement=r, fusion=f, decoder=d)
    for r, f, d in itertools.product(("axis", "none"), ("rtf", "global", "none"), ("implicit", "conv"))
]


def test_default_config_is_within_the_parameter_budget() -> None:
    model = RTFSyn(RTFSynConfig())
    assert model.num_parameters() <= 5_000_000
    assert model.num_parameters() > 1_000_000
    assert RTFSynConfig().size_multiple == 16


@pytest.mark.parametrize(
    ("shape", "config"),
    [
        ((2, 1, 16, 16, 16), {}),
        ((1, 1, 17, 23, 9), {}),                        # padded internally, cropped back
        ((2, 1, 2, 3, 2), {}),                          # smallest volume the Synthesizer accepts
        ((1, 1, 24, 20, 16), {"pack": 1, "fusion_scales": (0, 2)}),
        ((1, 1, 12, 12, 12), {"channels": (4, 8), "fusion_scales": (1,), "blocks": 2}),
    ],
)
def test_shapes(shape: tuple[int, ...], config: dict) -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny(**config)).eval()
    batch = shape[0]
    with torch.no_grad():
        feats = model.encode(torch.rand(shape), fake_text(batch), features(batch))
        assert feats.volume.shape == (batch, model.config.channels[0], *shape[2:])
        assert feats.cond is not None and feats.cond.shape == (batch, model.config.cond_dim)
        assert model.render_grid(feats).shape == (batch, 1, *shape[2:])
        assert model(torch.rand(shape), fake_text(batch), features(batch)).shape == (batch, 1, *shape[2:])
        coords = torch.rand(batch, 33, 3) * torch.tensor(shape[2:])
        assert model.query(feats, coords, torch.ones(batch, 3)).shape == (batch, 33)


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda a: "-".join(a.values()))
def test_every_ablation_builds_runs_and_trains(ablation: dict) -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny(**ablation))
    x = torch.rand(2, 1, 16, 16, 16)
    text = fake_text(2) if ablation["fusion"] != "none" else None
    feats = model.encode(x, text, features(2))
    coords = torch.rand(2, 64, 3) * 15
    loss = model.query(feats, coords, torch.full((2, 3), 0.5)).square().mean() + model.render_grid(feats).mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert model.uses_text == (ablation["fusion"] != "none")
    if ablation["refinement"] == "none":
        assert len(model.refine) == 0


def test_gradients_reach_every_parameter_of_the_default_model() -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig())
    x = torch.rand(1, 1, 32, 32, 32)
    feats = model.encode(x, fake_text(1), features(1))
    pred = model.query(feats, torch.rand(1, 256, 3) * 31, torch.ones(1, 3))
    (pred.square().mean() + model.render_grid(feats).mean()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_output_depends_on_the_prompt_and_the_features() -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny()).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        base = model(x, fake_text(1, seed=1), features(1, seed=1))
        other_text = model(x, fake_text(1, seed=2), features(1, seed=1))
        other_numbers = model(x, fake_text(1, seed=1), features(1, seed=2))
    assert (base - other_text).abs().max() > 1e-4
    assert (base - other_numbers).abs().max() > 1e-4


def test_fusion_none_ignores_text_and_features() -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny(fusion="none")).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, fake_text(1, seed=1), features(1, seed=1)), model(x, None, None))


def test_batch_rows_are_independent() -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny()).eval()
    x, text, feats = torch.rand(2, 1, 16, 16, 16), fake_text(2), features(2)
    with torch.no_grad():
        both = model(x, text, feats)
        second = model(x[1:], text.index([1]), feats[1:])
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)


def test_query_at_voxel_centres_equals_render_grid() -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny(query_chunk=500)).eval()
    shape = (11, 13, 9)
    with torch.no_grad():
        feats = model.encode(torch.rand(1, 1, *shape), fake_text(1), features(1))
        centres = torch.stack(torch.meshgrid(*(torch.arange(n) for n in shape), indexing="ij"), -1)
        queried = model.query(feats, centres.reshape(1, -1, 3).float(), torch.ones(1, 3))
        torch.testing.assert_close(queried.reshape(1, 1, *shape), model.render_grid(feats), atol=1e-5, rtol=1e-5)


def test_mixing_weights_are_what_mixes_the_output_bases() -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny()).eval()
    assert model.uses_physics_mix
    with torch.no_grad():
        feats = model.encode(torch.rand(1, 1, 16, 16, 16), fake_text(1), features(1))
        torch.testing.assert_close(model.mixing_weights(feats), feats.mix_prior)  # the correction starts at 0
        torch.nn.init.normal_(model.head.mix.weight, std=0.5)
        weights = model.mixing_weights(feats)
        grid, bases = model.render_grid(feats, with_bases=True)
    assert (weights - feats.mix_prior).abs().max() > 1e-3
    torch.testing.assert_close(grid, (bases * weights[:, :, None, None, None]).sum(1, keepdim=True),
                               atol=1e-5, rtol=1e-5)


def test_mixing_weights_refused_without_the_physics_mix() -> None:
    model = RTFSyn(RTFSynConfig.tiny(decoder="conv")).eval()
    with torch.no_grad():
        feats = model.encode(torch.rand(1, 1, 16, 16, 16), fake_text(1), features(1))
    with pytest.raises(ValueError, match="physics_mix"):
        model.mixing_weights(feats)


def test_features_move_between_devices_and_dtypes() -> None:
    feats = Features(torch.zeros(1, 2, 3, 3, 3), torch.zeros(1, 4))
    moved = feats.to("cpu", torch.float64)
    assert moved.volume.dtype == torch.float64 and moved.cond is not None and moved.cond.dtype == torch.float64


def test_config_round_trip_and_tiny() -> None:
    cfg = RTFSynConfig.tiny(fusion="global", decoder="conv")
    data = cfg.to_dict()
    assert isinstance(data["channels"], list)
    assert RTFSynConfig.from_dict(data) == cfg
    assert cfg.replace(heads=4) != cfg
    with pytest.raises(ValueError, match="Unknown RTFSynConfig fields: \\['colour'\\]"):
        RTFSynConfig.from_dict({**data, "colour": "red"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"channels": (16,)}, "channels needs at least 2 scales"),
        ({"channels": (16, 0)}, r"channels\[1\] must be an integer >= 1. Found 0"),
        ({"refinement": "axial"}, "refinement must be one of axis, none. Found 'axial'"),
        ({"fusion": "film"}, "fusion must be one of rtf, global, none. Found 'film'"),
        ({"decoder": "mlp"}, "decoder must be one of implicit, conv. Found 'mlp'"),
        ({"fusion_scales": (5,)}, r"fusion_scales must be scale indices in \[0, 3\]. Found 5"),
        ({"heads": 3}, "attn_dim must be divisible by heads. Found attn_dim=128, heads=3"),
        ({"conv_groups": 5}, r"channels\[2\] must be divisible by conv_groups"),
        ({"axis_kernel": 6}, "axis_kernel must be odd. Found 6"),
        ({"query_chunk": 0}, "query_chunk must be an integer >= 1. Found 0"),
        ({"pack": 1.5}, "pack must be an integer >= 1. Found 1.5"),
    ],
)
def test_config_validation_names_the_argument(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RTFSynConfig(**changes)


def test_encode_validates_inputs() -> None:
    model = RTFSyn(RTFSynConfig.tiny())
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, D, H, W\). Found \(1, 16, 16, 16\)"):
        model.encode(torch.rand(1, 16, 16, 16), fake_text(1), features(1))
    with pytest.raises(ValueError, match="text is required when fusion='rtf'"):
        model.encode(torch.rand(1, 1, 8, 8, 8), None, features(1))
    with pytest.raises(ValueError, match=r"text.tokens must have shape \(1, L, 384\)"):
        model.encode(torch.rand(1, 1, 8, 8, 8), fake_text(2), features(1))
    with pytest.raises(ValueError, match=rf"features must have shape \(1, {PAIR_FEATURE_DIM}\). Found \(1, 12\)"):
        model.encode(torch.rand(1, 1, 8, 8, 8), fake_text(1), torch.zeros(1, 12))
    feats = model.encode(torch.rand(1, 1, 8, 8, 8), fake_text(1), features(1))
    with pytest.raises(ValueError, match=r"coords must have shape \(1, N, 3\)"):
        model.query(feats, torch.zeros(1, 5, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"cell must have shape \(1, 3\)"):
        model.query(feats, torch.zeros(1, 5, 3), torch.ones(3))
    with pytest.raises(TypeError, match="config must be an RTFSynConfig"):
        RTFSyn({"channels": [4, 8]})  # type: ignore[arg-type]


@pytest.mark.parametrize("ablation", [{}, {"fusion": "global", "decoder": "conv"}])
def test_bf16_autocast_runs_close_to_fp32(ablation: dict) -> None:
    """The Synthesizer uses bf16 autocast on CUDA; CPU autocast exercises the same dtype mixing."""
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny(**ablation)).eval()
    x, coords = torch.rand(1, 1, 20, 18, 16), torch.rand(1, 100, 3) * 15
    with torch.inference_mode():
        reference = model.encode(x, fake_text(1), features(1))
        expected = model.render_grid(reference), model.query(reference, coords, torch.ones(1, 3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = model.encode(x, fake_text(1), features(1))
            got = model.render_grid(feats), model.query(feats, coords, torch.ones(1, 3))
    for g, e in zip(got, expected):
        assert torch.isfinite(g).all()
        assert (g.float() - e).abs().max() < 0.03


def test_ablation_switches_accept_enums_and_name_bad_values() -> None:
    from synthesis.nets.config import Decoder, Fusion, Refinement

    cfg = RTFSynConfig.tiny(refinement=Refinement.NONE, fusion=Fusion.GLOBAL, decoder="conv")
    assert (cfg.refinement, cfg.fusion, cfg.decoder) == ("none", "global", Decoder.CONV.value)
    assert type(cfg.to_dict()["fusion"]) is str
    with pytest.raises(ValueError, match=r"fusion must be one of rtf, global, none. Found 'clip'"):
        RTFSynConfig.tiny(fusion="clip")

"""A second source (T2w of the same subject) beside the T1: model input, crops, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig, with_second_source
from synthesis.physics import TISSUES
from synthesis.simulate import make_subject
from synthesis.simulate.anatomy import AnatomyEdits
from synthesis.stream import StreamConfig, draw_crops
from synthesis.train import TrainConfig, loss_on_batch, make_batch


def _inputs(size: int = 16, batch: int = 2):
    from synthesis.condition import PAIR_FEATURE_DIM
    from synthesis.text import TEXT_DIM, TextCondition

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, size, size, size, generator=gen)
    second = torch.rand(batch, 1, size, size, size, generator=gen)
    tokens = torch.randn(batch, 5, TEXT_DIM, generator=gen)
    text = TextCondition(tokens=tokens, mask=torch.ones(batch, 5, dtype=torch.bool), pooled=tokens.mean(1))
    features = torch.rand(batch, PAIR_FEATURE_DIM, generator=gen)
    return x, second, text, features


def test_a_widened_model_starts_as_the_one_source_model() -> None:
    torch.manual_seed(0)
    plain = RTFSyn(RTFSynConfig.tiny()).eval()
    wide = with_second_source(plain).eval()
    assert wide.config.second_source and wide.stem.in_channels == 1 and wide.stem_second.in_channels == 2
    for branch in (wide.stem_second, wide.late_second):
        assert branch.bias is None and not branch.weight.any()
    x, second, text, features = _inputs()
    with torch.no_grad():
        base = plain(x, text, features)
        torch.testing.assert_close(wide(x, text, features), base)
        torch.testing.assert_close(wide(x, text, features, second), base)
    with pytest.raises(ValueError, match="already"):
        with_second_source(wide)


def test_the_second_source_changes_the_output_once_its_weights_are_not_zero() -> None:
    torch.manual_seed(1)
    model = RTFSyn(RTFSynConfig.tiny(second_source=True)).eval()
    with torch.no_grad():
        model.stem_second.weight.normal_(0.0, 0.2)  # as if trained
    x, second, text, features = _inputs()
    with torch.no_grad():
        alone = model(x, text, features)
        paired = model(x, text, features, second)
        absent = model(x, text, features, second, torch.zeros(2))
    assert (paired - alone).abs().max() > 1e-4
    torch.testing.assert_close(absent, alone)  # present = 0 is the same as no second source


def test_an_mlp_late_branch_starts_at_zero_and_adds_nothing_without_a_second_source() -> None:
    torch.manual_seed(2)
    plain = RTFSyn(RTFSynConfig.tiny()).eval()
    wide = with_second_source(plain, late="mlp").eval()
    assert wide.config.second_late == "mlp" and not wide.late_second.out.weight.any()
    assert not wide.mix_second.weight.any() and not wide.mix_second.bias.any()
    x, second, text, features = _inputs()
    with torch.no_grad():
        base = plain(x, text, features)
        torch.testing.assert_close(wide(x, text, features, second), base)
        wide.late_second.out.weight.normal_(0.0, 0.2)  # as if trained
        wide.late_second.out.bias.normal_(0.0, 0.2)
        wide.mix_second.bias.normal_(0.0, 0.2)
        paired = wide(x, text, features, second)
        absent = wide(x, text, features, second, torch.tensor([0.0, 1.0]))
        alone = wide(x, text, features)
    assert (paired - base).abs().max() > 1e-4
    torch.testing.assert_close(alone, base)                 # no second source: the one-source output
    torch.testing.assert_close(absent[0], base[0])          # present 0 for the first sample only
    torch.testing.assert_close(absent[1], paired[1])
    # the branch reads the features too: the same second source changes the output differently
    # where the first source differs (a linear branch of the second source alone could not)
    with torch.no_grad():
        other = wide(x.flip(2), text, features, second) - wide(x.flip(2), text, features)
    assert (other - (paired - base)).abs().max() > 1e-4
    # at inference the per-voxel layers run a slab of slices at a time, with the same result
    h = torch.randn(2, wide.config.channels[0], 9, 6, 5)
    extra = wide._second_input(h[:, :1], torch.rand(2, 1, 9, 6, 5), None)
    first = torch.rand(2, 1, 9, 6, 5)
    with torch.no_grad():
        slabs = wide.late_second(h, extra, first, slab_voxels=2 * 6 * 5 * 2)  # 2 slices a slab
    torch.testing.assert_close(slabs, wide.late_second(h, extra, first).detach())  # whole, as in training


def test_inputs_that_do_not_fit_are_refused() -> None:
    x, second, text, features = _inputs()
    with pytest.raises(ValueError, match="one source"):
        RTFSyn(RTFSynConfig.tiny()).encode(x, text, features, second)
    model = RTFSyn(RTFSynConfig.tiny(second_source=True))
    with pytest.raises(ValueError, match="shape of x"):
        model.encode(x, text, features, second[:, :, :8])
    with pytest.raises(ValueError, match="present"):
        model.encode(x, text, features, second, torch.ones(3))
    with pytest.raises(ValueError, match="second_source"):
        RTFSynConfig.tiny(second_source="yes")
    with pytest.raises(ValueError, match="second_late"):
        RTFSynConfig.tiny(second_source=True, second_late="conv")


@pytest.fixture(scope="module")
def paired_crops():
    subject = make_subject(21, edits=AnatomyEdits(deformation=0.3, lesions=10))
    cfg = StreamConfig(patch=32, crops_per_target=2, targets_per_draw=3, second_source_share=1.0,
                       lesion_crop_share=1.0)
    return subject, cfg, draw_crops(cfg, 0, 5, subject)


@pytest.mark.slow
def test_crops_carry_a_t2w_second_source_where_lesions_and_csf_are_bright(paired_crops) -> None:
    subject, _, crops = paired_crops
    for crop in crops:
        if crop.target_protocol.contrast.value == "T2w":
            assert crop.second is None  # not asked to copy its own contrast
            continue
        assert crop.second is not None and crop.second.shape == crop.source.shape
        assert crop.second_protocol.contrast.value == "T2w"
    paired = [c for c in crops if c.second is not None]
    frac = np.concatenate([c.fractions.astype(np.float32) for c in paired], axis=1)
    second = np.concatenate([c.second for c in paired])
    source = np.concatenate([c.source for c in paired])

    def mean(values: np.ndarray, tissue: str) -> float:
        return float(values[frac[TISSUES.index(tissue)] > 0.9].mean())

    assert mean(second, "lesion") > 1.3 * mean(second, "wm")     # lesions bright on the T2w
    assert mean(second, "csf") > 1.3 * mean(second, "gm")        # CSF bright on the T2w ...
    assert mean(source, "csf") < 0.7 * mean(source, "gm")        # ... and dark on the T1


@pytest.mark.slow
def test_without_a_share_draws_are_unchanged(paired_crops) -> None:
    subject, cfg, _ = paired_crops
    import dataclasses

    off = dataclasses.replace(cfg, second_source_share=0.0)
    plain = draw_crops(off, 0, 5, subject)
    again = draw_crops(dataclasses.replace(off, second_source_contrasts=("PDw",)), 0, 5, subject)
    assert all(c.second is None for c in plain)
    for a, b in zip(plain, again):
        np.testing.assert_array_equal(a.source, b.source)
        np.testing.assert_array_equal(a.target, b.target)


@pytest.mark.slow
def test_a_training_step_reaches_the_second_source_weights(paired_crops) -> None:
    _, _, crops = paired_crops
    pair = [c for c in crops if c.second is not None][:1] + [c for c in crops if c.second is None][:1]
    batch = make_batch(pair, torch.device("cpu"))
    assert batch["present"].tolist() == [1.0, 0.0]
    torch.manual_seed(0)
    model = with_second_source(RTFSyn(RTFSynConfig.tiny()))
    loss = loss_on_batch(model, batch, TrainConfig(queries=64, bf16=False, channels_last=False), 0)
    loss.backward()
    for grad in (model.stem_second.weight.grad, model.late_second.weight.grad):
        assert grad[:, 0].abs().sum() > 0 and grad[:, 1].abs().sum() > 0
    # the branch has a learning rate of its own
    from synthesis.train import _param_groups

    groups = _param_groups(model, TrainConfig(second_source_lr_scale=10.0))
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    assert groups[1]["params"] == [model.stem_second.weight, model.late_second.weight]
    assert len(_param_groups(RTFSyn(RTFSynConfig.tiny()), TrainConfig())) == 1
    # a one-source model trains on the same batch from the first source alone
    plain = RTFSyn(RTFSynConfig.tiny())
    assert torch.isfinite(loss_on_batch(plain, batch, TrainConfig(queries=64, bf16=False), 0))


@pytest.mark.slow
def test_training_the_late_branch_alone_keeps_the_one_source_output(paired_crops) -> None:
    from synthesis.train import _freeze, _param_groups

    _, _, crops = paired_crops
    batch = make_batch([c for c in crops if c.second is not None][:2], torch.device("cpu"))
    torch.manual_seed(3)
    plain = RTFSyn(RTFSynConfig.tiny()).eval()
    model = with_second_source(plain, late="mlp")
    cfg = TrainConfig(queries=64, bf16=False, channels_last=False, train_only=("late_second", "mix_second"), lr=1e-2)
    _freeze(model, cfg.train_only)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in model.named_parameters() if n.startswith(("late_second.", "mix_second."))}
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr)
    for step in range(2):
        loss = loss_on_batch(model, batch, cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert model.late_second.out.weight.abs().sum() > 0 and model.mix_second.weight.abs().sum() > 0  # it learnt
    groups = _param_groups(model, TrainConfig(train_only=cfg.train_only, second_source_lr_scale=5.0))
    assert [len(g["params"]) for g in groups] == [0, len(trained)]  # mix_second learns at the branches' rate
    x, second, text, features = _inputs()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, text, features), plain(x, text, features))
        assert (model(x, text, features, second) - plain(x, text, features)).abs().max() > 1e-5
    with pytest.raises(ValueError, match="no parameters named 'late'"):
        _freeze(model, ("late",))


def test_share_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="second_source_share"):
        TrainConfig.from_dict({"second_source_share": 1.5})
    with pytest.raises(ValueError, match="second_source_lr_scale"):
        TrainConfig.from_dict({"second_source_lr_scale": 0})
    with pytest.raises(ValueError, match="randomized"):
        TrainConfig.from_dict({"second_source_share": 0.5, "generator": "template"})


def test_the_synthesizer_takes_a_second_source_on_the_first_grid_whole_or_in_tiles() -> None:
    from synthesis.inference import Synthesizer
    from synthesis.protocol import preset

    torch.manual_seed(2)
    model = RTFSyn(RTFSynConfig.tiny(second_source=True))
    with torch.no_grad():
        model.stem_second.weight.normal_(0.0, 0.2)  # as if trained
    rng = np.random.default_rng(0)
    t1 = rng.uniform(100, 1000, (20, 24, 24)).astype(np.float32)
    t2 = rng.uniform(50, 400, (20, 24, 24)).astype(np.float32)
    args = ((1.0, 1.0, 1.0), preset("T1"), preset("FLAIR"))
    whole = Synthesizer.from_model(model, "cpu")
    assert whole.takes_second_source
    alone = whole(t1, *args).volume
    paired = whole(t1, *args, second=t2).volume
    assert paired.shape == alone.shape and not np.allclose(paired, alone)
    tiled = Synthesizer.from_model(model, "cpu", max_tile_voxels=16 * 16 * 16, tile_overlap=8)
    np.testing.assert_allclose(tiled(t1, *args, second=t2).volume, paired, atol=0.05)
    with pytest.raises(ValueError, match="first's grid"):
        whole(t1, *args, second=t2[:10])
    with pytest.raises(ValueError, match="finite"):
        whole(t1, *args, second=np.full_like(t2, np.nan))
    one = Synthesizer.from_model(RTFSyn(RTFSynConfig.tiny()), "cpu")
    assert not one.takes_second_source
    with pytest.raises(ValueError, match="one source"):
        one(t1, *args, second=t2)

"""The lesion detector: its network, how its map enters the output, its training and checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthesis import checkpoint
from synthesis.condition import physics_features
from synthesis.inference import Synthesizer, _interpolate, _output_axes
from synthesis.lesion_train import LesionTrainConfig, crop_tensors, lesion_loss, train_lesion_net
from synthesis.nets.lesion import LesionNet, compose, lesion_fraction, lesion_ratio
from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig
from synthesis.physics import TISSUES
from synthesis.protocol import preset
from synthesis.stream import Crop

SOURCE, TARGET = preset("T1", 3.0), preset("FLAIR", 3.0)


def _phantom(shape: tuple[int, ...]) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return (100.0 * (1.2 - np.sqrt(z**2 + y**2 + x**2)).clip(0.1, None)).astype(np.float32)


def _with_detector(base: RTFSyn, logit_bias: float) -> RTFSyn:
    """``base`` plus a detector whose output is the constant ``logit_bias`` (weights zero)."""
    from synthesis.lesion_train import widen_with_lesion_net

    net = LesionNet()
    with torch.no_grad():
        net.out.weight.zero_()
        net.out.bias.fill_(logit_bias)
    return widen_with_lesion_net(base, net)


def _encoded(synth: Synthesizer, vol: np.ndarray):
    """``(features of vol, the condition's numeric features)`` as the synthesizer's model encodes them."""
    from synthesis.condition import prompt

    text, features = synth.condition(prompt(SOURCE, TARGET), SOURCE, TARGET)
    with torch.no_grad():
        feats = synth.model.encode(torch.from_numpy(vol / vol.max())[None, None].float(), text, features)
    return feats, features


def test_probability_in_slabs_is_the_whole_volume_forward_for_any_shape() -> None:
    torch.manual_seed(0)
    net = LesionNet().eval()
    x = torch.rand(1, 1, 21, 17, 19)
    whole = net.probability(x, slab=1000)
    assert whole.shape == x.shape and 0 <= float(whole.min()) and float(whole.max()) <= 1
    # slabs of 8 planes, each with the whole volume as context: the same map
    torch.testing.assert_close(net.probability(x, slab=8, halo=64), whole)
    padded = torch.nn.functional.pad(x, (0, 5, 0, 7, 0, 3), mode="replicate")
    with torch.no_grad():
        torch.testing.assert_close(whole, torch.sigmoid(net(padded))[:, :, :21, :17, :19])
    with pytest.raises(ValueError, match="shape"):
        net.probability(torch.rand(1, 2, 8, 8, 8))


def test_compose_leaves_the_output_where_p_is_0_and_writes_the_lesion_signal_where_it_is_1() -> None:
    out = torch.rand(4, 5, 6)
    p = torch.zeros_like(out)
    p[1:3] = 1.0
    p[3] = 0.25
    got = compose(out, p, 1.6, 0.9)
    torch.testing.assert_close(got[0], out[0])
    torch.testing.assert_close(got[1:3], torch.full_like(out[1:3], 1.6 * 0.9))
    torch.testing.assert_close(got[3], 0.75 * out[3] + 0.25 * 1.44)
    with pytest.raises(ValueError, match="one shape"):
        compose(out, p[:2], 1.0, 1.0)


def test_lesion_ratio_is_the_signal_equations_lesion_over_white_matter() -> None:
    for name, low, high in (("FLAIR", 1.4, 1.9), ("T2", 1.8, 2.8)):
        physics = torch.from_numpy(physics_features(preset(name, 3.0), relative_to="brain"))[None]
        ratio = float(lesion_ratio(physics)[0])
        wm, lesion = physics[0, TISSUES.index("wm")], physics[0, TISSUES.index("lesion")]
        assert ratio == pytest.approx(float(lesion / wm)) and low < ratio < high
    assert float(lesion_ratio(torch.zeros(1, 8))[0]) == 1.0  # no computable physics: no contrast


def test_the_config_refuses_a_detector_without_the_physics_mix() -> None:
    with pytest.raises(ValueError, match="physics mix"):
        RTFSynConfig.tiny(lesion_net=True, physics_mix=False)
    with pytest.raises(ValueError, match="true or false"):
        RTFSynConfig.tiny(lesion_net="yes")


def test_a_detector_that_finds_nothing_changes_nothing_and_one_that_finds_everything_writes_the_lesion_signal(
        tiny_checkpoint: Path) -> None:
    base, _ = checkpoint.load(tiny_checkpoint)
    vol = _phantom((18, 20, 16))
    plain = Synthesizer.from_model(base)(vol, (1.0, 1.0, 1.0), SOURCE, TARGET).volume
    none = Synthesizer.from_model(_with_detector(base, -60.0))(vol, (1.0, 1.0, 1.0), SOURCE, TARGET).volume
    np.testing.assert_allclose(none, plain, atol=1e-6)
    every = Synthesizer.from_model(_with_detector(base, 60.0))
    out = every(vol, (1.0, 1.0, 1.0), SOURCE, TARGET).volume
    # every voxel lesion: the target's lesion/WM ratio times the model's own white-matter weight
    model = every.model
    feats, features = _encoded(every, vol)
    with torch.no_grad():
        signal = model.lesion_signal(feats, features)
        w_wm = float(model.head.mix(feats.cond)[0, 2] + feats.mix_prior[0, 2])
    physics = physics_features(TARGET, relative_to="brain")
    assert signal == pytest.approx(w_wm * physics[3] / physics[2], rel=1e-5)
    np.testing.assert_allclose(out, np.clip(signal, 0.0, None), rtol=1e-5)


def test_the_map_follows_the_output_grid_when_it_is_not_the_working_grid(tiny_checkpoint: Path) -> None:
    base, _ = checkpoint.load(tiny_checkpoint)
    synth = Synthesizer.from_model(_with_detector(base, 60.0))
    out = synth(_phantom((6, 20, 18)), (5.0, 1.0, 1.0), SOURCE, TARGET).volume  # 5 mm slices -> 1 mm
    assert out.shape == (30, 20, 18) and np.ptp(out) < 1e-5  # p = 1 everywhere on the output grid too


def test_interpolation_to_the_output_axes_is_linear_and_clamped() -> None:
    volume = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
    axes = [np.array([-0.5, 0.0, 0.5, 2.25, 3.0, 4.0]), np.array([0.0, 1.0]), np.array([0.0, 1.0, 2.0])]
    got = _interpolate(volume, axes)
    np.testing.assert_allclose(got[:, 0, 0], [0.0, 0.0, 0.5, 2.25, 3.0, 3.0])
    assert got.shape == (6, 2, 3)
    # the output axes of a 2x finer grid fall between working voxels
    axes = _output_axes((4,), (1.0,), (1.0,), (0.5,))
    np.testing.assert_allclose(axes[0][1:] - axes[0][:-1], 0.5)


def test_lesion_loss_rewards_finding_the_lesion_and_skips_dice_on_crops_without_one() -> None:
    lesion = torch.zeros(2, 1, 8, 8, 8)
    lesion[0, :, 2:5, 2:5, 2:5] = 1.0
    head = torch.ones_like(lesion)
    found = torch.where(lesion > 0, 8.0, -8.0)
    missed = torch.full_like(lesion, -8.0)
    loss_found, _, dice_found = lesion_loss(found, lesion, head, 30.0)
    loss_missed, _, dice_missed = lesion_loss(missed, lesion, head, 30.0)
    assert loss_found < 0.1 < loss_missed and dice_found < 0.01 < 0.9 < dice_missed
    _, _, dice_none = lesion_loss(missed, torch.zeros_like(lesion), head, 30.0)
    assert dice_none == 0.0  # no crop holds a lesion: no Dice


def _crop(rng: np.random.Generator, size: int = 16) -> Crop:
    fractions = np.zeros((len(TISSUES), size, size, size), np.float16)
    fractions[TISSUES.index("wm")] = 1.0
    lesion = np.zeros((size,) * 3, bool)
    c = rng.integers(4, size - 4, 3)
    lesion[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = True
    fractions[TISSUES.index("lesion")][lesion] = 1.0
    fractions[TISSUES.index("wm")][lesion] = 0.0
    source = np.where(lesion, 0.5, 0.9).astype(np.float32) + rng.normal(0, 0.02, (size,) * 3).astype(np.float32)
    mr = preset("T1", 3.0)
    return Crop(source=source, target=source, target_cell=source, cell=1.0, fractions=fractions,
                mask=np.ones((size,) * 3, bool), source_protocol=mr, target_protocol=mr, brain_range=1.0)


def test_a_short_run_trains_resumes_and_exports_the_model_with_its_detector(tiny_checkpoint: Path,
                                                                            tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def batches():
        while True:
            yield [_crop(rng) for _ in range(2)]

    cfg = LesionTrainConfig(out_dir=str(tmp_path / "run"), init_checkpoint=str(tiny_checkpoint), steps=3,
                            max_minutes=None, batch=2, threads=1)
    path = train_lesion_net(cfg, batches=batches(), command="test")
    model, meta = checkpoint.load(path)
    assert model.config.lesion_net and isinstance(model.lesion, LesionNet)
    record = meta["extra"]["lesion_net"]
    assert record["steps"] == 3 and record["init_checkpoint"]["sha256"] == checkpoint.sha256(tiny_checkpoint)
    assert json.loads((tmp_path / "run" / "lesion_record.json").read_text())["lesion_net"]["steps"] == 3
    base, _ = checkpoint.load(tiny_checkpoint)
    for name, tensor in base.state_dict().items():  # the synthesis network is the init checkpoint's
        torch.testing.assert_close(model.state_dict()[name], tensor)
    from dataclasses import replace

    resumed = train_lesion_net(replace(cfg, steps=5), batches=batches())
    assert checkpoint.load(resumed)[1]["extra"]["lesion_net"]["steps"] == 5
    # a resumed run with a lower learning rate and other crops uses them, and the record says
    # from which step; settings that did not change are not repeated
    ended = train_lesion_net(replace(cfg, steps=7, lr=cfg.lr / 5, gm_crop_share=0.3), batches=batches())
    assert checkpoint.load(ended)[1]["extra"]["lesion_net"]["phases"] == [
        {"from_step": 0, "lr": cfg.lr, "pos_weight": cfg.pos_weight, "gm_crop_share": 0.0,
         "gm_crop_depth_mm": 0.0, "lesion_crop_share": cfg.lesion_crop_share},
        {"from_step": 5, "lr": cfg.lr / 5, "gm_crop_share": 0.3}]
    saved = torch.load(tmp_path / "run" / "lesion_last.pt", weights_only=False)
    assert [g["lr"] for g in saved["opt"]["param_groups"]] == [cfg.lr / 5]
    with pytest.raises(ValueError, match="already has a lesion detector"):
        train_lesion_net(replace(cfg, init_checkpoint=str(path), out_dir=str(tmp_path / "again")), batches=batches())


def test_a_fine_tune_starts_from_the_given_detector_and_records_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    rng = np.random.default_rng(3)

    def batches():
        while True:
            yield [_crop(rng) for _ in range(2)]

    cfg = LesionTrainConfig(out_dir=str(tmp_path / "run"), init_checkpoint=str(tiny_checkpoint), steps=2,
                            max_minutes=None, batch=2, threads=1)
    first = train_lesion_net(cfg, batches=batches(), command="first")
    trained, first_meta = checkpoint.load(first)
    with pytest.raises(ValueError, match="no lesion detector"):
        train_lesion_net(replace(cfg, out_dir=str(tmp_path / "none"), init_detector=str(tiny_checkpoint)),
                         batches=batches())
    # no steps: the exported detector is the one it started from, on the init checkpoint's synthesis network
    tune = replace(cfg, init_checkpoint=str(first), init_detector=str(first), pos_weight=3.0)
    same = train_lesion_net(replace(tune, out_dir=str(tmp_path / "zero"), steps=0), batches=batches())
    model, meta = checkpoint.load(same)
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)
    record = meta["extra"]["lesion_net"]
    assert record["steps"] == 0 and record["config"]["pos_weight"] == 3.0
    assert record["init_detector"]["sha256"] == first_meta["sha256"]
    assert record["init_detector"]["record"]["command"] == "first"
    # with steps, the detector moves from there and the synthesis network does not
    moved, _ = checkpoint.load(train_lesion_net(replace(tune, out_dir=str(tmp_path / "tune")), batches=batches()))
    assert any(not torch.equal(moved.lesion.state_dict()[k], v) for k, v in trained.lesion.state_dict().items())
    for name, tensor in trained.state_dict().items():
        if not name.startswith("lesion."):
            torch.testing.assert_close(moved.state_dict()[name], tensor)


def test_crop_tensors_stack_source_lesion_and_head() -> None:
    rng = np.random.default_rng(1)
    x, lesion, head = crop_tensors([_crop(rng), _crop(rng)])
    assert x.shape == lesion.shape == head.shape == (2, 1, 16, 16, 16)
    assert float(lesion.sum()) == 2 * 64 and bool((head == 1).all())


def test_the_synthesis_training_never_moves_the_detector(tiny_checkpoint: Path) -> None:
    from synthesis.train import _freeze, _param_groups, TrainConfig

    model = _with_detector(checkpoint.load(tiny_checkpoint)[0], 0.0)
    for prefixes in ((), ("head", "lesion")):
        for p in model.parameters():
            p.requires_grad_(True)
        _freeze(model, prefixes)
        assert not any(p.requires_grad for p in model.lesion.parameters())
        trained = {id(p) for group in _param_groups(model, TrainConfig()) for p in group["params"]}
        assert trained and not trained & {id(p) for p in model.lesion.parameters()}


def test_a_checkpoint_with_a_detector_loads_as_saved(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model = _with_detector(checkpoint.load(tiny_checkpoint)[0], 0.0)
    loaded, _ = checkpoint.load(checkpoint.save(model, tmp_path / "with.pt"))
    assert loaded.config.lesion_net and loaded.summary()["lesion_net"] is True
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


def test_the_train_command_refuses_what_does_not_apply_to_a_detector_run(
        tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dicom_node import cli

    out_dir = str(tmp_path / "run")
    assert cli.main(["train", "--lesion-net", "--out-dir", out_dir, "--set", "patchsize=32"]) == 2
    assert "unknown option(s) patchsize" in capsys.readouterr().err
    assert cli.main(["train", "--lesion-net", "--out-dir", out_dir, "--export-only"]) == 2
    assert "do not apply" in capsys.readouterr().err
    missing = str(tmp_path / "nowhere.pt")
    assert cli.main(["train", "--lesion-net", "--out-dir", out_dir, "--set", f"init_checkpoint={missing}"]) == 2
    assert "nowhere.pt" in capsys.readouterr().err


def test_max_minutes_counts_the_whole_run_not_the_time_since_the_last_save(
        tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools

    import synthesis.lesion_train as lesion_train

    clock = itertools.count()  # one second per reading of the clock
    monkeypatch.setattr(lesion_train.time, "monotonic", lambda: float(next(clock)))
    rng = np.random.default_rng(2)
    batches = ([_crop(rng) for _ in range(2)] for _ in range(400))  # ends the run if it never stops
    cfg = LesionTrainConfig(out_dir=str(tmp_path / "run"), init_checkpoint=str(tiny_checkpoint), steps=None,
                            max_minutes=2.0, batch=2, threads=1)
    path = train_lesion_net(cfg, batches=batches)
    steps = checkpoint.load(path)[1]["extra"]["lesion_net"]["steps"]
    assert 100 < steps <= 120  # past a save (every 100 steps), and stopped at two minutes


def test_a_state_saved_with_learning_rates_only_keeps_them_and_lists_the_rest_when_resumed() -> None:
    from synthesis.lesion_train import _record_phase

    state = {"step": 40, "lr_phases": [{"from_step": 0, "lr": 5e-3}, {"from_step": 20, "lr": 1e-3}]}
    _record_phase(state, LesionTrainConfig(lr=1e-3, gm_crop_share=0.5))
    assert "lr_phases" not in state
    assert state["phases"] == [  # lr unchanged; the settings that were not recorded are listed from here
        {"from_step": 0, "lr": 5e-3}, {"from_step": 20, "lr": 1e-3},
        {"from_step": 40, "pos_weight": 30.0, "gm_crop_share": 0.5, "gm_crop_depth_mm": 0.0,
         "lesion_crop_share": 0.7}]
    _record_phase(state, LesionTrainConfig(lr=1e-3, gm_crop_share=0.5))  # same settings: no new phase
    assert len(state["phases"]) == 3


def test_the_gain_turns_the_detectors_probability_into_a_lesion_fraction_capped_at_1(tiny_checkpoint: Path) -> None:
    base, _ = checkpoint.load(tiny_checkpoint)
    vol = _phantom((18, 20, 16))
    plain = Synthesizer.from_model(base)(vol, (1.0, 1.0, 1.0), SOURCE, TARGET).volume
    every = Synthesizer.from_model(_with_detector(base, 60.0))(vol, (1.0, 1.0, 1.0), SOURCE, TARGET).volume
    half = _with_detector(base, 0.0)                      # p = 0.5 in every voxel

    def run(gain: float) -> np.ndarray:
        model, carried = checkpoint.with_architecture(half, {"lesion_gain": gain})
        assert carried["dropped"] == carried["new"] == 0
        return Synthesizer.from_model(model.eval())(vol, (1.0, 1.0, 1.0), SOURCE, TARGET).volume

    np.testing.assert_allclose(run(1.0), 0.5 * plain + 0.5 * every, atol=1e-5)
    np.testing.assert_allclose(run(1.5), 0.25 * plain + 0.75 * every, atol=1e-5)
    np.testing.assert_allclose(run(3.0), every, atol=1e-5)      # 1.5 capped at a fraction of 1


def test_the_config_refuses_a_gain_outside_0_to_10() -> None:
    assert RTFSynConfig.tiny().lesion_gain == 1.0
    assert RTFSynConfig.tiny(lesion_gain=2).lesion_gain == 2.0
    for bad in (0.0, -1.0, 10.5, True, "1.4", float("nan")):
        with pytest.raises(ValueError, match="lesion_gain"):
            RTFSynConfig.tiny(lesion_gain=bad)


def test_the_table_maps_the_probability_to_a_fraction_before_the_gain() -> None:
    p = np.array([0.0, 0.25, 0.5, 0.9, 1.0], np.float32)
    np.testing.assert_array_equal(lesion_fraction(p), p)                       # no table: p itself
    np.testing.assert_allclose(lesion_fraction(p, 1.5), [0.0, 0.375, 0.75, 1.0, 1.0])
    table = ((0.0, 0.5, 1.0), (0.0, 0.1, 0.9))
    np.testing.assert_allclose(lesion_fraction(p, 1.0, table), [0.0, 0.05, 0.1, 0.74, 0.9], rtol=1e-6)
    np.testing.assert_allclose(lesion_fraction(p, 2.0, table), [0.0, 0.1, 0.2, 1.0, 1.0], rtol=1e-6)


def test_the_config_refuses_a_table_that_is_not_monotone_from_0_to_1_and_an_unknown_level() -> None:
    ok = RTFSynConfig.tiny(lesion_fraction_p=[0, 0.5, 1], lesion_fraction_f=[0, 0.2, 0.8], lesion_level="output")
    assert ok.lesion_fraction_p == (0.0, 0.5, 1.0) and ok.lesion_level == "output"
    assert RTFSynConfig.from_dict(ok.to_dict()) == ok
    bad = [([0, 1], [0]), ([0.1, 1], [0, 1]), ([0, 0.9], [0, 1]), ([0, 0.5, 0.5, 1], [0, 0.1, 0.2, 1]),
           ([0, 0.5, 1], [0, 0.6, 0.5]), ([0, 1], [0, 1.2]), ([0], [0]), (["a", 1], [0, 1])]
    for p, f in bad:
        with pytest.raises(ValueError, match="lesion_fraction"):
            RTFSynConfig.tiny(lesion_fraction_p=p, lesion_fraction_f=f)
    with pytest.raises(ValueError, match="lesion_level"):
        RTFSynConfig.tiny(lesion_level="bases")


def test_level_output_puts_lesions_at_the_ratio_times_the_models_own_white_matter_output(
        tiny_checkpoint: Path) -> None:
    from synthesis.nets.lesion import WHITE_MATTER

    base, _ = checkpoint.load(tiny_checkpoint)
    with torch.no_grad():  # random bases sum below 0 everywhere: lift them, white matter the most
        base.head.out.bias.add_(1.0)
        base.head.out.bias[WHITE_MATTER].add_(1.0)
    weight_model = _with_detector(base, 60.0)
    output_model, _ = checkpoint.with_architecture(weight_model, {"lesion_level": "output"})
    vol = _phantom((18, 20, 16))
    synth = Synthesizer.from_model(output_model.eval())
    feats, features = _encoded(synth, vol)
    with torch.no_grad():
        out, bases = output_model.render_grid(feats, with_bases=True)
        # what the method must find, computed here from the rendered grid: the median output over
        # the central 16 planes' voxels where the white-matter basis is > 0.9 of the bases' sum
        z0 = max(0, 18 // 2 - 8)
        o, b = out[0, 0, z0:z0 + 16], bases[0, :, z0:z0 + 16]
        total = b.sum(0)
        share = float(((b[WHITE_MATTER] / total)[total > 0]).median())  # random weights: about half qualify
        white = (b[WHITE_MATTER] > share * total) & (total > 0)
        assert int(white.sum()) > 0
        level = output_model.white_matter_level(feats, share=share, min_voxels=1)
        assert level == pytest.approx(float(np.median(o[white].numpy())), rel=1e-5)
        # voxels the detector marks (p >= 0.5) are left out; one that marks all leaves none
        marked = torch.zeros(18, 20, 16)
        marked[z0:z0 + 8] = 1.0
        kept = white.clone()
        kept[:8] = False
        if int(kept.sum()) > 0:
            assert output_model.white_matter_level(feats, marked, share=share, min_voxels=1) == pytest.approx(
                float(np.median(o[kept].numpy())), rel=1e-5)
        assert output_model.white_matter_level(feats, torch.ones(18, 20, 16), share=share, min_voxels=1) is None
        assert output_model.white_matter_level(feats, share=share, min_voxels=10 ** 9) is None
        w_wm = float(output_model.mixing_weights(feats)[0, WHITE_MATTER])
        by_weight = weight_model.lesion_signal(feats, features)
        output_model.white_matter_level = lambda *_a, **_k: 2.5  # the level "output" asks for
        by_output = output_model.lesion_signal(feats, features, torch.zeros(18, 20, 16))
        output_model.white_matter_level = lambda *_a, **_k: None  # too few voxels: the weight
        fallback = output_model.lesion_signal(feats, features, torch.zeros(18, 20, 16))
    physics = physics_features(TARGET, relative_to="brain")
    rho = physics[3] / physics[2]
    assert by_weight == pytest.approx(rho * w_wm, rel=1e-5)
    assert by_output == pytest.approx(rho * 2.5, rel=1e-5)
    assert fallback == pytest.approx(by_weight, rel=1e-6)

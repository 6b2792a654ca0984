"""Training: the loss falls, runs resume, the result loads; metrics behave."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synthesis import checkpoint as ckpt
from synthesis.metrics import score, ssim3d
from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig
from synthesis.train import TrainConfig, learning_rate, loss_on_batch, make_batch, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    from synthesis.data import PairSampler
    from synthesis.simulate import SPLIT_SEEDS, load_or_make_subject

    cache = tmp_path_factory.mktemp("sim-cache")
    subject = load_or_make_subject(list(SPLIT_SEEDS["train"])[0], cache)
    return PairSampler([subject], patch=16), cache


def test_loss_falls_on_a_fixed_batch(sampler):
    pair_sampler, _ = sampler
    rng = np.random.default_rng(0)
    batch = make_batch([pair_sampler.sample(rng) for _ in range(2)], torch.device("cpu"))
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cfg = TrainConfig(queries=256)
    losses = []
    for step in range(30):
        loss = loss_on_batch(model, batch, cfg, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_targets_are_in_brain_relative_units(sampler):
    pair_sampler, _ = sampler
    rng = np.random.default_rng(1)
    pair = max((pair_sampler.sample(rng, target="PDw") for _ in range(8)), key=lambda p: p.mask.sum())
    brain = pair.target[pair.mask.astype(bool)]
    assert brain.size > 1000
    assert 0.8 < np.percentile(brain, 99.5) < 1.2      # the brain's bright end is about 1
    assert pair.target.min() >= 0.0                      # zero stays "no signal"
    assert 0.01 < pair.target_brain_range < 0.8          # a PD-weighted brain spans a narrow band


def _loss_value(model, batch, cfg) -> float:
    with torch.no_grad():
        return float(loss_on_batch(model, batch, cfg, 0))


def test_loss_weights_brain_errors_by_the_targets_brain_range(sampler):
    pair_sampler, _ = sampler
    batch = make_batch([pair_sampler.sample(np.random.default_rng(1), target="PDw")], torch.device("cpu"))
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny())
    cfg = TrainConfig(queries=0, outside_weight=1.0, brain_weight_cap=10.0)
    batch["brain_range"] = torch.tensor([1.0])
    batch["mask"] = torch.ones_like(batch["mask"])
    plain = _loss_value(model, batch, cfg)
    batch["brain_range"] = torch.tensor([0.25])
    assert _loss_value(model, batch, cfg) == pytest.approx(4 * plain, rel=1e-5)
    capped = TrainConfig(queries=0, outside_weight=1.0, brain_weight_cap=2.0)
    assert _loss_value(model, batch, capped) == pytest.approx(2 * plain, rel=1e-5)
    batch["mask"] = torch.zeros_like(batch["mask"])   # nothing in the brain: outside_weight only
    outside = _loss_value(model, batch, TrainConfig(queries=0, outside_weight=0.5))
    assert outside == pytest.approx(0.5 * plain, rel=1e-5)


def test_target_weights_steer_which_contrast_is_drawn(sampler):
    from synthesis.data import PairSampler

    subjects = sampler[0].subjects
    only_pd = PairSampler(subjects, patch=16, target_weights=[0, 1, 0])
    rng = np.random.default_rng(3)
    assert {only_pd.sample(rng).target_protocol.contrast.value for _ in range(6)} == {"PDw"}
    uneven = PairSampler(subjects, patch=16, target_weights=[1, 3, 0])
    assert uneven.target_p.tolist() == [0.25, 0.75, 0.0]
    with pytest.raises(ValueError, match="target_weights needs 3"):
        PairSampler(subjects, patch=16, target_weights=[1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        PairSampler(subjects, patch=16, target_weights=[1, -1, 1])
    cfg = TrainConfig.from_dict({"data": {"target_weights": [1, 2, 1]}})
    assert cfg.target_weights == (1, 2, 1)


def test_train_runs_resumes_and_writes_a_loadable_checkpoint(sampler, tmp_path):
    _, cache = sampler
    base = dict(generator="template", out_dir=str(tmp_path / "run"), cache_dir=str(cache), train_subjects=1,
                validation_subjects=1, patch=16, batch=1, queries=64, warmup=2, checkpoint_every=2, validate_every=3,
                validation_patches=2, model=RTFSynConfig.tiny().to_dict(), threads=1)
    # the validation subject differs from the training one; both are cached in `cache`
    train(TrainConfig.from_dict({**base, "steps": 3}), progress=False)
    first = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in first] == [1, 2, 3]
    final = train(TrainConfig.from_dict({**base, "steps": 5}), progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]  # resumed at step 4, not restarted
    model, meta = ckpt.load(final)
    record = meta["extra"]["training"]
    assert record["steps_done"] == 5 and record["train_subject_seeds"]
    assert "initialized_from" not in record                         # a fresh model
    assert isinstance(model, RTFSyn)
    # fine-tuning from it: the record names the starting weights and carries their record,
    # also after a resume (the starting file may be replaced meanwhile)
    tuned = {**base, "out_dir": str(tmp_path / "tuned"), "init_checkpoint": str(final)}
    train(TrainConfig.from_dict({**tuned, "steps": 1}), progress=False)
    digest = ckpt.sha256(final)
    final.unlink()
    again = train(TrainConfig.from_dict({**tuned, "steps": 2}), progress=False)
    origin = ckpt.load(again)[1]["extra"]["training"]["initialized_from"]
    assert origin["sha256"] == digest and origin["training"]["steps_done"] == 5


def test_an_ablation_switch_trains_from_the_weights_that_still_fit(sampler, tiny_checkpoint, tmp_path):
    """``[model] fusion = "none"`` with a starting checkpoint trains that variant (it was
    silently the starting architecture before), carrying the weights that still fit."""
    from synthesis.checkpoint import with_architecture

    start, _ = ckpt.load(tiny_checkpoint)
    variant, carried = with_architecture(start, {"kernel_bank": 0})
    assert variant.config.kernel_bank == 0 and start.config.kernel_bank == 2
    assert carried["carried"] > 0 and carried["dropped"] > 0 and carried["new"] == 0
    old = start.state_dict()
    same = [k for k, v in variant.state_dict().items() if k in old and torch.equal(v, old[k])]
    assert len(same) == carried["carried"] == len(variant.state_dict())

    _, cache = sampler
    cfg = TrainConfig.from_dict(dict(
        generator="template", out_dir=str(tmp_path / "run"), cache_dir=str(cache), train_subjects=1,
        validation_subjects=1, patch=16, batch=1, queries=64, warmup=1, steps=1, checkpoint_every=1,
        validate_every=1, validation_patches=1, model={"fusion": "none"}, threads=1,
        init_checkpoint=str(tiny_checkpoint)))
    final = train(cfg, progress=False)
    model, meta = ckpt.load(final)
    assert model.config.fusion == "none" and model.config.channels == start.config.channels
    origin = meta["extra"]["training"]["initialized_from"]
    assert origin["architecture_changes"] == {"fusion": "none"}
    assert origin["sha256"] == ckpt.sha256(tiny_checkpoint)
    from dicom_node.commands.evaluate import _training_summary  # the report's note on it

    note = _training_summary(str(final))
    assert f"from the weights {origin['sha256'][:12]}" in note and "1 steps" in note


def test_snapshots_are_kept_and_the_export_averages_the_last_weights(sampler, tmp_path):
    from synthesis.train import export_checkpoint, snapshot_path

    _, cache = sampler
    run = tmp_path / "run"
    cfg = TrainConfig.from_dict(dict(
        generator="template", out_dir=str(run), cache_dir=str(cache), train_subjects=1, validation_subjects=1,
        patch=16, batch=1, queries=64, warmup=1, lr=1e-2, steps=4, checkpoint_every=1, validate_every=4,
        validation_patches=1, model=RTFSynConfig.tiny().to_dict(), threads=1, snapshot_every=1,
        average_snapshots=3))
    final = train(cfg, progress=False)
    assert [p.name for p in sorted((run / "snapshots").iterdir())] == [f"step-00000{i}.pt" for i in (1, 2, 3, 4)]
    model, meta = ckpt.load(final)
    averaged = meta["extra"]["training"]["weights_averaged"]
    assert averaged["steps"] == [2, 3, 4]                     # two snapshots before the end, and the end
    assert [s["sha256"] for s in averaged["snapshots"]] == [ckpt.sha256(snapshot_path(run, i)) for i in (2, 3)]
    last = torch.load(run / "last.pt", weights_only=True)["model"]   # the state keeps the last weights
    parts = [torch.load(snapshot_path(run, i), weights_only=True) for i in (2, 3)] + [last]
    name = next(k for k, v in last.items() if v.dtype == torch.float32 and v.numel() > 100)
    assert not torch.equal(parts[0][name], parts[2][name])        # the weights moved (lr 1e-2)
    expected = (parts[0][name].double() + parts[1][name].double() + parts[2][name].double()) / 3
    assert torch.allclose(model.state_dict()[name].double(), expected, atol=1e-6)
    # without averaging the export is the last weights; with no snapshot it falls back to them
    plain = export_checkpoint(TrainConfig.from_dict({**cfg.__dict__, "average_snapshots": 0}))
    assert torch.equal(ckpt.load(plain)[0].state_dict()[name], last[name].contiguous())
    assert "weights_averaged" not in ckpt.load(plain)[1]["extra"]["training"]
    # one snapshot's weights exported on their own, with a record of that step (never averaged)
    exported = export_checkpoint(cfg, snapshot=2)
    assert exported == run / "exports" / "step-000002.pt" and exported.with_suffix(".json").is_file()
    snap_model, snap_meta = ckpt.load(exported)
    assert torch.equal(snap_model.state_dict()[name], parts[0][name])
    record = snap_meta["extra"]["training"]
    assert record["steps_done"] == 2 and record["snapshot"]["sha256"] == ckpt.sha256(snapshot_path(run, 2))
    assert "weights_averaged" not in record and record["train_minutes"] > 0
    assert all(h["step"] <= 2 for h in record["validation"])
    with pytest.raises(FileNotFoundError, match=r"Kept: \[1, 2, 3, 4\]"):
        export_checkpoint(cfg, snapshot=7)
    for path in (run / "snapshots").iterdir():
        path.unlink()
    again = export_checkpoint(cfg)
    assert "weights_averaged" not in ckpt.load(again)[1]["extra"]["training"]


def test_an_export_records_the_runs_own_configuration(sampler, tmp_path, caplog):
    """An export command that does not repeat the run's --set options still records them."""
    from synthesis.train import export_checkpoint

    _, cache = sampler
    options = dict(generator="template", out_dir=str(tmp_path / "run"), cache_dir=str(cache), train_subjects=1,
                   validation_subjects=1, patch=16, batch=1, queries=64, warmup=1, steps=2, checkpoint_every=1,
                   validate_every=2, validation_patches=1, model=RTFSynConfig.tiny().to_dict(), threads=1,
                   snapshot_every=1)
    train(TrainConfig.from_dict({**options, "seed": 7, "lesion_weight": 5.0, "brain_weight_cap": 8.0}),
          progress=False)
    command = TrainConfig.from_dict(options)          # the command without the run's overrides
    with caplog.at_level("INFO", logger="synthesis.train"):
        exported = export_checkpoint(command, snapshot=1)
    config = ckpt.load(exported)[1]["extra"]["training"]["config"]
    assert (config["seed"], config["lesion_weight"], config["brain_weight_cap"]) == (7, 5.0, 8.0)
    assert ckpt.load(exported)[1]["extra"]["training"]["seed"] == 7
    assert "brain_weight_cap, lesion_weight, seed" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="synthesis.train"):   # resumed without the run's options
        train(TrainConfig.from_dict({**options, "steps": 3}), progress=False)
    assert "differ from the run's so far: brain_weight_cap, lesion_weight, seed" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="synthesis.train"):   # the state now holds the options last used
        train(TrainConfig.from_dict({**options, "steps": 4}), progress=False)
    assert "differ from the run's so far" not in caplog.text


def test_negative_snapshot_options_are_refused():
    with pytest.raises(ValueError, match="average_snapshots must be 0"):
        TrainConfig.from_dict({"average_snapshots": -1})


def test_randomized_generator_trains_in_the_background_and_exports(sampler, tmp_path, monkeypatch):
    import dataclasses

    from synthesis.train import export_checkpoint

    # a 56³ block of a cached subject stands in for the whole randomized heads (seconds, not
    # minutes); the background worker is forked, so it sees the stand-in too
    subject = sampler[0].subjects[0]
    region = tuple(slice(n // 2 - 28, n // 2 + 28) for n in subject.shape)
    small = dataclasses.replace(subject, fractions=subject.fractions[(slice(None), *region)].copy(),
                                brain_mask=subject.brain_mask[region].copy())
    monkeypatch.setattr("synthesis.stream.make_randomized_subject", lambda seed, **kw: small)

    cfg = TrainConfig.from_dict(dict(
        generator="randomized", out_dir=str(tmp_path / "run"), patch=24, batch=2, queries=64, warmup=1,
        steps=2, checkpoint_every=1, validate_every=2, validation_patches=2, crops_per_target=1,
        targets_per_draw=1, draws_per_subject=2, model=RTFSynConfig.tiny().to_dict(), threads=1,
        data_workers=1))
    final = train(cfg, progress=False)
    record = ckpt.load(final)[1]["extra"]["training"]
    assert record["generator"] == "randomized" and record["steps_done"] == 2
    assert record["train_subject_seeds"]["first"] == 0          # subjects are named by seed range
    assert "val_psnr" in record["validation"][-1]                  # validated on validation crops
    final.unlink()
    exported = export_checkpoint(cfg)                             # from last.pt, no training
    assert ckpt.load(exported)[1]["extra"]["training"]["steps_done"] == 2


def test_learning_rate_is_a_function_of_the_step():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-5)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 99) == pytest.approx(1e-5, rel=0.05)
    assert learning_rate(cfg, 50) == learning_rate(cfg, 50)


def test_unknown_training_option_is_named():
    with pytest.raises(ValueError, match="pach"):
        TrainConfig.from_dict({"pach": 3})


def test_metrics_perfect_and_degraded():
    rng = np.random.default_rng(0)
    truth = rng.random((20, 20, 20)).astype(np.float32)
    mask = np.zeros_like(truth, dtype=bool)
    mask[4:16, 4:16, 4:16] = True
    perfect = score(truth, truth, mask)
    assert perfect.psnr > 100 and perfect.ssim == pytest.approx(1.0) and perfect.mae == 0
    noisy = score(truth + rng.normal(0, 0.1, truth.shape).astype(np.float32), truth, mask)
    assert 10 < noisy.psnr < 30 and noisy.ssim < 0.95 and noisy.mae > 0
    assert ssim3d(truth, 1 - truth, mask) < 0


def _lesion_volumes(shape=(2, 8, 12, 12, 12)):
    """Fractions with a 4^3 lesion in crop 0 and none in crop 1."""
    from synthesis.physics import TISSUES

    fractions = torch.zeros(shape)
    lesion = TISSUES.index("lesion")
    fractions[:, TISSUES.index("wm")] = 1.0
    fractions[0, TISSUES.index("wm"), 4:8, 4:8, 4:8] = 0.0
    fractions[0, lesion, 4:8, 4:8, 4:8] = 1.0
    return fractions, lesion


def test_lesion_dice_counts_only_crops_with_a_lesion_and_rewards_finding_it():
    from synthesis.train import lesion_dice_loss

    fractions, lesion = _lesion_volumes()
    assert lesion_dice_loss(torch.zeros_like(fractions), fractions[1:]) is None   # no lesion anywhere
    missed = lesion_dice_loss(torch.zeros_like(fractions), fractions)
    found = lesion_dice_loss(fractions.clone(), fractions)
    assert float(missed) > 0.95 and float(found) < 0.01
    half = torch.zeros_like(fractions)
    half[0, lesion, 4:8, 4:8, 4:6] = 1.0                  # half the lesion marked
    assert 0.25 < float(lesion_dice_loss(half, fractions)) < 0.45
    overshoot = fractions.clone()
    overshoot[:, lesion] *= 5.0                           # a basis above 1 earns nothing more
    assert float(lesion_dice_loss(overshoot, fractions)) == pytest.approx(float(found), abs=1e-6)
    hidden = fractions.clone()
    hidden[0, lesion, :2] = -1.0                          # marked below zero elsewhere: still a false positive
    assert float(lesion_dice_loss(hidden, fractions)) > 0.5
    marked_everywhere = fractions.clone()
    marked_everywhere[0, lesion] = 1.0                    # false positives around the lesion cost
    assert float(lesion_dice_loss(marked_everywhere, fractions)) > 0.8


def test_lesion_dice_pushes_a_negative_basis_in_a_lesion_up():
    from synthesis.train import lesion_dice_loss

    fractions, lesion = _lesion_volumes()
    bases = torch.full_like(fractions, -0.2).requires_grad_(True)
    lesion_dice_loss(bases, fractions).backward()
    inside = bases.grad[0, lesion, 4:8, 4:8, 4:8]
    assert bool((inside < 0).all())                      # descent raises the basis there
    assert float(bases.grad[1].abs().sum()) == 0.0       # the crop without a lesion is not counted


def _white_matter_batch(sampler, lesion: bool) -> dict:
    """Two sampled pairs whose fractions say all white matter (with a 4^3 lesion when ``lesion``)."""
    from synthesis.physics import TISSUES

    pair_sampler, _ = sampler
    rng = np.random.default_rng(3)
    batch = make_batch([pair_sampler.sample(rng) for _ in range(2)], torch.device("cpu"))
    fractions = torch.zeros((2, len(TISSUES), *batch["target"].shape[2:]))
    fractions[:, TISSUES.index("wm")] = 1.0
    if lesion:
        fractions[:, TISSUES.index("lesion"), 2:6, 2:6, 2:6] = 1.0
    batch["fractions"] = fractions
    return batch


def test_lesion_dice_weight_enters_the_loss(sampler):
    batch = _white_matter_batch(sampler, lesion=True)
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny())
    assert model.uses_physics_mix
    plain = float(loss_on_batch(model, batch, TrainConfig(queries=0, tissue_weight=1.0), 0).detach())
    with_dice = float(loss_on_batch(model, batch, TrainConfig(queries=0, tissue_weight=1.0,
                                                              lesion_dice_weight=2.0), 0).detach())
    assert with_dice > plain + 1.0    # an untrained lesion basis misses the lesion: Dice near 1, times 2


def test_basis_sum_loss_counts_what_a_voxel_lacks_not_how_it_is_split():
    from synthesis.physics import TISSUES
    from synthesis.train import basis_sum_loss

    fractions = torch.zeros((1, len(TISSUES), 4, 4, 4))
    fractions[:, TISSUES.index("csf"), :2] = 1.0       # half the crop CSF, the other half air
    weight = torch.ones((1, 1, 4, 4, 4))
    assert float(basis_sum_loss(fractions.clone(), fractions, weight)) == 0.0
    swapped = torch.zeros_like(fractions)               # the right sum, the wrong tissue: not its business
    swapped[:, TISSUES.index("gm"), :2] = 1.0
    assert float(basis_sum_loss(swapped, fractions, weight)) == 0.0
    rim = fractions.clone()
    rim[:, TISSUES.index("csf"), 0] = 0.5                # a quarter of the voxels hold half of what they should
    assert float(basis_sum_loss(rim, fractions, weight)) == pytest.approx(0.5 * 16 / 64)
    heavy = weight.clone()
    heavy[:, :, 0] = 2.0                                 # the voxel weights scale it
    assert float(basis_sum_loss(rim, fractions, heavy)) == pytest.approx(2 * 0.5 * 16 / 64)
    in_air = fractions.clone()
    in_air[:, TISSUES.index("bone"), 3] = 0.4           # tissue invented in the air counts as well
    assert float(basis_sum_loss(in_air, fractions, weight)) == pytest.approx(0.4 * 16 / 64)


def test_mix_shape_loss_allows_a_scale_but_not_a_contrast_of_its_own():
    from synthesis.train import mix_shape_loss

    prior = torch.tensor([[1.0, 0.5, 0.35, 0.8, 0.46, 0.13, 0.17, 0.0]])
    assert float(mix_shape_loss(prior, prior)) == pytest.approx(0.0, abs=1e-7)
    assert float(mix_shape_loss(1.4 * prior, prior)) == pytest.approx(0.0, abs=1e-6)   # any unit
    outside = prior.clone()
    outside[0, 4:] = torch.tensor([2.0, -1.0, 0.3, 0.9])                                # non-brain: free
    assert float(mix_shape_loss(outside, prior)) == pytest.approx(0.0, abs=1e-7)
    grey = prior.clone()
    grey[0, 1] += 0.2                                   # grey matter brighter than the physics says
    loss = float(mix_shape_loss(grey, prior))
    assert loss > 0.02
    w, p = grey[0, :4], prior[0, :4]                    # the least-squares multiple, by hand
    scale = float((w * p).sum() / (p * p).sum())
    assert loss == pytest.approx(float((w - scale * p).abs().mean()), rel=1e-6)


def test_mix_shape_weight_enters_the_loss_and_pulls_the_correction_back(sampler):
    batch = _white_matter_batch(sampler, lesion=False)
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny())
    with torch.no_grad():
        model.head.mix.bias.zero_()
        model.head.mix.bias[1] = 0.3                    # a learned grey-matter correction
    cfg = dict(queries=0, tissue_weight=1.0, bf16=False)
    plain = loss_on_batch(model, batch, TrainConfig(**cfg), 0)
    shaped = loss_on_batch(model, batch, TrainConfig(**cfg, mix_shape_weight=1.0), 0)
    assert float(shaped.detach()) > float(plain.detach()) + 0.01
    model.zero_grad()
    (shaped - plain).backward()                          # the new term's own gradient
    assert float(model.head.mix.bias.grad[1]) > 0       # descending it lowers the grey-matter weight


def test_basis_sum_weight_enters_the_loss(sampler):
    batch = _white_matter_batch(sampler, lesion=False)
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny())
    cfg = dict(queries=0, tissue_weight=1.0, bf16=False)
    plain = float(loss_on_batch(model, batch, TrainConfig(**cfg), 0).detach())
    with_sum = float(loss_on_batch(model, batch, TrainConfig(**cfg, basis_sum_weight=2.0), 0).detach())
    with torch.no_grad():
        _, bases = model.render_grid(model.encode(batch["source"], batch["text"], batch["features"]),
                                     with_bases=True)
    assert float((bases.sum(1) - 1.0).abs().mean()) > 0.01  # an untrained head: its bases do not add up to 1
    assert with_sum > plain + 0.01


def test_train_cli_export_options_are_checked(tmp_path, capsys):
    from dicom_node.cli import main

    assert main(["train", "--snapshot", "3"]) == 2
    assert "--snapshot needs --export-only" in capsys.readouterr().err
    assert main(["train", "--export-only", "--out-dir", str(tmp_path / "none")]) == 2
    assert "No training state to export" in capsys.readouterr().err


def test_a_fine_tune_keeps_the_lesion_detectors_record_and_weights(sampler, tmp_path):
    """The detector is trained apart: a fine-tune of a model that has one keeps its weights and its record."""
    from synthesis.lesion_train import widen_with_lesion_net
    from synthesis.nets.lesion import LesionNet

    _, cache = sampler
    torch.manual_seed(0)
    base = widen_with_lesion_net(RTFSyn(RTFSynConfig.tiny()), LesionNet().eval())
    start = ckpt.save(base, tmp_path / "start.pt", extra={"lesion_net": {"steps": 3, "seed": 9}})
    cfg = TrainConfig.from_dict(dict(
        generator="template", out_dir=str(tmp_path / "run"), cache_dir=str(cache), train_subjects=1,
        validation_subjects=1, patch=16, batch=1, queries=64, warmup=1, lr=1e-2, steps=2, checkpoint_every=1,
        validate_every=2, validation_patches=1, threads=1, init_checkpoint=str(start)))
    model, meta = ckpt.load(train(cfg, progress=False))
    assert meta["extra"]["lesion_net"] == {"steps": 3, "seed": 9}
    assert meta["extra"]["training"]["initialized_from"]["lesion_net"] == {"steps": 3, "seed": 9}
    before, after = base.state_dict(), model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("lesion."))
    assert any(not torch.equal(before[k], after[k]) for k in before if not k.startswith("lesion."))

"""Training crops of randomized whole heads, and the training step they feed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig
from synthesis.physics import TISSUES, jittered_params, tissue_signal
from synthesis.protocol import Contrast, MRProtocol, SequenceKind
from synthesis.simulate import make_subject
from synthesis.simulate.acquisition import Acquisition, acquire, random_acquisition, source_params
from synthesis.simulate.anatomy import AnatomyEdits
from synthesis.stream import StreamConfig, draw_crops, subject_for_draw
from synthesis.train import TrainConfig, loss_on_batch, make_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crops():
    subject = make_subject(21, edits=AnatomyEdits(deformation=0.3, lesions=10))
    cfg = StreamConfig(patch=32, crops_per_target=2, targets_per_draw=2)
    return cfg, subject, draw_crops(cfg, 0, 5, subject)


def test_crops_have_the_shapes_units_and_labels_training_needs(crops) -> None:
    cfg, subject, out = crops
    assert len(out) == 4
    assert {c.target_protocol.contrast.value for c in out} <= {"T2w", "PDw", "FLAIR"}
    for c in out:
        assert c.source.shape == c.target.shape == c.mask.shape == (32, 32, 32)
        assert c.fractions.shape == (len(TISSUES), 32, 32, 32)
        assert 0.5 <= c.cell <= 2.0
        assert 0.0 <= c.source.min() and c.source.max() <= 2.0     # normalized source units
        assert c.fractions.astype(np.float32).sum(0).max() <= 1.0 + 2e-3
        if c.mask.sum() > 500:                                       # brain-relative targets
            assert 0.2 < np.percentile(c.target[c.mask], 99) < 1.3
    # the source's slice thickness is what the acquisition used
    assert out[0].source_protocol.slice_thickness_mm == out[0].acquisition.slice_mm


def test_draws_are_reproducible_and_subjects_change(crops) -> None:
    cfg, subject, out = crops
    again = draw_crops(cfg, 0, 5, subject)
    np.testing.assert_array_equal(again[0].source, out[0].source)
    assert subject_for_draw(cfg, 0) == subject_for_draw(cfg, cfg.draws_per_subject - 1)
    assert subject_for_draw(cfg, cfg.draws_per_subject) != subject_for_draw(cfg, 0)


def test_whole_head_acquisition_grid_and_noise() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((60, 50, 40), np.float32)
    image[10:50, 10:40, 8:32] = 1.0
    acq = Acquisition(slice_axis=0, slice_mm=5.0, in_plane_mm=(1.2, 1.0), snr=20.0)
    out, spacing = acquire(image, acq, rng)
    assert spacing == (5.0, 1.2, 1.0) and out.shape == (12, 42, 40)
    inside = out[3:9, 12:30, 12:28]
    assert 0.03 < inside.std() / inside.mean() < 0.09                # SNR about 20
    draws = [random_acquisition(rng) for _ in range(100)]
    assert any(a.slice_mm >= 3 for a in draws) and any(a.slice_mm < 1.5 for a in draws)
    assert all(a.snr == 0 or 10 <= a.snr <= 40 for a in draws)


def test_source_jitter_keeps_a_lesion_darker_than_white_matter_on_mprage() -> None:
    """The source's tissue jitter varies contrast widely, but a lesion stays white matter changed
    by disease: drawn apart, its factor made the lesion/WM ratio of an MPRAGE source reach 1.09."""
    rng = np.random.default_rng(3)
    params = jittered_params(rng)[3.0]
    wm, lesion, gm = (TISSUES.index(t) for t in ("wm", "lesion", "gm"))
    mprage = MRProtocol(contrast=Contrast.T1w, sequence=SequenceKind.MPRAGE, tr_ms=2300.0, te_ms=2.9,
                        ti_ms=900.0, flip_deg=9.0, field_t=3.0)
    nominal = tissue_signal(params, mprage)
    ratios, gm_ratios = [], []
    for _ in range(300):
        drawn = source_params(params, rng)
        factor = drawn / params
        assert np.all(np.abs(factor[lesion] / factor[wm] - 1) <= 0.025 + 1e-6)
        signal = tissue_signal(drawn, mprage)
        ratios.append(signal[lesion] / signal[wm])
        gm_ratios.append(signal[gm] / signal[wm])
    ratios = np.array(ratios)
    assert np.all(np.abs(ratios / (nominal[lesion] / nominal[wm]) - 1) < 0.1)
    assert ratios.max() < 0.85
    assert np.ptp(gm_ratios) > 0.2  # the other tissues' contrast still varies widely


def test_wm_lesions_only_drops_phantoms_and_masses_and_keeps_the_rest() -> None:
    from dataclasses import replace

    from synthesis.lesion_train import LesionTrainConfig
    from synthesis.stream import subject_edits

    changed = 0
    for seed in range(200):
        drawn, kept = subject_edits(seed), subject_edits(seed, wm_lesions_only=True)
        assert not kept.phantom and kept.masses == 0
        assert kept == replace(drawn, phantom=False, masses=0)
        changed += drawn != kept
    assert 40 < changed < 100  # about 15 % phantoms and 15 % masses
    assert LesionTrainConfig().stream().wm_lesions_only  # the detector's crops


def test_grey_matter_crops_are_centred_on_grey_matter_and_off_by_default() -> None:
    from synthesis.stream import _crop_starts

    mask = np.zeros((80, 80, 80), bool)
    mask[10:70, 10:70, 10:70] = True
    grey = np.array([[20, 60, 30], [55, 25, 40]])
    lesion = np.array([[40, 40, 40]])
    picked = _crop_starts(mask, mask, 16, 200, 1.0, np.random.default_rng(0), lesion, 0.0, grey, 1.0)
    centres = {tuple(r.start + 8 for r in region) for region in picked}
    assert centres == {(20, 60, 30), (55, 25, 40)}
    mixed = _crop_starts(mask, mask, 16, 400, 1.0, np.random.default_rng(1), lesion, 1.0, grey, 0.3)
    on_grey = np.mean([tuple(r.start + 8 for r in region) in centres for region in mixed])
    assert 0.22 < on_grey < 0.38  # the rest are centred near the lesion
    # without grey-matter crops the draws are those of a stream that has none (same random numbers)
    assert _crop_starts(mask, mask, 16, 50, 0.8, np.random.default_rng(2), lesion, 0.5, grey, 0.0) == \
        _crop_starts(mask, mask, 16, 50, 0.8, np.random.default_rng(2), lesion, 0.5)


def test_deep_grey_matter_centres_lie_at_least_the_depth_inside_the_brain() -> None:
    from scipy import ndimage

    from synthesis.stream import _grey_centres

    brain = np.zeros((60, 60, 60), bool)
    brain[5:55, 5:55, 5:55] = True
    gm = np.zeros((60, 60, 60), np.float32)
    gm[5:9, 5:55, 5:55] = 1.0     # a grey-matter rim at the brain's edge
    gm[28:34, 28:34, 28:34] = 1.0  # and a deep nucleus
    everywhere = _grey_centres(gm, brain)
    assert {tuple(c) for c in everywhere} >= {(6, 30, 30), (28, 30, 30)}
    assert np.all(everywhere % 2 == 0) and np.all(gm[tuple(everywhere.T)] > 0.5)
    deep = _grey_centres(gm, brain, 10.0)
    assert len(deep) == 27 and deep.min() >= 28 and deep.max() <= 32  # the nucleus, on the 2x subgrid
    depth = ndimage.distance_transform_edt(brain)
    assert depth[tuple(deep.T)].min() >= 10.0


def test_shuffle_buffer_mixes_the_crops_of_several_draws(monkeypatch) -> None:
    import synthesis.stream as stream

    made: list[int] = []

    def fake_draw(cfg, draw, seed, subject):
        made.append(draw)
        return [(draw, i) for i in range(8)]

    monkeypatch.setattr(stream, "make_randomized_subject", lambda seed, **kw: seed)
    monkeypatch.setattr(stream, "draw_crops", fake_draw)
    mixing = {}
    for shuffle in (1, 6):
        made.clear()
        cfg = StreamConfig(target_contrasts=("T2w",), targets_per_draw=1, crops_per_target=8, shuffle_draws=shuffle)
        batches = iter(stream.CropStream(cfg, seed=0, batch=4, first_draw=0))
        first = next(batches)
        assert len(made) == shuffle  # the buffer fills with `shuffle` draws before it yields
        rest = [next(batches) for _ in range(60)]
        assert sum(len(b) for b in [first, *rest]) == 4 * 61
        mixing[shuffle] = np.mean([len({d for d, _ in b}) for b in rest])
        seen = [c for b in [first, *rest] for c in b]
        assert len(seen) == len(set(seen))  # no crop is given twice
    assert mixing[1] < 2.2 and mixing[6] > 3.0


def test_tissue_loss_supervises_the_output_bases(crops) -> None:
    _, _, out = crops
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny(physics_mix=True, head_bases=8))
    batch = make_batch(out[:2], torch.device("cpu"), model.config.feature_dim)
    assert batch["fractions"].shape == (2, len(TISSUES), 32, 32, 32)
    base = TrainConfig(queries=0, tissue_weight=0.0, bf16=False)
    with_tissue = TrainConfig(queries=0, tissue_weight=1.0, bf16=False)
    plain = float(loss_on_batch(model, batch, base, 0))
    feats = model.encode(batch["source"], batch["text"], batch["features"])
    _, bases = model.render_grid(feats, with_bases=True)
    expected = plain + float((bases - batch["fractions"]).abs().mean())
    assert float(loss_on_batch(model, batch, with_tissue, 0)) == pytest.approx(expected, rel=1e-4)


def test_lesion_crops_hold_lesions_and_only_with_a_share(crops) -> None:
    _, subject, _ = crops
    lesion = TISSUES.index("lesion")
    plain = StreamConfig(patch=32, crops_per_target=8, targets_per_draw=1)
    focused = StreamConfig(patch=32, crops_per_target=8, targets_per_draw=1, lesion_crop_share=1.0)

    def with_lesion(cfg: StreamConfig) -> int:
        return sum(int((c.fractions[lesion] > 0.5).any()) for c in draw_crops(cfg, 0, 5, subject))

    assert with_lesion(focused) == 8           # every crop centred near a lesion voxel holds one
    assert with_lesion(plain) < 8              # random places mostly miss ten small lesions


def test_lesion_weight_scales_the_loss_of_lesion_voxels(crops) -> None:
    cfg, subject, _ = crops
    focused = draw_crops(StreamConfig(patch=32, crops_per_target=2, targets_per_draw=1,
                                      lesion_crop_share=1.0), 0, 5, subject)
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny(physics_mix=True, head_bases=8))
    batch = make_batch(focused, torch.device("cpu"), model.config.feature_dim)
    losses = [float(loss_on_batch(model, batch, TrainConfig(queries=0, tissue_weight=0.0, bf16=False,
                                                            lesion_weight=w), 0)) for w in (0.0, 8.0)]
    feats = model.encode(batch["source"], batch["text"], batch["features"])
    grid = model.render_grid(feats)
    from synthesis.train import voxel_weights
    weight = voxel_weights(batch["mask"], batch["brain_range"], 0.25, 2.0)
    frac = batch["fractions"][:, TISSUES.index("lesion")].unsqueeze(1)
    extra = float(((grid - batch["target"]).abs() * weight * 8.0 * frac).mean())
    assert extra > 0
    assert losses[1] == pytest.approx(losses[0] + extra, rel=1e-4)


def test_bf16_encoder_gradients_agree_with_fp32(crops) -> None:
    _, _, out = crops
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny(physics_mix=True, head_bases=8))
    batch = make_batch(out[:2], torch.device("cpu"), model.config.feature_dim)

    def grads(bf16: bool) -> torch.Tensor:
        model.zero_grad()
        loss_on_batch(model, batch, TrainConfig(queries=256, bf16=bf16, channels_last=bf16), 0).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    g32, g16 = grads(False), grads(True)
    cosine = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
    assert cosine > 0.98, cosine


def test_an_unjittered_source_is_the_evaluations_rendering_and_a_jittered_one_is_not(crops) -> None:
    from synthesis.intensity import normalize_source
    from synthesis.protocol import preset
    from synthesis.simulate import render
    from synthesis.stream import acquired_source

    _, subject, _ = crops
    protocol, acq = preset("T1", 3.0), Acquisition(snr=30.0)
    # what synthesis.eval_sets does: the subject's own parameters, acquired, normalized by its tissue peak
    acquired, _ = acquire(render(subject, protocol), acq, np.random.default_rng(3))
    expected, _ = normalize_source(acquired)
    nominal = acquired_source(subject, protocol, acq, np.random.default_rng(3), jitter=False)
    np.testing.assert_allclose(nominal, expected, atol=1e-6)
    jittered = acquired_source(subject, protocol, acq, np.random.default_rng(3))
    brain = subject.brain_mask
    assert np.abs(jittered[brain] - nominal[brain]).mean() > 0.01

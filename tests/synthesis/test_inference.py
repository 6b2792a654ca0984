"""The Synthesizer contract and the grid helpers it relies on (CPU, tiny model)."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from synthesis import checkpoint, grid
from synthesis.inference import OUTPUT_MAX, SynthesisResult, Synthesizer
from synthesis.protocol import preset
from synthesis.condition import prompt

SOURCE, TARGET = preset("T1", 3.0), preset("T2", 3.0)


def phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Smooth random volume, uint16 like a scanner's, with a dark background."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(shape), 2.0)
    smooth = (smooth - smooth.min()) / np.ptp(smooth)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    inside = zz**2 + yy**2 + xx**2 < 0.8
    return (inside * (300 + 1500 * smooth)).astype(np.uint16)


# -- grid helpers -------------------------------------------------------------
@pytest.mark.parametrize(("spacing", "working"), [
    ((0.45, 0.45, 0.45), (1.0, 1.0, 1.0)),      # fine scans are anti-aliased down to 1 mm
    ((3.0, 0.45, 0.45), (1.0, 1.0, 1.0)),
    ((5.0, 1.0, 1.0), (1.0, 1.0, 1.0)),         # thick slices are interpolated up to 1 mm
    ((5.0, 0.9, 0.9), (1.0, 0.9, 0.9)),         # within 10 % of 1 mm: kept, no resampling
    ((1.05, 0.95, 1.0), (1.05, 0.95, 1.0)),
    ((1.2, 1.0, 1.0), (1.0, 1.0, 1.0)),
])
def test_working_spacing_is_about_1_mm_whatever_the_input(spacing: tuple, working: tuple) -> None:
    assert grid.working_spacing(spacing) == working
    with pytest.raises(ValueError, match=r"spacing must be finite and > 0 mm. Found \(1.0, 0.0, 1.0\)"):
        grid.working_spacing((1, 0, 1))


def test_default_output_spacing_refines_only_thick_axes() -> None:
    assert grid.default_output_spacing((5.0, 0.9, 0.9)) == (0.9, 0.9, 0.9)
    assert grid.default_output_spacing((1.2, 1.0, 1.0)) == (1.2, 1.0, 1.0)
    assert grid.default_output_spacing((1.0, 1.0, 1.6)) == (1.0, 1.0, 1.0)
    assert grid.default_output_spacing((0.45, 0.45, 0.45)) == (0.45, 0.45, 0.45)


def test_antialiased_resample_keeps_the_grid_and_removes_aliasing() -> None:
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32) * 5.0, (3, 3, 4)).copy()  # 5 mm slices
    up = grid.resample_antialiased(ramp, (1, 1, 5), (1, 1, 1))  # finer: plain linear, same grid
    np.testing.assert_allclose(up, grid.resample(ramp, (1, 1, 5), (1, 1, 1)), atol=1e-4)
    np.testing.assert_array_equal(grid.resample_antialiased(ramp, (1, 1, 5), (1, 1, 5)), ramp)
    # stripes at the input's Nyquist frequency, made 3x coarser: plain interpolation aliases
    # them into a full-contrast pattern; the anti-aliased resampling leaves their mean
    stripes = np.zeros((8, 8, 42), dtype=np.float32)
    stripes[..., ::2] = 1.0
    plain = grid.resample(stripes, (1, 1, 0.5), (1, 1, 1.5))
    smooth = grid.resample_antialiased(stripes, (1, 1, 0.5), (1, 1, 1.5))
    assert smooth.shape == plain.shape == (8, 8, 14) and smooth.dtype == np.float32
    assert np.abs(plain[..., 2:-2] - 0.5).min() > 0.4
    assert np.abs(smooth[..., 2:-2] - 0.5).max() < 0.05


def test_output_grid_covers_the_field_of_view() -> None:
    assert grid.output_shape((10, 20, 4), (1, 1, 5), (1, 1, 1)) == (10, 20, 20)
    z = grid.axis_coords(10, 1.0, 1.0)
    x = grid.axis_coords(20, 5.0, 1.0)
    np.testing.assert_allclose(x[:3], [-0.4, -0.2, 0.0])
    np.testing.assert_allclose(z, np.arange(10))
    assert grid.origin_offset_mm((1, 1, 5), (1, 1, 1)) == (0.0, 0.0, -2.0)
    # first and last output centres are symmetric inside the field of view
    coords = grid.axis_coords(20, 5.0, 1.0)
    assert coords[0] + coords[-1] == pytest.approx(3.0)


def test_resample_is_linear_and_keeps_the_field_of_view() -> None:
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32) * 5.0, (3, 3, 4)).copy()  # 5 mm slices, value = mm
    out = grid.resample(ramp, (1, 1, 5), (1, 1, 1))
    assert out.shape == (3, 3, 20) and out.dtype == np.float32
    mm = grid.axis_coords(20, 5.0, 1.0) * 5.0
    np.testing.assert_allclose(out[0, 0], np.clip(mm, 0, 15), atol=1e-4)
    same = grid.resample(ramp, (1, 1, 5), (1, 1, 5))
    np.testing.assert_array_equal(same, ramp)
    labels = grid.resample(np.arange(8, dtype=np.int16).reshape(2, 2, 2), (2, 2, 2), (1, 1, 1), order=0)
    assert labels.dtype == np.int16 and set(np.unique(labels)) == set(range(8))
    with pytest.raises(ValueError, match="volume must be 3-D"):
        grid.resample(np.zeros((3, 3)), (1, 1, 1), (1, 1, 1))


def test_percentile_normalize() -> None:
    vol = np.linspace(0, 1000, 10001, dtype=np.float32).reshape(1, 1, -1)
    out, (lo, hi) = grid.percentile_normalize(vol)
    assert (lo, hi) == pytest.approx((5.0, 995.0))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == pytest.approx(1000 / 990 - 5 / 990)
    spiky = vol.copy()
    spiky[0, 0, -1] = 1e6
    assert grid.percentile_normalize(spiky)[0].max() == pytest.approx(1.5)
    mask = np.zeros_like(vol, dtype=bool)
    mask[..., :5001] = True
    assert grid.percentile_normalize(vol, mask)[1][1] == pytest.approx(497.5)
    assert not grid.percentile_normalize(np.full((2, 2, 2), 7.0))[0].any()
    with pytest.raises(ValueError, match="mask selects no voxel"):
        grid.percentile_normalize(vol, np.zeros_like(mask))


def test_tiles_cover_the_volume_within_budget() -> None:
    shape = (50, 41, 37)
    tiles = grid.plan_tiles(shape, 32 * 32 * 48, 8, 8)
    assert len(tiles) > 1
    covered = np.zeros(shape, dtype=int)
    for start, size in tiles:
        assert np.prod([-(-n // 8) * 8 for n in size]) <= 32 * 32 * 48
        covered[tuple(slice(s, s + n) for s, n in zip(start, size))] += 1
        weights = grid.blend_weights(start, size, shape, 8)
        assert weights.shape == size and weights.min() > 0 and weights.max() <= 1
    assert covered.min() >= 1
    assert grid.plan_tiles(shape, 10**9, 8, 8) == [((0, 0, 0), shape)]


# -- the Synthesizer ------------------------------------------------------------
def test_result_contract(tiny_synthesizer: Synthesizer) -> None:
    vol = phantom((20, 22, 18))
    res = tiny_synthesizer(vol, (1.0, 1.0, 1.0), SOURCE, TARGET)
    assert isinstance(res, SynthesisResult)
    assert res.volume.shape == vol.shape and res.volume.dtype == np.float32
    assert res.volume.min() >= 0 and res.volume.max() <= OUTPUT_MAX
    assert res.spacing == (1.0, 1.0, 1.0) and res.origin_offset_mm == (0.0, 0.0, 0.0)
    assert res.prompt == prompt(SOURCE, TARGET)


def test_info(tiny_synthesizer: Synthesizer, tiny_checkpoint: Path) -> None:
    info = tiny_synthesizer.info
    assert info["model_name"] == "RTFSyn" and info["device"] == "cpu"
    assert info["checkpoint_sha256"] == checkpoint.sha256(tiny_checkpoint)
    assert info["model_version"] == checkpoint.load(tiny_checkpoint)[1]["model_version"]
    assert info["architecture"]["fusion"] == "rtf" and info["architecture"]["trainable_parameters"] > 0


def test_thick_slices_give_a_1_mm_output_by_default(tiny_synthesizer: Synthesizer) -> None:
    vol = phantom((6, 20, 18))
    res = tiny_synthesizer(vol, (5.0, 1.0, 1.0), SOURCE, TARGET)
    assert res.volume.shape == (30, 20, 18) and res.spacing == (1.0, 1.0, 1.0)
    assert res.origin_offset_mm == (-2.0, 0.0, 0.0)


@pytest.mark.parametrize(("shape", "spacing", "requested", "out_shape"), [
    ((40, 40, 40), (0.45, 0.45, 0.45), None, (40, 40, 40)),            # default: the input grid
    ((40, 40, 40), (0.45, 0.45, 0.45), (0.9, 0.9, 0.9), (20, 20, 20)),
    ((6, 20, 18), (5.0, 1.0, 1.0), None, (30, 20, 18)),                # default: 1 mm isotropic
    ((6, 20, 18), (5.0, 1.0, 1.0), (2.5, 0.5, 1.0), (12, 40, 18)),
])
def test_network_runs_on_a_1_mm_grid_and_writes_the_requested_grid(
        tiny_synthesizer: Synthesizer, monkeypatch: pytest.MonkeyPatch, shape: tuple, spacing: tuple,
        requested: tuple | None, out_shape: tuple) -> None:
    model = tiny_synthesizer.model
    encoded: list[tuple[int, ...]] = []
    real_encode = model.encode

    def spy(x, text, features):  # type: ignore[no-untyped-def]
        feats = real_encode(x, text, features)
        encoded.append(tuple(feats.volume.shape[2:]))
        return feats

    monkeypatch.setattr(model, "encode", spy)
    res = tiny_synthesizer(phantom(shape), spacing, SOURCE, TARGET, output_spacing=requested)
    (feature_shape,) = encoded
    feature_mm = [n * sp / m for n, sp, m in zip(shape, spacing, feature_shape)]
    assert feature_mm == pytest.approx([1.0, 1.0, 1.0], rel=0.1), feature_mm
    assert res.volume.shape == out_shape
    assert res.spacing == (requested or grid.default_output_spacing(spacing))


@pytest.mark.parametrize(("volume", "message"), [
    (np.zeros((16, 16, 16), dtype=np.uint16), "no usable signal"),
    (np.full((16, 16, 16), 700, dtype=np.uint16), "constant"),
    # a blank series with a few stray bright voxels: refused, not stretched to full scale
    (np.pad(np.full((2, 2, 2), 50.0), 7), "no usable signal"),
])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_blank_or_constant_source_is_refused(tiny_checkpoint: Path, volume: np.ndarray, message: str,
                                             bias_correction: bool) -> None:
    syn = Synthesizer(tiny_checkpoint, device="cpu", bias_correction=bias_correction)
    with pytest.raises(ValueError, match=message):
        syn(volume, (1.0, 1.0, 1.0), SOURCE, TARGET)


def test_bias_correction_runs_n4_first_and_is_recorded(tiny_checkpoint: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import synthesis.bias

    calls: list[tuple[tuple[int, ...], tuple[float, ...]]] = []

    def halve(volume: np.ndarray, spacing: tuple) -> np.ndarray:
        calls.append((volume.shape, tuple(spacing)))
        return volume.astype(np.float32) * 0.5   # a "bias field" of 2 everywhere

    monkeypatch.setattr(synthesis.bias, "n4_correct", halve)
    plain = Synthesizer(tiny_checkpoint, device="cpu")
    corrected = Synthesizer(tiny_checkpoint, device="cpu", bias_correction=True)
    assert plain.info["bias_correction"] is False and corrected.info["bias_correction"] is True
    vol = phantom((16, 18, 16))
    expected = plain(vol, (1.0, 1.0, 1.2), SOURCE, TARGET).volume
    assert calls == []
    # the corrected volume is what gets normalized: a uniform field changes nothing after it
    np.testing.assert_allclose(corrected(vol, (1.0, 1.0, 1.2), SOURCE, TARGET).volume, expected, atol=1e-5)
    assert calls == [((16, 18, 16), (1.0, 1.0, 1.2))]
    with pytest.raises(ValueError, match="bias_correction must be True or False. Found 'yes'"):
        Synthesizer(tiny_checkpoint, device="cpu", bias_correction="yes")  # type: ignore[arg-type]


def test_output_spacing_uses_the_implicit_query(tiny_synthesizer: Synthesizer) -> None:
    vol = phantom((16, 18, 20))
    res = tiny_synthesizer(vol, (1.0, 1.0, 1.0), SOURCE, TARGET, output_spacing=(0.5, 2.0, 1.0))
    assert res.volume.shape == (32, 9, 20) and res.spacing == (0.5, 2.0, 1.0)
    assert res.origin_offset_mm == (-0.25, 0.5, 0.0)
    # asking for the working grid explicitly takes the same path as the default
    same = tiny_synthesizer(vol, (1.0, 1.0, 1.0), SOURCE, TARGET, output_spacing=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(same.volume, tiny_synthesizer(vol, (1.0, 1.0, 1.0), SOURCE, TARGET).volume)


def test_query_path_matches_render_path_on_the_working_grid(tiny_synthesizer: Synthesizer) -> None:
    vol = phantom((16, 12, 14))
    fast = tiny_synthesizer(vol, (1.0, 1.0, 1.0), SOURCE, TARGET).volume
    # the same grid, reached through the query path (spacing equal up to float noise)
    slow = tiny_synthesizer(vol, (1.0, 1.0, 1.0), SOURCE, TARGET, output_spacing=(1.0, 1.0, 1.0 + 1e-12))
    np.testing.assert_allclose(slow.volume, fast, atol=1e-5)


def test_output_depends_on_the_prompt(tiny_synthesizer: Synthesizer) -> None:
    vol = phantom((16, 16, 16))
    t2 = tiny_synthesizer(vol, (1, 1, 1), SOURCE, TARGET).volume
    flair = tiny_synthesizer(vol, (1, 1, 1), SOURCE, preset("FLAIR", 3.0)).volume
    assert np.abs(t2 - flair).max() > 1e-4


def test_deterministic_and_thread_safe(tiny_synthesizer: Synthesizer) -> None:
    vol = phantom((16, 18, 16), seed=3)
    first = tiny_synthesizer(vol, (1, 1, 1), SOURCE, TARGET).volume
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(tiny_synthesizer(vol, (1, 1, 1), SOURCE, TARGET).volume)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 3
    for out in results:
        np.testing.assert_array_equal(out, first)


def test_tiled_equals_whole_within_tolerance(tiny_checkpoint: Path) -> None:
    vol = phantom((48, 40, 36), seed=1)
    whole = Synthesizer(tiny_checkpoint, device="cpu")
    tiled = Synthesizer(tiny_checkpoint, device="cpu", max_tile_voxels=40**3, tile_overlap=16)
    assert len(grid.plan_tiles((48, 40, 36), tiled.max_tile_voxels, 8, 16)) == 2
    a = whole(vol, (1, 1, 1), SOURCE, TARGET).volume
    b = tiled(vol, (1, 1, 1), SOURCE, TARGET).volume
    assert a.std() > 0.01  # a non-trivial output to compare
    # on the normalized intensity scale: < 1 % anywhere, < 0.1 % on average
    assert np.abs(a - b).max() < 0.01
    assert np.abs(a - b).mean() < 0.001


@pytest.mark.parametrize(
    ("volume", "spacing", "message"),
    [
        (np.zeros((4, 4)), (1, 1, 1), r"volume must be 3-D \(z, y, x\). Found 2 dimensions"),
        (np.zeros((4, 1, 4)), (1, 1, 1), r"at least 2 voxels along every axis. Found shape \(4, 1, 4\)"),
        (np.full((4, 4, 4), np.nan), (1, 1, 1), "volume must be finite. Found 64 NaN or infinite voxels"),
        (np.zeros((4, 4, 4), dtype=bool), (1, 1, 1), "volume must hold real numbers. Found dtype bool"),
        (np.zeros((4, 4, 4)), (1, -1, 1), r"spacing must be finite and > 0 mm. Found \(1.0, -1.0, 1.0\)"),
        (np.zeros((4, 4, 4)), (1, 1), "spacing must have 3 values"),
        (np.zeros((4, 4, 4)), (1, float("inf"), 1), "spacing must be finite"),
    ],
)
def test_bad_input_is_rejected_clearly(tiny_synthesizer: Synthesizer, volume: np.ndarray,
                                       spacing: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_synthesizer(volume, spacing, SOURCE, TARGET)


def test_bad_arguments_are_rejected(tiny_synthesizer: Synthesizer, tiny_checkpoint: Path) -> None:
    vol = phantom((8, 8, 8))
    with pytest.raises(ValueError, match="out_spacing must be finite and > 0 mm"):
        tiny_synthesizer(vol, (1, 1, 1), SOURCE, TARGET, output_spacing=(1, 0, 1))
    with pytest.raises(TypeError, match="target must be an MRProtocol. Found str"):
        tiny_synthesizer(vol, (1, 1, 1), SOURCE, "T2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda"):
        Synthesizer(tiny_checkpoint, device="tpu")
    with pytest.raises(ValueError, match="max_tile_voxels must be an integer >= 8. Found 0"):
        Synthesizer(tiny_checkpoint, device="cpu", max_tile_voxels=0)
    with pytest.raises(FileNotFoundError, match="Checkpoint file not found"):
        Synthesizer(tiny_checkpoint.with_name("missing.pt"), device="cpu")


def test_missing_default_checkpoint_explains_how_to_get_one(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    monkeypatch.setattr(checkpoint, "default_checkpoint_path", lambda: tmp_path / "weights" / "default.pt")
    with pytest.raises(FileNotFoundError, match="No default RTFSyn checkpoint .*rtfsyn train.*checkpoint="):
        Synthesizer(device="cpu")


def test_from_model_and_no_text_model(tiny_checkpoint: Path) -> None:
    from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig

    syn = Synthesizer.from_model(RTFSyn(RTFSynConfig.tiny(fusion="none", decoder="conv")))
    assert syn.info["checkpoint_sha256"] is None and syn.info["model_version"] == "unsaved"
    res = syn(phantom((10, 12, 14)), (1, 1, 2.5), SOURCE, TARGET)
    assert res.volume.shape == (10, 12, 35)
    with pytest.raises(TypeError, match="model must be an RTFSyn"):
        Synthesizer.from_model(object())  # type: ignore[arg-type]


def test_public_import_is_light() -> None:
    code = (
        "import sys; from synthesis import Synthesizer, SynthesisResult; "
        "bad = [m for m in ('pydicom', 'pynetdicom') if m in sys.modules]; "
        "assert not bad, bad; print(Synthesizer.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Synthesizer"


@pytest.mark.parametrize("decoder", ["implicit", "conv"])
def test_query_slabs_match_one_pass(decoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding the output grid slab by slab gives what one pass over the whole grid gives."""
    import synthesis.inference as inference
    from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig

    syn = Synthesizer.from_model(RTFSyn(RTFSynConfig.tiny(decoder=decoder)))
    vol, spacing, out_spacing = phantom((12, 10, 14)), (2.0, 1.0, 1.0), (0.7, 1.0, 1.3)
    one_pass = syn(vol, spacing, SOURCE, TARGET, output_spacing=out_spacing).volume
    monkeypatch.setattr(inference, "_QUERY_BUDGET", 3 * 10 * 11)  # three output planes per slab
    slabbed = syn(vol, spacing, SOURCE, TARGET, output_spacing=out_spacing).volume
    assert slabbed.shape == (34, 10, 11)
    np.testing.assert_allclose(slabbed, one_pass, atol=1e-5)

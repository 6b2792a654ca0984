"""Checkpoints: round trip, self-describing spec, weights_only safety, clear errors."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from synthesis import checkpoint
from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig
from synthesis.nets.config import LEGACY_FIELDS
from synthesis.condition import FEATURE_DIM, PAIR_FEATURE_DIM
from synthesis.text import TEXT_DIM, TextCondition


def _inputs() -> tuple[torch.Tensor, TextCondition, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    text = TextCondition(torch.randn(1, 5, TEXT_DIM, generator=gen), torch.ones(1, 5, dtype=torch.bool),
                         torch.randn(1, TEXT_DIM, generator=gen))
    return torch.rand(1, 1, 12, 10, 9, generator=gen), text, torch.rand(1, PAIR_FEATURE_DIM, generator=gen)


@pytest.mark.parametrize("changes", [{}, {"fusion": "global", "decoder": "conv"}, {"refinement": "none"}])
def test_round_trip_gives_the_same_outputs(tmp_path: Path, changes: dict) -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny(**changes)).eval()
    path = checkpoint.save(model, tmp_path / "sub" / "m.pt", extra={"steps": 3, "note": "unit test"})
    loaded, meta = checkpoint.load(path)
    assert loaded.config == model.config and not loaded.training
    assert meta["extra"] == {"steps": 3, "note": "unit test"}
    assert meta["sha256"] == checkpoint.sha256(path) and len(meta["sha256"]) == 64
    assert meta["model_version"].endswith(checkpoint.state_digest(model)[:12])
    x, text, feats = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, text, feats), model(x, text, feats), atol=0, rtol=0)


def test_file_layout_and_explicit_version(tmp_path: Path) -> None:
    model = RTFSyn(RTFSynConfig.tiny())
    path = checkpoint.save(model, tmp_path / "m.pt", model_version="2026.1-test")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "rtfsyn-checkpoint" and payload["version"] == 1
    assert payload["config"] == model.config.to_dict()
    assert set(payload) == {"format", "version", "model_version", "config", "state_dict", "extra"}
    assert checkpoint.load(path)[1]["model_version"] == "2026.1-test"
    assert not (tmp_path / "m.pt.tmp").exists()


def test_different_weights_get_different_versions() -> None:
    torch.manual_seed(0)
    a = RTFSyn(RTFSynConfig.tiny())
    b = RTFSyn(RTFSynConfig.tiny())
    assert checkpoint.state_digest(a) != checkpoint.state_digest(b)


def test_a_calibration_is_part_of_the_identity_and_its_default_leaves_the_digest_alone() -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny(lesion_net=True))
    same, _ = checkpoint.with_architecture(model, {"lesion_gain": 1.0})
    gained, _ = checkpoint.with_architecture(model, {"lesion_gain": 1.4})
    digest = checkpoint.state_digest(model)
    assert checkpoint.state_digest(same) == digest != checkpoint.state_digest(gained)
    other, _ = checkpoint.with_architecture(model, {"lesion_gain": 1.6})
    assert checkpoint.state_digest(other) != checkpoint.state_digest(gained)
    digests = {digest, checkpoint.state_digest(gained), checkpoint.state_digest(other)}
    for changes in ({"lesion_level": "output"},
                    {"lesion_fraction_p": [0.0, 0.5, 1.0], "lesion_fraction_f": [0.0, 0.1, 0.9]},
                    {"lesion_fraction_p": [0.0, 0.5, 1.0], "lesion_fraction_f": [0.0, 0.2, 0.9]}):
        calibrated, _ = checkpoint.with_architecture(model, changes)
        digests.add(checkpoint.state_digest(calibrated))
    assert len(digests) == 6  # each calibration its own identity


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Checkpoint file not found: .*nothing.pt"):
        checkpoint.load(tmp_path / "nothing.pt")


@pytest.mark.parametrize("damage", ["foreign bytes", "truncated", "pickled object"])
def test_corrupt_file_is_named_and_no_unsafe_load_is_suggested(tmp_path: Path,
                                                               tiny_checkpoint: Path,
                                                               damage: str) -> None:
    bad = tmp_path / "corrupt.pt"
    if damage == "foreign bytes":
        bad.write_bytes(b"this is not a checkpoint at all")
    elif damage == "truncated":
        data = tiny_checkpoint.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"obj": argparse.Namespace(command="x")}, bad)
    with pytest.raises(ValueError, match="Cannot read checkpoint .*corrupt.pt: ") as info:
        checkpoint.load(bad)
    message = str(info.value)
    assert "weights_only=False" not in message and info.value.__cause__ is None
    assert info.value.__suppress_context__  # torch's advice is not chained either


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickle.pt"
    torch.save({"format": "rtfsyn-checkpoint", "obj": argparse.Namespace(command="rm -rf /")}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        checkpoint.load(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"state_dict": {}}, "format must be 'rtfsyn-checkpoint'. Found None"),
        ([1, 2, 3], "format must be 'rtfsyn-checkpoint'. Found 'list'"),
        ({"format": "rtfsyn-checkpoint", "version": 99}, "format version 99; this code reads version 1"),
        ({"format": "rtfsyn-checkpoint", "version": 1, "config": {}}, "lacks the 'model_version' entry"),
        ({"format": "rtfsyn-checkpoint", "version": 1, "model_version": "x", "config": {"heads": 0},
          "state_dict": {}}, "invalid network config: heads must be an integer >= 1"),
        ({"format": "rtfsyn-checkpoint", "version": 1, "model_version": "x",
          "config": RTFSynConfig.tiny().to_dict(), "state_dict": {"stem.weight": torch.zeros(1)}},
         "weights do not match its config"),
    ],
)
def test_wrong_content_is_explained(tmp_path: Path, payload: object, message: str) -> None:
    path = tmp_path / "wrong.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=message):
        checkpoint.load(path)


def test_default_path_is_package_data() -> None:
    path = checkpoint.default_checkpoint_path()
    assert path.parts[-3:] == ("synthesis", "weights", "default.pt")


def test_save_refuses_other_modules(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="save\\(\\) expects an RTFSyn model. Found Linear"):
        checkpoint.save(torch.nn.Linear(2, 2), tmp_path / "x.pt")  # type: ignore[arg-type]


def test_tiny_checkpoint_fixture(tiny_checkpoint: Path) -> None:
    model, meta = checkpoint.load(tiny_checkpoint)
    assert model.config == RTFSynConfig.tiny()
    assert meta["extra"]["purpose"] == "tests"


def test_extra_is_stored_as_plain_values(tmp_path: Path) -> None:
    import numpy as np

    extra = {"torch": torch.__version__, "psnr": np.float32(30.5), "steps": np.int64(7), "shape": (1, 2)}
    path = checkpoint.save(RTFSyn(RTFSynConfig.tiny()), tmp_path / "m.pt", extra=extra)
    stored = checkpoint.load(path)[1]["extra"]
    assert stored == {"torch": str(torch.__version__), "psnr": 30.5, "steps": 7, "shape": (1, 2)}
    assert type(stored["torch"]) is str
    with pytest.raises(TypeError, match=r"Found Namespace at extra\['args'\]"):
        checkpoint.save(RTFSyn(RTFSynConfig.tiny()), tmp_path / "n.pt", extra={"args": argparse.Namespace()})


def test_checkpoints_from_before_the_newer_fields_still_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    old = RTFSyn(RTFSynConfig.tiny(upsample="transpose", head_bases=1, stage_film=False, physics_mix=False,
                                   feature_dim=2 * FEATURE_DIM)).eval()
    path = checkpoint.save(old, tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    for key in LEGACY_FIELDS:  # written before these fields existed
        del payload["config"][key]
    torch.save(payload, path)
    loaded, _ = checkpoint.load(path)
    assert loaded.config == old.config
    x, text, feats = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, text, feats[:, :2 * FEATURE_DIM]),
                                   old(x, text, feats[:, :2 * FEATURE_DIM]), atol=0, rtol=0)

"""Checkpoints that carry their own network spec and version.

A checkpoint is a ``torch.save`` of a plain dict::

    {"format": "rtfsyn-checkpoint", "version": 1, "model_version": str,
     "config": RTFSynConfig.to_dict(), "state_dict": {...}, "extra": {...}}

It loads with ``torch.load(weights_only=True)`` (no arbitrary pickles) and
rebuilds the model with no other configuration.
"""
from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from synthesis.version import __version__
from synthesis.nets.config import LEGACY_FIELDS
from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig

__all__ = ["FORMAT", "VERSION", "save", "load", "sha256", "default_checkpoint_path", "state_digest",
           "with_architecture"]

logger = logging.getLogger(__name__)

FORMAT = "rtfsyn-checkpoint"
VERSION = 1


def default_checkpoint_path() -> Path:
    """``synthesis/weights/default.pt`` inside the installed package (may not exist yet)."""
    return Path(__file__).resolve().parent / "weights" / "default.pt"


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: Config fields that calibrate a trained network's output without a weight of their own:
#: part of the model's identity (:func:`state_digest`) whenever they differ from the default.
CALIBRATION_FIELDS = ("lesion_gain", "lesion_fraction_p", "lesion_fraction_f", "lesion_level")


def state_digest(model: torch.nn.Module) -> str:
    """Hex SHA-256 over the parameter and buffer names and values, and the calibration fields
    (:data:`CALIBRATION_FIELDS`) that differ from their defaults (model identity: two models
    whose output differs never share it; the digest of uncalibrated weights is unchanged)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    config, defaults = getattr(model, "config", None), RTFSynConfig()
    for name in CALIBRATION_FIELDS:
        value = getattr(config, name, None)
        if value is not None and value != getattr(defaults, name):
            digest.update(f"{name}={value!r}".encode())
    return digest.hexdigest()


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain Python types (what ``weights_only`` loading accepts), or TypeError."""
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    for base in (bool, int, float, str):  # subclasses, e.g. torch.__version__ or an IntEnum
        if isinstance(value, base):
            return base(value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalars
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(
        f"Checkpoint extra values must be plain (str, numbers, bool, None, lists, dicts, tensors). "
        f"Found {type(value).__name__} at {where}."
    )


def save(model: RTFSyn, path: str | Path, *, extra: dict[str, Any] | None = None,
         model_version: str | None = None) -> Path:
    """Write ``model`` with its config to ``path`` (atomic rename); returns the path.

    ``model_version`` defaults to ``"<package version>+<first 12 hex of the weights digest>"``,
    so different weights always get a different version string. ``extra`` must
    hold only plain values (str, numbers, lists, dicts, tensors).
    """
    if not isinstance(model, RTFSyn):
        raise TypeError(f"save() expects an RTFSyn model. Found {type(model).__name__}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_version": model_version or f"{__version__}+{state_digest(model)[:12]}",
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "extra": _plain(dict(extra or {}), "extra"),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    logger.info("Saved checkpoint %s (model version %s)", path, payload["model_version"])
    return path


def _load_problem(exc: Exception) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in words."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return ("it holds Python objects besides tensors and plain values, which "
                "torch.load(weights_only=True) refuses: unpickling them could run code")
    if isinstance(exc, EOFError):
        return "the file ends early (truncated)"
    return "not a torch checkpoint archive, or a truncated or corrupted one"


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on foreign bytes; re-raised below
        # torch's own message advises an unsafe reload; neither it nor its chain is passed on.
        raise ValueError(f"Cannot read checkpoint {path}: {_load_problem(exc)}. Replace the "
                         "file (reinstall the package, copy it again, or `rtfsyn train`).") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"Checkpoint {path} is not an RTFSyn checkpoint: format must be {FORMAT!r}. Found {found!r}.")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"Checkpoint {path} has format version {payload.get('version')!r}; this code reads version {VERSION}."
        )
    for key in ("model_version", "config", "state_dict"):
        if key not in payload:
            raise ValueError(f"Checkpoint {path} lacks the {key!r} entry.")
    return payload


def load(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[RTFSyn, dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns ``(model in eval mode, meta)``.

    ``meta`` holds ``model_version``, ``config`` (dict), ``extra``, ``sha256`` and ``path``.
    """
    path = Path(path)
    payload = _read(path, map_location)
    try:
        config = RTFSynConfig.from_dict({**LEGACY_FIELDS, **payload["config"]})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Checkpoint {path} holds an invalid network config: {exc}") from exc
    model = RTFSyn(config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"Checkpoint {path} weights do not match its config: {exc}") from exc
    model.eval()
    meta = {
        "model_version": str(payload["model_version"]),
        "config": config.to_dict(),
        "extra": payload.get("extra", {}),
        "sha256": sha256(path),
        "path": str(path),
    }
    return model, meta


def with_architecture(model: RTFSyn, changes: dict[str, Any]) -> tuple[RTFSyn, dict[str, Any]]:
    """``model``'s network with the config fields in ``changes`` changed (an ablation switch,
    e.g. ``{"fusion": "none"}``), carrying over every weight whose name and shape still match;
    the rest start as a fresh network would. Returns ``(new model, what was carried)``:
    ``{"changes", "carried", "dropped", "new"}`` (numbers of tensors; ``dropped``: in ``model``
    only, ``new``: in the new network only or of another shape)."""
    config = RTFSynConfig.from_dict({**model.config.to_dict(), **changes})
    variant = RTFSyn(config)
    old, fresh = model.state_dict(), variant.state_dict()
    carried = {k: v for k, v in old.items() if k in fresh and fresh[k].shape == v.shape}
    variant.load_state_dict(carried, strict=False)
    return variant, {"changes": dict(changes), "carried": len(carried),
                     "dropped": len([k for k in old if k not in fresh]),
                     "new": len([k for k in fresh if k not in carried])}

"""Training of RTFSyn on simulated paired data.

Two generators (``generator``): ``randomized`` (the default) streams crops of
randomized whole heads from a background process (:mod:`synthesis.stream`: new
anatomy every few draws, acquisition on the whole head); ``template`` draws
patches of a few cached, lightly warped template subjects (:mod:`synthesis.data`).

Seeded and resumable: the learning rate is a pure function of the step; the
template generator draws step ``s`` from ``np.random.default_rng([seed, s])`` (a
restart continues exactly), the randomized one restarts at the draw the stopped
run had reached (new draws, same distribution). Loss: L1 on the regular grid
(voxel centres), plus L1 at random continuous query positions (the implicit
decoder off the grid, with the cell size of each crop and its target blurred to
match), plus L1 between the output bases and the tissue fractions the simulator
knows (``tissue_weight``; the bases then stand for tissues, the prompt for
contrast). Brain voxels count in the units evaluation uses (an error divided by
the width of the target's brain percentile band, at most ``brain_weight_cap``
times); voxels outside the brain count ``outside_weight`` times their plain error.
Lesions, a fraction of a percent of a brain, are weighted up (``lesion_weight``, on
the image and the bases), a share of crops is centred near one
(``lesion_crop_share``), and a soft Dice term on the lesion basis counts each crop's
lesion as one object (``lesion_dice_weight``). A model with ``second_source`` also gets, for
a share ``second_source_share`` of draws, a T2w of the same subject (its own protocol and
acquisition) for its PDw and FLAIR crops; the second-source branch learns at
``second_source_lr_scale`` times the learning rate. ``train_only`` (parameter name prefixes,
e.g. ``["late_second"]``) trains those parameters alone and keeps the rest as they start: a
second-source branch learnt on a frozen one-source model leaves its T1-alone output as it was.
On CPU the encoder runs under bf16
autocast (``bf16``) in channels-last layout; the decoder head and the loss stay in fp32.
"""
from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from synthesis import checkpoint as ckpt
from synthesis.data import Pair, PairSampler
from synthesis.metrics import normalize_in_mask, psnr
from synthesis.nets.rtfsyn import SECOND_SOURCE_BRANCHES, RTFSyn, RTFSynConfig
from synthesis.physics import TISSUES
from synthesis.condition import pair_features, prompt
from synthesis.simulate import SPLIT_SEEDS, load_or_make_subject
from synthesis.stream import Crop, StreamConfig, stream_batches
from synthesis.text import get_text_encoder

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "load_train_config", "train", "export_checkpoint", "make_batch", "loss_on_batch",
           "voxel_weights"]


@dataclass
class TrainConfig:
    """Everything a training run needs; loaded from ``config/train.toml``."""

    out_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    threads: int = 2
    # data
    cache_dir: str = "var/sim-cache"
    train_subjects: int = 8
    validation_subjects: int = 1
    patch: int = 48
    target_contrasts: tuple[str, ...] = ("T2w", "PDw", "FLAIR")
    source_contrasts: tuple[str, ...] = ("T1w",)
    target_weights: tuple[float, ...] | None = None  # relative sampling weight per target contrast
    source_preset_share: float = 0.3  # share of source protocols that are (jittered) presets
    target_preset_share: float = 0.3  # the same for targets (the node asks for presets)
    # optimisation
    steps: int = 4000
    batch: int = 2
    lr: float = 1e-3
    min_lr: float = 2e-5
    warmup: int = 200
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    queries: int = 4096
    query_weight: float = 1.0
    outside_weight: float = 0.25  # weight of a voxel outside the brain
    brain_weight_cap: float = 2.0  # weight inside the brain: 1 / brain range, at most this
    # bookkeeping
    checkpoint_every: int = 200
    validate_every: int = 500
    validation_patches: int = 12
    max_minutes: float | None = None
    init_checkpoint: str | None = None  # start from these weights ("default" or a path) when not resuming
    generator: str = "randomized"  # "randomized" (synthesis.stream) or "template" (synthesis.data)
    tissue_weight: float = 0.5     # weight of the output bases' L1 to the tissue fractions
    bf16: bool = True              # bf16 autocast of the encoder on CPU (CUDA: always bf16 autocast)
    channels_last: bool = True     # channels-last 3-D memory layout
    data_workers: int = 1          # 1: simulate in a background process; 0: inline
    draws_per_subject: int = 3     # randomized generator: draws of one subject before the next
    targets_per_draw: int = 2      # target contrasts rendered per draw
    crops_per_target: int = 4      # crops per target and draw
    max_cell: float = 2.0          # query cell sizes drawn log-uniformly in [0.5, max_cell] voxels
    lesion_crop_share: float = 0.0  # share of crops centred on a lesion (randomized generator)
    lesion_weight: float = 0.0     # a voxel's loss weight is times 1 + lesion_weight * its lesion fraction
    lesion_dice_weight: float = 0.0  # weight of a soft Dice loss of the lesion basis (crops holding a lesion)
    basis_sum_weight: float = 0.0  # weight of the L1 of the bases' sum to the fractions' sum (voxel-weighted)
    mix_shape_weight: float = 0.0  # weight of the L1 of the brain mixing weights to a multiple of the prior's
    second_source_share: float = 0.0  # share of draws with a second source (models with second_source)
    second_source_contrasts: tuple[str, ...] = ("T2w",)
    second_source_lr_scale: float = 1.0  # learning rate of the second-source branch, times the rest's
    train_only: tuple[str, ...] = ()  # parameter name prefixes to train; the rest frozen (empty: train all)
    snapshot_every: int = 0        # keep the weights every N steps in <out_dir>/snapshots/ (0: none)
    average_snapshots: int = 0     # export the mean of the last K weights (K - 1 snapshots and the final ones)
    model: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, Mapping) and key != "model":
                flat.update(value)
            else:
                flat[key] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(f"Unknown training option(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
        for key in ("target_contrasts", "source_contrasts", "target_weights", "second_source_contrasts",
                    "train_only"):
            if flat.get(key) is not None:
                flat[key] = tuple(flat[key])
        cfg = cls(**flat)
        for name in ("steps", "batch", "patch", "queries", "train_subjects", "draws_per_subject",
                     "targets_per_draw", "crops_per_target"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be at least 1. Found {getattr(cfg, name)}.")
        for name in ("snapshot_every", "average_snapshots"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"{name} must be 0 (off) or more. Found {getattr(cfg, name)}.")
        if not 0.0 <= cfg.second_source_share <= 1.0:
            raise ValueError(f"second_source_share must be in [0, 1]. Found {cfg.second_source_share}.")
        if not cfg.second_source_lr_scale > 0:
            raise ValueError(f"second_source_lr_scale must be > 0. Found {cfg.second_source_lr_scale}.")
        if cfg.second_source_share > 0 and cfg.generator != "randomized":
            raise ValueError("second_source_share needs generator = 'randomized'.")
        if cfg.generator not in ("randomized", "template"):
            raise ValueError(f"generator must be 'randomized' or 'template'. Found {cfg.generator!r}.")
        return cfg


def load_train_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    data = dict(data)
    if overrides:
        data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up then cosine decay to ``min_lr``; a pure function of the step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device.")
    return torch.device(name)


def make_batch(pairs: Sequence[Pair | Crop], device: torch.device, feature_dim: int | None = None) -> dict[str, Any]:
    """Stack pairs (:class:`~synthesis.data.Pair`) or crops (:class:`~synthesis.stream.Crop`)
    into tensors: source/target/mask (B,1,P,P,P), features (B,F), the text condition,
    brain_range (B,); crops add fractions (B,T,P,P,P), target_cell (B,1,P,P,P), cell (B,), and
    when any has a second source: second (B,1,P,P,P; zeros where absent) and present (B,).
    ``feature_dim``: the model's (older models read a prefix of the features)."""
    prompts = [prompt(p.source_protocol, p.target_protocol) for p in pairs]
    text = get_text_encoder().encode(prompts).to(device)
    feats = torch.from_numpy(np.stack([pair_features(p.source_protocol, p.target_protocol)[:feature_dim]
                                       for p in pairs]))

    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(p, name) for p in pairs])).to(device)

    ranges = [p.brain_range if isinstance(p, Crop) else p.target_brain_range for p in pairs]
    batch = {
        "source": stack("source")[:, None],
        "target": stack("target")[:, None],
        "mask": stack("mask")[:, None],
        "features": feats.to(device),
        "text": text,
        "brain_range": torch.tensor(ranges, dtype=torch.float32, device=device),
    }
    if all(isinstance(p, Crop) for p in pairs):
        batch["fractions"] = stack("fractions").float()
        batch["target_cell"] = stack("target_cell")[:, None]
        batch["cell"] = torch.tensor([p.cell for p in pairs], dtype=torch.float32, device=device)
        if any(p.second is not None for p in pairs):
            batch["second"] = torch.from_numpy(np.stack([
                p.second if p.second is not None else np.zeros_like(p.source) for p in pairs]))[:, None].to(device)
            batch["present"] = torch.tensor([p.second is not None for p in pairs], dtype=torch.float32,
                                            device=device)
    return batch


def _sample_queries(target: torch.Tensor, mask: torch.Tensor, n: int, gen: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random continuous voxel coordinates (B,n,3), trilinear target values (B,n) and the
    brain mask at the nearest voxel (B,n)."""
    b, _, d, h, w = target.shape
    size = torch.tensor([d - 1, h - 1, w - 1], dtype=torch.float32)
    coords = torch.rand(b, n, 3, generator=gen) * size
    # grid_sample wants (x, y, z) order in [-1, 1] (align_corners=True: -1 = first centre)
    norm = (coords / size * 2 - 1).flip(-1).to(target.device).view(b, n, 1, 1, 3)
    values = F.grid_sample(target, norm, mode="bilinear", align_corners=True)
    inside = F.grid_sample(mask.to(target.dtype), norm, mode="nearest", align_corners=True)
    return coords.to(target.device), values.view(b, n), inside.view(b, n)


def voxel_weights(mask: torch.Tensor, brain_range: torch.Tensor, outside_weight: float,
                  cap: float = 2.0) -> torch.Tensor:
    """Loss weight per voxel: ``min(1 / brain_range, cap)`` of its sample inside the brain,
    else ``outside_weight``. mask: (B, ...) with 1 inside the brain; brain_range: (B,).

    ``1 / brain_range`` puts an error in the units evaluation uses; the cap keeps
    targets whose brain spans a narrow band (proton density) from drowning the
    others' gradients in what no source reveals (the subject's own PD and T2)."""
    inside = (1.0 / brain_range.clamp(min=1e-3)).clamp(max=cap).view(-1, *([1] * (mask.ndim - 1)))
    return torch.where(mask > 0, inside, torch.full_like(inside, float(outside_weight)))


def _lesion_emphasis(batch: dict[str, Any], cfg: TrainConfig) -> torch.Tensor | None:
    """``1 + lesion_weight * lesion fraction`` per voxel ``(B, 1, P, P, P)``, or None (no
    weight, or a batch without fractions). Lesions fill a fraction of a percent of a brain:
    unweighted, a model that paints them as the tissue around them loses almost nothing."""
    if cfg.lesion_weight <= 0 or "fractions" not in batch:
        return None
    return 1.0 + cfg.lesion_weight * batch["fractions"][:, TISSUES.index("lesion")].unsqueeze(1)


def basis_sum_loss(bases: torch.Tensor, fractions: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean L1 of the bases' sum to the tissue fractions' sum, per voxel: what a
    voxel holds adds up to the head's share of it (1 inside the head, 0 in air).

    bases, fractions: (B, T, ...); weight: (B, 1, ...) (:func:`voxel_weights`). The L1 per
    basis spreads a deficit over eight bases and over every voxel of the crop; a voxel whose
    bases add up to too little is rendered too dark whatever it holds (at the edge of the
    ventricles the shipped model's bases add up to as little as 0.5, a dark rim on PDw)."""
    error = (bases.sum(1, keepdim=True) - fractions.sum(1, keepdim=True)).abs()
    return (error * weight).mean()


def mix_shape_loss(mix: torch.Tensor, prior: torch.Tensor, tissues: int = 4) -> torch.Tensor:
    """Mean L1 of the first ``tissues`` mixing weights (the brain's: CSF, GM, WM, lesion) to the
    nearest multiple of the prior's (least squares per sample): the weights may take any scale,
    the brain-relative target's unit, but not contrasts of their own.

    mix, prior: (B, bases), ``mix`` the prior plus the learned correction. The image loss is met
    as well by bases that fall short in a tissue and a weight raised to match as by true
    fractions and the prior's weight; the tissue loss alone moves out of that valley slowly,
    and the bases and weights then drift apart (docs/TRAINING.md, *The bases and the mix*)."""
    w, p = mix[:, :tissues].float(), prior[:, :tissues].float()
    scale = (w * p).sum(1, keepdim=True) / (p * p).sum(1, keepdim=True).clamp(min=1e-8)
    return (w - scale * p).abs().mean()


def lesion_dice_loss(bases: torch.Tensor, fractions: torch.Tensor, min_voxels: float = 8.0,
                     smooth: float = 1.0) -> torch.Tensor | None:
    """``1 -`` soft Dice of the lesion basis against the lesion fraction, averaged over the
    crops holding at least ``min_voxels`` voxels of lesion (None when none does).

    An L1 per voxel, however weighted, is met by a model that marks no lesion and pays
    for a few hundred voxels; Dice counts a crop's lesion as one object, whatever its size.
    The overlap takes the basis clamped to [0, 1] (a basis above 1 would otherwise raise it
    without bound), with the clamp's gradient passed straight through, so a basis below 0
    in a lesion is still pushed up. The predicted volume takes the basis's magnitude, at
    most 1: a negative basis outside lesions counts as a false positive (with the plain
    value, a model could hide what it marks elsewhere below zero)."""
    index = TISSUES.index("lesion")
    raw = bases[:, index]
    return soft_dice_loss(raw + (raw.clamp(0.0, 1.0) - raw).detach(), raw.abs().clamp(max=1.0),
                          fractions[:, index], min_voxels, smooth)


def soft_dice_loss(pred: torch.Tensor, volume: torch.Tensor, truth: torch.Tensor, min_voxels: float = 8.0,
                   smooth: float = 1.0) -> torch.Tensor | None:
    """``1 -`` soft Dice per crop (first axis), averaged over the crops whose ``truth`` holds at
    least ``min_voxels``; None when none does. ``pred`` enters the overlap, ``volume`` the
    predicted volume (the same map, or a form of it: see :func:`lesion_dice_loss`)."""
    truth = truth.flatten(1)
    held = truth.sum(1) >= min_voxels
    if not bool(held.any()):
        return None
    pred, volume, truth = pred.flatten(1)[held], volume.flatten(1)[held], truth[held]
    dice = (2.0 * (pred * truth).sum(1) + smooth) / (volume.sum(1) + truth.sum(1) + smooth)
    return (1.0 - dice).mean()


def _autocast(cfg: TrainConfig, device: torch.device) -> Any:
    """bf16 autocast for the encoder: on CUDA always, on CPU when ``cfg.bf16``."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)


def loss_on_batch(model: RTFSyn, batch: dict[str, Any], cfg: TrainConfig, step: int) -> torch.Tensor:
    """Weighted L1 (see :func:`voxel_weights`) on the grid; plus, weighted by
    ``query_weight``, at ``queries`` random continuous positions per patch (with the
    batch's cell sizes when it has them); plus ``tissue_weight`` times the L1 of the
    output bases to the tissue fractions (when the batch has fractions and the model
    mixes physics-prior bases), ``basis_sum_weight`` times :func:`basis_sum_loss`, and
    ``mix_shape_weight`` times :func:`mix_shape_loss` of the model's mixing weights."""
    source, second = batch["source"], batch.get("second")
    if second is not None and not model.config.second_source:
        second = None  # a one-source model trains on the first source alone
    if cfg.channels_last:
        source = source.contiguous(memory_format=torch.channels_last_3d)
    with _autocast(cfg, source.device):
        feats = model.encode(source, batch["text"], batch["features"], second,
                             batch.get("present") if second is not None else None)
    feats = feats.to(source.device, torch.float32)
    supervise_bases = "fractions" in batch and cfg.tissue_weight > 0 and model.uses_physics_mix
    if supervise_bases:
        grid, bases = model.render_grid(feats, with_bases=True)
    else:
        grid = model.render_grid(feats)
    weight = voxel_weights(batch["mask"], batch["brain_range"], cfg.outside_weight, cfg.brain_weight_cap)
    lesion = _lesion_emphasis(batch, cfg)
    if lesion is not None:
        weight = weight * lesion
    loss = ((grid - batch["target"]).abs() * weight).mean()
    if supervise_bases:
        basis_error = (bases - batch["fractions"]).abs()
        loss = loss + cfg.tissue_weight * (basis_error * lesion if lesion is not None else basis_error).mean()
        if cfg.basis_sum_weight > 0:
            loss = loss + cfg.basis_sum_weight * basis_sum_loss(bases, batch["fractions"], weight)
        if cfg.lesion_dice_weight > 0:
            dice = lesion_dice_loss(bases, batch["fractions"])
            if dice is not None:
                loss = loss + cfg.lesion_dice_weight * dice
    if cfg.mix_shape_weight > 0 and model.uses_physics_mix and feats.mix_prior is not None:
        loss = loss + cfg.mix_shape_weight * mix_shape_loss(model.mixing_weights(feats), feats.mix_prior)
    if cfg.queries > 0 and cfg.query_weight > 0:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        truth = batch.get("target_cell", batch["target"])
        coords, values, inside = _sample_queries(truth, batch["mask"], cfg.queries, gen)
        cell = batch["cell"][:, None].expand(-1, 3) if "cell" in batch else \
            torch.ones(coords.shape[0], 3, device=coords.device)
        pred = model.query(feats, coords, cell)
        q_weight = voxel_weights(inside, batch["brain_range"], cfg.outside_weight, cfg.brain_weight_cap)
        loss = loss + cfg.query_weight * ((pred - values).abs() * q_weight).mean()
    return loss


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@torch.no_grad()
def validate(model: RTFSyn, pairs: list[Pair], device: torch.device) -> float:
    """Mean PSNR (dB) over fixed validation pairs, as evaluation scores a volume: each
    patch's brain voxels, both images normalized by their own brain percentiles."""
    model.eval()
    scores = []
    for pair in pairs:
        batch = make_batch([pair], device, model.config.feature_dim)
        second = batch.get("second") if model.config.second_source else None
        pred = model(batch["source"], batch["text"], batch["features"], second,
                     batch.get("present") if second is not None else None)[0, 0].float().cpu().numpy()
        mask = pair.mask.astype(bool)
        if mask.sum() > 100:
            scores.append(psnr(normalize_in_mask(pred, mask), normalize_in_mask(pair.target, mask), mask))
    model.train()
    return float(np.mean(scores)) if scores else float("nan")


def _init_record(cfg: TrainConfig) -> dict[str, Any] | None:
    """What ``cfg.init_checkpoint`` is (its file's SHA-256 and its own training record, which
    names what it came from in turn), for the new model's record; None for a fresh model."""
    if not cfg.init_checkpoint:
        return None
    path = ckpt.default_checkpoint_path() if cfg.init_checkpoint == "default" else Path(cfg.init_checkpoint)
    _, meta = ckpt.load(path)
    extra = meta.get("extra") or {}
    record = {"checkpoint": cfg.init_checkpoint, "sha256": meta["sha256"], "training": extra.get("training")}
    if extra.get("lesion_net") is not None:  # the detector's own record, kept with its weights
        record["lesion_net"] = extra["lesion_net"]
    changes = _architecture_changes(cfg, meta["config"])
    if changes:
        record["architecture_changes"] = changes
    return record


def _architecture_changes(cfg: TrainConfig, config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[model]`` fields that differ from the starting checkpoint's ``config`` (its
    ``to_dict()``): an ablation switch trained from those weights. The second-source fields are
    handled apart (:func:`synthesis.nets.rtfsyn.with_second_source`)."""
    return {k: v for k, v in cfg.model.items()
            if k not in ("second_source", "second_late")
            and config.get(k) != (list(v) if isinstance(v, tuple) else v)}


def _resumed_model(cfg: TrainConfig, state: Mapping[str, Any]) -> RTFSyn:
    """The architecture a run's state was saved with (its weights are loaded next); the
    starting checkpoint is not needed again."""
    if "model_config" in state:
        return RTFSyn(RTFSynConfig.from_dict(json.loads(state["model_config"])))
    return _initial_model(cfg)  # a state written before the architecture was stored


def _initial_model(cfg: TrainConfig) -> RTFSyn:
    """A fresh model of ``cfg.model``, or the weights of ``cfg.init_checkpoint`` (fine-tuning)."""
    if not cfg.init_checkpoint:
        return RTFSyn(RTFSynConfig.from_dict(cfg.model))
    path = ckpt.default_checkpoint_path() if cfg.init_checkpoint == "default" else Path(cfg.init_checkpoint)
    model, _ = ckpt.load(path)
    log.info("Starting from the weights of %s", path)
    if cfg.model.get("second_source") and not model.config.second_source:
        from synthesis.nets.rtfsyn import with_second_source

        log.info("Adding a second-source input (starting at zero) to the weights of %s", path)
        model = with_second_source(model, late=cfg.model.get("second_late", "linear"))
    changes = _architecture_changes(cfg, model.config.to_dict())
    if changes:  # e.g. an ablation switch: the weights that still fit are carried over
        model, carried = ckpt.with_architecture(model, changes)
        log.info("Changed the architecture of %s by %s: %d weight tensors carried over, %d "
                 "dropped, %d new", path, changes, carried["carried"], carried["dropped"],
                 carried["new"])
    return model


def _freeze(model: RTFSyn, prefixes: tuple[str, ...]) -> None:
    """Train only the parameters whose names start with one of ``prefixes`` (all when empty);
    a lesion detector is always frozen (it is trained apart, synthesis/lesion_train.py)."""
    if model.lesion is not None:
        model.lesion.requires_grad_(False)
    if not prefixes:
        return
    def named(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(named(n, prefix) for n in names):
            raise ValueError(f"train_only: the model has no parameters named {prefix!r}.")
    for name, p in model.named_parameters():
        p.requires_grad_(any(named(name, q) for q in prefixes) and not named(name, "lesion"))
    log.info("Training %d of %d parameters (%s); the rest are frozen",
             model.num_parameters(), model.num_parameters(trainable_only=False), ", ".join(prefixes))


def _param_groups(model: RTFSyn, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: every trainable parameter, and the second-source
    branches (``SECOND_SOURCE_BRANCHES``: ``stem_second``, ``late_second``, ``mix_second``) on
    their own with ``lr_scale = second_source_lr_scale``: they start at zero in a fine-tuned
    model and have to grow to a size the rest of the network reads."""
    def branch(name: str) -> bool:
        return name.startswith(SECOND_SOURCE_BRANCHES)

    second = [p for n, p in model.named_parameters() if branch(n) and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not branch(n) and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": rest, "lr_scale": 1.0}]
    if second:
        groups.append({"params": second, "lr_scale": cfg.second_source_lr_scale})
    return groups


def _stream_config(cfg: TrainConfig, split: str) -> StreamConfig:
    return StreamConfig(patch=cfg.patch, source_contrasts=cfg.source_contrasts,
                        target_contrasts=cfg.target_contrasts, target_weights=cfg.target_weights,
                        source_preset_share=cfg.source_preset_share,
                        target_preset_share=cfg.target_preset_share, split=split,
                        draws_per_subject=cfg.draws_per_subject, targets_per_draw=cfg.targets_per_draw,
                        crops_per_target=cfg.crops_per_target, max_cell=cfg.max_cell,
                        lesion_crop_share=cfg.lesion_crop_share,
                        second_source_share=cfg.second_source_share,
                        second_source_contrasts=cfg.second_source_contrasts)


def _crops_per_draw(cfg: TrainConfig) -> int:
    return min(cfg.targets_per_draw, len(cfg.target_contrasts)) * cfg.crops_per_target


def _validation_draws(cfg: TrainConfig) -> int:
    return max(1, math.ceil(cfg.validation_patches / _crops_per_draw(cfg)))


def _validation_seeds(cfg: TrainConfig) -> list[int]:
    from synthesis.stream import subject_for_draw

    if cfg.generator == "randomized":
        val_cfg = _stream_config(cfg, "validation")
        return sorted({subject_for_draw(val_cfg, d) for d in range(_validation_draws(cfg))})
    return list(SPLIT_SEEDS["validation"])[: cfg.validation_subjects]


def _validation_set(cfg: TrainConfig) -> list[Pair | Crop]:
    """Fixed validation pairs or crops (the validation split's subjects)."""
    from synthesis.stream import draw_crops

    if cfg.generator == "randomized":
        val_cfg = _stream_config(cfg, "validation")
        crops = [c for d in range(_validation_draws(cfg)) for c in draw_crops(val_cfg, d, cfg.seed)]
        return crops[: cfg.validation_patches]
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    val_seeds = _validation_seeds(cfg)
    val_sampler = PairSampler([load_or_make_subject(s, cache) for s in val_seeds], patch=cfg.patch,
                              target_contrasts=cfg.target_contrasts, source_contrasts=cfg.source_contrasts)
    val_rng = np.random.default_rng([cfg.seed, 10**9])
    return [val_sampler.sample(val_rng) for _ in range(cfg.validation_patches)]


def _training_batches(cfg: TrainConfig, start: int) -> Iterator[list[Pair | Crop]]:
    """Endless batches from step ``start`` on (see the module docstring on resuming)."""
    if cfg.generator == "randomized":
        first_draw = start * cfg.batch // _crops_per_draw(cfg)
        return stream_batches(_stream_config(cfg, "train"), seed=cfg.seed, batch=cfg.batch,
                              first_draw=first_draw, workers=cfg.data_workers)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    seeds = list(SPLIT_SEEDS["train"])[: cfg.train_subjects]
    log.info("Loading %d training subjects", len(seeds))
    sampler = PairSampler([load_or_make_subject(s, cache) for s in seeds], patch=cfg.patch,
                          target_contrasts=cfg.target_contrasts, source_contrasts=cfg.source_contrasts,
                          target_weights=cfg.target_weights, source_preset_share=cfg.source_preset_share,
                          target_preset_share=cfg.target_preset_share)

    def batches() -> Iterator[list[Pair]]:
        step = start
        while True:
            rng = np.random.default_rng([cfg.seed, step])
            yield [sampler.sample(rng) for _ in range(cfg.batch)]
            step += 1
    return batches()


def _seen_subjects(cfg: TrainConfig, steps: int, template_seeds: list[int]) -> list[int] | dict[str, int]:
    """The training subjects' seeds (template) or their seed range (randomized)."""
    if cfg.generator != "randomized":
        return template_seeds
    from synthesis.stream import subject_for_draw

    last_draw = max(0, steps * cfg.batch // _crops_per_draw(cfg))
    stream = _stream_config(cfg, "train")
    return {"first": subject_for_draw(stream, 0), "last": subject_for_draw(stream, last_draw),
            "draws": last_draw + 1}


def train(cfg: TrainConfig, *, progress: bool = True) -> Path:
    """Run (or resume) training; returns the path of the final checkpoint."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    val_pairs = _validation_set(cfg)
    torch.manual_seed(cfg.seed)
    state_path = out / "last.pt"
    state = torch.load(state_path, map_location=device, weights_only=True) if state_path.exists() else None
    model = (_resumed_model(cfg, state) if state is not None else _initial_model(cfg)).to(device)
    _freeze(model, cfg.train_only)
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, elapsed, history = 0, 0.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, elapsed = int(state["step"]), float(state["elapsed"])
        history = json.loads(state["history"])
        init = json.loads(state["init"]) if "init" in state else _init_record(cfg)
        log.info("Resuming from step %d (%.1f min trained)", start, elapsed / 60)
        changed = _changed_options(cfg, _stored_config(state)) if "train_config" in state else []
        if changed:
            log.warning("Resuming with options that differ from the run's so far: %s (the rest of the run uses "
                        "this command's; repeat the run's --set options to keep them)", ", ".join(changed))
    else:
        init = _init_record(cfg)

    def save_state(step: int) -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "elapsed": elapsed, "history": json.dumps(history), "init": json.dumps(init),
                    "model_config": json.dumps(model.config.to_dict()), "train_config": json.dumps(asdict(cfg))},
                   tmp)
        tmp.replace(state_path)

    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    model.train()
    batches = _training_batches(cfg, start)
    t0, step = time.monotonic(), start
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="train")
    log_file = open(out / "train_log.jsonl", "a")
    try:
        for step in bar:
            batch = make_batch(next(batches), device, model.config.feature_dim)
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step) * group.get("lr_scale", 1.0)
            loss = loss_on_batch(model, batch, cfg, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            now = time.monotonic()
            elapsed, t0 = elapsed + (now - t0), now
            loss_value = float(loss.detach())
            record = {"step": step + 1, "loss": round(loss_value, 5), "lr": learning_rate(cfg, step),
                      "elapsed_s": round(elapsed, 1)}
            if (step + 1) % cfg.validate_every == 0 or step + 1 == cfg.steps:
                record["val_psnr"] = round(validate(model, val_pairs, device), 3)
                history.append(record)
            log_file.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{loss_value:.4f}", psnr=history[-1].get("val_psnr") if history else None)
            if (step + 1) % cfg.checkpoint_every == 0:
                save_state(step + 1)
                log_file.flush()
            if cfg.snapshot_every and (step + 1) % cfg.snapshot_every == 0:
                save_snapshot(out, step + 1, model)
            if cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60:
                log.info("Stopping after %.1f min (max_minutes); resume later to continue", elapsed / 60)
                step += 1
                break
        else:
            step = cfg.steps
    finally:
        log_file.close()
    save_state(step)
    return _write_final(cfg, model, step, elapsed, history, device, init)


def snapshot_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "snapshots" / f"step-{step:06d}.pt"


def save_snapshot(out_dir: str | Path, step: int, model: torch.nn.Module) -> Path:
    """The weights at ``step`` (a plain state dict, standard layout) in ``<out_dir>/snapshots/``."""
    path = snapshot_path(out_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    return path


def average_with_snapshots(cfg: TrainConfig, model: RTFSyn, step: int) -> dict[str, Any] | None:
    """Replace ``model``'s weights by the mean of the last ``cfg.average_snapshots`` weights:
    its own (step ``step``) and the latest snapshots before ``step``. Returns what was averaged
    (steps and the snapshots' SHA-256), or None when averaging is off or there is no snapshot.

    A uniform average of weights along one run (stochastic weight averaging) smooths the
    step-to-step swings of a run whose learning rate is still high."""
    if cfg.average_snapshots < 2:
        return None
    folder = snapshot_path(cfg.out_dir, 0).parent
    found = sorted((int(p.stem.split("-")[1]), p) for p in folder.glob("step-*.pt")) if folder.is_dir() else []
    chosen = [(s, p) for s, p in found if s < step][-(cfg.average_snapshots - 1):]
    if not chosen:
        log.warning("average_snapshots = %d but no snapshot before step %d in %s: exporting the last weights",
                    cfg.average_snapshots, step, folder)
        return None
    own = model.state_dict()
    total = {k: v.detach().to("cpu", torch.float64).clone() for k, v in own.items()}
    for _, path in chosen:
        weights = torch.load(path, map_location="cpu", weights_only=True)
        if set(weights) != set(total):
            raise ValueError(f"Snapshot {path} holds other weights than the model (another architecture?).")
        for k, v in weights.items():
            total[k] += v.to(torch.float64)
    count = len(chosen) + 1
    model.load_state_dict({k: (v / count).to(own[k].dtype) for k, v in total.items()})
    if len(chosen) < cfg.average_snapshots - 1:
        log.warning("Averaged %d weights, not %d: only %d snapshot(s) before step %d",
                    count, cfg.average_snapshots, len(chosen), step)
    return {"steps": [s for s, _ in chosen] + [step],
            "snapshots": [{"step": s, "sha256": ckpt.sha256(p)} for s, p in chosen]}


def _write_final(cfg: TrainConfig, model: RTFSyn, step: int, elapsed: float, history: list[dict],
                 device: torch.device, init: dict[str, Any] | None, *,
                 snapshot: Path | None = None) -> Path:
    """``model.pt`` (the weights with their training record; the mean of the last weights
    when ``average_snapshots`` is set) and ``training_record.json``; for the weights of a
    ``snapshot``, ``exports/step-N.pt`` and ``exports/step-N.json`` instead (no averaging)."""
    out = Path(cfg.out_dir)
    averaged = average_with_snapshots(cfg, model, step) if snapshot is None else None
    template_seeds = list(SPLIT_SEEDS["train"])[: cfg.train_subjects]
    record = {
        "steps_done": step, "steps_planned": cfg.steps, "train_minutes": round(elapsed / 60, 2),
        "device": str(device), "threads": cfg.threads, "generator": cfg.generator,
        "data_workers": cfg.data_workers if cfg.generator == "randomized" else 0,
        "train_subject_seeds": _seen_subjects(cfg, step, template_seeds),
        "validation_subject_seeds": _validation_seeds(cfg), "seed": cfg.seed, "commit": _git_commit(),
        "validation": history, "torch": torch.__version__, "config": asdict(cfg),
    }
    if init is not None:
        record["initialized_from"] = init
    if averaged is not None:
        record["weights_averaged"] = averaged
    final, record_path = out / "model.pt", out / "training_record.json"
    if snapshot is not None:
        record["snapshot"] = {"step": step, "sha256": ckpt.sha256(snapshot)}
        final = out / "exports" / f"step-{step:06d}.pt"
        record_path = final.with_suffix(".json")
        final.parent.mkdir(exist_ok=True)
    extra: dict[str, Any] = {"training": record}
    if init is not None and init.get("lesion_net") is not None and getattr(model, "lesion", None) is not None:
        extra["lesion_net"] = init["lesion_net"]  # the detector came with the starting weights
    ckpt.save(model.cpu().to(memory_format=torch.contiguous_format), final, extra=extra)
    record_path.write_text(json.dumps(record, indent=2))
    return final


def export_checkpoint(cfg: TrainConfig, snapshot: int | None = None) -> Path:
    """Write ``model.pt`` and ``training_record.json`` from a run's ``last.pt`` without
    training (a run still in progress can be evaluated this way); with ``snapshot`` (a step),
    the weights of ``snapshots/step-N.pt`` as ``exports/step-N.pt`` with their record (the
    validation history up to that step, the training time the run's log gives for it), to
    score with ``rtfsyn evaluate --split validation``."""
    state_path = Path(cfg.out_dir) / "last.pt"
    if not state_path.is_file():
        raise FileNotFoundError(f"No training state to export at {state_path}.")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    cfg = _run_config(cfg, state)
    model = _resumed_model(cfg, state)
    init = json.loads(state["init"]) if "init" in state else _init_record(cfg)
    history = json.loads(state["history"])
    if snapshot is None:
        model.load_state_dict(state["model"])
        return _write_final(cfg, model, int(state["step"]), float(state["elapsed"]), history,
                            resolve_device(cfg.device), init)
    path = snapshot_path(cfg.out_dir, snapshot)
    if not path.is_file():
        kept = sorted(int(p.stem.split("-")[1]) for p in path.parent.glob("step-*.pt")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"No snapshot of step {snapshot} at {path}. Kept: {kept or 'none'}.")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _write_final(cfg, model, snapshot, _elapsed_at(Path(cfg.out_dir) / "train_log.jsonl", snapshot),
                        [h for h in history if h.get("step", 0) <= snapshot], resolve_device(cfg.device), init,
                        snapshot=path)


def _run_config(cfg: TrainConfig, state: Mapping[str, Any]) -> TrainConfig:
    """The configuration the run was trained with (its state's ``train_config``), for an
    export's record, with ``cfg``'s ``out_dir`` and export options; an export command need not
    repeat the run's ``--set`` options. A state written before it was stored: ``cfg``, with a
    warning that the record shows the command's configuration."""
    if "train_config" not in state:
        log.warning("%s does not store the run's configuration; the export's record shows this command's",
                    Path(cfg.out_dir) / "last.pt")
        return cfg
    run = _stored_config(state)
    differ = _changed_options(cfg, run)
    if differ:
        log.info("Exporting with the run's own configuration; this command differs in: %s", ", ".join(differ))
    return replace(run, out_dir=cfg.out_dir, average_snapshots=cfg.average_snapshots)


def _stored_config(state: Mapping[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in json.loads(state["train_config"]).items() if k in known})


def _changed_options(cfg: TrainConfig, run: TrainConfig) -> list[str]:
    """The options of ``cfg`` that differ from ``run`` (those a run's state was last trained
    with), leaving out where it writes, how long it runs and the export's averaging."""
    return sorted(f.name for f in fields(TrainConfig)
                  if f.name not in ("out_dir", "average_snapshots", "max_minutes", "steps")
                  and getattr(run, f.name) != getattr(cfg, f.name))


def _elapsed_at(log_path: Path, step: int) -> float:
    """Training seconds at ``step`` from the run's ``train_log.jsonl`` (0 when it has no such step)."""
    if not log_path.is_file():
        return 0.0
    for line in log_path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("step") == step and "elapsed_s" in row:
            return float(row["elapsed_s"])
    return 0.0

"""Training of RTFSyn on simulated paired data.

Seeded and resumable: every step draws its samples from
``np.random.default_rng([seed, step])`` and the learning rate is a pure
function of the step, so a run restarted from its last checkpoint continues
exactly where it stopped.  Loss: L1 on the regular grid (voxel centres) plus L1
at random continuous query positions (the implicit decoder off the grid). Brain
voxels count in the units evaluation uses (an error divided by the width of the
target's brain percentile band, :attr:`synthesis.data.Pair.target_brain_range`, at
most ``brain_weight_cap`` times); voxels outside the brain count ``outside_weight``
times their plain error.
"""
from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from synthesis import checkpoint as ckpt
from synthesis.data import Pair, PairSampler
from synthesis.metrics import normalize_in_mask, psnr
from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig
from synthesis.condition import pair_features, prompt
from synthesis.simulate import SPLIT_SEEDS, load_or_make_subject
from synthesis.text import get_text_encoder

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "load_train_config", "train", "make_batch", "loss_on_batch", "voxel_weights"]


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
        for key in ("target_contrasts", "source_contrasts", "target_weights"):
            if flat.get(key) is not None:
                flat[key] = tuple(flat[key])
        cfg = cls(**flat)
        for name in ("steps", "batch", "patch", "queries", "train_subjects"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be at least 1. Found {getattr(cfg, name)}.")
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


def make_batch(pairs: list[Pair], device: torch.device, feature_dim: int | None = None) -> dict[str, Any]:
    """Stack pairs into tensors: source/target (B,1,P,P,P), features (B,F), text condition.
    ``feature_dim``: the model's (older models read a prefix of the features)."""
    prompts = [prompt(p.source_protocol, p.target_protocol) for p in pairs]
    text = get_text_encoder().encode(prompts).to(device)
    feats = torch.from_numpy(np.stack([pair_features(p.source_protocol, p.target_protocol)[:feature_dim]
                                       for p in pairs]))
    return {
        "source": torch.from_numpy(np.stack([p.source for p in pairs]))[:, None].to(device),
        "target": torch.from_numpy(np.stack([p.target for p in pairs]))[:, None].to(device),
        "mask": torch.from_numpy(np.stack([p.mask for p in pairs]))[:, None].to(device),
        "features": feats.to(device),
        "text": text,
        "brain_range": torch.tensor([p.target_brain_range for p in pairs], dtype=torch.float32,
                                    device=device),
    }


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


def loss_on_batch(model: RTFSyn, batch: dict[str, Any], cfg: TrainConfig, step: int) -> torch.Tensor:
    """Weighted L1 (see :func:`voxel_weights`) on the grid plus, weighted by
    ``query_weight``, at ``queries`` random continuous positions per patch."""
    feats = model.encode(batch["source"], batch["text"], batch["features"])
    grid = model.render_grid(feats)
    weight = voxel_weights(batch["mask"], batch["brain_range"], cfg.outside_weight, cfg.brain_weight_cap)
    loss = ((grid - batch["target"]).abs() * weight).mean()
    if cfg.queries > 0 and cfg.query_weight > 0:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        coords, values, inside = _sample_queries(batch["target"], batch["mask"], cfg.queries, gen)
        cell = torch.ones(coords.shape[0], 3, device=coords.device)
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
        pred = model(batch["source"], batch["text"], batch["features"])[0, 0].float().cpu().numpy()
        mask = pair.mask.astype(bool)
        if mask.sum() > 100:
            scores.append(psnr(normalize_in_mask(pred, mask), normalize_in_mask(pair.target, mask), mask))
    model.train()
    return float(np.mean(scores)) if scores else float("nan")


def _initial_model(cfg: TrainConfig) -> RTFSyn:
    """A fresh model of ``cfg.model``, or the weights of ``cfg.init_checkpoint`` (fine-tuning)."""
    if not cfg.init_checkpoint:
        return RTFSyn(RTFSynConfig.from_dict(cfg.model))
    path = ckpt.default_checkpoint_path() if cfg.init_checkpoint == "default" else Path(cfg.init_checkpoint)
    model, _ = ckpt.load(path)
    log.info("Starting from the weights of %s", path)
    return model


def train(cfg: TrainConfig, *, progress: bool = True) -> Path:
    """Run (or resume) training; returns the path of the final checkpoint."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    train_seeds = list(SPLIT_SEEDS["train"])[: cfg.train_subjects]
    val_seeds = list(SPLIT_SEEDS["validation"])[: cfg.validation_subjects]
    log.info("Loading %d training and %d validation subjects", len(train_seeds), len(val_seeds))
    sampler = PairSampler([load_or_make_subject(s, cache) for s in train_seeds], patch=cfg.patch,
                          target_contrasts=cfg.target_contrasts, source_contrasts=cfg.source_contrasts,
                          target_weights=cfg.target_weights, source_preset_share=cfg.source_preset_share,
                          target_preset_share=cfg.target_preset_share)
    val_sampler = PairSampler([load_or_make_subject(s, cache) for s in val_seeds], patch=cfg.patch,
                              target_contrasts=cfg.target_contrasts, source_contrasts=cfg.source_contrasts)
    val_rng = np.random.default_rng([cfg.seed, 10**9])
    val_pairs = [val_sampler.sample(val_rng) for _ in range(cfg.validation_patches)]

    torch.manual_seed(cfg.seed)
    model = _initial_model(cfg).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    state_path = out / "last.pt"
    start, elapsed, history = 0, 0.0, []
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, elapsed = int(state["step"]), float(state["elapsed"])
        history = json.loads(state["history"])
        log.info("Resuming from step %d (%.1f min trained)", start, elapsed / 60)

    def save_state(step: int) -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "elapsed": elapsed, "history": json.dumps(history)}, tmp)
        tmp.replace(state_path)

    model.train()
    t0, step = time.monotonic(), start
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="train")
    log_file = open(out / "train_log.jsonl", "a")
    try:
        for step in bar:
            rng = np.random.default_rng([cfg.seed, step])
            batch = make_batch([sampler.sample(rng) for _ in range(cfg.batch)], device, model.config.feature_dim)
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
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
            if cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60:
                log.info("Stopping after %.1f min (max_minutes); resume later to continue", elapsed / 60)
                step += 1
                break
        else:
            step = cfg.steps
    finally:
        log_file.close()
    save_state(step)
    record = {
        "steps_done": step, "steps_planned": cfg.steps, "train_minutes": round(elapsed / 60, 2),
        "device": str(device), "threads": cfg.threads, "train_subject_seeds": train_seeds,
        "validation_subject_seeds": val_seeds, "seed": cfg.seed, "commit": _git_commit(),
        "validation": history, "torch": torch.__version__, "config": asdict(cfg),
    }
    final = out / "model.pt"
    ckpt.save(model.cpu(), final, extra={"training": record})
    (out / "training_record.json").write_text(json.dumps(record, indent=2))
    return final

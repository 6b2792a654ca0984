"""Training of the lesion detector (:class:`synthesis.nets.lesion.LesionNet`), apart from the
synthesis network: ``rtfsyn train --lesion-net``.

Crops come from the randomized generator (``synthesis/stream.py``, training split): the
normalized T1 source as inference sees it, and the simulator's lesion fractions. Its subjects
come without label phantoms and solid masses (``wm_lesions_only``): both are drawn with the
lesion tissue, a phantom's as arbitrary regions of any shape and place, a mass as a blob of
radius 6-20 mm, and in voxels they outweigh the white-matter lesions (118 of 211 ml in the first
40 training subjects). Trained with them, the detector learnt to mark grey-matter-like signal. Most crops
are centred near a lesion (``lesion_crop_share``), since a lesion fills a fraction of a
percent of a brain. The loss is a detection loss, not a median: binary cross-entropy over
the head against the lesion fraction with the positives weighted by ``pos_weight``, plus
a soft Dice per crop over the crops that hold at least ``min_voxels`` of lesion.

A run may start from a trained detector (``init_detector``, a fine-tune: its record keeps the
detector's own record). A run is resumable (``<out_dir>/lesion_last.pt``, every 100 steps and at the end). At the end
the init checkpoint's synthesis network, widened with the trained detector
(``lesion_net = true``), is written to ``<out_dir>/model.pt`` with the training record.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from synthesis import checkpoint as ckpt
from synthesis.nets.lesion import LesionNet
from synthesis.nets.rtfsyn import RTFSyn
from synthesis.physics import TISSUES
from synthesis.stream import Crop, StreamConfig, stream_batches
from synthesis.train import soft_dice_loss

__all__ = ["LesionTrainConfig", "lesion_loss", "crop_tensors", "train_lesion_net", "widen_with_lesion_net"]

log = logging.getLogger(__name__)

LESION = TISSUES.index("lesion")
STATE_FILE = "lesion_last.pt"


@dataclass(frozen=True)
class LesionTrainConfig:
    """A lesion detector run; ``rtfsyn train --lesion-net`` fills it from its flags."""

    out_dir: str = "runs/lesion"
    init_checkpoint: str = "default"  # the synthesis network the detector is added to
    init_detector: str | None = None  # fine-tune: start from this checkpoint's detector ("default": the shipped one)
    seed: int = 1
    steps: int | None = None          # stop after this many steps (None: only max_minutes)
    max_minutes: float | None = 50.0  # stop (resumably) after this much training time
    threads: int = 1
    patch: int = 48
    batch: int = 4
    lr: float = 5e-3
    weight_decay: float = 1e-4
    pos_weight: float = 30.0
    min_voxels: float = 8.0
    lesion_crop_share: float = 0.7
    crops_per_draw: int = 32
    draws_per_subject: int = 2
    shuffle_draws: int = 8            # a batch mixes crops of about four subjects
    gm_crop_share: float = 0.0        # crops centred on grey matter, where false lesions lie
    gm_crop_depth_mm: float = 0.0     # ... at least this deep inside the brain (0: anywhere)
    bf16: bool = True                 # bf16 autocast of the forward pass on CPU (3.3x faster here)

    def stream(self) -> StreamConfig:
        return StreamConfig(patch=self.patch, target_contrasts=("T2w",), targets_per_draw=1,
                            crops_per_target=self.crops_per_draw, draws_per_subject=self.draws_per_subject,
                            lesion_crop_share=self.lesion_crop_share, split="train",
                            shuffle_draws=self.shuffle_draws, wm_lesions_only=True,
                            gm_crop_share=self.gm_crop_share, gm_crop_depth_mm=self.gm_crop_depth_mm)


def lesion_loss(logit: torch.Tensor, lesion: torch.Tensor, head: torch.Tensor, pos_weight: float,
                min_voxels: float = 8.0) -> tuple[torch.Tensor, float, float]:
    """``(loss, bce, dice)`` for logits, lesion fractions and head masks ``(B, 1, D, H, W)``:
    BCE over the head (positives weighted ``pos_weight``) plus the mean soft Dice loss of the
    crops holding at least ``min_voxels`` of lesion (0 when none does)."""
    bce = F.binary_cross_entropy_with_logits(logit, lesion, reduction="none",
                                             pos_weight=torch.tensor(float(pos_weight), device=logit.device))
    bce = (bce * head).sum() / head.sum().clamp_min(1.0)
    p = torch.sigmoid(logit) * head
    dice = soft_dice_loss(p, p, lesion, min_voxels)
    if dice is None:
        dice = torch.zeros((), device=logit.device)
    return bce + dice, bce.item(), dice.item()


def crop_tensors(crops: Sequence[Crop]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(source, lesion fraction, head mask)``, each ``(B, 1, P, P, P)`` float32."""
    x = torch.from_numpy(np.stack([c.source for c in crops]).astype(np.float32))[:, None]
    lesion = torch.from_numpy(np.stack([c.fractions[LESION] for c in crops]).astype(np.float32))[:, None]
    head = torch.from_numpy(np.stack([c.fractions.astype(np.float32).sum(0) > 0.5 for c in crops]))[:, None]
    return x, lesion, head.float()


def widen_with_lesion_net(model: RTFSyn, net: LesionNet) -> RTFSyn:
    """A copy of ``model`` with ``lesion_net = true`` and the detector ``net``."""
    wide = RTFSyn(model.config.replace(lesion_net=True))
    missing, unexpected = wide.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not n.startswith("lesion.") for n in missing):
        raise ValueError(f"cannot add a lesion detector to this model: missing {missing}, unexpected {unexpected}")
    wide.lesion.load_state_dict(net.state_dict())
    return wide.eval()


def _init_path(cfg: LesionTrainConfig) -> Path:
    return ckpt.default_checkpoint_path() if cfg.init_checkpoint == "default" else Path(cfg.init_checkpoint)


def _init_detector(cfg: LesionTrainConfig) -> tuple[LesionNet, dict[str, Any]]:
    """The detector a fine-tune starts from (``cfg.init_detector``) and what the record keeps of
    it: the checkpoint, its sha256 and the detector's own training record."""
    path = ckpt.default_checkpoint_path() if cfg.init_detector == "default" else Path(str(cfg.init_detector))
    model, meta = ckpt.load(path)
    if model.lesion is None:
        raise ValueError(f"{path} has no lesion detector to fine-tune (init_detector).")
    return model.lesion, {"checkpoint": cfg.init_detector, "sha256": meta["sha256"],
                          "record": meta.get("extra", {}).get("lesion_net")}


#: The settings a resumed run may change; :func:`_record_phase` lists each change in the record.
PHASE_FIELDS = ("lr", "pos_weight", "gm_crop_share", "gm_crop_depth_mm", "lesion_crop_share")


def _record_phase(state: dict[str, Any], cfg: LesionTrainConfig) -> None:
    """Append ``{"from_step", <changed settings>}`` to ``state["phases"]`` when ``cfg`` differs from
    the settings in force (the first phase lists them all). A state saved before phases were kept
    has only ``lr_phases`` (learning rates); its other settings count as unknown."""
    phases = state.get("phases")
    if phases is None:
        phases = state["phases"] = [dict(p) for p in state.pop("lr_phases", [])]
    in_force: dict[str, Any] = {}
    for phase in phases:
        in_force.update({k: v for k, v in phase.items() if k != "from_step"})
    changed = {k: getattr(cfg, k) for k in PHASE_FIELDS if in_force.get(k, object()) != getattr(cfg, k)}
    if not changed:
        return
    if phases and phases[-1]["from_step"] == state["step"]:
        phases[-1].update(changed)
    else:
        phases.append({"from_step": state["step"], **changed})
    if state["step"]:
        log.info("From step %d: %s", state["step"], ", ".join(f"{k} {v:g}" for k, v in changed.items()))


def train_lesion_net(cfg: LesionTrainConfig, *, batches: Iterator[Sequence[Crop]] | None = None,
                     command: str = "") -> Path:
    """Run (or resume) a detector run; returns ``<out_dir>/model.pt``. ``batches``: crops to
    train on instead of the generator's (tests)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base, base_meta = ckpt.load(_init_path(cfg))  # fail early on a bad init checkpoint
    if base.config.lesion_net and cfg.init_detector is None:
        raise ValueError(f"{_init_path(cfg)} already has a lesion detector; start from a model without one, "
                         "or fine-tune its detector with init_detector.")
    net = LesionNet()
    init_record = None
    if cfg.init_detector is not None:
        init_net, init_record = _init_detector(cfg)
        net.load_state_dict(init_net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state: dict[str, Any] = {"step": 0, "seconds": 0.0, "log": []}
    state_path = out / STATE_FILE
    if state_path.is_file():
        saved = torch.load(state_path, weights_only=False)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        log.info("Resuming the lesion detector at step %d (%.1f min trained)", state["step"], state["seconds"] / 60)
    # a resumed run trains with the config's settings (the optimizer's saved state would keep
    # the old learning rate): a run may end with a lower rate or other crops; each change is recorded
    for group in opt.param_groups:
        group["lr"] = cfg.lr
    _record_phase(state, cfg)

    def save_state() -> None:
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "state": state}, tmp)
        tmp.replace(state_path)

    stream = cfg.stream()
    if batches is None:
        batches = stream_batches(stream, seed=cfg.seed, batch=cfg.batch,
                                 first_draw=state["step"] * cfg.batch // cfg.crops_per_draw)
    net.train()
    began = start = time.monotonic()  # start: of the time not yet added to state["seconds"]
    begun_at = state["step"]

    def more() -> bool:
        if cfg.steps is not None and state["step"] >= cfg.steps:
            return False
        return cfg.max_minutes is None or time.monotonic() - began < cfg.max_minutes * 60

    with open(out / "lesion_log.jsonl", "a") as train_log:
        while more():
            x, lesion, head = crop_tensors(next(batches))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logit = net(x).float()
            loss, bce, dice = lesion_loss(logit, lesion, head, cfg.pos_weight, cfg.min_voxels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            if state["step"] % 25 == 0:
                row = {"step": state["step"], "bce": round(bce, 5), "dice": round(dice, 5)}
                state["log"].append(row)
                train_log.write(json.dumps(row) + "\n")
                train_log.flush()
                log.info("lesion detector step %d: bce %.4f, dice %.4f", state["step"], bce, dice)
            if state["step"] % 100 == 0:
                state["seconds"] += time.monotonic() - start
                start = time.monotonic()
                save_state()
    state["seconds"] += time.monotonic() - start
    save_state()
    log.info("Lesion detector: %d steps this run, %d in all (%.1f min)", state["step"] - begun_at, state["step"],
             state["seconds"] / 60)
    return export(cfg, net, state, base, base_meta, command, init_record)


def export(cfg: LesionTrainConfig, net: LesionNet, state: dict[str, Any], base: RTFSyn,
           base_meta: dict[str, Any], command: str, init_detector: dict[str, Any] | None = None) -> Path:
    """``<out_dir>/model.pt``: ``base`` with the detector and the run's record (``init_detector``:
    what it keeps of the detector a fine-tune started from)."""
    record = {
        "lesion_net": {
            "steps": int(state["step"]), "train_minutes": round(float(state["seconds"]) / 60, 2),
            "device": f"cpu ({platform.machine()}), {cfg.threads} thread(s)", "seed": cfg.seed,
            "config": asdict(cfg), "phases": state.get("phases", []), "command": command,
            "init_checkpoint": {"checkpoint": cfg.init_checkpoint, "sha256": base_meta["sha256"]},
        }}
    if init_detector is not None:  # a fine-tune: the steps above come after the init detector's own
        record["lesion_net"]["init_detector"] = init_detector
    extra = {**base_meta.get("extra", {}), **record}
    path = ckpt.save(widen_with_lesion_net(base, net.eval()), Path(cfg.out_dir) / "model.pt", extra=extra)
    (Path(cfg.out_dir) / "lesion_record.json").write_text(json.dumps(record, indent=2) + "\n")
    return path

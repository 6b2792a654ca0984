"""What the model's output bases stand for: tissue fractions and lesions on held-out crops.

With the physics mix (``RTFSynConfig.physics_mix``) the decoder's eight outputs are
mixed by the target protocol's tissue signals, so the output shows a lesion only as far
as the *lesion* basis finds it. This bench compares the bases with the simulator's
tissue fractions on lesion-centred 64^3 crops of validation-split subjects (seeds from
1,000,000: never trained on) that carry white-matter lesions:

* ``basis_mae``: mean |basis - fraction| per brain tissue inside the brain mask;
* ``lesion_basis_in_lesions``: the mean lesion basis where the lesion fraction is > 0.5
  (1.0 would be a perfect find, 0 a lesion painted as normal tissue);
* ``lesion_basis_in_wm`` / ``lesion_basis_in_gm``: the same where white / grey matter
  fills the voxel (> 0.9): a model that finds lesions by their T1 signal alone marks
  grey matter too, whose T1 signal is close to a lesion's;
* ``source_lesion_position``: where the lesions' mean source (T1) signal lies between
  grey matter's (0) and white matter's (1) in the same crop: how far the source shows them;
* ``lesion_wm``: lesion/white-matter intensity ratio of the output and of the truth per
  target contrast (lesion fraction > 0.5 against white-matter fraction > 0.9);
* ``pure_bases``: in voxels that are > 0.9 CSF, grey or white matter, the mean of each
  brain basis and of the eight bases' sum (a faithful model reads 1 for the tissue's own
  basis and 0 for the others): where a model hedges, marking part of the grey matter as
  lesion because the two look alike on a T1, it shows here;
* ``fractions_psnr``: the PSNR (as ``rtfsyn evaluate`` scores it, in the crop's brain) of the true
  tissue fractions mixed by the model's own mixing weights (``model_mix``) and by the physics prior
  alone (``prior``, the oracle's render), beside the model's output (``output``): when the bases and
  the learned mix drift together away from fractions and physics, ``model_mix`` falls far below
  ``prior`` while the output stays where it was.

Usage::

    python bench/bases.py                                  # the shipped model
    python bench/bases.py --checkpoint runs/x/model.pt --output bench/results/bases_x.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthesis import checkpoint as ckpt
from synthesis.metrics import score
from synthesis.physics import TISSUES
from synthesis.simulate import SPLIT_SEEDS
from synthesis.stream import StreamConfig, draw_crops, subject_edits
from synthesis.train import make_batch

BRAIN_TISSUES = ("csf", "gm", "wm", "lesion")
PURE_TISSUES = ("csf", "gm", "wm")
LESION, WM, GM = TISSUES.index("lesion"), TISSUES.index("wm"), TISSUES.index("gm")
MIN_VOXELS = 20  # voxels a region needs to be measured in a crop


def load_model(checkpoint: str) -> tuple[Any, Path, dict[str, Any]]:
    """(model in eval mode, its path, its metadata) of a checkpoint path or ``"default"``."""
    path = ckpt.default_checkpoint_path() if checkpoint == "default" else Path(checkpoint)
    model, meta = ckpt.load(path)
    return model.eval(), path, meta


def emit(result: dict[str, Any], output: Path | None) -> int:
    """Print the result as JSON and also write it to ``output`` when given; returns 0."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        output.write_text(text + "\n")
    return 0


def lesion_subjects(n: int, min_lesions: int = 10) -> list[int]:
    """Indices into the validation split of the first ``n`` subjects whose randomized
    anatomy has at least ``min_lesions`` lesions and is not a label phantom."""
    out = []
    for index, seed in enumerate(SPLIT_SEEDS["validation"]):
        edits = subject_edits(seed)
        if edits.lesions >= min_lesions and not edits.phantom:
            out.append(index)
            if len(out) == n:
                return out
    raise ValueError(f"Only {len(out)} validation subjects have >= {min_lesions} lesions.")


@torch.no_grad()
def crop_metrics(model, crop) -> dict[str, Any] | None:
    """The metrics of one crop, or None when it holds fewer than 20 lesion voxels."""
    lesion = crop.fractions[LESION] > 0.5
    wm = crop.fractions[WM] > 0.9
    gm = crop.fractions[GM] > 0.9
    if lesion.sum() < MIN_VOXELS or wm.sum() < MIN_VOXELS:
        return None
    batch = make_batch([crop], torch.device("cpu"), model.config.feature_dim)
    feats = model.encode(batch["source"], batch["text"], batch["features"])
    out, bases = model.render_grid(feats, with_bases=True)
    out, bases = out[0, 0].float().numpy(), bases[0].float().numpy()
    brain = crop.mask > 0
    fractions = crop.fractions.astype(np.float32)
    return {
        "target": crop.target_protocol.contrast.value,
        "lesion_voxels": int(lesion.sum()),
        "basis_mae": {name: float(np.abs(bases[TISSUES.index(name)] - fractions[TISSUES.index(name)])[brain].mean())
                      for name in BRAIN_TISSUES},
        "lesion_basis_in_lesions": float(bases[LESION][lesion].mean()),
        "lesion_basis_in_wm": float(bases[LESION][wm].mean()),
        "lesion_basis_in_gm": float(bases[LESION][gm].mean()) if gm.sum() >= MIN_VOXELS else None,
        "source_lesion_position": _between(np.asarray(crop.source, np.float32).reshape(lesion.shape),
                                           lesion, gm, wm),
        "lesion_wm_model": float(out[lesion].mean() / out[wm].mean()),
        "lesion_wm_truth": float(crop.target[lesion].mean() / crop.target[wm].mean()),
        "pure_bases": _pure_bases(bases, fractions, brain),
        "fractions_psnr": _fractions_psnr(model, feats, out, fractions, crop.target, brain),
    }


def _fractions_psnr(model, feats, out: np.ndarray, fractions: np.ndarray, target: np.ndarray,
                    brain: np.ndarray) -> dict[str, float] | None:
    """PSNR of the true fractions mixed by the model's weights and by the prior's, and of the
    output; None for a model without a learned mix over a physics prior."""
    if not model.uses_physics_mix or feats.mix_prior is None:
        return None
    model_mix = model.mixing_weights(feats)[0]
    weights = {"model_mix": model_mix.numpy(), "prior": feats.mix_prior.float()[0].numpy()}
    target = np.asarray(target, np.float32)
    scores = {name: score(np.tensordot(w, fractions, axes=1).astype(np.float32), target, brain).psnr
              for name, w in weights.items()}
    return {**scores, "output": score(out, target, brain).psnr}


def _pure_bases(bases: np.ndarray, fractions: np.ndarray, brain: np.ndarray) -> dict[str, dict[str, float]]:
    """Per tissue of CSF, GM and WM with at least ``MIN_VOXELS`` voxels > 0.9 of it in the
    brain: the mean of each brain basis there, and of the sum of all bases (``"sum"``)."""
    out = {}
    for name in PURE_TISSUES:
        pure = brain & (fractions[TISSUES.index(name)] > 0.9)
        if pure.sum() >= MIN_VOXELS:
            means = {basis: float(bases[TISSUES.index(basis)][pure].mean()) for basis in BRAIN_TISSUES}
            out[name] = {**means, "sum": float(bases.sum(0)[pure].mean())}
    return out


def _between(source: np.ndarray, lesion: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> float | None:
    """Where the lesions' mean source signal lies between grey (0) and white matter (1);
    None without enough grey matter in the crop or when the two are equally bright."""
    if gm.sum() < MIN_VOXELS:
        return None
    g, w = float(source[gm].mean()), float(source[wm].mean())
    if abs(w - g) < 1e-6:
        return None
    return (float(source[lesion].mean()) - g) / (w - g)


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(float(np.mean(values)), 4) if values else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over crops; lesion/WM per target contrast."""
    per_target: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        per_target[row["target"]].append(row)
    return {
        "crops": len(rows),
        "basis_mae": {name: round(float(np.mean([r["basis_mae"][name] for r in rows])), 4)
                      for name in BRAIN_TISSUES},
        "lesion_basis_in_lesions": _mean(rows, "lesion_basis_in_lesions"),
        "lesion_basis_in_wm": _mean(rows, "lesion_basis_in_wm"),
        "lesion_basis_in_gm": _mean(rows, "lesion_basis_in_gm"),
        "crops_with_gm": sum(r.get("lesion_basis_in_gm") is not None for r in rows),
        "source_lesion_position": _mean(rows, "source_lesion_position"),
        "lesion_wm": {target: {"model": round(float(np.mean([r["lesion_wm_model"] for r in group])), 3),
                               "truth": round(float(np.mean([r["lesion_wm_truth"] for r in group])), 3),
                               "crops": len(group)}
                      for target, group in sorted(per_target.items())},
        "pure_bases": {name: {key: round(float(np.mean([r["pure_bases"][name][key] for r in held])), 4)
                              for key in (*BRAIN_TISSUES, "sum")} | {"crops": len(held)}
                       for name in PURE_TISSUES
                       if (held := [r for r in rows if name in r.get("pure_bases", {})])},
        "fractions_psnr": {key: round(float(np.mean([r["fractions_psnr"][key] for r in mixed])), 2)
                           for key in ("model_mix", "prior", "output")}
                          if (mixed := [r for r in rows if r.get("fractions_psnr")]) else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="default", help="checkpoint path or 'default'")
    parser.add_argument("--subjects", type=int, default=4, help="validation subjects with lesions")
    parser.add_argument("--targets", default="T2w,FLAIR")
    parser.add_argument("--seed", type=int, default=12345, help="draws of protocols, acquisitions and crops")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, path, meta = load_model(args.checkpoint)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    cfg = StreamConfig(patch=64, target_contrasts=targets, targets_per_draw=len(targets), crops_per_target=1,
                       lesion_crop_share=1.0, split="validation", draws_per_subject=1)
    rows = []
    for draw in lesion_subjects(args.subjects):
        for crop in draw_crops(cfg, draw, seed=args.seed):
            row = crop_metrics(model, crop)
            if row is not None:
                rows.append(row)
                print(f"subject {draw} {row['target']:>5}: lesion basis {row['lesion_basis_in_lesions']:.3f}, "
                      f"lesion/WM {row['lesion_wm_model']:.3f} (truth {row['lesion_wm_truth']:.3f})", flush=True)
    if not rows:
        print("No crop held enough lesion voxels.", file=sys.stderr)
        return 1
    result = {"checkpoint": str(path), "sha256": meta["sha256"], "subjects": args.subjects, "seed": args.seed,
              **summarize(rows)}
    return emit(result, args.output)


if __name__ == "__main__":
    sys.exit(main())

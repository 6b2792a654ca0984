"""A real T1-weighted brain without a truth: what can still be checked of the synthesis.

The only real (non-template) T1w volume found shipping offline in an installed package
is nibabel's test image ``nibabel/tests/data/anatomical.nii`` (MIT, with nibabel): a
33 x 41 x 25 crop at 2 mm around the ventricles and basal ganglia of one SPM-normalized
subject (its header says ``spm - 3D normalized``). Without a truth, the checks are:

* tissue order: the output's mean over the source's CSF/GM/WM classes ordered as the
  physics of the target protocol says (nominal pure-tissue signals);
* contrast ratios GM/WM and CSF/GM of the output, beside the physics' pure-tissue ratios;
* agreement (Dice) of a 3-class k-means segmentation of the source and of the output
  (classes of the output named by the physics order);
* sharpness: mean gradient magnitude at the source's class edges, each image scaled by its
  0.5-99.5 percentile range in the head, output over source;
* stability: the output's change (RMSE in % of its brain 99.5th percentile) when the
  source is scaled x2, gamma-changed (0.8, 1.25) or resampled to 1.3 mm first.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from synthesis.protocol import MRProtocol, preset

log = logging.getLogger(__name__)

__all__ = ["real_t1_path", "load_real_t1", "kmeans3", "physics_order", "evaluate_real_t1", "STABILITY"]

TISSUE_NAMES = ("csf", "gm", "wm")  # T1w source classes, dark to bright
STABILITY = ("scaled x2", "gamma 0.8", "gamma 1.25", "resampled 1.3 mm")


def real_t1_path() -> Path:
    """Where the installed nibabel keeps ``tests/data/anatomical.nii``."""
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"


def load_real_t1(path: Path | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The volume in LPS ``(z, y, x)`` float32 and its spacing ``(dz, dy, dx)`` mm."""
    import nibabel as nib

    path = real_t1_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No real T1 image at {path} (it ships with nibabel's tests).")
    img = nib.as_closest_canonical(nib.load(str(path)))  # RAS (i, j, k)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])  # -> LPS (z, y, x)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.maximum(data, 0.0), (zooms[2], zooms[1], zooms[0])


def kmeans3(values: np.ndarray, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means with 3 classes: ``(labels 0..2 dark to bright, centres)``."""
    values = np.asarray(values, dtype=np.float64)
    centres = np.percentile(values, [15.0, 50.0, 85.0])
    labels = np.zeros(values.shape, dtype=np.int8)
    for _ in range(iterations):
        labels = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1).astype(np.int8)
        new = np.array([values[labels == k].mean() if (labels == k).any() else centres[k] for k in range(3)])
        if np.allclose(new, centres):
            break
        centres = new
    order = np.argsort(centres)
    rank = np.empty(3, dtype=np.int8)
    rank[order] = np.arange(3)
    return rank[labels], centres[order]


def physics_order(target: MRProtocol) -> dict[str, float]:
    """Nominal pure-tissue signals of CSF, GM and WM under ``target`` (its field)."""
    from synthesis.physics import NOMINAL_PARAMS, TISSUES, nearest_field, tissue_signal

    signal = tissue_signal(NOMINAL_PARAMS[nearest_field(target.field_t)], target)
    return {t: float(signal[TISSUES.index(t)]) for t in TISSUE_NAMES}


def _scaled(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(volume[mask], [0.5, 99.5])
    return (volume - lo) / max(float(hi - lo), 1e-12)


def _edge_gradient(volume: np.ndarray, spacing: tuple[float, ...], edges: np.ndarray, mask: np.ndarray) -> float:
    grads = np.gradient(_scaled(volume.astype(np.float64), mask), *spacing)
    return float(np.sqrt(sum(g * g for g in grads))[edges].mean())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return float(2 * (a & b).sum() / total) if total else float("nan")


def _stability_inputs(volume: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, tuple]:
    from synthesis.grid import resample

    top = float(np.percentile(volume, 99.0))
    return {
        "scaled x2": (volume * 2.0, spacing),
        "gamma 0.8": (top * np.power(volume / top, 0.8), spacing),
        "gamma 1.25": (top * np.power(volume / top, 1.25), spacing),
        "resampled 1.3 mm": (resample(volume, spacing, (1.3, 1.3, 1.3)), (1.3, 1.3, 1.3)),
    }


def _target_checks(out: np.ndarray, labels: np.ndarray, mask: np.ndarray, target: MRProtocol,
                   spacing: tuple[float, float, float], source: np.ndarray) -> dict[str, Any]:
    physics = physics_order(target)
    means = {t: float(out[mask & (labels == k)].mean()) for k, t in enumerate(TISSUE_NAMES)}
    expected = sorted(TISSUE_NAMES, key=lambda t: -physics[t])
    observed = sorted(TISSUE_NAMES, key=lambda t: -means[t])
    out_labels, _ = kmeans3(out[mask])
    out_full = np.full(out.shape, -1, dtype=np.int8)
    out_full[mask] = out_labels
    by_rank = sorted(TISSUE_NAMES, key=lambda t: physics[t])  # output class k (dark..bright) -> tissue
    dice = {t: round(_dice(labels == TISSUE_NAMES.index(t), out_full == by_rank.index(t)), 3) for t in TISSUE_NAMES}
    edges = mask & (ndimage.maximum_filter(labels, 3) != ndimage.minimum_filter(labels, 3))
    edges &= ndimage.binary_erosion(mask, iterations=1)
    return {
        "means": {t: round(v, 4) for t, v in means.items()},
        "order_expected": " > ".join(expected), "order_observed": " > ".join(observed),
        "order_ok": expected == observed,
        "ratios": {"GM/WM": round(means["gm"] / means["wm"], 3), "CSF/GM": round(means["csf"] / means["gm"], 3)},
        "physics_ratios": {"GM/WM": round(physics["gm"] / physics["wm"], 3),
                           "CSF/GM": round(physics["csf"] / physics["gm"], 3)},
        "dice": dice, "mean_dice": round(float(np.mean(list(dice.values()))), 3),
        "sharpness_ratio": round(_edge_gradient(out, spacing, edges, mask) /
                                 _edge_gradient(source, spacing, edges, mask), 3),
    }


def evaluate_real_t1(synthesizers: dict[str, Any], targets: dict[str, MRProtocol] | None = None, *,
                     path: Path | None = None, picture: Path | None = None) -> dict[str, Any]:
    """Run each synthesizer (name -> :class:`~synthesis.Synthesizer`) T1w -> each target on the
    real T1; the checks of the module docstring per synthesizer and target."""
    from synthesis.data import fit_to_shape
    from synthesis.intensity import head_mask

    volume, spacing = load_real_t1(path)
    targets = targets or {"T2w": preset("T2", 3.0), "FLAIR": preset("FLAIR", 3.0)}
    source_protocol = preset("T1", 3.0).with_(voxel_mm=(spacing[1], spacing[2], spacing[0]),
                                             slice_thickness_mm=spacing[0])
    mask = ndimage.binary_erosion(head_mask(volume), iterations=1)
    labels = np.full(volume.shape, -1, dtype=np.int8)
    labels[mask], centres = kmeans3(volume[mask])
    result: dict[str, Any] = {"shape": list(volume.shape), "spacing_mm": list(spacing), "voxels": int(mask.sum()),
                              "source_class_fractions": {t: round(float((labels == k).sum() / mask.sum()), 3)
                                                         for k, t in enumerate(TISSUE_NAMES)},
                              "models": {}}
    outputs: dict[str, np.ndarray] = {}
    for name, syn in synthesizers.items():
        per_target: dict[str, Any] = {}
        for tname, target in targets.items():
            run = lambda v, sp: fit_to_shape(syn(v, sp, source_protocol, target,  # noqa: E731
                                                 output_spacing=spacing).volume, volume.shape)
            out = run(volume, spacing)
            outputs.setdefault(tname, out)
            checks = _target_checks(out, labels, mask, target, spacing, volume)
            hi = max(float(np.percentile(out[mask], 99.5)), 1e-12)
            checks["stability_pct"] = {
                label: round(float(100 * np.sqrt(np.mean((run(v, sp)[mask] - out[mask]) ** 2)) / hi), 3)
                for label, (v, sp) in _stability_inputs(volume, spacing).items()}
            per_target[tname] = checks
        result["models"][name] = per_target
    if picture is not None:
        _picture(picture, volume, outputs, mask)
    return result


def _picture(path: Path, source: np.ndarray, outputs: dict[str, np.ndarray], mask: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = source.shape[0] // 2
    panels = [("source T1w (real)", source)] + [(f"synthesized {t}", v) for t, v in outputs.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (title, vol) in zip(np.atleast_1d(axes), panels):
        ax.imshow(np.clip(_scaled(vol, mask)[k], 0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle("Real T1 (nibabel tests/data/anatomical.nii, 2 mm), middle axial slice")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)

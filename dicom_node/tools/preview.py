"""PNG previews: a source volume beside the synthesized one, in three orthogonal planes.

Rendering uses matplotlib's Agg canvas directly (no pyplot, no display), so it
works on servers and inside the node's process.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["PreviewPanel", "middle_slices", "display_range", "write_preview", "read_series_volume"]

logger = logging.getLogger(__name__)

_PLANES = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class PreviewPanel:
    """One preview row: a volume ``(z, y, x)``, its spacing ``(dz, dy, dx)`` mm, a title."""

    volume: np.ndarray
    spacing: tuple[float, float, float]
    title: str

    def __post_init__(self) -> None:
        if self.volume.ndim != 3 or min(self.volume.shape) < 1:
            raise ValueError(f"PreviewPanel volume must be 3-D (z, y, x) and non-empty. "
                             f"Found shape {self.volume.shape}.")
        if len(self.spacing) != 3 or min(float(s) for s in self.spacing) <= 0:
            raise ValueError(f"PreviewPanel spacing must be 3 positive numbers (dz, dy, dx) mm. "
                             f"Found {self.spacing!r}.")


def read_series_volume(files: Sequence[Path]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A classic single-frame series as ``(volume (z, y, x) float32, spacing (dz, dy, dx) mm)``.

    For display only (it reads synthetic series too, which the node's
    assembler refuses): highdicom sorts the slices and applies the modality
    rescale; ``z`` runs along the slice normal (row × column direction).
    """
    import highdicom as hd
    from pydicom import dcmread

    datasets = [dcmread(path) for path in files]
    if not datasets:
        raise ValueError("read_series_volume needs at least one file. Found none.")
    volume = hd.get_volume_from_series(datasets, dtype=np.float32)
    orientation = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    if float(np.dot(volume.direction[:, 0], normal)) < 0:
        volume = volume.flip_spatial(0)
    spacing = tuple(float(v) for v in volume.spacing)
    return np.asarray(volume.array, dtype=np.float32), (spacing[0], spacing[1], spacing[2])


def middle_slices(volume: np.ndarray, spacing: Sequence[float]
                  ) -> list[tuple[str, np.ndarray, float]]:
    """The middle axial, coronal and sagittal slices of ``volume`` ``(z, y, x)``.

    Returns ``(plane, image, aspect)`` with images oriented for display
    (superior up in coronal and sagittal views) and ``aspect`` = row spacing /
    column spacing, for ``imshow(aspect=...)``.
    """
    dz, dy, dx = (float(s) for s in spacing)
    nz, ny, nx = volume.shape
    axial = volume[nz // 2]                       # rows y, columns x
    coronal = np.flipud(volume[:, ny // 2, :])    # rows z (superior up), columns x
    sagittal = np.flipud(volume[:, :, nx // 2])   # rows z (superior up), columns y
    return [("axial", axial, dy / dx), ("coronal", coronal, dz / dx),
            ("sagittal", sagittal, dz / dy)]


def display_range(volume: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5
                  ) -> tuple[float, float]:
    """Display window ``(vmin, vmax)`` from percentiles of the non-zero voxels."""
    values = np.asarray(volume, dtype=np.float64)
    finite = values[np.isfinite(values)]
    nonzero = finite[finite != 0]
    sample = nonzero if nonzero.size else finite
    if sample.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(sample, [low_pct, high_pct]))
    return (vmin, vmax) if vmax > vmin else (vmin, vmin + 1.0)


def write_preview(panels: Sequence[PreviewPanel], out_path: Path, *,
                  title: str | None = None, dpi: int = 110) -> Path:
    """Write a PNG: one row per panel (e.g. source, synthesized), three planes per row.

    Each row has its own display window (percentiles 0.5–99.5), because the
    source and the synthesized contrast have different intensity scales.
    Returns ``out_path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("write_preview needs at least one panel. Found none.")
    fig = Figure(figsize=(3.2 * len(_PLANES), 3.2 * len(panels) + (0.4 if title else 0.0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), len(_PLANES), squeeze=False)
    for row, panel in enumerate(panels):
        vmin, vmax = display_range(panel.volume)
        for col, (plane, image, aspect) in enumerate(middle_slices(panel.volume, panel.spacing)):
            ax = axes[row][col]
            ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{panel.title}: {plane}" if col == 0 else plane, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", dpi=dpi)
    logger.info("Wrote preview %s (%d rows)", out_path, len(panels))
    return out_path

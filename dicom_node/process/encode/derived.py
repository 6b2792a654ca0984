"""Synthesized volume → derived DICOM series with provenance (DESIGN §4).

:func:`write_derived_series` writes the synthesized volume as a new series of
the source's study, clearly marked as synthetic (Synthetic Data YES, DERIVED
image type, ``SYN <target> (RTFSyn) …`` description, a Series Number of its own:
:mod:`~dicom_node.process.encode.naming`), with

* what produced it — :class:`~dicom_node.process.encode.provenance.Provenance`;
* what it came from — Source Image Sequence per slice (purpose 121322) and
  Referenced Series Sequence;
* what it pretends to be — the MR acquisition attributes of the target
  protocol, on the output voxel grid.

The classic instances are built once (:mod:`~dicom_node.process.encode.classic_mr`);
then one writer per :class:`~dicom_node.process.encode.formats.OutputFormat`
writes them: ``mr`` one file per slice (:mod:`~dicom_node.process.encode.write`),
``enhanced-mr`` (:mod:`~dicom_node.process.encode.enhanced_mr`) and
``parametric-map`` (:mod:`~dicom_node.process.encode.parametric_map`) one
instance. Every written file is read back and checked before returning.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pydicom.uid import generate_uid

from dicom_node.process.volume import AssembledVolume
from dicom_node.process.encode.classic_mr import MRSeries, OutputGrid, build_mr_series
from dicom_node.process.encode.enhanced_mr import write_enhanced_mr
from dicom_node.process.encode.formats import OutputFormat, parse_output_format
from dicom_node.process.encode.parametric_map import write_parametric_map
from dicom_node.process.encode.naming import derived_series_description, derived_series_number
from dicom_node.process.encode.provenance import NodeInfo, Provenance
from dicom_node.process.encode.write import write_mr_series
from synthesis.protocol import MRProtocol

__all__ = ["write_derived_series", "derived_series_description"]

logger = logging.getLogger(__name__)

FILE_STEM = "SYN"  # derived files are SYN00001.dcm, ... (SYN.dcm for one instance)

# one writer per output format: (classic series, float volume (z, y, x), source, folder) -> files
Writer = Callable[[MRSeries, np.ndarray, AssembledVolume, Path], list[Path]]
_WRITERS: dict[OutputFormat, Writer] = {
    OutputFormat.MR: lambda series, volume, assembled, out: write_mr_series(
        series, out, FILE_STEM),
    OutputFormat.ENHANCED_MR: lambda series, volume, assembled, out: write_enhanced_mr(
        series, out, FILE_STEM),
    OutputFormat.PARAMETRIC_MAP: lambda series, volume, assembled, out: write_parametric_map(
        series, volume, assembled, out, FILE_STEM),
}


def _check_result(volume: np.ndarray, spacing: Sequence[float],
                  offset: Sequence[float]) -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"result.volume must be a non-empty (z, y, x) array. Found {vol.shape}.")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"result.spacing must be 3 positive numbers (dz, dy, dx) mm. "
                         f"Found {tuple(spacing)!r}.")
    if len(offset) != 3 or not all(np.isfinite(v) for v in offset):
        raise ValueError(f"result.origin_offset_mm must be 3 finite numbers. "
                         f"Found {tuple(offset)!r}.")
    return vol


def write_derived_series(result: Any, assembled: AssembledVolume, target: MRProtocol,
                         out_dir: Path, *, prompt: str, model_info: Mapping[str, Any],
                         node: NodeInfo = NodeInfo(),
                         output_format: str | OutputFormat = OutputFormat.MR,
                         series_number_offset: int = 1000, series_uid: str | None = None,
                         source: MRProtocol | None = None,
                         second_source: tuple[str, str] | None = None) -> list[Path]:
    """Write ``result`` (a ``SynthesisResult``: volume (z, y, x), spacing (dz, dy, dx) mm,
    origin_offset_mm (z, y, x)) as a derived series of ``assembled``'s study into ``out_dir``.

    ``series_uid`` reuses a Series Instance UID (a re-run after a crash writes
    the same UIDs: SOP UIDs derive from it); ``model_info`` is
    ``Synthesizer.info``; ``second_source``: (contrast, Series Instance UID) of a second source
    series the model was also given. Returns the written paths in slice order.
    """
    fmt = parse_output_format(output_format)
    volume = _check_result(result.volume, result.spacing, result.origin_offset_mm)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).astimezone()
    header = assembled.header
    provenance = Provenance.build(
        model_info, prompt=prompt, target=target, source=source, node=node, when=now,
        second_source=second_source,
        source_equipment={k: str(header.get(k, "") or "")
                          for k in ("Manufacturer", "ManufacturerModelName")})
    series_uid = str(series_uid or generate_uid())
    series_number = derived_series_number(header.get("SeriesNumber"), target, fmt,
                                           series_number_offset)
    description = derived_series_description(target, str(header.get("SeriesDescription", "")),
                                             fmt)
    grid = OutputGrid.from_result(assembled, result.spacing, result.origin_offset_mm)
    series = build_mr_series(volume, assembled, target, grid, provenance=provenance,
                             series_uid=series_uid, series_number=series_number,
                             description=description, now=now)
    paths = _WRITERS[fmt](series, volume, assembled, out_dir)
    logger.info("Wrote derived %s series (%d files, series number %d) to %s",
                fmt.value, len(paths), series_number, out_dir)
    return paths

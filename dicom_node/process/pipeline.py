"""One series in, one derived series out: assemble → condition → synthesize → encode.

:func:`process_series` is the whole per-series path of the node, readable in
one function; the scheduler calls it for every (series, target) job and
``rtfsyn synthesize`` calls it on a folder. Each stage is a plain function of
its own module:

1. :func:`dicom_node.process.assemble.assemble_series` — files → volume + geometry;
2. :func:`dicom_node.process.condition.protocol_from_dataset` — tags → source ``MRProtocol``;
   the target is the named preset at the source's field strength, on the
   output voxel grid;
3. the ``Synthesizer`` (``synthesis.inference``) — the RTFSyn network;
4. :func:`dicom_node.process.encode.derived.write_derived_series` — the derived DICOM series.

Stages 1–2 raise :class:`~dicom_node.errors.RejectedSeries` for a series the
node will not process: after assembly, and before any synthesis, the
eligibility rules (:mod:`dicom_node.process.eligibility`) check the header and
the volume (blank pixels, too few slices, too small a coverage, diffusion,
localizers, ...).
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
from pydicom.uid import generate_uid

from dicom_node.process.assemble import assemble_series
from dicom_node.process.encode.derived import write_derived_series
from dicom_node.process.encode.formats import OutputFormat, parse_output_format
from dicom_node.process.encode.provenance import NodeInfo
from dicom_node.errors import RejectedSeries
from dicom_node.process.condition import protocol_from_dataset
from dicom_node.process.eligibility import (DEFAULT_RULES, EligibilityRules, check_header,
                                            check_volume)
from dicom_node.process.volume import AssembledVolume
from synthesis import grid
from synthesis.protocol import PRESETS, MRProtocol, preset

__all__ = ["NodeInfo", "DerivedSeries", "process_series", "target_protocol", "RejectedSeries"]

logger = logging.getLogger(__name__)


class SynthesizerLike(Protocol):
    """What :func:`process_series` needs of ``synthesis.inference.Synthesizer``."""

    info: dict[str, Any]

    def __call__(self, volume: np.ndarray, spacing: Sequence[float], source: MRProtocol,
                 target: MRProtocol, output_spacing: Sequence[float] | None = None,
                 **options: Any) -> Any: ...

    def target_refusal(self, contrast: str) -> str | None: ...


def _check_target(synthesizer: SynthesizerLike, contrast: str, policy: str) -> None:
    """Refuse (or, with ``policy == "allow"``, warn about) a target the model failed its
    lesion check for."""
    reason = synthesizer.target_refusal(contrast)
    if reason is None:
        return
    if policy == "allow":
        logger.warning("synthesizing %s although %s ([model] unvalidated_targets = \"allow\")", contrast, reason)
        return
    raise RejectedSeries(f"target refused: {reason}")


@dataclass(frozen=True)
class DerivedSeries:
    """What one :func:`process_series` call wrote.

    ``timings`` maps stage name (assembly, conditioning, synthesis, encoding)
    to wall-clock seconds; ``warnings`` lists impossible protocol values that were
    dropped before the prompt was built.
    """

    files: list[Path]
    series_instance_uid: str
    prompt: str
    source_protocol: MRProtocol
    target_protocol: MRProtocol
    timings: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - start, 4)


def target_protocol(name: str, source: MRProtocol,
                    output_spacing: Sequence[float]) -> MRProtocol:
    """The preset ``name`` at the source's field strength (3 T when unknown), with the
    output voxel grid ``(dz, dy, dx)`` mm as its voxel size and slice thickness."""
    if str(name).upper() not in PRESETS:
        raise ValueError(f"Unknown target {name!r}. Known targets: {', '.join(PRESETS)}.")
    dz, dy, dx = (float(s) for s in output_spacing)
    return preset(name, field_t=source.field_t or 3.0).with_(voxel_mm=(dy, dx, dz),
                                                             slice_thickness_mm=dz)


def process_series(files: Sequence[Path], target: str, out_dir: Path,
                   synthesizer: SynthesizerLike, *,
                   output_format: str | OutputFormat = OutputFormat.MR,
                   series_number_offset: int = 1000, node: NodeInfo = NodeInfo(),
                   series_uid: str | None = None,
                   output_spacing: Sequence[float] | None = None,
                   eligibility: EligibilityRules = DEFAULT_RULES,
                   stage: Callable[[str], None] | None = None,
                   progress: Callable[[str, int, int], None] | None = None,
                   unvalidated_targets: str = "refuse") -> DerivedSeries:
    """Synthesize ``target`` (a preset name: T1, T1SE, T2, PD, FLAIR) from the MR series in
    ``files`` and write the derived series into ``out_dir``.

    ``output_spacing`` (dz, dy, dx) mm picks the output grid; by default the
    synthesizer's working grid (the input grid, with axes much coarser than the
    finest made isotropic). ``series_uid`` reuses a Series Instance UID (a
    retried job writes the same UIDs). ``eligibility``: the rules applied after
    assembly (a route's). ``stage(name)`` is called as each stage starts and
    ``progress(phase, done, total)`` during synthesis (encoded tiles, decoded
    chunks: the ``Synthesizer``'s ``progress``). ``unvalidated_targets``: ``"refuse"`` a
    target whose lesion check failed for this model (:mod:`synthesis.lesion_check`),
    ``"allow"`` it with a warning. Raises :class:`RejectedSeries`.
    """
    output_format = parse_output_format(output_format)
    series_uid = str(series_uid or generate_uid())
    timings: dict[str, float] = {}
    announce = stage or (lambda _name: None)
    announce("assembly")
    with _timed(timings, "assembly"):
        assembled: AssembledVolume = assemble_series(files)
    announce("conditioning")
    with _timed(timings, "conditioning"):
        verdict = check_header(assembled.header, eligibility)
        if verdict.refusal:
            raise RejectedSeries(verdict.refusal)
        check_volume(assembled.volume, assembled.spacing, eligibility)
        source = protocol_from_dataset(assembled.header, slice_spacing_mm=assembled.spacing[0])
        out_spacing = tuple(output_spacing or grid.default_output_spacing(assembled.spacing))
        target_proto = target_protocol(target, source, out_spacing)
        _check_target(synthesizer, target_proto.contrast.value, unvalidated_targets)
    announce("synthesis")
    with _timed(timings, "synthesis"):
        extra = {"progress": progress} if progress is not None else {}
        result = synthesizer(assembled.volume, assembled.spacing, source, target_proto,
                             output_spacing=out_spacing, **extra)
    announce("encoding")
    with _timed(timings, "encoding"):
        files_out = write_derived_series(
            result, assembled, target_proto, Path(out_dir), prompt=result.prompt,
            model_info=synthesizer.info, node=node, output_format=output_format,
            series_number_offset=series_number_offset, series_uid=series_uid, source=source)
    logger.info("Series done: %s -> %s, %d files; timings %s", source.contrast.value,
                target_proto.contrast.value, len(files_out), timings)
    return DerivedSeries(files_out, series_uid, result.prompt, source, target_proto, timings,
                         verdict.warnings)

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

__all__ = ["NodeInfo", "DerivedSeries", "process_series", "second_source", "target_protocol", "RejectedSeries"]

logger = logging.getLogger(__name__)


class SynthesizerLike(Protocol):
    """What :func:`process_series` needs of ``synthesis.inference.Synthesizer``."""

    info: dict[str, Any]

    def __call__(self, volume: np.ndarray, spacing: Sequence[float], source: MRProtocol,
                 target: MRProtocol, output_spacing: Sequence[float] | None = None,
                 **options: Any) -> Any: ...

    def target_refusal(self, contrast: str, second: str | None = None) -> str | None: ...


#: The contrast a second source must have (what the two-source model was trained with).
SECOND_SOURCE_CONTRAST = "T2w"
#: The share of the first series' signal voxels the second must cover.
MIN_SECOND_COVERAGE = 0.95


def _check_target(synthesizer: SynthesizerLike, contrast: str, policy: str, second: str | None = None) -> None:
    """Refuse (or, with ``policy == "allow"``, warn about) a target the model failed its
    lesion check for (with a ``second`` source of that contrast: its own check)."""
    reason = synthesizer.target_refusal(contrast, second) if second else synthesizer.target_refusal(contrast)
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


def second_source(files: Sequence[Path], first: AssembledVolume,
                  eligibility: EligibilityRules = DEFAULT_RULES) -> tuple[np.ndarray, MRProtocol, str]:
    """The second source series in ``files`` on the first's voxel grid: (volume, protocol,
    Series Instance UID). It must pass the same eligibility rules, belong to the first's study
    and frame of reference, be T2-weighted, and cover the first's signal; else
    :class:`RejectedSeries` says which."""
    from dicom_node.process.volume import resample_onto

    second = assemble_series(files)
    verdict = check_header(second.header, eligibility)
    if verdict.refusal:
        raise RejectedSeries(f"second source: {verdict.refusal}")
    try:
        check_volume(second.volume, second.spacing, eligibility)
    except RejectedSeries as exc:
        raise RejectedSeries(f"second source: {exc.reason}") from exc
    if str(second.header.get("StudyInstanceUID", "")) != str(first.header.get("StudyInstanceUID", "")):
        raise RejectedSeries("second source: it belongs to another study than the first series")
    if second.geometry.frame_of_reference_uid != first.geometry.frame_of_reference_uid:
        raise RejectedSeries("second source: another frame of reference than the first series (the two "
                             "are not registered)")
    if second.series_instance_uid == first.series_instance_uid:
        raise RejectedSeries("second source: it is the first series itself")
    protocol = protocol_from_dataset(second.header, slice_spacing_mm=second.spacing[0])
    if protocol.contrast.value != SECOND_SOURCE_CONTRAST:
        raise RejectedSeries(f"second source: it must be {SECOND_SOURCE_CONTRAST}; this series reads as "
                             f"{protocol.contrast.value}")
    volume, inside = resample_onto(second, first)
    signal = first.volume > 0.1 * float(np.percentile(first.volume, 99))
    covered = float(inside[signal].mean()) if signal.any() else 0.0
    if covered < MIN_SECOND_COVERAGE:
        raise RejectedSeries(f"second source: it covers {covered:.0%} of the first series' signal, at least "
                             f"{MIN_SECOND_COVERAGE:.0%} is needed")
    return volume, protocol, second.series_instance_uid


def process_series(files: Sequence[Path], target: str, out_dir: Path,
                   synthesizer: SynthesizerLike, *,
                   output_format: str | OutputFormat = OutputFormat.MR,
                   series_number_offset: int = 1000, node: NodeInfo = NodeInfo(),
                   series_uid: str | None = None,
                   output_spacing: Sequence[float] | None = None,
                   eligibility: EligibilityRules = DEFAULT_RULES,
                   stage: Callable[[str], None] | None = None,
                   progress: Callable[[str, int, int], None] | None = None,
                   unvalidated_targets: str = "refuse",
                   second_files: Sequence[Path] | None = None) -> DerivedSeries:
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
    ``"allow"`` it with a warning. ``second_files``: a T2w series of the same study and frame
    of reference for a model that takes a second source (:func:`second_source`; the target then
    has the lesion check of the pair). Raises :class:`RejectedSeries`.
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
        second = None
        if second_files:
            if not getattr(synthesizer, "takes_second_source", False):
                raise RejectedSeries("a second source was given, but this model takes one source")
            second, second_proto, second_uid = second_source(second_files, assembled, eligibility)
            if second_proto.contrast == target_proto.contrast:
                raise RejectedSeries(f"the target is {target_proto.contrast.value}, the second source's own "
                                     "contrast: synthesize it from the first series alone")
        _check_target(synthesizer, target_proto.contrast.value, unvalidated_targets,
                      SECOND_SOURCE_CONTRAST if second is not None else None)
    announce("synthesis")
    with _timed(timings, "synthesis"):
        extra: dict[str, Any] = {"progress": progress} if progress is not None else {}
        if second is not None:
            extra["second"] = second
        result = synthesizer(assembled.volume, assembled.spacing, source, target_proto,
                             output_spacing=out_spacing, **extra)
    announce("encoding")
    with _timed(timings, "encoding"):
        files_out = write_derived_series(
            result, assembled, target_proto, Path(out_dir), prompt=result.prompt,
            model_info=synthesizer.info, node=node, output_format=output_format,
            series_number_offset=series_number_offset, series_uid=series_uid, source=source,
            second_source=(SECOND_SOURCE_CONTRAST, second_uid) if second is not None else None)
    logger.info("Series done: %s -> %s, %d files; timings %s", source.contrast.value,
                target_proto.contrast.value, len(files_out), timings)
    return DerivedSeries(files_out, series_uid, result.prompt, source, target_proto, timings,
                         verdict.warnings)

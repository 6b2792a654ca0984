"""The node's job processor: :func:`dicom_node.process.pipeline.process_series` for a job of the
job log, with one ``Synthesizer`` per process (loaded on the first job, or passed in), a
start-up check that the default checkpoint exists, and a background warm-up of the pipeline."""
from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from dicom_node.config import Config
from dicom_node.schedule.work import ProcessResult
from dicom_node.store.joblog import JobSpec

__all__ = ["SynthesisProcessor", "WARM_UP_DONE", "freeze_start_up_objects"]

logger = logging.getLogger(__name__)
WARM_UP_DONE = "pipeline warm-up done in"  # logged at start-up; benchmarks wait for it


class SynthesisProcessor:
    """The default processor: :func:`dicom_node.process.pipeline.process_series` with one shared
    ``Synthesizer`` (built lazily from ``[model]`` unless given)."""

    def __init__(self, config: Config, synthesizer: Any = None, *,
                 stage: Callable[[str], None] | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        self.config = config
        self._synthesizer = synthesizer
        self._stage, self._progress = stage, progress  # process_series' callbacks (a CLI's)
        self._lock = threading.Lock()
        self.log: Any = None  # the node's JobLog (Node attaches it): where a second source is found

    @property
    def synthesizer(self) -> Any:
        """The process-wide Synthesizer (loaded on first use, once)."""
        with self._lock:
            if self._synthesizer is None:
                from synthesis.inference import Synthesizer

                model = self.config.model
                logger.info("loading the synthesis model (%s on %s, N4 bias correction %s)",
                            model.checkpoint, model.device,
                            "on" if model.bias_correction else "off")
                self._synthesizer = Synthesizer(model.checkpoint, model.device,
                                                bias_correction=model.bias_correction)
            return self._synthesizer

    def preflight(self) -> None:
        """Log an error at start-up when the default checkpoint is missing (receiving still
        works; jobs fail with the reason and can be re-sent once it is installed)."""
        if self._synthesizer is not None or self.config.model.checkpoint != "default":
            return
        from synthesis.checkpoint import default_checkpoint_path

        path = default_checkpoint_path()
        if not path.is_file():
            logger.error("no default model checkpoint at %s: synthesis jobs will fail until one "
                         "is installed ([model] checkpoint, or `rtfsyn train`)", path)

    def warm_up(self) -> None:
        """Import the pipeline and load what its first assembly would load, so that the
        first job does not pay for it (run in a background thread at start-up; never
        raises)."""
        t0 = time.monotonic()
        try:
            import dicom_node.process.pipeline  # noqa: F401 - the import is part of the warm-up
            from dicom_node.process.assemble import warm_up

            warm_up()
        except Exception:  # the first job will report what is wrong
            logger.warning("pipeline warm-up failed", exc_info=True)
        freeze_start_up_objects()
        logger.info("%s %.1f s", WARM_UP_DONE, time.monotonic() - t0)

    def second_source_files(self, job: JobSpec) -> list[Path] | None:
        """The released instances of the newest T2w series of the job's study (``[model]
        second_source = "auto"``, a model that takes one, a target other than T2), or None.
        While another series of the study is still arriving and none is found, wait for it up
        to ``second_source_wait_seconds``."""
        from dicom_node.process.pipeline import SECOND_SOURCE_CONTRAST
        from synthesis.protocol import PRESETS, preset

        model = self.config.model
        if model.second_source != "auto" or self.log is None or \
                not getattr(self.synthesizer, "takes_second_source", False):
            return None
        if str(job.target).upper() not in PRESETS or preset(job.target).contrast.value == SECOND_SOURCE_CONTRAST:
            return None  # an unknown target (process_series says so), or the second source's contrast
        deadline = time.monotonic() + model.second_source_wait_seconds
        while True:
            waiting = False
            for uid, state in self.log.study_companions(job.series_uid):
                waiting = waiting or state.value == "receiving"
                if state.value not in ("complete", "routed", "ignored") or self.log.is_derived_series(uid):
                    continue
                files = self.log.released_instances(uid)
                if files and _reads_as(files[0], SECOND_SOURCE_CONTRAST):
                    logger.info("job %d: series %s of the same study is its %s second source", job.id, uid,
                                SECOND_SOURCE_CONTRAST)
                    return files
            if not waiting or time.monotonic() >= deadline:
                return None
            time.sleep(min(1.0, max(0.05, self.config.node.stable_seconds / 5.0)))

    def __call__(self, job: JobSpec, files: list[Path], out_dir: Path) -> ProcessResult:
        """Process one job with the eligibility rules of the job's route (and, for a model that
        takes one, a T2w series of the same study as its second source: :meth:`second_source_files`;
        when that series cannot be used, the first alone, and a refusal then says why)."""
        from dicom_node.errors import RejectedSeries
        from dicom_node.process.eligibility import DEFAULT_RULES
        from dicom_node.process.pipeline import NodeInfo, process_series

        route = next((r for r in self.config.routes if r.name == job.route), None)

        def run(second: list[Path] | None) -> Any:
            return process_series(
                files, target=job.target, out_dir=out_dir, synthesizer=self.synthesizer,
                output_format=job.output_format, series_number_offset=job.series_number_offset,
                node=NodeInfo(ae_title=self.config.node.ae_title), series_uid=job.derived_series_uid,
                eligibility=route.eligibility if route is not None else DEFAULT_RULES,
                stage=self._stage, progress=self._progress,
                unvalidated_targets=self.config.model.unvalidated_targets, second_files=second)

        second = self.second_source_files(job)
        try:
            derived = run(second)
        except RejectedSeries as exc:
            if not second or not exc.reason.startswith("second source:"):
                raise
            logger.warning("job %d: %s; synthesizing from the first series alone", job.id, exc.reason)
            try:
                derived = run(None)
            except RejectedSeries as alone:
                raise RejectedSeries(f"{alone.reason} (the study's {exc.reason})") from alone
        if str(derived.series_instance_uid) != job.derived_series_uid:
            raise RuntimeError(f"the pipeline wrote series {derived.series_instance_uid}, not the "
                               f"job's {job.derived_series_uid}")
        return ProcessResult(files=list(derived.files), prompt=derived.prompt,
                             extra={"timings": dict(derived.timings)})


def _reads_as(path: Path, contrast: str) -> bool:
    """True when the header of the instance at ``path`` classifies as ``contrast`` (T2w, ...)."""
    import pydicom

    from dicom_node.process.condition import protocol_from_dataset

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        return protocol_from_dataset(header).contrast.value == contrast
    except Exception:  # noqa: BLE001 - an unreadable candidate is simply not one
        logger.debug("%s: not read as a second source", path, exc_info=True)
        return False


def freeze_start_up_objects() -> None:
    """Collect, then move every object alive now (imported modules, the model, pydicom's
    dictionaries: millions of them once torch is loaded) to the collector's permanent
    generation. Without it the first full collection after start-up walks them all, in
    whatever thread allocates at that moment: 0.2 s of CPU inside the first C-STORE of a
    series, measured with ``bench/ingest_cpu.py``. Objects made later are collected as
    before."""
    gc.collect()
    gc.freeze()

"""The whole product in one call: simulate a T1 series, send it to a node, receive the result.

:func:`run_demo` starts, in this process and on loopback:

1. a receiving storage SCP (pynetdicom, AE ``DEMO_SCP``) writing into ``received/``;
2. the node (:class:`dicom_node.node.Node`) built from the embedded defaults
   (:meth:`Config.default`) with one route: every MR series → ``target`` → the receiver;

then simulates a T1w head (``synthesis.simulate``), writes it as a DICOM MR
series, sends it to the node with a pynetdicom SCU, waits until the node's job
has finished, writes a PNG preview (source beside synthesized) and stops
everything. Nothing leaves the machine; the files stay in the run folder.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dicom_node.dicom.status import Status
from dicom_node.tools.loopback import LOOPBACK, free_port

__all__ = ["DemoOptions", "DemoResult", "DemoError", "DemoReceiver", "run_demo",
           "simulate_t1", "demo_config", "send_series"]

logger = logging.getLogger(__name__)

NODE_AE = "RTFSYN"
RECEIVER_AE = "DEMO_SCP"
SENDER_AE = "DEMO_SCU"
_FINAL_JOB_STATES = ("done", "failed", "rejected")


class DemoError(RuntimeError):
    """The demo could not complete; the message says which step and why."""


@dataclass(frozen=True)
class DemoOptions:
    """What the demo does.

    ``voxel_mm``: isotropic voxel size of the simulated series (integer mm, the
    1 mm phantom is block-averaged); ``slices``: axial slices kept around the
    middle of the brain (fewer = quicker); ``seed`` picks the simulated head.
    """

    workdir: Path
    target: str = "T2"
    checkpoint: str = "default"
    device: str = "auto"
    seed: int = 2_000_000  # the first held-out test subject (never seen in training)
    voxel_mm: int = 1
    slices: int = 48
    stable_seconds: float = 1.0
    timeout_s: float = 900.0

    def __post_init__(self) -> None:
        from synthesis.protocol import PRESETS

        if str(self.target).upper() not in PRESETS:
            raise ValueError(f"target must be one of {', '.join(PRESETS)}. Found {self.target!r}.")
        if not 1 <= int(self.voxel_mm) <= 8:
            raise ValueError(f"voxel_mm must be an integer in 1..8. Found {self.voxel_mm!r}.")
        if int(self.slices) < 4:
            raise ValueError(f"slices must be at least 4. Found {self.slices!r}.")


@dataclass(frozen=True)
class DemoResult:
    """Where everything is after a demo run."""

    run_dir: Path
    input_dir: Path
    input_files: list[Path]
    received_dir: Path
    received_files: list[Path]
    node_output_dir: Path
    job_log: Path
    config_path: Path
    preview_png: Path
    job: dict[str, Any]
    node_address: tuple[str, int]
    seconds: float


# -- the source series -------------------------------------------------------------------
def simulate_t1(seed: int, voxel_mm: int, slices: int
                ) -> tuple[np.ndarray, tuple[float, float, float], Any]:
    """A simulated T1w (MPRAGE) head: ``(volume (z, y, x), spacing (dz, dy, dx) mm, protocol)``.

    The 1 mm phantom is block-averaged to ``voxel_mm`` and cut to ``slices``
    axial slices centred on the brain; intensities are scaled to [0, 1000].
    """
    from synthesis.protocol import preset
    from synthesis.simulate.phantom import make_subject
    from synthesis.simulate.render import render

    subject = make_subject(int(seed))
    protocol = dataclasses.replace(preset("T1"), voxel_mm=(float(voxel_mm),) * 3,
                                   slice_thickness_mm=float(voxel_mm))
    image = render(subject, protocol)
    f = int(voxel_mm)
    nz, ny, nx = (n // f for n in image.shape)
    blocks = image[:nz * f, :ny * f, :nx * f].reshape(nz, f, ny, f, nx, f)
    volume = blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    brain_z = np.nonzero(subject.brain_mask.any(axis=(1, 2)))[0]
    centre = int(round(brain_z.mean() / f)) if brain_z.size else nz // 2
    first = int(np.clip(centre - slices // 2, 0, max(nz - slices, 0)))
    volume = volume[first:first + slices]
    peak = float(volume.max())
    volume = volume * (1000.0 / peak) if peak > 0 else volume
    return volume, (float(f),) * 3, protocol


# -- the receiving storage SCP -----------------------------------------------------------
@dataclass
class DemoReceiver:
    """A storage SCP writing each received instance to ``out_dir/<SOP Instance UID>.dcm``."""

    out_dir: Path
    ae_title: str = RECEIVER_AE
    received: list[Path] = field(default_factory=list)
    _server: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def start(self) -> int:
        """Listen on a free loopback port (non-blocking); the port."""
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import (EnhancedMRImageStorage, MRImageStorage,
                                          ParametricMapStorage, Verification)

        self.out_dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        for sop_class in (MRImageStorage, EnhancedMRImageStorage, ParametricMapStorage,
                          Verification):
            ae.add_supported_context(sop_class)
        self._server = ae.start_server((LOOPBACK, 0), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return int(self._server.server_address[1])

    def _on_store(self, event: Any) -> int:
        """Write the instance as sent; a DICOM status, never an exception."""
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        if not re.fullmatch(r"[0-9.]{1,64}", sop_uid):
            logger.error("refused an instance with an invalid SOP Instance UID")
            return Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
        path = self.out_dir / f"{sop_uid}.dcm"
        part = path.with_suffix(".part")
        try:
            # The node's SCP turns on pynetdicom's process-wide "chunked" receive mode:
            # the data set then arrives as a temporary DICOM file instead of in memory.
            chunked = getattr(event, "dataset_path", None)
            if chunked is not None:
                shutil.copyfile(chunked, part)
            else:
                part.write_bytes(event.encoded_dataset(include_meta=True))
            os.replace(part, path)
        except OSError as exc:
            logger.error("could not write instance %s: %s", sop_uid, exc)
            return Status.OUT_OF_RESOURCES
        with self._lock:
            self.received.append(path)
        return Status.SUCCESS

    def files(self) -> list[Path]:
        """Received files so far, in arrival order."""
        with self._lock:
            return list(self.received)

    def stop(self) -> None:
        """Stop listening (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()


def send_series(files: Sequence[Path], port: int, *, called_ae: str = NODE_AE,
                calling_ae: str = SENDER_AE) -> None:
    """C-STORE ``files`` to ``called_ae`` on loopback in one association; raise on any failure."""
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    if not assoc.is_established:
        raise DemoError(f"the node at {LOOPBACK}:{port} refused the association from "
                        f"{calling_ae} (must accept it)")
    try:
        for path in files:
            status = assoc.send_c_store(dcmread(path))
            code = int(status.Status) if status else None
            if code != Status.SUCCESS:
                raise DemoError(f"C-STORE of {Path(path).name} must answer 0x0000. "
                                f"Found {'no response' if code is None else f'0x{code:04X}'}.")
    finally:
        assoc.release()


# -- the node ----------------------------------------------------------------------------
def demo_config(options: DemoOptions, run_dir: Path, *, node_port: int, receiver_port: int) -> Any:
    """Embedded defaults + loopback ports, the run's data folder, one route to the receiver."""
    from dicom_node.config import Config, Destination, Route

    base = Config.default()
    node = dataclasses.replace(base.node, host=LOOPBACK, port=node_port, ae_title=NODE_AE,
                               data_dir=(run_dir / "node").resolve(),
                               stable_seconds=float(options.stable_seconds),
                               allowed_calling_aets=())  # any caller, on loopback only
    model = dataclasses.replace(base.model, checkpoint=str(options.checkpoint),
                                device=options.device)
    destination = Destination(name="DEMO", ae_title=RECEIVER_AE, host=LOOPBACK, port=receiver_port)
    route = Route(name="demo", targets=(str(options.target).upper(),), destination="DEMO",
                  match=(("Modality", re.compile("MR")),))
    return dataclasses.replace(base, node=node, model=model, destinations={"DEMO": destination},
                               routes=(route,))


def wait_for_job(database: Path, timeout_s: float) -> dict[str, Any]:
    """Poll the job log until one job reached a final state (done, failed, rejected); that job."""
    from dicom_node.store.status import build_report

    deadline = time.monotonic() + timeout_s
    last_state = None
    while time.monotonic() < deadline:
        jobs = build_report(database)["jobs"] if database.exists() else []
        if jobs:
            job = jobs[0]
            if job["state"] != last_state:
                logger.info("demo: job %s is %s", job["id"], job["state"])
                last_state = job["state"]
            if job["state"] in _FINAL_JOB_STATES:
                return job
        time.sleep(0.5)
    raise DemoError(f"the node must finish the job within {timeout_s:.0f} s. "
                    f"Found state {last_state or 'no job yet'}; see {database}.")


def check_checkpoint(checkpoint: str) -> None:
    """Fail early, with the fix, when the checkpoint file is missing."""
    from synthesis.checkpoint import default_checkpoint_path

    path = default_checkpoint_path() if checkpoint == "default" else Path(checkpoint)
    if not Path(path).is_file():
        raise DemoError(f"the checkpoint must be a file. Found none at {path}"
                        + ("; train one with `rtfsyn train` or pass --checkpoint PATH"
                           if checkpoint == "default" else ""))


def _run_dir(workdir: Path) -> Path:
    """A new ``run-YYYYmmdd-HHMMSS[-n]`` folder inside ``workdir``."""
    stem = time.strftime("run-%Y%m%d-%H%M%S")
    for n in range(1000):
        candidate = workdir / (stem if n == 0 else f"{stem}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise DemoError(f"could not create a new run folder in {workdir}")


def _preview(input_files: list[Path], received: list[Path], out_path: Path, target: str) -> Path:
    """PNG of the source beside the synthesized series, both read back from DICOM."""
    from dicom_node.tools.preview import PreviewPanel, read_series_volume, write_preview

    source = PreviewPanel(*read_series_volume(input_files), "source T1w (simulated)")
    derived = PreviewPanel(*read_series_volume(received), f"synthetic {target} (RTFSyn)")
    return write_preview(
        [source, derived],
        out_path, title=f"RTFSyn demo: T1w -> {target} (synthetic, not for diagnosis)")


# The demo's stages in order (the node's pipeline stages run inside "node synthesizes").
DEMO_STAGES = {
    "simulate": "simulating a T1w head and writing it as a DICOM series",
    "start": "starting the node and a receiving storage SCP on loopback",
    "send": "sending the series to the node (C-STORE)",
    "assembly": "node: the series is complete; assembling the volume",
    "conditioning": "node: checking eligibility, reading the protocol from the tags",
    "synthesis": "node: synthesizing with RTFSyn",
    "encoding": "node: writing the derived series; then sending it to the receiver",
    "preview": "writing the preview (source | synthetic)",
}


def run_demo(options: DemoOptions, hold: Callable[[DemoResult], None] | None = None, *,
             stage: Callable[[str], None] | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> DemoResult:
    """Run the demo (see the module docstring); ``hold(result)`` runs before the servers stop.

    ``stage(name)`` is called as each of :data:`DEMO_STAGES` starts and
    ``progress(phase, done, total)`` during synthesis (e.g. a
    :class:`dicom_node.commands.progress_view.ProgressView`'s). Raises
    :class:`DemoError` when a step fails (the job failed or was rejected, a
    timeout, a refused association).
    """
    from dicom_node.node import Node
    from dicom_node.process.processor import SynthesisProcessor
    from dicom_node.tools.simseries import write_series

    announce = stage or (lambda _name: None)
    started = time.monotonic()
    check_checkpoint(str(options.checkpoint))
    run_dir = _run_dir(Path(options.workdir))
    target = str(options.target).upper()
    announce("simulate")
    volume, spacing, protocol = simulate_t1(options.seed, options.voxel_mm, options.slices)
    input_files = write_series(volume, spacing, protocol, run_dir / "input",
                               series_description="DEMO T1w simulated")
    announce("start")
    receiver = DemoReceiver(run_dir / "received")
    receiver_port = receiver.start()
    node: Any = None
    try:
        config = demo_config(options, run_dir, node_port=free_port(), receiver_port=receiver_port)
        config_path = run_dir / "node.toml"
        config_path.write_text(
            f"# written by rtfsyn demo, for: rtfsyn status --config {config_path}\n"
            f"[node]\ndata_dir = {json.dumps(str(config.node.data_dir))}\n")
        processor = SynthesisProcessor(config, stage=stage, progress=progress)
        node = Node(config, processor=processor).start()
        announce("send")
        send_series(input_files, node.address[1])
        job = wait_for_job(config.database_path, options.timeout_s)
        if job["state"] != "done":
            raise DemoError(f"the node's job must end 'done'. Found {job['state']!r}: "
                            f"{job.get('reason')}")
        received = sorted(receiver.files())
        if len(received) != int(job["n_derived"]):
            raise DemoError(f"the receiver must hold all {job['n_derived']} derived instances. "
                            f"Found {len(received)}.")
        announce("preview")
        png = _preview(input_files, received, run_dir / "preview.png", target)
        result = DemoResult(run_dir=run_dir, input_dir=run_dir / "input", input_files=input_files,
                            received_dir=receiver.out_dir, received_files=received,
                            node_output_dir=config.out_dir / f"job-{job['id']}",
                            job_log=config.database_path, config_path=config_path,
                            preview_png=png, job=job, node_address=node.address,
                            seconds=time.monotonic() - started)
        if hold is not None:
            hold(result)
        return result
    finally:
        if node is not None:
            node.stop(grace_seconds=2.0)
        receiver.stop()

"""Helpers for the node's service tests: free ports, configs (and their TOML), a test
storage SCP, an SCU, a fake processor, a stub synthesizer, a throw-away TLS CA and a CT
instance.

Everything runs on loopback; every server a test starts is stopped by the test;
readiness is polled with a deadline (:func:`wait_for`), never slept on. (A
module of its own, not ``conftest``: several test folders have a conftest.)
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts, StoragePresentationContexts
from pynetdicom.sop_class import Verification

from dicom_node.config import Config, parse_config
from dicom_node.store.joblog import JobSpec
from dicom_node.tools.loopback import free_port
from dicom_node.schedule.work import ProcessResult
from synthesis import grid
from synthesis.condition import prompt
from synthesis.protocol import MRProtocol

NODE_AET = "RTFSYN"


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def node_settings(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """Settings for a loopback node on a free port, data in ``tmp_path/var``, a quick quiet
    period and back-off; ``sections`` are merged in (e.g. ``routes=[...]``)."""
    data: dict[str, Any] = {
        "node": {"ae_title": NODE_AET, "host": "127.0.0.1", "port": free_port(),
                 "data_dir": str(tmp_path / "var"), "stable_seconds": 0.5},
        "export": {"max_attempts": 3, "backoff_seconds": 0.2, "backoff_max_seconds": 1.0,
                   "timeout_seconds": 5},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def node_config(tmp_path: Path, **sections: Any) -> Config:
    """:func:`node_settings`, validated into a :class:`Config`."""
    return parse_config(node_settings(tmp_path, **sections))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def write_config(data: dict[str, Any], path: Path) -> Path:
    """Write settings (tables of plain values, ``routes`` as an array of tables) as TOML."""
    lines: list[str] = []
    for section, body in data.items():
        if section == "routes":
            for route in body:
                lines += ["[[routes]]", *(f"{k} = {_toml_value(v)}" for k, v in route.items())]
            continue
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items() if k not in nested]
        for name, table in nested.items():
            lines += [f"[{section}.{name}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


class TestStorageSCP:
    """A pynetdicom storage SCP that keeps what it receives (the test's PACS)."""

    __test__ = False  # not a test class

    def __init__(self, ae_title: str = "TESTPACS", port: int | None = None,
                 status_for: Callable[[Any], int] | None = None,
                 ssl_context: Any = None) -> None:
        self.ae_title, self.port = ae_title, port or free_port()
        self.status_for = status_for
        self.ssl_context = ssl_context
        self.datasets: list[Any] = []
        self.calling_aets: list[str] = []
        self._lock = threading.Lock()
        self._server: Any = None

    def _store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.datasets.append(ds)
            self.calling_aets.append(event.assoc.requestor.ae_title)
        return self.status_for(ds) if self.status_for else 0x0000

    def start(self) -> "TestStorageSCP":
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)],
                                       ssl_context=self.ssl_context)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.datasets)


def send_files(files: list[Path], port: int, *, calling: str = "SCU", called: str = NODE_AET,
               abort: bool = False, tls_args: Any = None) -> list[int]:
    """C-STORE ``files`` in one association; release (or abort); returns the statuses."""
    ae = AE(ae_title=calling)
    for cx in StoragePresentationContexts[:127]:
        ae.add_requested_context(cx.abstract_syntax)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)
    if not assoc.is_established:
        raise ConnectionRefusedError(f"association refused (rejected={assoc.is_rejected})")
    statuses = []
    for f in files:
        response = assoc.send_c_store(f)
        if "Status" not in response:  # pynetdicom aborted: no response within its DIMSE timeout
            raise RuntimeError(f"no C-STORE response for {Path(f).name} (association aborted)")
        statuses.append(int(response.Status))
    if abort:
        assoc.abort()
    else:
        assoc.release()
    return statuses


def fake_processor(calls: list[JobSpec] | None = None) -> Callable[..., ProcessResult]:
    """A processor that copies the source slices into a 'derived' series (no model):
    new Series UID (the job's), new SOP UIDs (stable per job), Synthetic Data YES."""
    def process(job: JobSpec, files: list[Path], out_dir: Path) -> ProcessResult:
        if calls is not None:
            calls.append(job)
        written = []
        for i, src in enumerate(sorted(files)):
            ds = dcmread(src)
            uid = generate_uid(entropy_srcs=[job.derived_series_uid, str(ds.SOPInstanceUID)])
            ds.SeriesInstanceUID = job.derived_series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.SyntheticData = "YES"
            ds.ImageType = ["DERIVED", "SECONDARY"]
            path = out_dir / f"{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
        return ProcessResult(files=written, prompt=f"fake {job.target}")
    return process


def make_tls_material(folder: Path) -> dict[str, Path]:
    """A test CA and certificates signed by it: server (127.0.0.1/localhost) and client."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key: Any, cert: x509.Certificate) -> tuple[Path, Path]:
        crt, pem = folder / f"{stem}.crt", folder / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        return crt, pem

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("RTFSyn test CA"))
               .issuer_name(name("RTFSyn test CA")).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    out = dict(zip(("ca", "ca_key"), write("ca", ca_key, ca_cert)))
    for stem, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                        ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(f"rtfsyn-{stem}"))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"),
                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        out[f"{stem}_cert"], out[f"{stem}_key"] = write(stem, key, cert)
    return out


def make_ct_file(folder: Path) -> Path:
    """One tiny CT Image Storage instance (a storage class the node does not process)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "CT^PATIENT", "CT123"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((4, 4), np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class StubSynthesizer:
    """Follows the ``Synthesizer`` contract: resamples the input onto the output grid
    (no model; the pipeline's other stages run for real)."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=lambda: {
        "model_name": "RTFSyn", "model_version": "stub", "checkpoint_sha256": "0" * 64,
        "architecture": "stub", "device": "cpu"})
    refusals: dict[str, str] = field(default_factory=dict)  # target contrast -> lesion-check reason

    def target_refusal(self, contrast: str) -> str | None:
        return self.refusals.get(contrast)

    def __call__(self, volume: np.ndarray, spacing: Sequence[float], source: MRProtocol,
                 target: MRProtocol, output_spacing: Sequence[float] | None = None) -> Any:
        self.calls.append(dict(shape=volume.shape, spacing=tuple(spacing), source=source,
                               target=target, output_spacing=output_spacing))
        out_spacing = tuple(output_spacing or grid.working_spacing(spacing))
        normalized = (volume - volume.min()) / max(float(np.ptp(volume)), 1e-6)
        out = grid.resample(normalized.astype(np.float32), spacing, out_spacing, order=1)
        from synthesis.inference import SynthesisResult

        return SynthesisResult(1.0 - out, out_spacing, grid.origin_offset_mm(spacing, out_spacing),
                               prompt(source, target))

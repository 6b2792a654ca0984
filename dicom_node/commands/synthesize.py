"""``rtfsyn synthesize SRC_DIR OUT_DIR --target T2``: one series folder → derived series folder.

The same assemble → condition → synthesize → encode path as the node
(:func:`dicom_node.process.pipeline.process_series`), without networking. The
derived files are written to a hidden temporary folder beside ``OUT_DIR``
and moved into place only when every file has been written and read back,
so a failure leaves nothing behind.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TARGETS = ("T1", "T1SE", "T2", "PD", "FLAIR")
FORMATS = ("mr", "enhanced-mr", "parametric-map")
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "synthesize",
        help="synthesize a contrast from a folder holding one DICOM MR series",
        description="Read one MR series from SRC_DIR, synthesize the target contrast with "
                    "RTFSyn and write a derived DICOM series (Synthetic Data YES) to OUT_DIR.",
    )
    p.add_argument("src_dir", metavar="SRC_DIR", type=Path, help="folder with one DICOM series")
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path,
                   help="folder for the derived series (created; must be empty if it exists)")
    p.add_argument("--target", required=True, type=str.upper, choices=TARGETS,
                   help="contrast to synthesize")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu or cuda[:N] (default: auto)")
    p.add_argument("--checkpoint", default="default",
                   help="model checkpoint file, or 'default' for the bundled weights")
    p.add_argument("--allow-unvalidated-target", action="store_true",
                   help="synthesize a target even when the model failed its lesion check for it "
                        "(the checkpoint's .checks.json; default: refuse)")
    p.add_argument("--bias-correction", action="store_true",
                   help="N4 bias-field correction of the source before synthesis (SimpleITK; "
                        "adds seconds)")
    p.add_argument("--second-source", metavar="DIR", type=Path,
                   help="a folder with a T2-weighted series of the same study and frame of reference, "
                        "given to a model that takes a second source (the target then has the lesion "
                        "check of the pair; the shipped model takes one source; docs/ELIGIBILITY.md)")
    p.add_argument("--format", dest="output_format", default="mr", choices=FORMATS,
                   help="mr: one MR image per slice (default); enhanced-mr: one multi-frame "
                        "instance; parametric-map: float32 values")
    p.add_argument("--series-number-offset", type=int, default=1000,
                   help="derived Series Number = offset + 100 x source Series Number + a "
                        "slot per target and format (docs/PROVENANCE.md; default 1000)")
    p.set_defaults(func=run)


def _fail(message: str, code: int) -> int:
    print(f"rtfsyn synthesize: error: {message}", file=sys.stderr)
    return code


def find_series_files(src_dir: Path) -> dict[str, list[Path]]:
    """DICOM files under ``src_dir`` grouped by Series Instance UID (DICOMDIRs skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    for path in sorted(p for p in src_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["SeriesInstanceUID", "SOPClassUID"])
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            skipped.append(path)
            logger.warning("Skipped %s: not a readable DICOM file (%s)", path, type(exc).__name__)
            continue
        except Exception as exc:  # noqa: BLE001 - pydicom's parser raises what the bytes provoke
            skipped.append(path)  # (zlib.error for a broken deflated data set, struct.error, ...)
            logger.warning("Skipped %s: a damaged DICOM file (%s: %s)", path, type(exc).__name__, exc)
            continue
        if str(ds.get("SOPClassUID", "")) == "1.2.840.10008.1.3.10":  # Media Storage Directory
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "(no Series Instance UID)")),
                          []).append(path)
    if skipped:
        logger.info("Skipped %d files under %s that are not DICOM", len(skipped), src_dir)
    return series


def _describe(uid: str, files: list[Path], src_dir: Path) -> str:
    """One series for a person: its description, number, folder(s), file count and UID."""
    import pydicom

    header = pydicom.dcmread(files[0], stop_before_pixels=True,
                             specific_tags=["SeriesDescription", "SeriesNumber"])
    folders = sorted({str(f.parent.relative_to(src_dir)) or "." for f in files})
    where = ", ".join(folders[:3]) + (f" (+{len(folders) - 3} more)" if len(folders) > 3 else "")
    return (f"{str(header.get('SeriesDescription', '') or '(no description)')!r} (series "
            f"number {header.get('SeriesNumber', '?')}, folder {where}, {len(files)} files, "
            f"UID {uid})")


def _check_out_dir(out_dir: Path) -> str | None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        return f"{out_dir} exists and is not an empty folder; choose a new or empty OUT_DIR"
    return None


def _publish(staging: Path, out_dir: Path) -> list[Path]:
    """Move the finished files from ``staging`` into ``out_dir``."""
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked before synthesis
    staging.rename(out_dir)
    return sorted(out_dir.iterdir())


def run(args: argparse.Namespace) -> int:
    src_dir, out_dir = Path(args.src_dir), Path(args.out_dir)
    if not src_dir.is_dir():
        return _fail(f"{src_dir} is not a folder", EXIT_BAD_INPUT)
    problem = _check_out_dir(out_dir)
    if problem:
        return _fail(problem, EXIT_BAD_INPUT)
    series = find_series_files(src_dir)
    if not series:
        return _fail(f"no DICOM files found under {src_dir}", EXIT_BAD_INPUT)
    if len(series) > 1:
        listing = "; ".join(_describe(uid, found, src_dir) for uid, found in series.items())
        return _fail(f"{src_dir} holds {len(series)} series, one is expected: {listing}. "
                     "Point SRC_DIR at the folder of one of them", EXIT_BAD_INPUT)
    (files,) = series.values()
    second_files = None
    if args.second_source is not None:
        second_dir = Path(args.second_source)
        if not second_dir.is_dir():
            return _fail(f"--second-source {second_dir} is not a folder", EXIT_BAD_INPUT)
        found = find_series_files(second_dir)
        if len(found) != 1:
            return _fail(f"--second-source {second_dir} holds {len(found)} series, one is expected",
                         EXIT_BAD_INPUT)
        (second_files,) = found.values()

    from dicom_node.commands.progress_view import PIPELINE_STAGES, ProgressView
    from dicom_node.errors import DerivedSeriesError, RejectedSeries
    from dicom_node.process.pipeline import process_series
    from synthesis.inference import Synthesizer

    view = ProgressView(["model", *PIPELINE_STAGES],
                        descriptions={"model": f"loading the model ({args.checkpoint})"})
    view.stage("model")
    try:
        synthesizer = Synthesizer(args.checkpoint, device=args.device,
                                  bias_correction=args.bias_correction)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        return _fail(f"cannot load the model (checkpoint {args.checkpoint}): {exc}",
                     EXIT_BAD_INPUT)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        derived = process_series(files, args.target, staging, synthesizer,
                                 output_format=args.output_format,
                                 series_number_offset=args.series_number_offset,
                                 stage=view.stage, progress=view.progress,
                                 unvalidated_targets="allow" if args.allow_unvalidated_target else "refuse",
                                 second_files=second_files)
        written = _publish(staging, out_dir)
    except RejectedSeries as exc:
        return _fail(f"cannot process the series in {src_dir}: {exc.reason}", EXIT_BAD_INPUT)
    except ValueError as exc:  # e.g. a volume too small for the network
        return _fail(f"cannot synthesize from the series in {src_dir}: {exc}", EXIT_BAD_INPUT)
    except DerivedSeriesError as exc:
        return _fail(f"writing the derived series failed: {exc}", EXIT_FAILED)
    finally:
        view.close()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    with_second = f" and a T2w series ({len(second_files)} files)" if second_files else ""
    print(f"Synthesized {derived.target_protocol.contrast.value} from a "
          f"{derived.source_protocol.contrast.value} series ({len(files)} source files){with_second}.")
    print(f"Wrote {len(written)} files (series {derived.series_instance_uid}) to {out_dir}")
    print("Timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in derived.timings.items()))
    for warning in derived.warnings:
        print(f"Warning: {warning} (left out of the prompt)")
    return 0

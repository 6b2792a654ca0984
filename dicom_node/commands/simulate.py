"""``rtfsyn simulate``: write simulated subjects as NIfTI + JSON or as DICOM MR series.

Per subject (seed ``S + i``): the source T1w (with the acquisition effects
asked for) and clean 1 mm targets of the other contrasts, each with its
protocol. NIfTI: ``sub-<seed>_<contrast>.nii.gz`` with a ``.json`` beside it
(the protocol, spacing, seed, effects). DICOM: ``sub-<seed>/<contrast>/``, one
series per contrast, all of a subject's series in one study and one frame of
reference.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_DEFAULT_CONTRASTS = "T1,T2,PD,FLAIR"


def add_parser(subparsers: Any) -> None:
    """Register ``simulate`` on the ``rtfsyn`` sub-command parser."""
    p = subparsers.add_parser(
        "simulate", help="write simulated multi-contrast subjects (NIfTI or DICOM)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output folder (created)")
    p.add_argument("--subjects", type=int, default=1, help="number of subjects (default 1)")
    p.add_argument("--format", choices=("nifti", "dicom"), default="nifti",
                   help="nifti (.nii.gz + .json) or dicom (MR series per contrast)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the first subject (default: first test-split seed, 2000000)")
    p.add_argument("--contrasts", default=_DEFAULT_CONTRASTS,
                   help=f"contrasts to write, comma separated (default {_DEFAULT_CONTRASTS}); "
                        "T1 is the source, always written")
    p.add_argument("--field", type=float, choices=(1.5, 3.0), default=None,
                   help="field strength in T (default: random per subject)")
    p.add_argument("--effects", default="clean",
                   help="source acquisition effects: clean, random or a severity name "
                        "(noise, bias, ghosting, gibbs, thick_slices)")
    p.add_argument("--protocols", choices=("random", "preset"), default="random",
                   help="random realistic protocols or the clinical presets")
    p.add_argument("--enhanced", action="store_true",
                   help="DICOM: one Enhanced MR multi-frame instance per series")
    p.add_argument("--crop", type=int, default=None, metavar="MM",
                   help="keep only a central MM x MM x MM box (small test data)")
    p.add_argument("--cache-dir", type=lambda text: Path(text) if text else None, default=None,
                   help="reuse phantoms cached here (made and saved when missing; default and '': none)")
    p.set_defaults(func=run)


def _effects(name: str, rng: Any, source: Any) -> Any:
    from synthesis.simulate import SEVERITIES, random_effects

    if name == "random":
        return random_effects(rng, protocol=source)
    if name in SEVERITIES:
        return SEVERITIES[name]
    raise ValueError(f"--effects must be clean, random or one of {', '.join(SEVERITIES)}. "
                     f"Found {name!r}.")


def _check_choices(args: argparse.Namespace) -> None:
    """Fail before any work on an unknown --effects or --contrasts value."""
    from synthesis.simulate import SEVERITIES, parse_contrast

    if args.effects != "random" and args.effects not in SEVERITIES:
        raise ValueError(f"--effects must be clean, random or one of {', '.join(SEVERITIES)}. "
                         f"Found {args.effects!r}.")
    for name in args.contrasts.split(","):
        if name.strip():
            parse_contrast(name.strip())
    _crop_box((8, 8, 8), args.crop)


def _crop_box(shape: tuple[int, ...], size: int | None) -> tuple[slice, slice, slice]:
    if size is None:
        return (slice(None),) * 3  # type: ignore[return-value]
    if size < 4:
        raise ValueError(f"--crop must be at least 4 mm. Found {size}.")
    return tuple(slice(max((n - size) // 2, 0), max((n - size) // 2, 0) + min(size, n))
                 for n in shape)  # type: ignore[return-value]


def _short_name(contrast: str) -> str:
    """Folder/file name of a contrast: T1, T2, PD, FLAIR (from T1w, t2, ...)."""
    from synthesis.simulate import parse_contrast

    return {"T1w": "T1", "T2w": "T2", "PDw": "PD", "FLAIR": "FLAIR", "T2*w": "T2STAR"}[
        parse_contrast(contrast.strip()).value]


def simulate_subject(seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Render one subject; returns one record per volume (array, spacing, origin, protocol...)."""
    import numpy as np

    from synthesis.protocol import preset
    from synthesis.simulate import (degrade, load_or_make_subject, random_protocol, render,
                                    with_acquisition)

    rng = np.random.default_rng([seed, 20240])
    subject = load_or_make_subject(seed, args.cache_dir)
    field = args.field if args.field is not None else float(rng.choice([1.5, 3.0]))
    names = [_short_name(c) for c in args.contrasts.split(",") if c.strip()]
    targets = ["T1"] + [n for n in dict.fromkeys(names) if n != "T1"]

    def protocol_for(name: str) -> Any:
        return preset(name, field) if args.protocols == "preset" else random_protocol(
            name, rng, field_t=field)

    box = _crop_box(subject.shape, args.crop)
    origin = [o + (s.start or 0) for o, s in zip(subject.origin_mm, box[::-1])]
    records = []
    for name in targets:
        protocol = protocol_for(name)
        clean = render(subject, protocol, region=box)
        if name == "T1":
            effects = _effects(args.effects, rng, protocol)
            volume, spacing = degrade(clean, (1.0, 1.0, 1.0), effects, rng, axis=0)
            protocol = with_acquisition(protocol, effects)
        else:
            effects = _effects("clean", rng, protocol)
            volume, spacing = clean, (1.0, 1.0, 1.0)
            protocol = protocol.with_(slice_thickness_mm=1.0, voxel_mm=(1.0, 1.0, 1.0))
        # first output slice centre: half a slice minus half a voxel above the first 1 mm centre
        slice_origin = (origin[0], origin[1], origin[2] + 0.5 * (spacing[0] - 1.0))
        records.append(dict(name=name, volume=volume, spacing=tuple(spacing),
                            origin_mm=slice_origin, protocol=protocol, effects=effects,
                            role="source" if name == "T1" else "target", seed=seed))
    return records


def _write_nifti(records: list[dict[str, Any]], out_dir: Path, sub: str) -> None:
    import nibabel as nib
    import numpy as np

    for rec in records:
        dz, dy, dx = rec["spacing"]
        ox, oy, oz = rec["origin_mm"]
        affine = np.array([[-dx, 0, 0, -ox], [0, -dy, 0, -oy], [0, 0, dz, oz], [0, 0, 0, 1.0]])
        image = nib.Nifti1Image(np.ascontiguousarray(rec["volume"].transpose(2, 1, 0)), affine)
        image.header.set_xyzt_units("mm")
        stem = out_dir / f"{sub}_{rec['name']}"
        nib.save(image, f"{stem}.nii.gz")
        meta = dict(protocol=rec["protocol"].to_dict(), spacing_mm=list(rec["spacing"]),
                    origin_lps_mm=list(rec["origin_mm"]), axes="z,y,x (LPS)", seed=rec["seed"],
                    role=rec["role"], effects=rec["effects"].to_dict(),
                    shape=list(rec["volume"].shape))
        Path(f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")


def _write_dicom(records: list[dict[str, Any]], out_dir: Path, sub: str, seed: int,
                 enhanced: bool) -> None:
    from pydicom.uid import generate_uid

    from dicom_node.tools.simseries import PatientInfo, write_series

    study_uid = generate_uid(entropy_srcs=["rtfsyn-simulate", "study", str(seed)])
    for_uid = generate_uid(entropy_srcs=["rtfsyn-simulate", "for", str(seed)])
    patient = PatientInfo(patient_id=f"SIM{seed:07d}", study_id=f"SIM{seed % 100000}",
                          accession_number=f"SIMACC{seed:07d}")
    for number, rec in enumerate(records, start=1):
        write_series(rec["volume"], rec["spacing"], rec["protocol"], out_dir / sub / rec["name"],
                     study_uid=study_uid, frame_of_reference_uid=for_uid, series_number=number,
                     patient=patient, origin_mm=rec["origin_mm"], enhanced=enhanced,
                     seed=seed * 100 + number)


def run(args: argparse.Namespace) -> int:
    """Simulate ``args.subjects`` subjects into ``args.out_dir``; returns the exit status."""
    from tqdm import tqdm

    from synthesis.simulate import SPLIT_SEEDS

    if args.subjects < 1:
        raise SystemExit(f"--subjects must be at least 1. Found {args.subjects}.")
    try:
        _check_choices(args)
    except ValueError as exc:
        logger.error("Cannot simulate: %s", exc)
        return 2
    first = SPLIT_SEEDS["test"].start if args.seed is None else int(args.seed)
    if first < 0:
        raise SystemExit(f"--seed must be non-negative. Found {first}.")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for seed in tqdm(range(first, first + args.subjects), desc="simulate", unit="subject"):
        try:
            records = simulate_subject(seed, args)
        except ValueError as exc:
            logger.error("Cannot simulate: %s", exc)
            return 2
        sub = f"sub-{seed:04d}"
        if args.format == "nifti":
            _write_nifti(records, out_dir, sub)
        else:
            _write_dicom(records, out_dir, sub, seed, args.enhanced)
        logger.info("Wrote %s (%s) to %s", sub, ", ".join(r["name"] for r in records), out_dir)
    return 0

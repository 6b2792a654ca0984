"""Write a copy of a checkpoint with its lesion detector calibrated (``RTFSynConfig.lesion_gain``).

The detector returns a probability; inference composes ``min(1, gain * p)`` into the output
as the lesion fraction (:meth:`synthesis.inference.Synthesizer._with_lesions`). The gain is
fitted on validation subjects by scoring copies made with this tool (docs/TRAINING.md,
*The detector's probability as a lesion fraction*). The copy keeps every weight, the
record (``extra``) and adds ``extra.lesion_calibration`` (gain, the source's SHA-256, a
note); its model version differs from the source's whenever the gain is not 1.

Usage::

    python bench/lesion_gain.py default 1.4 --out runs/gain/g1.4.pt
    python bench/lesion_gain.py runs/gain/g1.4.pt 1.4 --out synthesis/weights/default.pt --note "rule 22"
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from synthesis import checkpoint as ckpt


def calibrated_copy(source: str | Path, changes: dict, out: str | Path, record: dict) -> Path:
    """Save ``source`` with the calibration fields ``changes`` (:data:`synthesis.checkpoint.CALIBRATION_FIELDS`)
    to ``out``, its record (``extra``) kept and ``extra.lesion_calibration`` = ``record`` plus the
    source's SHA-256 and model version; ValueError for a model without a detector, a value the
    config refuses, or weights that would not all carry over."""
    unknown = sorted(set(changes) - set(ckpt.CALIBRATION_FIELDS))
    if unknown:
        raise ValueError(f"not calibration fields: {', '.join(unknown)}")
    path = ckpt.default_checkpoint_path() if str(source) == "default" else Path(source)
    model, meta = ckpt.load(path)
    if not model.config.lesion_net:
        raise ValueError(f"{path}: the model has no lesion detector (lesion_net = false); nothing to calibrate")
    calibrated, carried = ckpt.with_architecture(model, changes)
    if carried["dropped"] or carried["new"]:
        raise ValueError(f"{path}: {carried['dropped']} tensors dropped, {carried['new']} new; the copy would not "
                         "hold the source's weights")
    extra = dict(meta["extra"])
    extra["lesion_calibration"] = {**record, "source_sha256": meta["sha256"],
                                   "source_model_version": meta["model_version"]}
    return ckpt.save(calibrated, out, extra=extra)


def calibrate(source: str | Path, gain: float, out: str | Path, note: str = "") -> Path:
    """Save ``source`` with ``lesion_gain = gain`` to ``out`` (:func:`calibrated_copy`)."""
    return calibrated_copy(source, {"lesion_gain": gain}, out, {"gain": float(gain), "note": note})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint path or 'default'")
    parser.add_argument("gain", type=float, help="lesion_gain, in (0, 10]")
    parser.add_argument("--out", required=True, type=Path, help="where to write the calibrated copy")
    parser.add_argument("--note", default="", help="why this gain (recorded in extra.lesion_calibration)")
    args = parser.parse_args(argv)
    try:
        written = calibrate(args.checkpoint, args.gain, args.out, args.note)
    except (OSError, ValueError) as exc:
        print(f"lesion_gain: {exc}", file=sys.stderr)
        return 2
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lesion visibility of a model, per target contrast: the node's safety gate.

A synthesized FLAIR that paints white-matter lesions as normal tissue (or darker)
is worse than no FLAIR: it looks plausible and hides what the contrast is asked
for. ``rtfsyn evaluate --write-checks`` measures, on the evaluation's lesion-load
set (:data:`CHECK_SET`, never trained on), the lesion/white-matter intensity ratio
of the model's output and of the truth, per target, and writes the result beside
the checkpoint (``<checkpoint>.checks.json``, bound to the checkpoint's SHA-256).
A target *passes* when the model's lesion contrast has the truth's sign and at
least :data:`MIN_CONTRAST_SHARE` of its size::

    (ratio_model - 1) / (ratio_truth - 1) >= MIN_CONTRAST_SHARE

The node refuses a target that failed (``[model] unvalidated_targets = "refuse"``,
the default), with a reason that quotes both ratios; targets the check did not
cover are not affected. A checks file of another checkpoint is ignored (logged).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, Mapping

__all__ = ["CHECK_SET", "MIN_CONTRAST_SHARE", "checks_path", "check_key", "lesion_checks", "write_checks",
           "load_checks", "refusal"]

logger = logging.getLogger(__name__)

CHECK_SET = "lesions_30"
MIN_CONTRAST_SHARE = 0.5
#: Below this lesion/WM contrast of the truth a target does not show lesions anyway (no check).
MIN_TRUTH_CONTRAST = 0.05


def checks_path(checkpoint: str | Path) -> Path:
    """``synthesis/weights/default.pt`` -> ``synthesis/weights/default.checks.json``."""
    path = Path(checkpoint)
    return path.with_name(path.stem + ".checks.json")


def lesion_checks(summary: Mapping[str, Any], second: str | None = None) -> dict[str, dict[str, Any]]:
    """Per target, from an evaluation summary of one model (``summary[set][target]`` with
    ``ratios`` and ``truth_ratios``): the two lesion/WM ratios, the share of the truth's
    contrast the model shows, and whether it passes. ``second``: the summary is of the model
    given a second source of that contrast (keys ``FLAIR+T2w``, :func:`check_key`)."""
    out: dict[str, dict[str, Any]] = {}
    for target, metrics in (summary.get(CHECK_SET) or {}).items():
        model = (metrics.get("ratios") or {}).get("lesion/WM")
        truth = (metrics.get("truth_ratios") or {}).get("lesion/WM")
        if model is None or truth is None or abs(truth - 1.0) < MIN_TRUTH_CONTRAST:
            continue
        share = (model - 1.0) / (truth - 1.0)
        out[check_key(target, second)] = {
            "lesion_wm_model": round(float(model), 4), "lesion_wm_truth": round(float(truth), 4),
            "contrast_share": round(float(share), 3), "passed": bool(share >= MIN_CONTRAST_SHARE)}
    return out


def write_checks(checkpoint: str | Path, sha256: str, summary: Mapping[str, Any], command: str,
                 paired: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write the checks of ``summary`` beside ``checkpoint``; returns the file. ``paired``:
    second-source contrast -> the summary of the model given that second source as well."""
    checks = lesion_checks(summary)
    for second, paired_summary in (paired or {}).items():
        checks.update(lesion_checks(paired_summary, second))
    if not checks:
        raise ValueError(f"The evaluation has no {CHECK_SET!r} set with lesion/WM ratios: run it with that "
                         f"set (rtfsyn evaluate --sets all) to write lesion checks.")
    path = checks_path(checkpoint)
    body = {"checkpoint_sha256": sha256, "set": CHECK_SET, "min_contrast_share": MIN_CONTRAST_SHARE,
            "written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command,
            "targets": checks}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def load_checks(checkpoint: str | Path, sha256: str | None) -> dict[str, dict[str, Any]]:
    """The per-target checks written for this checkpoint; empty when there are none, or
    when they were written for another file (a different SHA-256)."""
    path = checks_path(checkpoint)
    if not path.is_file():
        return {}
    try:
        body = json.loads(path.read_text())
        targets = dict(body["targets"])
        written_for = str(body["checkpoint_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"Cannot read the lesion checks {path}: {exc}") from exc
    if sha256 is not None and written_for != sha256:
        logger.warning("ignoring %s: written for checkpoint %s, not this one (%s)", path, written_for[:12],
                       sha256[:12])
        return {}
    return targets


def check_key(contrast: str, second: str | None = None) -> str:
    """The checks' key of a target: ``FLAIR``, or ``FLAIR+T2w`` when a T2w second source is given."""
    return f"{contrast}+{second}" if second else contrast


def refusal(checks: Mapping[str, Mapping[str, Any]], contrast: str, second: str | None = None) -> str | None:
    """Why ``contrast`` (from a first source, plus a ``second`` source of that contrast when
    given) must not be synthesized by this model, or None. A pair the checks do not cover
    has the verdict of the first source alone."""
    key = check_key(contrast, second)
    check = checks.get(key)
    if check is None and second:  # a pair never checked: the first source's own verdict holds
        check, second = checks.get(contrast), None
    if not check or check.get("passed", True):
        return None
    with_second = f" (with a {second} second source)" if second else ""
    return (f"this model's {contrast}{with_second} does not show white-matter lesions: lesion/WM "
            f"{check['lesion_wm_model']:.2f} where the truth is {check['lesion_wm_truth']:.2f} "
            f"({CHECK_SET} evaluation; at least {MIN_CONTRAST_SHARE:.0%} of the lesion contrast is required)")

"""The issue's targets, checked on the JSON result of ``rtfsyn evaluate``: each met or missed, measured.

A target whose sets or models were not evaluated is listed as "not measured", never dropped.
"""
from __future__ import annotations

from typing import Any, Iterable

from synthesis.evaluate import group_summary, seed_groups

__all__ = ["Check", "check_targets", "shift_sets", "PSNR_TARGET", "SSIM_TARGET", "RMSE_TARGET", "ANATOMY_DROP",
           "LOOKUP_MARGIN", "LESION_TOLERANCE", "ACQ_DROP", "ABLATION_MARGIN", "PD_ORACLE_GAP"]

PSNR_TARGET, SSIM_TARGET, RMSE_TARGET, PD_ORACLE_GAP = 30.0, 0.95, 2.0, 3.0
ANATOMY_DROP, LOOKUP_MARGIN, LESION_TOLERANCE = 2.0, 3.0, 0.15
ACQ_DROP, ABLATION_MARGIN = 1.5, 1.0
ROBUST_SETS = ("snr_20", "snr_10", "bias_0.3", "ghosting")
SLICE_SETS = ("slices_3mm", "slices_5mm")
BASE = "in_distribution"

Check = tuple[str, str, "bool | None", str]  # (section, statement, met (None: not measured), measured)


def _m(summary: dict, model: str, set_name: str, target: str) -> dict | None:
    return summary.get(model, {}).get(set_name, {}).get(target)


def shift_sets(result: dict) -> list[str]:
    """The anatomy and acquisition sets of ``result`` (the ablations' shift set)."""
    return [s["name"] for s in result["sets"] if s["group"] in ("anatomy", "acquisition")]


def _in_distribution(summary: dict, targets: list[str]) -> Iterable[Check]:
    sec = "in distribution"
    for t in ("T2w", "FLAIR"):
        m = _m(summary, "rtfsyn", BASE, t)
        if t in targets:
            yield (sec, f"T1w→{t}: PSNR ≥ {PSNR_TARGET:g} dB and SSIM ≥ {SSIM_TARGET}",
                   None if not m else m["psnr"] >= PSNR_TARGET and m["ssim"] >= SSIM_TARGET,
                   f"{m['psnr']:.2f} dB, {m['ssim']:.4f}" if m else "not measured")
    m, o = _m(summary, "rtfsyn", BASE, "PDw"), _m(summary, "oracle", BASE, "PDw")
    if "PDw" in targets:
        yield (sec, f"T1w→PDw within {PD_ORACLE_GAP:g} dB of its physics oracle",
               None if not (m and o) else o["psnr"] - m["psnr"] <= PD_ORACLE_GAP,
               f"{m['psnr']:.2f} vs oracle {o['psnr']:.2f} dB" if m and o else "not measured")
    for t in targets:
        m = _m(summary, "rtfsyn", BASE, t)
        yield (sec, f"T1w→{t}: brain-relative RMSE ≤ {RMSE_TARGET:g}%", None if not m else m["rmse_pct"] <= RMSE_TARGET,
               f"{m['rmse_pct']:.2f}%" if m else "not measured")


def _anatomy(result: dict, summary: dict, targets: list[str]) -> Iterable[Check]:
    sec = "anatomy shift"
    names = [s["name"] for s in result["sets"] if s["group"] == "anatomy"]
    if not names:
        yield (sec, "anatomy shift sets", None, "not measured (no anatomy set evaluated)")
        return
    for t in targets:
        drops = {s: _m(summary, "rtfsyn", BASE, t)["psnr"] - _m(summary, "rtfsyn", s, t)["psnr"]
                 for s in names if _m(summary, "rtfsyn", s, t) and _m(summary, "rtfsyn", BASE, t)}
        worst = max(drops, key=drops.get) if drops else None
        yield (sec, f"T1w→{t}: worst drop from in distribution ≤ {ANATOMY_DROP:g} dB",
               None if worst is None else drops[worst] <= ANATOMY_DROP,
               f"{drops[worst]:.2f} dB ({worst})" if worst else "not measured")
    for s in names:
        gaps = {t: _m(summary, "rtfsyn", s, t)["psnr"] - _m(summary, "lookup", s, t)["psnr"]
                for t in targets if _m(summary, "rtfsyn", s, t) and _m(summary, "lookup", s, t)}
        low = min(gaps, key=gaps.get) if gaps else None
        yield (sec, f"{s}: ≥ {LOOKUP_MARGIN:g} dB above the look-up baseline", None if low is None else
               gaps[low] >= LOOKUP_MARGIN, f"smallest margin {gaps[low]:+.2f} dB ({low})" if low else "not measured")
    for t in ("T2w", "FLAIR"):
        m = _m(summary, "rtfsyn", "lesions_30", t)
        pred, truth = (m["ratios"].get("lesion/WM"), m["truth_ratios"].get("lesion/WM")) if m else (None, None)
        rel = None if pred is None or not truth else pred / truth - 1.0
        yield (sec, f"lesions_30, T1w→{t}: lesion/WM contrast within ±{LESION_TOLERANCE:.0%} of the truth",
               None if rel is None else abs(rel) <= LESION_TOLERANCE,
               f"{pred:.3f} vs truth {truth:.3f} ({rel:+.1%})" if rel is not None else "not measured")


def _acquisition(result: dict, summary: dict, targets: list[str]) -> Iterable[Check]:
    sec = "acquisition shift"
    present = {s["name"] for s in result["sets"]}
    for s in ROBUST_SETS:
        drops = {t: _m(summary, "rtfsyn", BASE, t)["psnr"] - _m(summary, "rtfsyn", s, t)["psnr"]
                 for t in targets if s in present and _m(summary, "rtfsyn", s, t)}
        worst = max(drops, key=drops.get) if drops else None
        yield (sec, f"{s}: ≤ {ACQ_DROP:g} dB below in distribution", None if worst is None else drops[worst] <= ACQ_DROP,
               f"worst drop {drops[worst]:.2f} dB ({worst})" if worst else "not measured")
    for s in SLICE_SETS:
        gaps = {t: _m(summary, "rtfsyn", s, t)["psnr"] - _m(summary, "oracle-sliced", s, t)["psnr"]
                for t in targets if _m(summary, "rtfsyn", s, t) and _m(summary, "oracle-sliced", s, t)}
        low = min(gaps, key=gaps.get) if gaps else None
        yield (sec, f"{s}: at or above the sliced oracle", None if low is None else gaps[low] >= 0.0,
               f"smallest margin {gaps[low]:+.2f} dB ({low})" if low else "not measured")


def _ablations(result: dict, summary: dict, targets: list[str]) -> Iterable[Check]:
    sec = "ablations"
    groups = seed_groups(summary)
    reference = result.get("ablation_reference")
    shifts = [s for s in shift_sets(result) if s in set(result.get("ablation_sets") or shift_sets(result))]
    if not groups or not shifts:
        yield (sec, f"the full model beats each ablation by ≥ {ABLATION_MARGIN:g} dB (mean of 3 seeds) on the "
                    "shift sets", None, "not measured (no ablation checkpoints given)")
        return
    ref_members = groups.get(reference, []) if reference else ["rtfsyn"]
    ref = group_summary(summary, ref_members, shifts, targets)
    who = f"full model ({reference}, same budget)" if reference else "full model (evaluated checkpoint)"
    for name, members in groups.items():
        if name == reference:
            continue
        abl = group_summary(summary, members, shifts, targets)
        gaps = {t: ref[t]["mean"] - abl[t]["mean"] for t in targets if t in ref and t in abl}
        low = min(gaps, key=gaps.get) if gaps else None
        seeds = min((abl[t]["n"] for t in gaps), default=0)
        yield (sec, f"{who} beats {name} by ≥ {ABLATION_MARGIN:g} dB on the shift sets (mean of {seeds} seeds)",
               None if low is None else gaps[low] >= ABLATION_MARGIN,
               f"smallest margin {gaps[low]:+.2f} dB ({low})" if low else "not measured")


def check_targets(result: dict[str, Any]) -> list[Check]:
    """Every target of the issue as (section, statement, met, measured)."""
    summary, targets = result["summary"], list(result["targets"])
    return [*_in_distribution(summary, targets), *_anatomy(result, summary, targets),
            *_acquisition(result, summary, targets), *_ablations(result, summary, targets)]

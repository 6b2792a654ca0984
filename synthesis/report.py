"""docs/EVALUATION.md from the JSON result of ``rtfsyn evaluate``: method, tables, targets, pictures.

Every number in the report comes from the result; :func:`render_markdown` is pure, so a
committed report can be checked against its committed result.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthesis.ablations import DEFAULT_STEPS
from synthesis.evaluate import group_summary, seed_groups
from synthesis.report_targets import check_targets, shift_sets

__all__ = ["save_case_figure", "render_markdown", "check_targets"]

BASE = "in_distribution"


def save_case_figure(path: Path, source: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                     mask: np.ndarray, title: str, focus: np.ndarray | None = None) -> None:
    """Axial slice with the most ``focus`` voxels (default: the most brain): source, truth,
    synthesized, |error| (volumes (D,H,W) on one grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthesis.metrics import normalize_in_mask

    k = int(np.argmax((mask if focus is None or not focus.any() else focus & mask).sum((1, 2))))
    panels = [normalize_in_mask(v, mask)[k] for v in (source, truth, pred)]
    error = np.abs(panels[2] - panels[1]) * mask[k]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    for ax, img, name in zip(axes, panels + [error], ("source T1w", "truth", "synthesized", "|error|")):
        ax.imshow(img, cmap="gray" if name != "|error|" else "magma", vmin=0, vmax=1 if name != "|error|" else 0.3)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header))] + [_row(r) for r in rows]


def _get(summary: dict, model: str, set_name: str, target: str) -> dict | None:
    return summary.get(model, {}).get(set_name, {}).get(target)


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _method(result: dict) -> list[str]:
    lines = [
        "## Method", "",
        "- **Data**: simulated heads (`synthesis.simulate`, tissue fractions on a 1 mm grid from nilearn's "
        "MNI152 maps, randomized with `AnatomyEdits`), test-split subject seeds only "
        f"({result['subjects']}); the look-up table is fitted on training-split seeds. Source: the 3 T "
        "MPRAGE preset rendered with the subject's own tissue parameters and acquired on the *whole head* "
        "(`simulate.acquisition.acquire`); targets: the 3 T T2w, PDw and FLAIR presets rendered clean.",
        "- **Normalization**: the source is scaled by the tissue peak of the whole acquired head "
        "(`synthesis.intensity`), as the node does; truth, oracle and outputs are in brain-relative units "
        "(divided by the brain's 99.5th percentile). The model sees a box of whole acquired voxels around the "
        f"scoring region (crop `{result['crop']}`, 8 mm margin) and writes a 1 mm grid.",
        "- **Metrics**: PSNR, 3-D SSIM (Gaussian window 11, σ 1.5) and MAE inside the brain mask after "
        "normalizing prediction and truth by their own 0.5–99.5 percentiles in the brain (as the field "
        "reports); brain-relative RMSE: RMSE in the brain in % of the truth's brain 99.5th percentile, the "
        "prediction taken in its own (brain-relative) units; contrast ratios: means over voxels > 90% one "
        "tissue (from the simulator's fractions), prediction beside truth.",
        "- **Physics oracle**: the subject's true tissue fractions rendered with the nominal tissue "
        "parameters: all but the subject's own relaxation times and proton densities (jittered up to ±10%). "
        "A reference for what the data allow, not a competitor. **Sliced oracle**: the oracle put through "
        "the source's grid (slices or voxels, no noise) and linearly back to 1 mm: the bar for thick slices.",
        "- **Look-up baseline**: mean brain-relative target per normalized source intensity bin (256 bins), "
        "fitted on 2 training subjects with the in-distribution anatomy and the same presets.",
        "- **Shifts** are measured against `in_distribution` of the same seed. The anatomy edits are "
        "*shifts from the template* the previous model was trained on; the randomized generator draws edits "
        "of these kinds (never these subjects), so for a model trained on it they test anatomy it has not "
        "seen, not kinds of edit it has not seen.", "",
    ]
    rows = [[f"`{s['name']}`", s["group"], s["description"]] for s in result["sets"]]
    return lines + _table(["set", "group", "what differs from in_distribution"], rows)


def _in_distribution(result: dict, summary: dict, targets: list[str]) -> list[str]:
    models = [m for m in ("rtfsyn", "rtfsyn+N4", "oracle", "lookup") if m in summary]
    grouped = {m for members in seed_groups(summary).values() for m in members}  # in the ablation section
    models += [m for m in summary if m not in models and m not in grouped and m != "oracle-sliced" and BASE in summary[m]]
    rows = []
    for model in models:
        cells = [model]
        for t in targets:
            m = _get(summary, model, BASE, t)
            cells.append(f"{m['psnr']:.2f} / {m['ssim']:.4f} / {m['mae']:.4f} / {m['rmse_pct']:.2f}%" if m else "—")
        rows.append(cells)
    gap = ["gap to oracle (PSNR)"]
    for t in targets:
        m, o = _get(summary, "rtfsyn", BASE, t), _get(summary, "oracle", BASE, t)
        gap.append(f"{m['psnr'] - o['psnr']:+.2f} dB" if m and o else "—")
    lines = ["## In distribution", ""] + _table(["model"] + [f"{t} PSNR / SSIM / MAE / RMSE" for t in targets],
                                                rows + [gap])
    ratio_rows = []
    for t in targets:
        m, o = _get(summary, "rtfsyn", BASE, t), _get(summary, "oracle", BASE, t)
        if m:
            for name, truth in m["truth_ratios"].items():
                ratio_rows.append([t, name, _fmt_ratio(truth), _fmt_ratio(m["ratios"].get(name)),
                                   _fmt_ratio(o["ratios"].get(name) if o else None)])
    lines += ["", "Contrast ratios (tissue means, voxels > 90% one tissue):", ""] + \
        _table(["target", "ratio", "truth", "rtfsyn", "oracle"], ratio_rows)
    return lines + _error_split(summary, targets)


def _error_split(summary: dict, targets: list[str]) -> list[str]:
    """Where rtfsyn's squared error lies in distribution: pure voxels or partial ones."""
    rows = []
    for t in targets:
        split = (_get(summary, "rtfsyn", BASE, t) or {}).get("error_split") or {}
        if split.get("partial_voxels") is None:
            continue
        rows.append([t, f"{100 * split['partial_voxels']:.0f}%", f"{100 * split['partial_error']:.0f}%",
                     f"{split['pure_rmse']:.3f}" if split.get("pure_rmse") is not None else "—",
                     f"{split['partial_rmse']:.3f}" if split.get("partial_rmse") is not None else "—"])
    if not rows:
        return []
    return ["", "Where the error lies (rtfsyn; *pure*: voxels more than 90% one brain tissue, *partial*: the "
            "rest, tissue boundaries and mixtures; RMSE on the scale PSNR uses):", ""] + \
        _table(["target", "partial voxels", "their share of the squared error", "RMSE pure", "RMSE partial"], rows)


def _shift_table(result: dict, summary: dict, targets: list[str], group: str) -> list[str]:
    rows = []
    for s in (s["name"] for s in result["sets"] if s["group"] == group):
        cells = [f"`{s}`"]
        for t in targets:
            m, b = _get(summary, "rtfsyn", s, t), _get(summary, "rtfsyn", BASE, t)
            extra = [f"{name} {r['psnr']:.2f}" for name in ("lookup", "oracle-sliced", "oracle")
                     if (r := _get(summary, name, s, t)) and not (name == "oracle" and group == "acquisition")]
            cell = f"**{m['psnr']:.2f}** ({m['psnr'] - b['psnr']:+.2f}), {m['ssim']:.3f}" if m and b else "—"
            cells.append(cell + (f"; {', '.join(extra)}" if extra and m else ""))
        rows.append(cells)
    return _table(["set"] + [f"{t}: rtfsyn PSNR (Δ vs in distribution), SSIM; references" for t in targets], rows)


def _lesion_gate(result: dict) -> list[str]:
    """The lesion checks written for the node (``--write-checks``): which targets it refuses."""
    checks = result.get("lesion_checks")
    if not checks:
        return []
    rows = [[t, _fmt_ratio(c["lesion_wm_truth"]), _fmt_ratio(c["lesion_wm_model"]), f"{c['contrast_share']:.2f}",
             "synthesized" if c["passed"] else "**refused**"] for t, c in checks["targets"].items()]
    return ["", f"The node's lesion gate (`{checks['set']}`, written beside the checkpoint: a target passes when "
            f"the model shows at least {checks['min_contrast_share']:.0%} of the truth's lesion/WM contrast, "
            "with its sign; `[model] unvalidated_targets = \"refuse\"`, the default, refuses the others):", ""] + \
        _table(["target", "lesion/WM truth", "lesion/WM rtfsyn", "share of the contrast", "node"], rows)


def _lesion_table(result: dict, summary: dict, targets: list[str]) -> list[str]:
    rows = []
    for s in (s["name"] for s in result["sets"] if s["group"] in ("in_distribution", "anatomy")):
        for t in targets:
            m = _get(summary, "rtfsyn", s, t)
            if m and m["truth_ratios"].get("lesion/WM") is not None:
                rows.append([f"`{s}`", t, _fmt_ratio(m["truth_ratios"]["lesion/WM"]),
                             _fmt_ratio(m["ratios"]["lesion/WM"]), _fmt_ratio(m["truth_ratios"]["CSF/GM"]),
                             _fmt_ratio(m["ratios"]["CSF/GM"])])
    return _table(["set", "target", "lesion/WM truth", "lesion/WM rtfsyn", "CSF/GM truth", "CSF/GM rtfsyn"], rows)


def _paired(result: dict, summary: dict, targets: list[str]) -> list[str]:
    """The model given a second source (``rtfsyn+T2w``) beside the model given the T1 alone."""
    paired = next((m for m in summary if m.startswith("rtfsyn+") and m != "rtfsyn+N4"), None)
    if paired is None:
        return []
    second = paired.split("+", 1)[1]
    rows = []
    for s in (s["name"] for s in result["sets"]):
        for t in targets:
            p, m = _get(summary, paired, s, t), _get(summary, "rtfsyn", s, t)
            if not p:
                continue
            truth = p["truth_ratios"].get("lesion/WM")
            rows.append([f"`{s}`", t, f"{m['psnr']:.2f} / {m['ssim']:.3f}" if m else "—",
                         f"**{p['psnr']:.2f}** / {p['ssim']:.3f}", _fmt_ratio(truth),
                         _fmt_ratio(m["ratios"].get("lesion/WM")) if m else "—",
                         _fmt_ratio(p["ratios"].get("lesion/WM"))])
    return ["", f"## With a second source ({second} of the same subject)", "",
            f"The model also takes a {second} series of the same study on the T1's grid (the 3 T {second} "
            "preset, acquired like the T1 of each set, its own noise). PSNR / SSIM in the brain; lesion/WM: "
            "tissue means.", ""] + _table(
        ["set", "target", "T1 alone", f"T1 + {second}", "lesion/WM truth", "T1 alone", f"T1 + {second}"], rows)


def _n4(summary: dict, targets: list[str]) -> list[str]:
    if "rtfsyn+N4" not in summary:
        return []
    rows = [[f"`{s}`"] + [" / ".join(f"{m['psnr']:.2f}" if (m := _get(summary, model, s, t)) else "—"
                                     for model in ("rtfsyn", "rtfsyn+N4")) for t in targets]
            for s in summary["rtfsyn+N4"]]
    return ["", "## Bias-field correction (N4) before synthesis", ""] + \
        _table(["set"] + [f"{t} PSNR without / with N4" for t in targets], rows)


def _ablations(result: dict, summary: dict, targets: list[str]) -> list[str]:
    lines = ["", "## Ablations (same budget, several seeds)", ""]
    groups = seed_groups(summary)
    shifts = [s for s in shift_sets(result) if s in set(result.get("ablation_sets") or shift_sets(result))]
    if groups:
        rows = []
        for name, members in groups.items():
            cells = [name + (" (reference)" if name == result.get("ablation_reference") else ""), len(members)]
            for sets in ([BASE], shifts):
                g = group_summary(summary, members, sets, targets)
                cells += [f"{g[t]['mean']:.2f} ± {g[t]['spread']:.2f}" if t in g else "—" for t in targets]
            rows.append(cells)
        lines += _table(["variant", "seeds"] + [f"{t} in distribution" for t in targets] +
                        [f"{t} shift sets (mean)" for t in targets], rows)
        lines += ["", "PSNR in dB, mean ± sample standard deviation over seeds; each seed's shift value is its mean "
                  "over the shift sets it ran on. How each checkpoint was trained (from scratch or from "
                  "which weights, steps, seed): *Notes* below."]
    else:
        lines.append("No ablation checkpoints were given to this run, so there are no ablation rows.")
    if result.get("ablation_commands"):
        lines += ["", f"The plan from scratch, {DEFAULT_STEPS} steps a run (the rows above ran it only where the Notes say "
                  "\"from scratch\"):", "", "```"]
        lines += result["ablation_commands"] + ["```"]
    return lines


def _real_t1(result: dict) -> list[str]:
    real = result.get("real_t1")
    if not real:
        return []
    lines = ["", "## Real T1 without a truth", ""]
    if real.get("error"):
        return lines + [f"Not measured: {real['error']}"]
    lines += [f"Source: `{real['file']}` from the {real['package']} package ({real['licence']}); "
              f"{real['description']} Shape {real['shape']} at {real['spacing_mm']} mm; the source protocol is "
              "unknown and given as the 3 T MPRAGE preset. Classes: 3-class k-means of the source (CSF/GM/WM "
              f"fractions {real['source_class_fractions']}).", ""]
    rows = []
    for model, per_target in real["models"].items():
        for t, c in per_target.items():
            rows.append([model, t, f"{c['order_observed']} (physics: {c['order_expected']}) "
                         f"{'ok' if c['order_ok'] else '**wrong**'}",
                         f"{c['ratios']['GM/WM']:.3f} ({c['physics_ratios']['GM/WM']:.3f})",
                         f"{c['ratios']['CSF/GM']:.3f} ({c['physics_ratios']['CSF/GM']:.3f})",
                         " / ".join(f"{c['dice'][k]:.2f}" for k in ("csf", "gm", "wm")), f"{c['sharpness_ratio']:.2f}",
                         ", ".join(f"{k} {v:.2f}%" for k, v in c["stability_pct"].items())])
    return lines + _table(["model", "target", "tissue order (physics)", "GM/WM (pure-tissue physics)",
                           "CSF/GM (physics)", "Dice CSF/GM/WM", "sharpness out/src", "change of output"], rows)


def render_markdown(result: dict, *, command: str, pictures: dict[str, str]) -> str:
    """The whole of docs/EVALUATION.md from the JSON result of ``rtfsyn evaluate``."""
    summary, targets, info = result["summary"], result["targets"], result["model"]
    lines = ["# Evaluation", "", f"Reproduce: `{command}`", "",
             "Measured by `rtfsyn evaluate` on held-out simulated subjects and one real T1 image. Synthetic "
             "output, not for diagnosis.", "",
             f"- checkpoint: `{info.get('checkpoint')}` (sha256 `{str(info.get('checkpoint_sha256'))[:16]}…`)",
             f"- architecture: {info.get('architecture')}",
             f"- test subjects (seeds): {result['subjects']}; crop: {result['crop']}; device: {info.get('device')}; "
             f"evaluation time: {result.get('runtime_min', '?')} min"]
    training = result.get("training") or {}
    if training:
        lines.append(f"- training: {training.get('steps_done')} steps, {training.get('train_minutes')} min on "
                     f"{training.get('device')} ({training.get('threads')} threads), seed {training.get('seed')}, "
                     f"commit {str(training.get('commit'))[:10]}")
    lines += [""] + _method(result)
    lines += ["", "## Targets", ""] + _table(
        ["area", "target", "met", "measured"],
        [[sec, st, "not measured" if met is None else ("yes" if met else "**no**"), meas]
         for sec, st, met, meas in check_targets(result)])
    lines += [""] + _in_distribution(result, summary, targets)
    for group, title in (("anatomy", "Anatomy shift"), ("acquisition", "Acquisition shift"),
                         ("protocol", "Zero-shot protocol band")):
        if any(s["group"] == group for s in result["sets"]):
            lines += ["", f"## {title}", ""] + _shift_table(result, summary, targets, group)
            if group == "anatomy":
                lines += ["", "Lesion and CSF contrast (tissue means of truth and output):", ""]
                lines += _lesion_table(result, summary, targets)
                lines += _lesion_gate(result)
            if group == "acquisition" and result.get("normalization"):
                lines += ["", "Source normalization: the tissue peak over the source's white-matter mean "
                          "(1.00: the peak is white matter, as the normalization intends): " + ", ".join(
                              f"`{k}` {v:.2f}" for k, v in result["normalization"].items() if v is not None) + "."]
    lines += _paired(result, summary, targets) + _n4(summary, targets)
    lines += _ablations(result, summary, targets) + _real_t1(result)
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    if pictures:
        lines += ["", "## Pictures (source, truth, synthesized, |error|; the axial slice with the most brain, "
                  "lesion (lesion sets) or CSF (ventricle sets))", ""]
        lines += [f"![{key}]({rel})" for key, rel in pictures.items()]
    return "\n".join(lines) + "\n"

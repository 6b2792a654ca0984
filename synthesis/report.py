"""Evaluation report: Markdown tables and one picture per target."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["save_case_figure", "render_markdown", "check_targets"]

PSNR_TARGET, SSIM_TARGET, ROBUST_DROP, ABLATION_MARGIN = 30.0, 0.95, 1.5, 1.0
ORACLE = "oracle"  # evaluate.oracle_predictor's row


def save_case_figure(path: Path, source: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                     mask: np.ndarray, title: str) -> None:
    """Middle axial slice: source, truth, synthesized, |error| (each volume (D,H,W) on one grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthesis.metrics import normalize_in_mask

    k = int(np.argmax(mask.sum((1, 2))))
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


def _metric_table(summary: dict, models: list[str], condition: str, targets: list[str]) -> list[str]:
    lines = [_row(["model"] + [f"{t} PSNR / SSIM / MAE" for t in targets]), _row(["---"] * (len(targets) + 1))]
    for model in models:
        cells = [model]
        for t in targets:
            m = summary.get(model, {}).get(condition, {}).get(t)
            cells.append(f"{m['psnr']:.2f} / {m['ssim']:.4f} / {m['mae']:.4f}" if m else "—")
        lines.append(_row(cells))
    return lines


def check_targets(summary: dict, targets: list[str],
                  ablation_reference: str | None = None) -> list[tuple[str, bool, str]]:
    """(statement, met, measured) for each target of the issue.

    Ablations are compared with ``ablation_reference`` (the full architecture trained on
    their budget) when given, else with the evaluated model; the look-up baseline always
    with the evaluated model.
    """
    out = []
    full = summary.get("rtfsyn", {})
    for t in targets:
        m = full.get("clean", {}).get(t)
        if m:
            out.append((f"T1w→{t}: PSNR ≥ {PSNR_TARGET} dB and SSIM ≥ {SSIM_TARGET}",
                        m["psnr"] >= PSNR_TARGET and m["ssim"] >= SSIM_TARGET,
                        f"{m['psnr']:.2f} dB, {m['ssim']:.4f}"))
    for cond in full:
        if cond in ("clean", "zeroshot"):
            continue
        drops = [full["clean"][t]["psnr"] - full[cond][t]["psnr"] for t in targets
                 if t in full.get(cond, {}) and t in full.get("clean", {})]
        if drops:
            worst = max(drops)
            out.append((f"{cond}: ≤ {ROBUST_DROP} dB below clean", worst <= ROBUST_DROP, f"worst drop {worst:.2f} dB"))
    for other in summary:
        if other in ("rtfsyn", ablation_reference, ORACLE):
            continue  # the oracle is a reference for what the data allow, not a competitor
        base = ablation_reference if ablation_reference and other != "lookup" else "rtfsyn"
        ref = summary[base].get("clean", {})
        gaps = [ref[t]["psnr"] - summary[other]["clean"][t]["psnr"] for t in targets
                if t in summary[other].get("clean", {}) and t in ref]
        if gaps:
            who = "full model" if base == "rtfsyn" else f"full model ({base}, same budget)"
            out.append((f"{who} beats {other} by ≥ {ABLATION_MARGIN} dB", min(gaps) >= ABLATION_MARGIN,
                        f"smallest margin {min(gaps):.2f} dB"))
    return out


def render_markdown(result: dict, *, command: str, pictures: dict[str, str]) -> str:
    """The whole of docs/EVALUATION.md from the JSON result of ``rtfsyn evaluate``."""
    summary = result["summary"]
    targets = result["targets"]
    models = ["rtfsyn"] + [m for m in summary if m != "rtfsyn"]
    conditions = [c for c in result["conditions"] if c not in ("clean", "zeroshot")]
    info = result["model"]
    lines = [
        "# Evaluation",
        "",
        "Measured by `rtfsyn evaluate` on held-out simulated test subjects (never seen in training: the",
        "split is by subject seed, so no deformation is shared). Intensities normalized by their own",
        "0.5–99.5 percentiles inside the brain mask to [0, 1]; PSNR, 3-D SSIM (Gaussian window 11,",
        "σ 1.5) and MAE inside the brain mask. Source: a 3 T T1w MPRAGE render; targets: the 3 T presets.",
        "",
        f"Reproduce: `{command}`",
        "",
        f"- checkpoint: `{info.get('checkpoint')}` (sha256 `{str(info.get('checkpoint_sha256'))[:16]}…`)",
        f"- architecture: {info.get('architecture')}",
        f"- test subjects (seeds): {result['subjects']}; crop: {result['crop']}; device: {info.get('device')}",
    ]
    training = result.get("training") or {}
    if training:
        lines.append(f"- training: {training.get('steps_done')} steps, {training.get('train_minutes')} min on "
                     f"{training.get('device')} ({training.get('threads')} threads), subject seeds "
                     f"{training.get('train_subject_seeds')}, commit {str(training.get('commit'))[:10]}")
    lines += ["", "## Clean source", ""] + _metric_table(summary, models, "clean", targets)
    if conditions:
        lines += ["", "## Robustness (full model; the source degraded at a fixed severity)", "",
                  _row(["condition", "severity"] + [f"{t} PSNR (Δ vs clean)" for t in targets]),
                  _row(["---"] * (len(targets) + 2))]
        for cond in conditions:
            cells = [cond, result["severities"].get(cond, "")]
            for t in targets:
                m = summary["rtfsyn"].get(cond, {}).get(t)
                c = summary["rtfsyn"].get("clean", {}).get(t)
                cells.append(f"{m['psnr']:.2f} ({m['psnr'] - c['psnr']:+.2f})" if m and c else "—")
            lines.append(_row(cells))
    if "zeroshot" in result["conditions"]:
        lines += ["", "## Zero-shot protocol band (target protocols held out of training)", "",
                  f"Band: {result.get('zero_shot_band', '')}", ""]
        lines += _metric_table(summary, ["rtfsyn"], "zeroshot", targets)
    lines += ["", "## Targets", "", _row(["target", "met", "measured"]), _row(["---"] * 3)]
    for statement, met, measured in check_targets(summary, targets, result.get("ablation_reference")):
        lines.append(_row([statement, "yes" if met else "**no**", measured]))
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    if pictures:
        lines += ["", "## Pictures (middle slice: source, truth, synthesized, |error|)", ""]
        lines += [f"![{t}]({p})" for t, p in pictures.items()]
    return "\n".join(lines) + "\n"

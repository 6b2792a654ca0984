"""Figures of a full benchmark run (PNG, matplotlib), for docs/PERFORMANCE.md."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
_NAMES = {"node": "rtfsyn node", "node_baseline": "node before", "dcmtk": "dcmtk storescp",
          "orthanc": "Orthanc 1.10"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ingest_figure(results: dict[str, Any], path: Path) -> Path:
    """Bars: median instances/s per receiver, one and four associations."""
    plt = _plt()
    summary = results["ingest_summary"]
    kinds = [k for k in ("node_baseline", "node", "dcmtk", "orthanc") if k in summary]
    assocs = sorted({a for k in kinds for a in summary[k]}, key=int)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.8 / len(assocs)
    for i, n in enumerate(assocs):
        values = [summary[k].get(n, {}).get("median_instances_per_s", 0.0) for k in kinds]
        bars = ax.bar([x + i * width for x in range(len(kinds))], values, width,
                      label=f"{n} association{'s' if n != '1' else ''}")
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks([x + width * (len(assocs) - 1) / 2 for x in range(len(kinds))],
                  [_NAMES[k] for k in kinds])
    ax.set_ylabel("instances / s (median)")
    load = results.get("load_average", {}).get("ingest", {}).get("before", ["?"])[0]
    ax.set_title(f"Ingest: 500 MR 256x256 slices from dcmtk storescu (load avg {load})",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def e2e_figure(results: dict[str, Any], path: Path) -> Path:
    """One stacked bar: the end-to-end split."""
    plt = _plt()
    e2e = results["e2e"]
    parts = [(k, v) for k, v in e2e["split_seconds"].items() if v]
    fig, ax = plt.subplots(figsize=(7.0, 2.8))
    left = 0.0
    for name, seconds in parts:
        ax.barh([0], [seconds], left=left, label=f"{name} {seconds:.1f} s")
        left += seconds
    ax.set_yticks([])
    ax.set_xlabel("seconds after the last source instance was acknowledged")
    ax.set_title(f"End to end, {e2e['instances_in']} T1 slices: "
                 f"{e2e['seconds_last_instance_to_stored']:.1f} s ({e2e['model']})", fontsize=8)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.55))
    fig.subplots_adjust(left=0.03, right=0.97, top=0.85, bottom=0.5)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def scaling_figure(results: dict[str, Any], path: Path) -> Path:
    """Time and peak memory against volume size; against tile budget."""
    plt = _plt()
    sweeps = results["scaling"]
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2))
    size = sweeps["size"]
    voxels = [p["size"] ** 3 / 1e6 for p in size]
    ax = axes[0]
    ax.plot(voxels, [p["seconds"] for p in size], "o-", label="time (s)")
    ax.set_xlabel("input voxels (millions; 64^3 ... 256^3 at 1 mm)")
    ax.set_ylabel("seconds")
    twin = ax.twinx()
    twin.plot(voxels, [p["peak_bytes"] / 2**30 for p in size], "s--", color="tab:red",
              label="peak RSS (GiB)")
    twin.set_ylabel("peak RSS, GiB")
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="upper left")
    ax.set_title("Synthesizer on CPU, 2 threads", fontsize=9)
    tiles = sweeps["tile"]
    ax = axes[1]
    ax.plot([p["tile_voxels"] / 1e6 for p in tiles], [p["peak_bytes"] / 2**30 for p in tiles],
            "s-", color="tab:red")
    for p in tiles:
        ax.annotate(f"{p['seconds']:.0f} s", (p["tile_voxels"] / 1e6, p["peak_bytes"] / 2**30),
                    fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"max_tile_voxels (millions), {tiles[0]['size']}^3 volume")
    ax.set_ylabel("peak RSS, GiB")
    ax.set_title("Tile budget against memory (labels: time)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every figure the results allow; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, fn, name in (("ingest_summary", ingest_figure, "bench_ingest.png"),
                          ("e2e", e2e_figure, "bench_e2e.png"),
                          ("scaling", scaling_figure, "bench_scaling.png")):
        if key in results:
            written.append(fn(results, out_dir / name))
    return written


def markdown_tables(results: dict[str, Any]) -> str:
    """The tables of docs/PERFORMANCE.md, from one results JSON (printed by bench/run.py)."""
    out = []
    summary = results.get("ingest_summary", {})
    if summary:
        out += ["| receiver | associations | instances/s (median) | best | MB/s (median) | runs |",
                "| --- | --- | --- | --- | --- | --- |"]
        for kind, per in summary.items():
            for n, row in sorted(per.items(), key=lambda kv: int(kv[0])):
                out.append(f"| {_NAMES.get(kind, kind)} | {n} | "
                           f"{row['median_instances_per_s']:.0f} | "
                           f"{row['best_instances_per_s']:.0f} | {row['median_mb_per_s']:.1f} | "
                           f"{row['n']} |")
        out.append("")
    for name, points in results.get("scaling", {}).items():
        out += [f"Sweep `{name}`:", "",
                "| input | output spacing (mm) | output shape | max_tile_voxels | seconds "
                "| peak (GiB) |", "| --- | --- | --- | --- | --- | --- |"]
        for p in points:
            out.append(f"| {p['size']}^3 | {p['spacing']:g} | "
                       f"{'x'.join(map(str, p['output_shape']))} | {p['tile_voxels']:,} | "
                       f"{p['seconds']:.1f} | {p['peak_bytes'] / 2**30:.2f} |")
        out.append("")
    return "\n".join(out)

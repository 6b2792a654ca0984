"""Model scaling: Synthesizer time and peak memory against volume size, output spacing
and the tile budget (``max_tile_voxels``), on CPU (CUDA when available).

Each sweep runs in its own child process (``python -m bench.scaling --child``)
so that peak memory is that sweep's alone: on CPU the peak resident set size
(``VmHWM``, reset with ``/proc/self/clear_refs`` before each point; points run
in increasing memory order, so memory the allocator keeps from an earlier point
does not raise a later peak), on CUDA ``torch.cuda.max_memory_allocated``. The
volume is :func:`bench.model.phantom`, the model the default architecture with
seeded weights (:func:`bench.model.build_model`): timing does not depend on
the weights. One warm-up call per child; each point is then timed once.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

FULL_SIZES = (64, 96, 128, 160, 192, 224, 256)
QUICK_SIZES = (64, 96, 128)
SPACINGS = (1.5, 1.0, 0.8)  # output spacing, mm (increasing output size)


def _peak_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def child(points: list[dict[str, Any]], device: str, threads: int) -> list[dict[str, Any]]:
    """Time each point ``{"size", "spacing", "tile"}`` in this process; the results."""
    import torch

    from bench.model import build_model, phantom
    from synthesis.inference import Synthesizer
    from synthesis.protocol import preset

    torch.set_num_threads(threads)
    model = build_model(None)
    source, target = preset("T1", 3.0), preset("T2", 3.0)
    warm = Synthesizer.from_model(model, device=device)
    warm(phantom((48, 48, 48)), (1.0, 1.0, 1.0), source, target)
    out = []
    for point in points:
        syn = Synthesizer.from_model(model, device=device, max_tile_voxels=point.get("tile"))
        volume = phantom((point["size"],) * 3)
        spacing = point.get("spacing", 1.0)
        _peak_reset()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = syn(volume, (1.0, 1.0, 1.0), source, target, output_spacing=(spacing,) * 3)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _peak_bytes())
        out.append({**point, "spacing": spacing, "tile_voxels": syn.max_tile_voxels,
                    "seconds": seconds, "peak_bytes": peak, "device": device,
                    "output_shape": list(result.volume.shape)})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def sweeps(quick: bool) -> dict[str, list[dict[str, Any]]]:
    """The points of each sweep, in increasing memory order."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    spacing_size = 96 if quick else 128
    spacings = (1.5, 1.0) if quick else SPACINGS
    tile_size = 128 if quick else 160
    # The Synthesizer raises budgets below 80^3 to 80^3 tiles; None = its default.
    tiles = (96**3, None) if quick else (96**3, 128**3, None)
    return {"size": [{"size": n} for n in sizes],
            "spacing": [{"size": spacing_size, "spacing": s} for s in spacings],
            "tile": [{"size": tile_size, "tile": t} for t in tiles]}


def run_scaling(*, quick: bool, device: str = "cpu", threads: int = 2,
                progress: Any = None) -> dict[str, list[dict[str, Any]]]:
    """Every sweep in its own child process; ``{sweep: [point results]}``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    results = {}
    for name, points in sweeps(quick).items():
        cmd = [sys.executable, "-m", "bench.scaling", "--child", "--device", device,
               "--threads", str(threads), "--points", json.dumps(points)]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env,
                              cwd=ROOT, timeout=3600)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        if progress is not None:
            progress.update(1)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``--child``: measure the given points and print them as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--points", default="[]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.points), args.device, args.threads)))
    else:
        print(json.dumps(run_scaling(quick=args.quick, device=args.device,
                                     threads=args.threads), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Model benchmark: parameters, FLOPs, wall time and peak memory of RTFSyn.

Measures the default architecture (or a given checkpoint) on a 182x218x182
volume at 1 mm through the real :class:`~synthesis.inference.Synthesizer`:

* parameters: trainable RTFSyn parameters; the frozen text encoder separately;
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward
  (``encode`` + ``render_grid``), counted exactly at full size on the ``meta``
  device (no arithmetic runs), also for a 60^3 patch and a 160x192x160 volume;
* wall time: median of ``--runs`` Synthesizer calls after one warm-up call (tissue-peak
  normalization, ~1 mm working grid, network, decoding; ``--bias-correction`` adds N4);
* peak memory: CPU -> VmHWM (peak RSS) of a child process that does only the
  Synthesizer calls; CUDA -> ``torch.cuda.max_memory_allocated``;
* CPU training step: 2 patches of 48^3, encode + render_grid + 4096 queries,
  backward and AdamW step (median after warm-up).

Usage::

    python bench/model.py --device cpu --threads 2          # writes bench/results/model_cpu.json
    python bench/model.py --quick                           # smaller volume, one run
    python bench/model.py --device cpu --bias-correction    # with N4 (bench/results/model_cpu_n4.json)
    python bench/model.py --device cpu --second-source      # a two-source model given a second volume
                                                            # (bench/results/model_cpu_second.json)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig  # noqa: E402
from synthesis.protocol import preset  # noqa: E402
from synthesis.condition import PAIR_FEATURE_DIM

logger = logging.getLogger("bench.model")

FULL_SHAPE = (182, 218, 182)
QUICK_SHAPE = (96, 112, 96)
PROMPT_TOKENS = 100  # the preset prompts encode to 96-99 tokens
PUBLIC_RELEASE = {  # the paper's public code, as reported in the project's DESIGN.md
    "parameters": 184.4e6,
    "flops_per_60cube_patch": 48e12,
    "flops_per_160x192x160_volume": 7e15,
}


def build_model(checkpoint: str | None) -> RTFSyn:
    """The checkpoint's model, or the default architecture with seeded random weights."""
    if checkpoint:
        from synthesis.checkpoint import load

        return load(checkpoint)[0]
    torch.manual_seed(0)
    return RTFSyn(RTFSynConfig()).eval()


def phantom(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A head-sized uint16 volume: an ellipsoid with smooth texture (timing does not depend on content)."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij", sparse=True)
    inside = (zz**2 + yy**2 + xx**2) < 0.7
    texture = rng.random(shape, dtype=np.float32)
    return (inside * (400 + 800 * texture)).astype(np.uint16)


def count_flops(model: RTFSyn, shape: Sequence[int]) -> int:
    """FLOPs of ``render_grid(encode(x))`` for one volume of ``shape``, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from synthesis.text import TEXT_DIM, TextCondition

    meta = RTFSyn(model.config).to("meta").eval()
    tokens = PROMPT_TOKENS
    text = TextCondition(torch.zeros(1, tokens, TEXT_DIM, device="meta"),
                         torch.ones(1, tokens, dtype=torch.bool, device="meta"),
                         torch.zeros(1, TEXT_DIM, device="meta"))
    x = torch.zeros(1, 1, *shape, device="meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        meta(x, text, torch.zeros(1, PAIR_FEATURE_DIM, device="meta"))
    return int(counter.get_total_flops())


def text_encoder_parameters() -> int:
    from synthesis.text import get_text_encoder

    return sum(p.numel() for p in get_text_encoder().model.parameters())


def train_step_seconds(model: RTFSyn, steps: int = 4, patch: int = 48) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per training step on 2 patches (encode + render_grid + 4096 queries, backward, AdamW)."""
    from synthesis.text import TEXT_DIM, TextCondition

    model = RTFSyn(model.config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x, target = torch.rand(2, 1, patch, patch, patch, generator=gen), torch.rand(2, 1, patch, patch, patch)
    text = TextCondition(torch.randn(2, PROMPT_TOKENS, TEXT_DIM), torch.ones(2, PROMPT_TOKENS, dtype=torch.bool),
                         torch.randn(2, TEXT_DIM))
    features = torch.rand(2, PAIR_FEATURE_DIM)
    times, cpu = [], []
    for _ in range(steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        feats = model.encode(x, text, features)
        coords = torch.rand(2, 4096, 3, generator=gen) * (patch - 1)
        loss = (model.render_grid(feats) - target).abs().mean()
        loss = loss + model.query(feats, coords, torch.ones(2, 3)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return times[1:], cpu[1:]


def child(args: argparse.Namespace) -> None:
    """Run only the Synthesizer calls; print one JSON line with times and peak memory."""
    from tqdm import tqdm

    from synthesis.inference import Synthesizer

    torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "cuda" else "cpu"
    syn = Synthesizer.from_model(build_model(args.checkpoint), device=device,
                                 bias_correction=args.bias_correction)
    volume = phantom(args.shape)
    source, target = preset("T1", 3.0), preset("T2", 3.0)
    extra = {"second": phantom(args.shape, seed=1)} if args.second_source else {}
    if extra:
        target = preset("FLAIR", 3.0)  # a second source is given for PDw and FLAIR targets
    times, cpu = [], []
    for _ in tqdm(range(args.runs + 1), desc=f"Synthesizer {tuple(args.shape)} on {device}", file=sys.stderr):
        if device == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        syn(volume, (1.0, 1.0, 1.0), source, target, **extra)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    out: dict[str, Any] = {"times_s": times, "cpu_s_runs": cpu[1:], "peak_rss_bytes": _vm_hwm()}
    if device == "cuda":
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(out))


def _vm_hwm() -> int:
    """Peak resident set size of this process in bytes (``VmHWM`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_child(args: argparse.Namespace, device: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--device", device, "--runs", str(args.runs),
           "--threads", str(args.threads), "--shape", *map(str, args.shape)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.bias_correction:
        cmd += ["--bias-correction"]
    if args.second_source:
        cmd += ["--second-source"]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=_child_env(args.threads))
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def measure(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Every figure of the benchmark as one JSON-able dict."""
    torch.set_num_threads(args.threads)
    model = build_model(args.checkpoint)
    shape = tuple(args.shape)
    logger.info("Counting FLOPs (meta device)")
    result: dict[str, Any] = {
        "benchmark": "bench/model.py",
        "command": "python " + " ".join(["bench/model.py", *sys.argv[1:]]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device,
        "host": {"cpu_count": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
                 "python": platform.python_version(), "machine": platform.machine(),
                 "load_average_1m_at_start": round(os.getloadavg()[0], 2)},
        "architecture": model.summary(),
        "config": model.config.to_dict(),
        "volume_shape": list(shape),
        "volume_spacing_mm": [1.0, 1.0, 1.0],
        "bias_correction": args.bias_correction,
        "second_source": args.second_source,
        "parameters_trainable": model.num_parameters(),
        "parameters_text_encoder_frozen": text_encoder_parameters(),
        "flops_forward_volume": count_flops(model, shape),
        "flops_forward_60cube_patch": count_flops(model, (60, 60, 60)),
        "flops_forward_160x192x160": count_flops(model, (160, 192, 160)),
        "flops_method": "torch.utils.flop_counter.FlopCounterMode, encode + render_grid, exact shapes on the "
                        f"meta device, {PROMPT_TOKENS} prompt tokens (matmul/conv/attention FLOPs, 2 per "
                        "multiply-add)",
        "public_release": PUBLIC_RELEASE,
    }
    logger.info("Timing the Synthesizer in a child process")
    timing = run_child(args, device)
    times = timing.pop("times_s")
    result["host"]["load_average_1m_after_timing"] = round(os.getloadavg()[0], 2)
    result.update(
        runs=args.runs, warmup_s=times[0], wall_s_runs=times[1:], wall_s_median=statistics.median(times[1:]),
        cpu_s_median=statistics.median(timing["cpu_s_runs"]),
        **timing,
    )
    if device == "cpu" and not args.no_train_step:
        logger.info("Timing training steps")
        steps, cpu = train_step_seconds(model)
        result.update(train_step_s_runs=steps, train_step_s_median=statistics.median(steps),
                      train_step_cpu_s_median=statistics.median(cpu),
                      train_step_setup="2 x 48^3 patches, encode + render_grid + 4096 queries, backward, AdamW")
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown table of the headline figures beside the public release."""
    pub = result["public_release"]
    mem = result.get("cuda_max_allocated_bytes", result.get("peak_rss_bytes", 0)) / 2**30
    mem_kind = "CUDA max allocated" if "cuda_max_allocated_bytes" in result else "peak RSS"
    shape = "x".join(map(str, result["volume_shape"]))
    rows = [
        ("Trainable parameters", f"{result['parameters_trainable'] / 1e6:.2f} M", f"{pub['parameters'] / 1e6:.1f} M"),
        ("Frozen text encoder parameters", f"{result['parameters_text_encoder_frozen'] / 1e6:.1f} M", "-"),
        ("FLOPs, one 60^3 patch", f"{result['flops_forward_60cube_patch'] / 1e9:.1f} G",
         f"~{pub['flops_per_60cube_patch'] / 1e12:.0f} T"),
        ("FLOPs, 160x192x160 volume", f"{result['flops_forward_160x192x160'] / 1e12:.2f} T",
         f"~{pub['flops_per_160x192x160_volume'] / 1e15:.0f} P"),
        (f"FLOPs, {shape} volume", f"{result['flops_forward_volume'] / 1e12:.2f} T", "-"),
        (f"Wall time, {shape} @ 1 mm ({result['device']}, median of {result['runs']}"
         f"{', N4 on' if result.get('bias_correction') else ''}"
         f"{', with a second source' if result.get('second_source') else ''})",
         f"{result['wall_s_median']:.1f} s", "-"),
        (f"Peak memory ({mem_kind})", f"{mem:.2f} GiB", "-"),
    ]
    if result["device"] == "cpu":
        rows.insert(-1, ("CPU time of that call (all threads)", f"{result['cpu_s_median']:.1f} s", "-"))
    if "train_step_s_median" in result:
        rows.append(("Training step, 2 x 48^3 (CPU), wall / CPU time",
                     f"{result['train_step_s_median']:.2f} s / {result['train_step_cpu_s_median']:.2f} s", "-"))
    host = result["host"]
    rows.append(("Threads; 1-min load average at start / after timing",
                 f"{host['torch_threads']}; {host['load_average_1m_at_start']} / "
                 f"{host.get('load_average_1m_after_timing', '-')}", "-"))
    lines = ["| | this model | public release |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--quick", action="store_true", help=f"a {QUICK_SHAPE} volume and one run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint instead of the default architecture")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON")
    parser.add_argument("--no-train-step", action="store_true", help="skip the CPU training-step timing")
    parser.add_argument("--bias-correction", action="store_true",
                        help="N4 bias correction of the source in every call (Synthesizer(bias_correction=True))")
    parser.add_argument("--second-source", action="store_true",
                        help="give a two-source model (--checkpoint) a second volume in every call")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.threads < 1:
        parser.error(f"--runs and --threads must be >= 1. Found {args.runs}, {args.threads}.")
    if args.second_source and not args.checkpoint:
        parser.error("--second-source needs --checkpoint: a model that takes a second source.")
    if args.shape is None:
        args.shape = list(QUICK_SHAPE if args.quick else FULL_SHAPE)
    if args.quick and "--runs" not in (argv if argv is not None else sys.argv):
        args.runs = 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        logger.error("--device cuda: not measured (no GPU in this environment).")
        return 2
    result = measure(args, device)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ("_quick" if args.quick else "") + ("_n4" if args.bias_correction else "") \
        + ("_second" if args.second_source else "")
    path = args.out / f"model_{device}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

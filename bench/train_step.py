"""Seconds per training step of the default RTFSyn network on CPU: fp32, bf16 autocast,
bf16 + channels-last, measured in one run (same machine state), medians of ``--steps``.

    python bench/train_step.py [--patch 64] [--batch 2] [--threads 1] [--steps 4]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from synthesis.condition import PAIR_FEATURE_DIM  # noqa: E402
from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig  # noqa: E402
from synthesis.text import TextCondition  # noqa: E402


def step_seconds(patch: int, batch: int, steps: int, bf16: bool, channels_last: bool) -> list[float]:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig())
    x = torch.rand(batch, 1, patch, patch, patch)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    text = TextCondition(tokens=torch.randn(batch, 24, 384), mask=torch.ones(batch, 24, dtype=torch.bool),
                         pooled=torch.randn(batch, 384))
    features = torch.rand(batch, PAIR_FEATURE_DIM)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            feats = model.encode(x, text, features)
        feats = feats.to("cpu", torch.float32)
        out, bases = model.render_grid(feats, with_bases=True)
        loss = out.mean() + bases.abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"patch": args.patch, "batch": args.batch, "threads": args.threads,
              "load_average_before": os.getloadavg()[0]}
    for name, bf16, cl in (("fp32", False, False), ("bf16", True, False), ("bf16_channels_last", True, True)):
        times = step_seconds(args.patch, args.batch, args.steps, bf16, cl)
        result[name] = round(statistics.median(times), 2)
        print(f"{name:>20}: median {result[name]:.2f} s/step over {len(times)} steps", flush=True)
    result["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

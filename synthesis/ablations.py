"""The ablation plan: which architecture variants are trained on one budget with several
seeds, and the ``rtfsyn train`` / ``rtfsyn evaluate`` command lines that do it
(``bench/ablations.py`` runs them; ``rtfsyn evaluate`` quotes them in its report)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Sequence

__all__ = ["VARIANTS", "DEFAULT_STEPS", "run_dir", "train_argv", "evaluate_argv", "commands"]

#: variant name -> RTFSynConfig overrides (``full``: the default architecture, the reference).
VARIANTS: dict[str, dict] = {
    "full": {},
    "no-text": {"fusion": "none"},
    "global-text": {"fusion": "global"},
    "no-refinement": {"refinement": "none"},
    "no-dynconv": {"kernel_bank": 0},
}
DEFAULT_STEPS = 3600


def run_dir(root: Path | str, name: str, seed: int) -> Path:
    """Where variant ``name`` with seed ``seed`` trains."""
    return Path(root) / f"{name}-s{seed}"


def train_argv(name: str, seed: int, *, steps: int, root: Path | str = "runs/ablations",
               config: str = "config/train.toml", extra: Sequence[str] = (),
               init: str | None = None) -> list[str]:
    """The ``rtfsyn train`` arguments of one variant and seed: from scratch, or with ``init``
    (``"default"`` or a checkpoint path) from those weights with the variant's switch applied
    (the weights that still fit are carried over, :func:`synthesis.checkpoint.with_architecture`).
    From weights, every variant, ``full`` included, leaves out the lesion detector: it needs the
    text fusion (``no-text`` cannot keep it), and the variants must differ only in their switch."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown ablation variant {name!r}. Known: {', '.join(VARIANTS)}.")
    model = {**VARIANTS[name], "lesion_net": False} if init else VARIANTS[name]
    argv = ["train", "--config", config, "--set", f"model={json.dumps(model, sort_keys=True)}",
            "--set", f"seed={int(seed)}", "--set", f"init_checkpoint={json.dumps(init)}",
            "--steps", str(int(steps)), "--out-dir", str(run_dir(root, name, seed))]
    for item in extra:
        argv += ["--set", item]
    return argv


def evaluate_argv(names: Sequence[str], seeds: Sequence[int], *, root: Path | str = "runs/ablations",
                  report: str = "docs/EVALUATION.md", extra: Sequence[str] = ()) -> list[str]:
    """The ``rtfsyn evaluate`` arguments that report the shipped model with every variant's seeds."""
    argv = ["evaluate", "--checkpoint", "default", "--report", report]
    for name in names:
        for seed in seeds:
            argv += ["--ablation", f"{name}/seed{seed}={run_dir(root, name, seed) / 'model.pt'}"]
    if "full" in names:
        argv += ["--ablation-reference", "full"]
    return argv + list(extra)


def commands(names: Sequence[str], *, seeds: Sequence[int] = (0, 1, 2), steps: int = DEFAULT_STEPS,
             root: str = "runs/ablations") -> list[str]:
    """The shell commands, one a line: every training run, then the evaluation."""
    lines = [shlex.join(["rtfsyn", *train_argv(n, s, steps=steps, root=root)]) for n in names for s in seeds]
    return lines + [shlex.join(["rtfsyn", *evaluate_argv(names, seeds, root=root)])]

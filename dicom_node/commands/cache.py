"""``rtfsyn cache [show|clear] [--dir DIR]``: the simulated-subject cache of train/evaluate.

``rtfsyn train`` and ``rtfsyn evaluate`` keep every simulated head they build in
``var/sim-cache`` (``[data] cache_dir`` in ``config/train.toml``,
``--cache-dir``): about 130 MB per subject as float16 tissue maps, so that the
next run does not simulate it again. A small evaluation leaves a few hundred MB.
``show`` states its size; ``clear`` removes the cached subjects (only the cache's
own files; anything else in the folder is left alone). They are rebuilt, the
same, on demand.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("var/sim-cache")
_PATTERNS = ("subject-v*.npz", ".subject-v*.tmp")  # cached subjects, interrupted writes


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("cache", help="show or clear the simulated-subject cache",
                              description="State the size of the cache of simulated subjects "
                                          "(train, evaluate) or remove them.")
    p.add_argument("action", nargs="?", choices=("show", "clear"), default="show",
                   help="show (default): files and size; clear: remove the cached subjects")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                   help="the cache folder (default: %(default)s)")
    p.set_defaults(func=run)


def cached_files(folder: Path) -> list[Path]:
    """The cache's own files in ``folder`` (none when it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted({p for pattern in _PATTERNS for p in folder.glob(pattern) if p.is_file()})


def describe(folder: Path) -> str:
    """``DIR: N cached subject(s), X MB``."""
    files = cached_files(folder)
    size = sum(p.stat().st_size for p in files)
    return f"{folder}: {len(files)} cached subject file(s), {size / 1e6:.0f} MB"


def cache_note(folder: str | Path | None) -> str | None:
    """The line train/evaluate print about the cache they used (None: no cache)."""
    if not folder:
        return None
    return (f"Simulated subjects are cached in {describe(Path(folder))}; "
            f"`rtfsyn cache clear --dir {folder}` removes them.")


def run(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if args.action == "show":
        print(describe(folder))
        return 0
    files = cached_files(folder)
    freed = 0
    for path in files:
        try:
            size = path.stat().st_size
            path.unlink()
            freed += size
        except OSError as exc:
            print(f"rtfsyn cache: cannot remove {path}: {exc}", file=sys.stderr)
            return 1
    print(f"removed {len(files)} file(s), {freed / 1e6:.0f} MB, from {folder}")
    return 0

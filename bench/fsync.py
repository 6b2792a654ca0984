"""How long making one received instance durable takes, in the orders the spool could use.

Each variant writes ``--count`` files of ``--size`` bytes into a fresh folder
under ``--dir`` (default: the node's ``var/``, the file system the spool uses),
renames each into place and makes it durable:

* ``sequential``: fsync the file, then fsync the folder (the spool before);
* ``parallel``: fsync the file and the folder at the same time (the spool now);
* ``file_only``: fsync the file only (not enough by POSIX: the rename may be lost);
* ``none``: no fsync (what dcmtk storescp does by default).

Usage: ``python bench/fsync.py [--count 150] [--size 131072] [--rounds 2]``
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _variants(pool: ThreadPoolExecutor) -> dict[str, Callable[[Path, Path], None]]:
    def parallel(path: Path, folder: Path) -> None:
        future = pool.submit(_fsync, path)
        _fsync(folder)
        future.result()

    return {"sequential": lambda path, folder: (_fsync(path), _fsync(folder)),
            "parallel": parallel,
            "file_only": lambda path, _folder: _fsync(path),
            "none": lambda _path, _folder: None}


def measure(base: Path, count: int, size: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per instance of each variant, one value per round."""
    data = os.urandom(size)
    out: dict[str, list[float]] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for round_ in range(rounds):
            for name, durable in _variants(pool).items():
                folder = base / f"{name}-{round_}"
                folder.mkdir()
                start = time.perf_counter()
                for i in range(count):
                    tmp, final = folder / f".part{i}", folder / f"{i}.dcm"
                    tmp.write_bytes(data)
                    os.replace(tmp, final)
                    durable(final, folder)
                out.setdefault(name, []).append(
                    round(1e3 * (time.perf_counter() - start) / count, 3))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=150)
    parser.add_argument("--size", type=int, default=131072)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=ROOT / "var")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-fsync-", dir=args.dir))
    try:
        result = measure(base, args.count, args.size, args.rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps({"ms_per_instance": result, "load_average": os.getloadavg(),
                      "dir": str(args.dir)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

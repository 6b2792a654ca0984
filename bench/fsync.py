"""How long making one received instance durable takes, in the orders the spool could use.

Each variant writes ``--count`` files of ``--size`` bytes into a fresh folder
under ``--dir`` (default: the node's ``var/``, the file system the spool uses),
renames each from a temporary folder into place (as the receiver does) and makes it durable:

* ``sequential``: fsync the file, then fsync the folder (the spool before);
* ``parallel``: fsync the file and the folder at the same time (the spool now);
* ``file_only``: fsync the file only (not enough by POSIX: the rename may be lost);
* ``none``: no fsync (what dcmtk storescp does by default).

It also reports the median time of creating each temporary file (``O_CREAT | O_EXCL``,
``create_us_median``): the receiver creates one per instance, in a folder of its own
(115-350 us here, in ``var/`` and in ``/tmp`` alike; docs/NETWORK.md).

Usage: ``python bench/fsync.py [--count 150] [--size 131072] [--rounds 2]``
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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


def measure(base: Path, count: int, size: int, rounds: int
            ) -> tuple[dict[str, list[float]], list[float]]:
    """Milliseconds per instance of each variant, one value per round; and the seconds each
    temporary file took to create."""
    data = os.urandom(size)
    out: dict[str, list[float]] = {}
    creates: list[float] = []
    temp = base / "tmp"  # as the receiver does: a folder of its own, renamed from there
    temp.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for round_ in range(rounds):
            for name, durable in _variants(pool).items():
                folder = base / f"{name}-{round_}"
                folder.mkdir()
                start = time.perf_counter()
                for i in range(count):
                    tmp, final = temp / f"{name}-{round_}-{i}.part", folder / f"{i}.dcm"
                    started = time.perf_counter()
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    creates.append(time.perf_counter() - started)
                    with open(fd, "wb") as fh:
                        fh.write(data)
                    os.replace(tmp, final)
                    durable(final, folder)
                out.setdefault(name, []).append(
                    round(1e3 * (time.perf_counter() - start) / count, 3))
    return out, creates


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
        result, creates = measure(base, args.count, args.size, args.rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps({"ms_per_instance": result,
                      "create_us_median": round(1e6 * statistics.median(creates), 1),
                      "load_average": os.getloadavg(),
                      "dir": str(args.dir)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

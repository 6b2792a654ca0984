"""The ``rtfsyn`` command: one console script, one sub-command per module."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

# Sub-command modules under dicom_node.commands, in the order --help lists them.
COMMANDS = ("serve", "status", "resend", "synthesize", "simulate", "train", "evaluate", "demo",
            "cache")
# Commands that draw progress bars: their log lines go through tqdm.write so that a
# bar is never broken up by a log line (tqdm.contrib.logging.logging_redirect_tqdm).
BAR_COMMANDS = frozenset({"synthesize", "simulate", "train", "evaluate", "demo"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtfsyn",
        description="RTFSyn node: a DICOM node that synthesizes missing MRI contrasts.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dicom_node.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dicom_node.commands.{name}":
                continue  # not built yet
            raise
        module.add_parser(sub)
    return parser


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else (logging.INFO if verbosity == 0 else logging.DEBUG)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pynetdicom", "transformers", "urllib3", "pylibjpeg", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given (e.g. for "how to reproduce" lines)
    configure_logging(args.verbose)
    try:
        if args.command in BAR_COMMANDS:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

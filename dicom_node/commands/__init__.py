"""Sub-commands of ``rtfsyn``; each module has ``add_parser(subparsers)`` and ``run(args) -> int``."""

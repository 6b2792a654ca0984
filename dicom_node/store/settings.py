"""The ``[database]`` table of ``config/node.toml``: where the job log lives.

``[database]`` absent (or without ``url``): SQLite at ``data_dir/joblog.sqlite``,
one node process. ``url = "postgresql+psycopg://user:password@host:port/db"``: a
PostgreSQL database that several node processes share (docs/OPERATIONS.md,
"Scale-out"). Errors name the key and the rule, never the URL itself (it may
hold a password).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from dicom_node.config_checks import ConfigError, check_no_unknown, check_string

__all__ = ["DatabaseConfig", "parse_database", "DATABASE_DRIVERS"]

DATABASE_DRIVERS = ("sqlite", "postgresql+psycopg")  # accepted URL schemes


@dataclass(frozen=True)
class DatabaseConfig:
    """``url``: a SQLAlchemy URL of the job log (``postgresql+psycopg://...`` shared by
    several node processes, or ``sqlite:///path``); None: ``data_dir/joblog.sqlite``."""

    url: str | None = None

    @property
    def shared(self) -> bool:
        """True for a database server that several node processes can share."""
        return bool(self.url) and not str(self.url).startswith("sqlite")


def parse_database(raw: Mapping[str, Any]) -> DatabaseConfig:
    """Validate the ``[database]`` table."""
    check_no_unknown("database", raw, {"url"})
    if "url" not in raw:
        return DatabaseConfig()
    url = check_string("database.url", raw["url"])
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in DATABASE_DRIVERS:
        raise ConfigError(f"database.url must start with one of "
                          f"{', '.join(d + '://' for d in DATABASE_DRIVERS)}. "
                          f"Found scheme {scheme!r}.")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError as exc:
        raise ConfigError("database.url is not a valid database URL (the form is "
                          "postgresql+psycopg://user:password@host:port/database).") from exc
    return DatabaseConfig(url=url)

"""The ``[http]`` and ``[notify]`` tables of ``config/node.toml``, validated like the rest.

``[http]`` absent: no HTTP service. ``[notify]`` absent: no webhook. Every error
names the key, the rule and the value found (:class:`~dicom_node.config_checks.ConfigError`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from dicom_node.config_checks import (ConfigError, check_integer, check_no_unknown,
                                      check_number, check_path, check_port, check_string,
                                      check_table)

__all__ = ["HttpConfig", "NotifyConfig", "parse_http", "parse_notify", "MIN_TOKEN_LENGTH"]

MIN_TOKEN_LENGTH = 16  # characters; a shorter bearer token is refused


@dataclass(frozen=True)
class HttpConfig:
    """The status service: listen on ``host:port`` (port 0: a free one, for tests);
    ``token``: when set, every endpoint but ``/health`` and ``/ready``'s status code
    needs ``Authorization: Bearer <token>`` (or HTTP Basic with the token as password);
    ``refresh_seconds``: how often the status page reloads itself."""

    port: int
    host: str = "127.0.0.1"
    token: str | None = None
    refresh_seconds: int = 10

    def __repr__(self) -> str:  # never print the token
        return (f"HttpConfig(host={self.host!r}, port={self.port}, "
                f"token={'set' if self.token else None}, refresh_seconds={self.refresh_seconds})")


@dataclass(frozen=True)
class NotifyConfig:
    """The webhook: POST a small JSON document to ``webhook_url`` when a series is refused
    or a job fails for good. Attempt n of an event waits ``min(backoff * 2**(n-1),
    backoff_max)`` s before the next; after ``max_attempts`` the event is dropped (logged).
    ``token``: sent as ``Authorization: Bearer <token>`` when set."""

    webhook_url: str
    max_attempts: int = 5
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    timeout_seconds: float = 10.0
    token: str | None = None

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.backoff_seconds * 2.0 ** max(attempt - 1, 0), self.backoff_max_seconds)

    def __repr__(self) -> str:  # never print the token
        return (f"NotifyConfig(webhook_url={self.webhook_url!r}, "
                f"max_attempts={self.max_attempts}, token={'set' if self.token else None})")


def _token(key: str, table: Mapping[str, Any], base: Path | None = None) -> str | None:
    """``token`` (inline) or ``token_file`` (a file holding it, recommended; relative to
    ``base``, the configuration file's folder); not both."""
    if "token" in table and "token_file" in table:
        raise ConfigError(f"{key}: give token or token_file, not both. Found both.")
    if "token_file" in table:
        path = check_path(check_string(f"{key}.token_file", table["token_file"]), base)
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}.token_file must name a readable file. Found "
                              f"{str(path)!r} ({type(exc).__name__}).") from exc
        where = f"{key}.token_file ({str(path)!r})"
    elif "token" in table:
        token, where = check_string(f"{key}.token", table["token"]), f"{key}.token"
    else:
        return None
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(f"{where} must be at least {MIN_TOKEN_LENGTH} printable characters "
                          f"without spaces. Found {len(token)} character(s).")
    return token


def parse_http(raw: Any, base: Path | None = None) -> HttpConfig:
    """Validate the ``[http]`` table."""
    t = check_table("http", raw)
    check_no_unknown("http", t, {"host", "port", "token", "token_file", "refresh_seconds"})
    if "port" not in t:
        raise ConfigError("http.port is required when [http] is given. Found none.")
    port = 0 if t["port"] == 0 else check_port("http.port", t["port"])
    return HttpConfig(port=port, host=check_string("http.host", t.get("host", "127.0.0.1")),
                      token=_token("http", t, base),
                      refresh_seconds=check_integer("http.refresh_seconds",
                                                    t.get("refresh_seconds", 10), low=1,
                                                    high=3600))


def parse_notify(raw: Any, base: Path | None = None) -> NotifyConfig:
    """Validate the ``[notify]`` table."""
    t = check_table("notify", raw)
    check_no_unknown("notify", t, {"webhook_url", "max_attempts", "backoff_seconds",
                                   "backoff_max_seconds", "timeout_seconds", "token",
                                   "token_file"})
    if "webhook_url" not in t:
        raise ConfigError("notify.webhook_url is required when [notify] is given. Found none.")
    url = check_string("notify.webhook_url", t["webhook_url"])
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"notify.webhook_url must be an http:// or https:// URL with a host. "
                          f"Found {url!r}.")
    d = NotifyConfig(webhook_url=url)
    backoff = check_number("notify.backoff_seconds", t.get("backoff_seconds", d.backoff_seconds),
                           low=0.0, high=86400.0)
    cap = check_number("notify.backoff_max_seconds",
                       t.get("backoff_max_seconds", d.backoff_max_seconds), low=0.0,
                       high=86400.0)
    if cap < backoff:
        raise ConfigError(f"notify.backoff_max_seconds must be >= notify.backoff_seconds "
                          f"({backoff}). Found {cap}.")
    return NotifyConfig(
        webhook_url=url,
        max_attempts=check_integer("notify.max_attempts", t.get("max_attempts", d.max_attempts),
                                   low=1, high=100),
        backoff_seconds=backoff, backoff_max_seconds=cap,
        timeout_seconds=check_number("notify.timeout_seconds",
                                     t.get("timeout_seconds", d.timeout_seconds), low=0.0,
                                     high=600.0, low_open=True),
        token=_token("notify", t, base))

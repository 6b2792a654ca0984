"""``[http]`` and ``[notify]`` in config/node.toml: optional tables, validated like the rest
(an error names the key, the rule and the value found)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from dicom_node.config import ConfigError, parse_config


def _refused(data: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        parse_config(data)


def test_http_table_absent_means_no_service() -> None:
    assert parse_config({}).http is None


def test_http_defaults_and_token(tmp_path: Path) -> None:
    cfg = parse_config({"http": {"port": 8080}}).http
    assert cfg is not None and (cfg.host, cfg.port, cfg.token, cfg.refresh_seconds) == \
        ("127.0.0.1", 8080, None, 10)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-from-a-file\n")
    cfg = parse_config({"http": {"port": 8080, "token_file": str(token_file)}}).http
    assert cfg is not None and cfg.token == "s3cret-token-from-a-file"
    assert "s3cret" not in repr(cfg), "the token is never printed"


@pytest.mark.parametrize("table, words", [
    ({"host": "0.0.0.0"}, "http.port is required"),
    ({"port": 70000}, "http.port must be an integer port in 1..65535. Found 70000."),
    ({"port": "8080"}, "http.port must be an integer port"),
    ({"port": 8080, "host": ""}, "http.host must be a non-empty string"),
    ({"port": 8080, "token": "short"}, "http.token must be at least 16 printable characters"),
    ({"port": 8080, "token": "a token with spaces in it"}, "without spaces"),
    ({"port": 8080, "token": "x" * 20, "token_file": "t"}, "give token or token_file"),
    ({"port": 8080, "token_file": "/nonexistent/token"}, "http.token_file must name a "
                                                         "readable file"),
    ({"port": 8080, "refresh_seconds": 0}, "http.refresh_seconds must be an integer"),
    ({"port": 8080, "prot": 1}, "http has unknown key(s) prot"),
])
def test_http_table_is_validated(table: dict, words: str) -> None:
    _refused({"http": table}, words)


def test_notify_table_is_validated() -> None:
    assert parse_config({}).notify is None
    cfg = parse_config({"notify": {"webhook_url": "https://ops.example/hook"}}).notify
    assert cfg is not None and cfg.max_attempts == 5 and cfg.backoff(3) == 8.0
    for bad, words in (({}, "notify.webhook_url is required"),
                       ({"webhook_url": "ftp://x/y"}, "http:// or https://"),
                       ({"webhook_url": "http://x", "token": "short"}, "at least 16"),
                       ({"webhook_url": "http://x", "max_attempts": 0}, "notify.max_attempts"),
                       ({"webhook_url": "http://x", "backoff_seconds": 5,
                         "backoff_max_seconds": 1}, "notify.backoff_max_seconds must be >="),
                       ({"webhook_url": "http://x", "retries": 3}, "unknown key(s) retries")):
        _refused({"notify": bad}, words)

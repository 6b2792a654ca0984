"""Small CLI behaviours a newcomer meets: log lines that do not break progress bars, and the
simulated-subject cache that train/evaluate leave behind (its size stated, a way to clear it)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dicom_node import cli
from dicom_node.commands import cache


@pytest.mark.parametrize("command, redirected", [("simulate", True), ("demo", True),
                                                 ("status", False)])
def test_log_lines_go_through_tqdm_in_commands_with_bars(
        monkeypatch: pytest.MonkeyPatch, command: str, redirected: bool) -> None:
    """While a command with bars runs, the console log handler writes with tqdm.write."""
    from tqdm.contrib.logging import _TqdmLoggingHandler

    seen: list[bool] = []
    module = __import__(f"dicom_node.commands.{command}", fromlist=["run"])

    def fake_run(_args: object) -> int:
        seen.append(any(isinstance(h, _TqdmLoggingHandler) for h in logging.root.handlers))
        return 0

    monkeypatch.setattr(module, "run", fake_run)
    argv = {"simulate": ["simulate", "out"], "demo": ["demo"],
            "status": ["status", "--config", "x.toml"]}[command]
    assert cli.main(argv) == 0
    assert seen == [redirected]
    assert not any(isinstance(h, _TqdmLoggingHandler) for h in logging.root.handlers)


def test_cache_size_is_stated_and_clear_removes_only_cached_subjects(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "sim-cache"
    folder.mkdir()
    for seed in (1, 2):
        (folder / f"subject-v3-{seed:07d}.npz").write_bytes(b"x" * 2_000_000)
    (folder / "notes.txt").write_text("someone's notes")
    assert cli.main(["cache", "--dir", str(folder)]) == 0
    assert f"{folder}: 2 cached subject file(s), 4 MB" in capsys.readouterr().out
    assert cli.main(["cache", "clear", "--dir", str(folder)]) == 0
    assert "removed 2 file(s), 4 MB" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert cache.cache_note(folder).endswith(f"`rtfsyn cache clear --dir {folder}` removes them.")

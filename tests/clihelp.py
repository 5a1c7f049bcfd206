"""Helpers for tests that run the command line in-process (on sys.path via pytest's
``pythonpath``; a plain module, so every test folder can import it without a package)."""

from __future__ import annotations

import pytest

from rsdml.cli.main import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``rsdml ARGV``."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def assert_one_line_error(code: int, err: str, *needles: str, warnings: bool = False) -> None:
    """Exit 2 with one ``rsdml: error:`` line naming every needle, and no traceback;
    ``warnings`` lets ``rsdml: warning:`` lines stand beside it."""
    assert code == 2, err
    lines = err.strip().splitlines()
    if warnings:
        lines = [line for line in lines if not line.startswith("rsdml: warning:")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("rsdml: error: ")
    for n in needles:
        assert n in lines[0], err

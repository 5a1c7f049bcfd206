"""One name for a run folder on the command line (``RUN``), the torchrun-only ``--run-dir``
alias kept out of help, and the torchrun refusal that says whose traceback comes next."""

from __future__ import annotations

import re

import click
import pytest
from clihelp import assert_one_line_error, run_cli

from rsdml.cli.main import TORCHRUN_REPORT_FOLLOWS, cli

ROOT = click.Context(cli, info_name="rsdml")
# command -> the way it names its run folder in help
RUN_PARAMS = {
    "train": ["--resume RUN", "--out RUN"],
    "evaluate": ["rsdml evaluate [OPTIONS] RUN"],
    "predict": ["rsdml predict [OPTIONS] RUN DATA"],
    "embed": ["--run RUN"],
    "index": ["--run RUN"],
    "search": ["--run RUN"],
    "serve": ["--run RUN"],
    "suggest": ["--run RUN"],
    "label": ["--run RUN"],
}


def _help(name: str) -> str:
    cmd = cli.get_command(ROOT, name)
    assert cmd is not None
    return cmd.get_help(click.Context(cmd, info_name=name, parent=ROOT))


@pytest.mark.parametrize("name", sorted(RUN_PARAMS))
def test_every_run_folder_is_called_run_in_help(name):
    text = _help(name)
    for spelled in RUN_PARAMS[name]:
        assert spelled in text, f"rsdml {name} --help lacks {spelled!r}"
    assert "RUN_DIR" not in text and "--run-dir" not in text and "run directory" not in text
    # every --run/--out/--resume that takes a run folder shows the metavar RUN
    assert not re.search(r"--(run|resume) (TEXT|DIRECTORY|PATH)", text), text


def test_every_run_folder_parameter_is_found_by_the_table():
    """No command outside the table takes a run folder (parameter run_dir or --resume)."""
    takers = set()
    for name in cli.list_commands(ROOT):
        cmd = cli.get_command(ROOT, name)
        assert cmd is not None
        if any(p.name in ("run_dir", "resume") for p in cmd.params):
            takers.add(name)
    assert takers == set(RUN_PARAMS)


def test_the_torchrun_alias_still_works_and_errors_say_run(tmp_path, capsys):
    code, _, err = run_cli(["embed", str(tmp_path), "--run-dir", str(tmp_path / "nope"),
                            "--out", str(tmp_path / "e.npz")], capsys)
    assert_one_line_error(code, err, "--run", "nope")
    code, _, err = run_cli(["embed", str(tmp_path), "--out", str(tmp_path / "e.npz")], capsys)
    assert code == 2 and "Missing option '--run'." in err and "--run-dir" not in err
    code, _, err = run_cli(["evaluate"], capsys)
    assert code == 2 and "Missing argument 'RUN'" in err


def _torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)


def test_the_torchrun_refusal_says_torchruns_report_follows(monkeypatch, tmp_path, capsys):
    _torchrun_env(monkeypatch)
    code, _, err = run_cli(["search", str(tmp_path), "--id", "x"], capsys)
    assert_one_line_error(code, err, "rsdml search runs as one process")
    assert err.strip().endswith(TORCHRUN_REPORT_FOLLOWS)


def test_without_torchrun_search_has_no_torchrun_hint(monkeypatch, tmp_path, capsys):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    code, _, err = run_cli(["search", str(tmp_path), "--id", "x"], capsys)
    assert code == 2 and "is not an rsdml index" in err
    assert "runs as one process" not in err and TORCHRUN_REPORT_FOLLOWS not in err

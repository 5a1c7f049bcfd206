import itertools

import rsdml.progress
from rsdml.progress import progress


def test_short_loops_are_silent_in_logs(capsys):
    assert list(progress(range(7), desc="x")) == list(range(7))
    assert capsys.readouterr().err == ""


def test_long_loops_print_plain_lines_at_ten_percent_steps(capsys, monkeypatch):
    clock = itertools.count(0, 6)  # 6 s per item
    monkeypatch.setattr(rsdml.progress.time, "monotonic", lambda: next(clock))
    assert sum(progress(range(20), desc="scan")) == sum(range(20))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("scan: 2/20") and lines[-1].startswith("scan: 20/20")
    assert len(lines) == 10
    # the time left at the rate so far, as the terminal's bar shows it: 18 items at 6 s
    assert lines[0] == "scan: 2/20 (12s, about 2m left)"
    assert lines[-2] == "scan: 18/20 (108s, about 12s left)" and lines[-1] == "scan: 20/20 (120s)"


def test_disabled_prints_nothing(capsys):
    list(progress(range(3), desc="x", enabled=False))
    assert capsys.readouterr().err == ""

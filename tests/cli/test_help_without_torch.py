"""``rsdml train --help`` (and every other command's help) answers without importing torch:
the method flags come from the torch-free ``rsdml.training.methods.params``, so help takes a
fraction of a second instead of the seconds ``import torch`` costs."""

from __future__ import annotations

import json
import subprocess
import sys

# Runs in a fresh interpreter: each command's --help in turn, noting after each whether torch
# has been imported (a module, once imported, stays in sys.modules).
_PROBE = """
import contextlib, io, json, sys
from rsdml.cli.main import cli, main
import click

def paths(group, ctx, prefix=()):
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from paths(cmd, click.Context(cmd, info_name=name, parent=ctx), (*prefix, name))

out = {}
for path in [("train",), *paths(cli, click.Context(cli, info_name="rsdml"))]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main([*path, "--help"])
        except SystemExit as e:
            code = e.code
    out[" ".join(path)] = {"code": code, "torch": "torch" in sys.modules, "help": buf.getvalue()}
print(json.dumps(out))
"""


def _helps() -> dict[str, dict[str, object]]:
    res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_no_help_imports_torch_and_train_help_lists_the_method_flags():
    helps = _helps()
    assert {"train", "evaluate", "embed", "index", "search", "label", "cache list"} <= set(helps)
    with_torch = [name for name, h in helps.items() if h["torch"]]
    assert not with_torch, f"--help imported torch for: {with_torch}"
    assert all(h["code"] == 0 for h in helps.values()), helps
    train = str(helps["train"]["help"])
    for flag in ("--threshold", "--snca-momentum", "--triplet-margin", "--consistency-weight",
                 "--freematch-ema", "--hr-view", "--labeled-fraction"):
        assert flag in train, flag


def test_the_probe_sees_torch_when_it_is_imported():
    """The check above could fail: importing the method registry does import torch."""
    code = "import sys, rsdml.training.methods.registry; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "True", res.stderr


def test_rsdml_list_answers_without_torch_and_agrees_with_the_registries():
    """Issue 25: `rsdml list` imported torch (about 5 s); the catalogues it reads now are
    torch-free and each registry checks at import that they agree with it."""
    code = ("import contextlib, io, sys\nfrom rsdml.cli.main import main\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n    try:\n        main(['list'])\n"
            "    except SystemExit:\n        pass\nprint('torch' in sys.modules)\n"
            "print(buf.getvalue())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    torch_loaded, out = res.stdout.split("\n", 1)
    assert torch_loaded == "False"
    from rsdml.models.registry import BACKBONES
    from rsdml.training.methods.registry import METHODS

    assert f"methods:   {', '.join(METHODS)}" in out
    assert f"backbones: {', '.join(BACKBONES)}" in out

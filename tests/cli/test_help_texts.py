"""Every `rsdml X` that a `--help` text mentions is a command that exists."""

from __future__ import annotations

import re

import click
import pytest

from rsdml.cli.main import cli


def _commands(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()):
    """(path, command, context) of every command and group below ``group``."""
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        sub = click.Context(cmd, info_name=name, parent=ctx)
        yield (*prefix, name), cmd, sub
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, sub, (*prefix, name))


ROOT = click.Context(cli, info_name="rsdml")
ALL = [((), cli, ROOT), *_commands(cli, ROOT)]
# "rsdml X" as a command line (start, space, quote or backtick before it; not a path like
# ~/.cache/rsdml or a sentence like "rsdml: error").
MENTION = re.compile(r"(?:^|(?<=[\s`'\"(]))rsdml ((?:[a-z][a-z0-9_-]*)(?: [a-z][a-z0-9_-]*)?)")


def _exists(words: list[str]) -> bool:
    """Whether ``rsdml WORDS...`` starts with a real command (a group's next word, when it is
    not an argument, must be one of its subcommands)."""
    cmd: click.Command = cli
    for i, word in enumerate(words):
        if not isinstance(cmd, click.Group):
            return i > 0
        sub = cmd.get_command(ROOT, word)
        if sub is None:
            return i > 0 and not cmd.no_args_is_help  # an argument after a plain command
        cmd = sub
    return True


@pytest.mark.parametrize("path, cmd, ctx", ALL, ids=[" ".join(p) or "rsdml" for p, _, _ in ALL])
def test_help_names_only_commands_that_exist(path, cmd, ctx):
    text = cmd.get_help(ctx)
    for mention in MENTION.findall(" ".join(text.split())):
        assert _exists(mention.split()), f"`rsdml {' '.join(path)} --help` mentions " \
                                         f"`rsdml {mention}`, which is not a command"


def test_the_walk_sees_the_commands_and_the_checker_can_fail():
    names = {" ".join(p) for p, _, _ in ALL}
    assert {"train", "evaluate", "embed", "list", "cache", "cache list"} <= names
    assert not _exists(["methods"]) and not _exists(["backbones"])
    assert not _exists(["cache", "purge"]) and _exists(["cache", "clear"])
    assert _exists(["train"]) and _exists(["list"])


@pytest.mark.parametrize("path, cmd, ctx", ALL, ids=[" ".join(p) or "rsdml" for p, _, _ in ALL])
def test_help_never_shows_default_none(path, cmd, ctx):
    """An option without a default (None = 'not given') shows none, and one whose help text
    states its default in prose does not repeat it as [default: ...]."""
    text = cmd.get_help(ctx)
    assert "[default: None]" not in text
    for block in re.split(r"\n  (?=-)", text):
        assert not ("(default:" in block and "[default:" in block), block

"""One name for a run folder on the command line: ``RUN``.

Every option or argument that takes a run folder (``train --out``/``--resume``, ``evaluate``,
``predict``, ``--run`` of embed/index/search/serve/suggest/label) is made here, so help and
errors spell it the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

#: The metavar of a run folder in help texts and errors.
RUN = "RUN"

Decorator = Callable[[Callable[..., Any]], Any]


class _HiddenAliasOption(click.Option):
    """An option with alias names that work but appear in neither help nor errors."""

    def __init__(self, *args: Any, hidden_aliases: tuple[str, ...] = (), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.hidden_aliases = hidden_aliases

    def _shown(self) -> list[str]:
        return [o for o in self.opts if o not in self.hidden_aliases]

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        opts = self.opts
        self.opts = self._shown()
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return " / ".join(f"'{x}'" for x in self._shown())


def run_option(help: str, *, required: bool = False, torchrun_alias: bool = False) -> Decorator:
    """``--run RUN`` (parameter ``run_dir``). ``torchrun_alias``: ``--run-dir`` works too,
    unlisted: torchrun reads ``--run`` as an abbreviation of its own ``--run-path``, so the
    commands that run under it need another spelling (README, "Several GPUs")."""
    names = ("--run", "--run-dir") if torchrun_alias else ("--run",)
    return click.option(*names, "run_dir", cls=_HiddenAliasOption, metavar=RUN,
                        hidden_aliases=("--run-dir",), required=required,
                        type=click.Path(file_okay=False), help=help)


def run_argument() -> Decorator:
    """The positional ``RUN`` (parameter ``run_dir``)."""
    return click.argument("run_dir", metavar=RUN, type=click.Path(file_okay=False))

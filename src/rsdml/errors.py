"""User-facing errors.

Anything the user can fix (bad path, bad option, bad file) is raised as :class:`RsdmlError`
with a one-line message that names the bad value and the fix; the CLI prints it without a
traceback and exits with code 2. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RsdmlError(Exception):
    """An error caused by user input; printed as one line, exit code 2."""

    exit_code = 2


class DatasetNotFoundError(RsdmlError):
    """The data folder is missing or holds no usable class folders."""


class TrainingDivergedError(RsdmlError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""

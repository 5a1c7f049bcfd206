"""Whether this process was started by ``torchrun``: environment variables only, so the CLI
can ask before it imports torch (``rsdml --help`` and the torchrun refusal stay fast)."""

from __future__ import annotations

import os


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ

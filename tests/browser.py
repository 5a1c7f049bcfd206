"""The browser tests' shared start: Debian's chromium driven by Playwright, skipped locally
without them, required in CI (.ci/run sets RSDML_CI)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def playwright_or_skip() -> tuple[Any, Any]:
    """(sync_playwright, expect), or a skip (a failure in CI) naming what is missing."""
    def missing(why: str) -> NoReturn:
        if os.environ.get("RSDML_CI"):
            pytest.fail(f"the browser test must run in CI: {why}")
        pytest.skip(why)

    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing("needs the playwright package (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        missing("needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
    return sync_playwright, expect

"""Headless Chromium (Debian's package, never a downloaded browser) for the tests that render
pages: the flags keep it off this machine's closed network and out of first-run work."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
HOW = "apt-get install chromium && pip install -e '.[dev]'"

HEADLESS_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def need_browser() -> None:
    """The serve page tests need chromium, playwright and the [serve] extra: under
    ``CI=true`` a missing one fails the test; elsewhere it skips, saying how to install it."""
    missing = [m for m in ("playwright", "fastapi", "uvicorn") if not importlib.util.find_spec(m)]
    if not CHROMIUM.exists():
        missing.append(str(CHROMIUM))
    if missing:
        message = f"browser test needs {', '.join(missing)}: {HOW}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)

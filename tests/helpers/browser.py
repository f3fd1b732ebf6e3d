"""Headless Chromium (Debian's package, never a downloaded browser) for the tests that render
pages: the flags keep it off this machine's closed network and out of first-run work."""

from __future__ import annotations

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

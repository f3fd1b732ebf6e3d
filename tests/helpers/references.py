"""Parity tests against reference implementations (dall-e, pytorch-fid, torch-fidelity):
when a reference is missing they skip on a developer's machine but FAIL under ``CI=true``, so
a CI machine without them can never go green having checked nothing."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_reference(package: str, *, module_level: bool = False) -> NoReturn:
    """Skip (developer machine) or fail (CI) because the reference ``package`` is missing."""
    msg = f"{package} (a test-only parity reference) is not installed; `make install` adds it"
    if in_ci():
        pytest.fail(f"{msg}. CI=true: parity tests must run, not skip", pytrace=False)
    pytest.skip(msg, allow_module_level=module_level)

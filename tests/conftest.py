"""Shared test configuration."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip a test whose system component is absent; under CI=true, fail instead."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a needed component must be installed by make test)")
    pytest.skip(reason)

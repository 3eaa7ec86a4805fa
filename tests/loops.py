"""Selecting the pool implementation a test runs on.

``PoolFactory`` (the ``make_pool`` fixture) makes pools of one of the two implementations;
``PythonLoops`` runs a Hypothesis state machine TestCase on the Python data path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest


class PoolFactory:
    """Makes pools of one implementation: ``make_pool(max_bytes, chain=..., release_batch=...)``.

    ``kind`` is "python" (ZsPool, the reference) or "c" (zramd._zram.Pool, the C pool).
    """

    def __init__(self, kind: str, make: Callable[..., Any]) -> None:
        self.kind = kind
        self._make = make

    def __call__(self, max_bytes: int, **kwargs: int) -> Any:
        return self._make(max_bytes, **kwargs)

    def python_only(self, reason: str) -> None:
        """Skip the running test on the C pool: it inspects ZsPool's internals."""
        if self.kind == "c":
            pytest.skip(f"Python pool only: {reason}")


class PythonLoops:
    """Mixin for Hypothesis state machine TestCases: run on the Python data path."""

    def setUp(self) -> None:
        self._native_env = os.environ.get("ZRAMD_NATIVE")
        os.environ["ZRAMD_NATIVE"] = "0"

    def tearDown(self) -> None:
        if self._native_env is None:
            os.environ.pop("ZRAMD_NATIVE", None)
        else:
            os.environ["ZRAMD_NATIVE"] = self._native_env

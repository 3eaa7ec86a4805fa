"""Selecting the pool's object-loop implementation in Hypothesis state machine tests."""

from __future__ import annotations

import os


class PythonLoops:
    """Mixin for Hypothesis state machine TestCases: run with the Python object loops."""

    def setUp(self) -> None:
        self._native_env = os.environ.get("ZRAMD_NATIVE")
        os.environ["ZRAMD_NATIVE"] = "0"

    def tearDown(self) -> None:
        if self._native_env is None:
            os.environ.pop("ZRAMD_NATIVE", None)
        else:
            os.environ["ZRAMD_NATIVE"] = self._native_env

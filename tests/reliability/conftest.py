"""The ``profile`` fixture of the reliability suite (see relkit.py for the profiles)."""

from __future__ import annotations

import pytest

from relkit import LONG, SHORT, Profile


@pytest.fixture(params=[SHORT, pytest.param(LONG, marks=pytest.mark.slow)], ids=lambda p: p.name)
def profile(request: pytest.FixtureRequest) -> Profile:
    return request.param  # type: ignore[no-any-return]

"""Which data path a device runs: a stale build of ``zramd._zram`` is never used."""

from __future__ import annotations

import pytest

from zramd import native
from zramd.device import ZramDevice


def test_a_stale_build_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build whose Python interface (ABI_VERSION) is not the one this code expects is ignored:
    devices fall back to the Python data path, say why, and refuse an explicit native=True."""
    module = native.native_module()
    if module is None:
        pytest.fail("zramd._zram is not built: run scripts/test (pip install -e .)")
    assert native.native_default()
    assert ZramDevice().native

    monkeypatch.setattr(module, "ABI_VERSION", native.ABI_VERSION + 1)
    assert native.native_module() is None
    assert not native.native_default()
    assert "stale" in (native.why_not_native() or "")
    device = ZramDevice()
    assert not device.native
    device.set_disksize(1 << 20)
    device.write(0, b"x" * 4096)
    assert device.read(0, 4096) == b"x" * 4096
    device.reset()
    with pytest.raises(RuntimeError, match="stale"):
        ZramDevice(native=True)


def test_zramd_native_0_selects_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZRAMD_NATIVE", "0")
    assert not native.native_default()
    assert native.why_not_native() == "ZRAMD_NATIVE=0"
    assert not ZramDevice().native

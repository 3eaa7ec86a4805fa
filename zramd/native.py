"""Which data path runs: the C one of ``zramd._zram`` (zramd/csrc/) or the Python reference.

The extension is optional (setup.py): without a compiler or the codec libraries zramd runs the
pure-Python twins (pool.py, compress/, core.py), and ``ZRAMD_NATIVE=0`` selects them
explicitly. A device uses one or the other throughout: the C core works only on the C pool
with the C codecs.
"""

from __future__ import annotations

import os
from types import ModuleType

from zramd.pool import ZsPool
from zramd.pool_api import PoolAPI
from zramd.size_class import DEFAULT_CHAIN_SIZE

#: the version of zramd/csrc's Python interface this code expects (module.c's ABI_VERSION);
#: a stale build is not used
ABI_VERSION = 3


def native_module() -> ModuleType | None:
    """``zramd._zram`` if it is built and current, else None."""
    try:
        from zramd import _zram  # noqa: PLC0415
    except ImportError:
        return None
    return _zram if getattr(_zram, "ABI_VERSION", None) == ABI_VERSION else None


def native_default() -> bool:
    """Whether devices run the C data path: when it is built, unless ZRAMD_NATIVE=0."""
    return os.environ.get("ZRAMD_NATIVE", "1") != "0" and native_module() is not None


def why_not_native() -> str | None:
    """None when devices run the C data path by default, else why they do not."""
    if native_module() is None:
        return (
            "zramd._zram is not built or is stale (pip install -e .; it needs gcc and the "
            "codec -dev packages)"
        )
    if not native_default():
        return "ZRAMD_NATIVE=0"
    return None


def pin_thread() -> None:
    """Keep the calling (nbdkit) thread's Python thread state until ``unpin_thread``, so that
    its requests do not each create and destroy one (``_zram.pin_thread_state``); nothing
    without the extension."""
    module = native_module()
    if module is not None:
        module.pin_thread_state()


def unpin_thread() -> None:
    """Give back what ``pin_thread`` took in this thread."""
    module = native_module()
    if module is not None:
        module.unpin_thread_state()


def new_pool(max_bytes: int, *, chain: int = DEFAULT_CHAIN_SIZE, native: bool) -> PoolAPI:
    """A zsmalloc pool: the C one or the Python reference."""
    if native:
        module = native_module()
        if module is None:
            raise RuntimeError(why_not_native() or "zramd._zram is not built")
        pool: PoolAPI = module.Pool(max_bytes, chain=chain)
        return pool
    return ZsPool(max_bytes, chain=chain)

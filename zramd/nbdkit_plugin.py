"""The nbdkit plugin serving zramd devices: this file is the script nbdkit runs.

    nbdkit -U SOCKET python $(python -c 'import zramd.supervise as s; print(s.plugin_path())') \
           size=1G [comp_algorithm=zstd] [mem_limit=512M] [control=DIR] ...

(``zramd serve`` does that; from a checkout, ``plugin/zramd_plugin.py`` imports this module.)
Every callback delegates to zramd (``zramd.service`` builds the device, ``zramd.device`` does
the I/O); nothing here but nbdkit glue. nbdkit 1.32 cannot take ``config_help`` from a Python
plugin, so ``--dump-plugin`` prints the keys with their help instead.

nbdkit runs this file as ``__main__`` and does not put its directory on ``sys.path``; the
directory holding the zramd package (site-packages, or a checkout) is added below, and
``zramd serve`` puts it and the dependencies' site-packages on PYTHONPATH.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import nbdkit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zramd.device import ZramDevice
from zramd.errors import ZramdError
from zramd.native import pin_thread, unpin_thread
from zramd.service import CONFIG_KEYS, DEFAULT_EXPORT, Service

API_VERSION = 2

service = Service()

# the callbacks, for ``from zramd.nbdkit_plugin import *`` in plugin/zramd_plugin.py
__all__ = [
    "API_VERSION",
    "after_fork",
    "block_size",
    "cache",
    "can_cache",
    "can_extents",
    "can_fast_zero",
    "can_flush",
    "can_fua",
    "can_multi_conn",
    "can_trim",
    "can_write",
    "can_zero",
    "cleanup",
    "close",
    "config",
    "config_complete",
    "default_export",
    "dump_plugin",
    "extents",
    "flush",
    "get_ready",
    "get_size",
    "is_rotational",
    "list_exports",
    "open",
    "pread",
    "pwrite",
    "thread_model",
    "trim",
    "zero",
]

F = TypeVar("F", bound=Callable[..., Any])


def errno_from_zramd(fn: F) -> F:
    """Give the client the errno zramd chose (ENOSPC at mem_limit, EINVAL ...); other
    exceptions reach it as EIO, nbdkit's default."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except ZramdError as e:
            nbdkit.set_error(e.errno)
            raise

    return wrapper  # type: ignore[return-value]


def thread_model() -> int:
    # Requests run in parallel: the data path runs in C with the GIL released, under stripe
    # locks (one worker thread per connection: zramd serve --threads=1).
    return int(nbdkit.THREAD_MODEL_PARALLEL)


def dump_plugin() -> None:
    for key, text in CONFIG_KEYS.items():
        print(f"zramd_{key}={text}")


def config(key: str, value: str) -> None:
    service.config(key, value)


def config_complete() -> None:
    service.config_complete()


def get_ready() -> None:
    service.prepare()  # checks the control directory while errors still reach the terminal


def after_fork() -> None:
    service.start()  # mount and threads belong to the process that serves


def cleanup() -> None:
    service.stop()


def list_exports(readonly: bool, is_tls: bool) -> list[str]:
    return service.export_names()  # zram0, zram1, ...: the devices there are now


def default_export(readonly: bool, is_tls: bool) -> str:
    return DEFAULT_EXPORT  # an empty export name means zram0


@errno_from_zramd
def open(readonly: bool) -> ZramDevice:
    # nbdkit has already turned an empty name into default_export's; a name that is no
    # device (or one hot_remove took away) refuses the connection
    device = service.open(nbdkit.export_name())
    # this connection's thread keeps its Python thread state until close: without it, every
    # request made and freed one (a 16 KiB mmap and more, under the GIL)
    pin_thread()
    return device


def close(h: ZramDevice) -> None:
    unpin_thread()  # a no-op unless close runs in the thread open ran in, as nbdkit does
    h.close()


def get_size(h: ZramDevice) -> int:
    return h.size


# nbdkit refuses a READ or WRITE over 64 MiB (MAX_REQUEST_SIZE) with ENOMEM before we see it
MAX_DATA_REQUEST = 64 * 1024 * 1024


def block_size(h: ZramDevice) -> tuple[int, int, int]:
    # Any 512-byte-aligned request works (sub-page writes are read-modify-write); 4096 is
    # the page the device compresses, so it is the size that costs least. The maximum
    # bounds data requests (the NBD spec's maximum payload): what nbdkit serves. Trim and
    # zero carry no payload and may still be larger.
    return (512, 4096, MAX_DATA_REQUEST)


def is_rotational(h: ZramDevice) -> bool:
    return False


def can_write(h: ZramDevice) -> bool:
    return True


def can_flush(h: ZramDevice) -> bool:
    return True


def can_fua(h: ZramDevice) -> int:
    # Data is in RAM the moment a write returns and there is no cache to flush, so FUA is
    # honoured natively by doing nothing.
    return int(nbdkit.FUA_NATIVE)


def can_trim(h: ZramDevice) -> bool:
    return True


def can_zero(h: ZramDevice) -> bool:
    return True


def can_fast_zero(h: ZramDevice) -> bool:
    # Zeroing frees slots (or marks them same-filled): never slower than writing zeros.
    return True


def can_extents(h: ZramDevice) -> bool:
    return True


def can_multi_conn(h: ZramDevice) -> bool:
    # One shared store, no per-connection cache: a flush on any connection covers all.
    return True


def can_cache(h: ZramDevice) -> int:
    # Everything is already in memory: prefetch is answered at once by cache() below.
    return int(nbdkit.CACHE_NATIVE)


def cache(h: ZramDevice, count: int, offset: int, flags: int) -> None:
    pass  # the Python plugin, unlike C plugins, needs the callback to answer NATIVE


@errno_from_zramd
def pread(h: ZramDevice, buf: memoryview, offset: int, flags: int) -> None:
    h.read_into(offset, buf)


@errno_from_zramd
def pwrite(h: ZramDevice, buf: memoryview, offset: int, flags: int) -> None:
    h.write(offset, buf)  # copies: nbdkit's buffer is not kept


def flush(h: ZramDevice, flags: int) -> None:
    h.flush()


@errno_from_zramd
def trim(h: ZramDevice, count: int, offset: int, flags: int) -> None:
    h.discard(offset, count)


@errno_from_zramd
def zero(h: ZramDevice, count: int, offset: int, flags: int) -> None:
    h.write_zeroes(offset, count, may_trim=bool(flags & nbdkit.FLAG_MAY_TRIM))


@errno_from_zramd
def extents(h: ZramDevice, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    return h.extents(offset, count)

"""Exceptions of the zramd library.

Each exception carries the errno the kernel's zram would return for the same condition, so the
edges (the nbdkit plugin, the control directory) translate without a lookup table of their own.
The last group are the serving side's errors (configuration, control mount, runtime state,
starting nbdkit); their messages name the path or key and say why.
"""

from __future__ import annotations

import errno as _errno


class ZramdError(Exception):
    """Base class; ``errno`` is what a client or a control-file writer sees."""

    errno: int = _errno.EIO


class PoolExhaustedError(ZramdError):
    """The allocator's arena has no free frame left (the device reports ENOSPC)."""

    errno = _errno.ENOSPC


class MemoryLockError(ZramdError):
    """Memory could not be locked (swap mode: ``mlock``, ``mlockall``); ``errno`` is the
    system's (ENOMEM for RLIMIT_MEMLOCK or no memory, EPERM without CAP_IPC_LOCK, EBUSY for a
    pool already in use)."""

    def __init__(self, message: str, code: int = _errno.ENOMEM) -> None:
        super().__init__(message)
        self.errno = code


class SwapModeError(ZramdError):
    """Swap mode cannot be had here (``swapmode.py``): a missing privilege or data path, a log
    on tmpfs. The message says what is missing and how to get it; ``errno`` is the system's."""

    def __init__(self, message: str, code: int = _errno.EPERM) -> None:
        super().__init__(message)
        self.errno = code


class MemLimitError(ZramdError):
    """A write would take the pool over ``mem_limit``, even after direct compaction."""

    errno = _errno.ENOSPC


class InvalidHandleError(ZramdError, LookupError):
    """A handle that was never returned by ``malloc``, or was already freed."""

    errno = _errno.EINVAL


class InvalidIOError(ZramdError):
    """A request outside the device (or before it is initialised)."""

    errno = _errno.EINVAL


class CorruptionError(ZramdError):
    """An internal consistency check failed; the operation was refused rather than guessed."""

    errno = _errno.EIO


class CompressionError(ZramdError):
    """A backend failed to compress or decompress a page."""

    errno = _errno.EIO


class ControlError(ZramdError):
    """Base for control-attribute errors; the subclasses fix the errno."""


class InvalidValueError(ControlError):
    """EINVAL: the value does not parse, or the operation is not valid in this state."""

    errno = _errno.EINVAL


class DeviceBusyError(ControlError):
    """EBUSY: the device is initialised (or open) and the attribute cannot change now."""

    errno = _errno.EBUSY


class NoDeviceError(ControlError):
    """ENODEV: writeback without a backing device."""

    errno = _errno.ENODEV


class TryAgainError(ControlError):
    """EAGAIN: another writeback or recompression is in progress on the device."""

    errno = _errno.EAGAIN


class ValueTooLongError(ControlError):
    """E2BIG: an algorithm name of 128 bytes or more."""

    errno = _errno.E2BIG


class OutOfRangeError(ControlError):
    """ERANGE: a number does not fit the attribute's type."""

    errno = _errno.ERANGE


class PermissionDeniedError(ControlError):
    """EACCES: reading a write-only attribute or writing a read-only one (kernfs's answer)."""

    errno = _errno.EACCES


class TooManyDevicesError(ControlError):
    """ENOSPC: ``hot_add`` with every device id taken (idr_alloc's answer when its range is
    full)."""

    errno = _errno.ENOSPC


class DeviceExistsError(ControlError):
    """EEXIST: a device was asked for under an id another device holds (idr_alloc's answer
    for a taken id)."""

    errno = _errno.EEXIST


# -- serving ----------------------------------------------------------------------------------


class ConfigError(ZramdError):
    """A bad or unknown configuration key of the nbdkit plugin."""


class ControlDirError(ZramdError):
    """The control directory cannot be mounted (missing FUSE, busy path, ...)."""


class RunStateError(ZramdError):
    """A runtime path (socket, pidfile, log, runtime directory, control mount) is unsafe or in
    the way; the message names it and says why."""


class ControlFileError(ZramdError):
    """A control-file client (``zramd status``, ``set`` ...) could not read or write an
    attribute; the message names it and the errno."""


class ServeError(ZramdError):
    """nbdkit cannot be started, or did not get ready, or a serve option is wrong; the message
    says why in one line."""


class BackingError(ZramdError):
    """The backing store cannot be opened or used; ``errno`` says why (as the kernel's)."""

    def __init__(self, message: str, code: int = _errno.EIO) -> None:
        super().__init__(message)
        self.errno = code


class BackingFullError(BackingError):
    """No free block is left on the backing store (writeback answers ENOSPC)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, _errno.ENOSPC)

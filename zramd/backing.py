"""Backing stores for writeback: where cold pages go when they leave RAM (``backing_dev``).

The kernel's zram writes idle or incompressible pages to a block device
(CONFIG_ZRAM_WRITEBACK) and keeps the block index in the slot. zramd accepts two kinds of store:

* a **file** (a regular file or a block device, opened read-write), written with ``pwrite``;
* an **NBD URI** (``nbd://``, ``nbd+unix://``, ``nbds://``...), so cold pages can live on any
  NBD server, local or remote, through libnbd. This is the one edge in this module: ``nbd``
  (python3-libnbd) is imported only when such a URI is given.

A store is used by one device only, as the kernel claims its backing device exclusively
(``FMODE_EXCL``/``BLK_OPEN_EXCL`` with the zram device as holder): a block device is opened with
``O_EXCL`` (EBUSY if it is mounted or claimed by anyone else), a regular file takes an
exclusive open-file-description lock (``F_OFD_SETLK``). Setting the same file again on the
device that holds it shares the claim, as the kernel lets a holder claim again. An NBD export
cannot be claimed: the server may serve it to others, and zramd cannot know (docs/reliability.md).

An NBD store bounds every operation (``NBD_TIMEOUT``) and reconnects with back-off when the
server goes away, so a restarted server serves the written-back pages again.

A store is an array of 4 KiB blocks. ``BackingDevice`` adds what zram keeps beside it: the map
of blocks in use (block 0 is never handed out, as in the kernel, so a block index is never 0)
and the ``bd_stat`` counters. Writes come in batches: the file store issues them back to back,
the NBD store keeps them all in flight at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from zramd._types import BytesLike
from zramd.errors import BackingError, BackingFullError
from zramd.page import PAGE_SHIFT, PAGE_SIZE

NBD_SCHEMES = ("nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://", "nbds+vsock://")

#: Seconds one read or write of an NBD store may take in all, reconnects included; then EIO.
#: Reads of written-back pages wait under their stripe lock, so this bounds what a stopped
#: server costs the other pages of the stripe. Also bounds connecting at ``backing_dev``.
NBD_TIMEOUT = 10.0
#: Connection attempts one operation makes after the connection is lost (then EIO; the next
#: operation tries again).
NBD_CONNECT_ATTEMPTS = 6
#: Seconds between the first two attempts; the wait doubles up to ``NBD_BACKOFF_MAX``.
NBD_BACKOFF = 0.05
NBD_BACKOFF_MAX = 1.0
#: Seconds ``close`` waits for the server to acknowledge the disconnect.
NBD_CLOSE_TIMEOUT = 1.0

# struct flock for F_OFD_SETLK: a write lock on the whole file (l_len 0), l_pid 0 as OFD
# locks require. Native packing follows the C layout (off_t is 64-bit in CPython builds); the
# tail pads it to the struct's 8-byte alignment, so the kernel reads no stray bytes.
_WRITE_LOCK_WHOLE_FILE = struct.pack("@hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)


class BackingStore(Protocol):
    """An array of ``nr_blocks`` 4 KiB blocks. Methods may be called from several threads."""

    @property
    def name(self) -> str:
        """What ``backing_dev`` shows: the path or the URI."""
        ...

    @property
    def nr_blocks(self) -> int: ...

    def write_blocks(self, blocks: Sequence[int], pages: Sequence[BytesLike]) -> None:
        """Write each page (exactly 4096 bytes) to its block. Raises BackingError (EIO) if
        any write fails; blocks whose write failed hold undefined bytes."""
        ...

    def read_blocks(self, blocks: Sequence[int]) -> list[bytes]:
        """The 4096 bytes of each block, in order. Raises BackingError (EIO)."""
        ...

    def close(self) -> None: ...


def _file_size(fd: int, path: str) -> int:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    raise BackingError(f"backing_dev {path}: not a regular file or a block device", errno.ENOTBLK)


def _check_size(size: int, name: str) -> int:
    if size < 2 * PAGE_SIZE:  # block 0 is never used: one page holds nothing
        raise BackingError(
            f"backing_dev {name}: {size} bytes is too small (at least 2 pages)", errno.EINVAL
        )
    return size


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What a claim is on: a block device's number (whatever node names it), else the inode."""
    if stat.S_ISBLK(st.st_mode):
        return (0, st.st_rdev)
    return (1, st.st_dev, st.st_ino)


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False  # the open that follows reports it


def _open_rw(path: str, exclusive: bool) -> int:
    # O_EXCL without O_CREAT claims a block device exclusively (the kernel's FMODE_EXCL, with
    # this open file as holder): EBUSY while it is mounted or claimed by another opener.
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_EXCL if exclusive else 0)
    try:
        return os.open(path, flags)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise BackingError(
                f"backing_dev {path}: in use (mounted, or opened exclusively elsewhere)",
                errno.EBUSY,
            ) from None
        raise BackingError(f"backing_dev {path}: {e.strerror}", e.errno or errno.EIO) from None


def _lock_file(fd: int, path: str) -> None:
    """Take an exclusive OFD lock on a regular file, without waiting; EBUSY if it is held.

    An OFD lock belongs to the open file description, not to the process as a classic fcntl
    lock does: a second open of the file conflicts even in the same process (two devices of one
    server), closing another descriptor of the file does not drop it, and it is released when
    the store closes. Unlike flock, it is a byte-range lock, so it is also enforced over NFS
    (where flock is emulated with process-owned locks) and conflicts with the locks of programs
    that use fcntl, such as qemu's image locking."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _WRITE_LOCK_WHOLE_FILE)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise BackingError(
                f"backing_dev {path}: in use (locked by another zramd device or program)",
                errno.EBUSY,
            ) from None
        raise BackingError(
            f"backing_dev {path}: cannot be locked for exclusive use: {e.strerror}",
            e.errno or errno.EIO,
        ) from None


def _write_errno(e: OSError) -> int:
    """The errno a failed store write reports: ENOSPC when the store has no room (a full
    filesystem or quota, as the kernel answers for a full backing device), else EIO."""
    return errno.ENOSPC if e.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO


class FileStore:
    """A regular file or a block device, opened read-write and claimed exclusively, addressed
    in 4 KiB blocks.

    ``reuse``: the store the same device holds now. If ``path`` names the same file (or block
    device), the new store shares its claim instead of being refused, as the kernel lets a
    holder claim a device again. EBUSY if anything else holds the file."""

    def __init__(self, path: str, reuse: BackingStore | None = None) -> None:
        fd = reuse.share(path) if isinstance(reuse, FileStore) else -1
        if fd < 0:
            fd = self._open_claimed(path)
        try:
            size = _file_size(fd, path)
            identity = _identity(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._fd_lock = threading.Lock()  # guards _fd against close() while share() dups it
        self._path = path
        self._id = identity
        self._blocks = _check_size(size, path) >> PAGE_SHIFT

    @staticmethod
    def _open_claimed(path: str) -> int:
        blk = _is_block_device(path)
        fd = _open_rw(path, exclusive=blk)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISBLK(mode) and not blk:  # replaced by a block device since the stat
                os.close(fd)
                fd = _open_rw(path, exclusive=True)
            elif stat.S_ISREG(mode):
                _lock_file(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def share(self, path: str) -> int:
        """A new descriptor sharing this store's claim if ``path`` names the same file, else
        -1. Closing either descriptor keeps the claim while the other is open."""
        try:
            identity = _identity(os.stat(path))
        except (OSError, ValueError):
            return -1
        with self._fd_lock:
            if self._fd < 0 or identity != self._id:
                return -1
            return os.dup(self._fd)

    @property
    def name(self) -> str:
        return self._path

    @property
    def nr_blocks(self) -> int:
        return self._blocks

    def write_blocks(self, blocks: Sequence[int], pages: Sequence[BytesLike]) -> None:
        fd = self._fd
        try:
            for block, page in zip(blocks, pages, strict=True):
                if os.pwrite(fd, page, block << PAGE_SHIFT) != PAGE_SIZE:
                    raise BackingError(f"backing_dev {self._path}: short write at block {block}")
        except OSError as e:
            raise BackingError(
                f"backing_dev {self._path}: write failed: {e.strerror}", _write_errno(e)
            ) from None

    def read_blocks(self, blocks: Sequence[int]) -> list[bytes]:
        fd = self._fd
        out = []
        try:
            for block in blocks:
                data = os.pread(fd, PAGE_SIZE, block << PAGE_SHIFT)
                if len(data) != PAGE_SIZE:
                    raise BackingError(f"backing_dev {self._path}: short read at block {block}")
                out.append(data)
        except OSError as e:
            raise BackingError(f"backing_dev {self._path}: read failed: {e.strerror}") from None
        return out

    def close(self) -> None:
        """Close the file; its claim (lock or exclusive open) goes with the last descriptor."""
        with self._fd_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class _ConnectionLostError(Exception):
    """The NBD connection is gone or could not be made; another attempt may succeed."""


class _NoAnswerError(Exception):
    """The deadline passed with commands (or the handshake) unanswered."""


def _poll_ms(deadline: float) -> int:
    """Milliseconds left until ``deadline`` (at least 1); _NoAnswerError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _NoAnswerError
    return int(left * 1000) + 1


class NbdStore:
    """An export of an NBD server, through libnbd. A batch of commands is in flight at once.

    Every read or write ends within ``timeout`` seconds (``NBD_TIMEOUT``): the commands are
    issued with libnbd's aio calls and the handle is polled against a deadline. When the
    connection is lost (the server exited or restarted), the operation reconnects, up to
    ``NBD_CONNECT_ATTEMPTS`` times with doubling waits, and issues its commands again; a
    reconnected export must be writable and have the same size. A handle whose commands were
    not answered in time is dropped, never reused, so a late reply cannot land in a later
    request. Failures are BackingError: EIO, or ENOSPC when the server answers ENOSPC."""

    def __init__(self, uri: str, timeout: float | None = None) -> None:
        try:
            import nbd  # noqa: PLC0415 - python3-libnbd, needed only for NBD URIs
        except ImportError:
            raise BackingError(
                f"backing_dev {uri}: NBD URIs need libnbd's Python binding (python3-libnbd)",
                errno.EINVAL,
            ) from None
        self._nbd: Any = nbd
        self._uri = uri
        self._timeout = NBD_TIMEOUT if timeout is None else timeout
        self._lock = threading.Lock()  # one request batch (or reconnect) at a time
        try:
            h = self._connect(time.monotonic() + self._timeout)
            read_only = h.is_read_only()
            size = int(h.get_size())
        except nbd.Error as e:  # the handle closes when its last reference goes
            raise BackingError(f"backing_dev {uri}: {e.string}", e.errnum or errno.EIO) from None
        except _ConnectionLostError as e:
            raise BackingError(f"backing_dev {uri}: {e}") from None
        except _NoAnswerError:
            raise BackingError(
                f"backing_dev {uri}: the server did not answer within {self._timeout:g} s",
                errno.ETIMEDOUT,
            ) from None
        if read_only:
            raise BackingError(f"backing_dev {uri}: the export is read-only", errno.EROFS)
        self._size = size
        self._blocks = _check_size(size, uri) >> PAGE_SHIFT
        self._h: Any = h
        self._closed = False

    @property
    def name(self) -> str:
        return self._uri

    @property
    def nr_blocks(self) -> int:
        return self._blocks

    def _connect(self, deadline: float) -> Any:
        """A handle connected to the URI and ready for commands. nbd.Error if libnbd refuses
        or the handshake fails, _ConnectionLostError if the connection dies, _NoAnswerError at the
        deadline."""
        h = self._nbd.NBD()
        h.aio_connect_uri(self._uri)
        while not h.aio_is_ready():
            if h.aio_is_dead() or h.aio_is_closed():
                raise _ConnectionLostError("the connection closed during the handshake")
            h.poll(_poll_ms(deadline))
        return h

    def _reconnect(self, deadline: float) -> Any:
        """A new connection to the same export; _ConnectionLostError if it cannot be made."""
        nbd = self._nbd
        try:
            h = self._connect(deadline)
            read_only = h.is_read_only()
            size = int(h.get_size())
        except nbd.Error as e:
            raise _ConnectionLostError(f"reconnecting: {e.string}") from None
        if read_only or size != self._size:
            raise _ConnectionLostError(
                f"reconnecting: the export is now {'read-only' if read_only else 'writable'} "
                f"with {size} bytes, not writable with {self._size}"
            )
        return h

    def _wait(self, h: Any, cookies: list[int], deadline: float) -> None:
        """Wait for the aio commands ``cookies``; raises the first command's nbd.Error, or
        _NoAnswerError at the deadline."""
        pending = cookies
        failed = None
        while True:
            still = []
            for cookie in pending:
                try:
                    if not h.aio_command_completed(cookie):
                        still.append(cookie)
                except self._nbd.Error as e:
                    failed = failed or e
            pending = still
            if not pending:
                break
            h.poll(_poll_ms(deadline))
        if failed is not None:
            raise failed

    def _run(self, what: str, submit: Callable[[Any], list[int]]) -> None:
        """Issue ``submit(handle)``'s commands and wait for them, reconnecting as the class
        says. Caller holds ``_lock``."""
        nbd = self._nbd
        if self._closed:
            raise BackingError(f"backing_dev {self._uri}: {what} failed: the store is closed")
        deadline = time.monotonic() + self._timeout
        delay = NBD_BACKOFF
        attempts = 0
        while True:
            h = self._h
            try:
                if h is None:
                    attempts += 1
                    h = self._h = self._reconnect(deadline)
                self._wait(h, submit(h), deadline)
            except _NoAnswerError:
                self._h = None  # commands may still be in flight on it
                raise BackingError(
                    f"backing_dev {self._uri}: {what} failed: no answer within {self._timeout:g} s"
                ) from None
            except _ConnectionLostError as e:
                reason = str(e)
            except nbd.Error as e:
                if not (h.aio_is_dead() or h.aio_is_closed()):  # the server answered an error
                    code = errno.ENOSPC if e.errnum == errno.ENOSPC else errno.EIO
                    raise BackingError(
                        f"backing_dev {self._uri}: {what} failed: {e.string}", code
                    ) from None
                reason = e.string
            else:
                return
            self._h = None  # lost: try again on a new connection
            late = attempts and time.monotonic() + delay >= deadline
            if attempts >= NBD_CONNECT_ATTEMPTS or late:
                raise BackingError(
                    f"backing_dev {self._uri}: {what} failed: connection lost ({reason}); "
                    f"{attempts} reconnects failed"
                )
            if attempts:
                time.sleep(delay)
                delay = min(2 * delay, NBD_BACKOFF_MAX)

    def write_blocks(self, blocks: Sequence[int], pages: Sequence[BytesLike]) -> None:
        nbd = self._nbd
        with self._lock:
            bufs = [nbd.Buffer.from_buffer(bytes(page)) for page in pages]  # alive until done
            self._run(
                "write",
                lambda h: [
                    h.aio_pwrite(buf, b << PAGE_SHIFT) for buf, b in zip(bufs, blocks, strict=True)
                ],
            )

    def read_blocks(self, blocks: Sequence[int]) -> list[bytes]:
        nbd = self._nbd
        with self._lock:
            bufs = [nbd.Buffer(PAGE_SIZE) for _ in blocks]
            self._run(
                "read",
                lambda h: [
                    h.aio_pread(buf, b << PAGE_SHIFT) for buf, b in zip(bufs, blocks, strict=True)
                ],
            )
            return [bytes(buf.to_buffer()) for buf in bufs]

    def close(self) -> None:
        """Disconnect, waiting at most ``NBD_CLOSE_TIMEOUT`` for the server (a stopped server
        must not hang a reset)."""
        with self._lock:
            self._closed = True
            h, self._h = self._h, None
            if h is None:
                return
            deadline = time.monotonic() + min(NBD_CLOSE_TIMEOUT, self._timeout)
            with contextlib.suppress(self._nbd.Error, _NoAnswerError):  # the server may be gone
                h.aio_disconnect(0)
                while not (h.aio_is_closed() or h.aio_is_dead()):
                    h.poll(_poll_ms(deadline))
            # libnbd closes the handle with its last reference


def open_store(spec: str, reuse: BackingStore | None = None) -> BackingStore:
    """A file path or an NBD URI; BackingError with the kernel's errno if it can't be used
    (EBUSY when another device or program holds the file). ``reuse``: the store the same
    device holds now (see FileStore)."""
    if "\0" in spec:  # os.open and libnbd would raise ValueError, not an errno
        raise BackingError(f"backing_dev {spec!r}: contains a NUL byte", errno.EINVAL)
    if spec.startswith(NBD_SCHEMES):
        return NbdStore(spec)
    if not spec:
        raise BackingError("backing_dev: empty path", errno.EINVAL)
    return FileStore(spec, reuse)


class BackingDevice:
    """A store plus zram's block map and ``bd_stat`` counters. Thread-safe (one leaf lock
    for the map and counters; the store does its own locking).

    Blocks are handed out lowest first, as the kernel's ``alloc_block_bdev`` does, so the
    highest block in use never exceeds the most blocks in use at once: at most one per page
    of the device. The map (one byte per block) therefore covers only blocks up to the
    highest ever used and grows on demand; attaching costs nothing whatever the store's
    size, and a store of any size a file or an NBD export can have (2**63 - 1 bytes) is
    accepted."""

    def __init__(self, store: BackingStore) -> None:
        self.store = store
        self.nr_blocks = store.nr_blocks
        self._used = bytearray(b"\x01")  # block 0 is never handed out (handle 0 means "none")
        self._lowest = 1  # every block below this one is in use
        self._lock = threading.Lock()
        self.count = 0  #: blocks in use (bd_stat bd_count)
        self.reads = 0  #: blocks read since init (bd_reads)
        self.writes = 0  #: blocks written since init (bd_writes)

    @property
    def name(self) -> str:
        return self.store.name

    def map_bytes(self) -> int:
        """Bytes the block map holds now (tests and statistics)."""
        return len(self._used)

    def alloc(self) -> int:
        """The lowest free block (``alloc_block_bdev``); BackingFullError when none is left."""
        with self._lock:
            used = self._used
            i = used.find(0, self._lowest)  # memchr from the first block that may be free
            if i < 0:
                i = len(used)  # every mapped block is in use: map one more
                if i >= self.nr_blocks:
                    raise BackingFullError(
                        f"backing_dev {self.name}: all {self.nr_blocks - 1} blocks are in use"
                    )
                used.append(1)
            else:
                used[i] = 1
            self._lowest = i + 1
            self.count += 1
            return i

    def free(self, blocks: Sequence[int]) -> None:
        """Give blocks back (``free_block_bdev``)."""
        if not blocks:
            return
        with self._lock:
            used = self._used
            lowest = self._lowest
            for b in blocks:
                if not 0 < b < len(used) or not used[b]:
                    raise BackingError(f"backing block {b} freed twice")
                used[b] = 0
                lowest = min(lowest, b)
            self._lowest = lowest
            self.count -= len(blocks)

    def write(self, blocks: Sequence[int], pages: Sequence[BytesLike]) -> None:
        self.store.write_blocks(blocks, pages)
        with self._lock:
            self.writes += len(blocks)

    def read(self, blocks: Sequence[int]) -> list[bytes]:
        out = self.store.read_blocks(blocks)
        with self._lock:
            self.reads += len(blocks)
        return out

    def close(self) -> None:
        self.store.close()

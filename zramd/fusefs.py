"""The live control directory: the device's attributes as files, over FUSE (pyfuse3 + trio).

Mirrors ``/sys/block/zramN/`` for scripts, answering as kernfs/sysfs do:

* One file per entry of ``control.ATTRIBUTES`` with the sysfs mode, 4096 bytes long. The files
  are opened with ``direct_io``, so every read and write reaches this process.
* A read at offset 0 generates the attribute's text afresh (seq_file's rule), so a monitor may
  keep ``mm_stat`` open and ``pread`` it at 0 again and again; a read that continues where the
  previous one ended is served from that same text, and a read anywhere else generates it
  again.
* Each ``write()`` is one store of at most its first 4096 bytes, acting before it returns; the
  write reports that count (a longer one is short, and the kernel's FUSE stops there instead
  of sending the rest as a second store). A refused store fails the write with the
  attribute's errno and changes nothing.
* Opening needs the matching permission bit in the file's mode, even for root (EACCES), as
  kernfs checks; chmod, chown and utimes are kept (the kernel's FUSE checks who may), and a
  truncate is accepted and ignored. Reading an attribute without a show, or writing one
  without a store, after a chmod allowed the open, fails with EIO, as for a device attribute.
* The namespace is fixed: creating a file fails with EACCES; mkdir, mknod, symlink, link,
  unlink, rmdir and rename fail with EPERM (the kernel's VFS answers EEXIST, ENOENT, ENOTDIR
  ... first, as for sysfs). No extended attributes: getxattr ENODATA, setxattr ENOTSUP.

The mount is owner-only (no ``allow_other`` unless asked for).

The filesystem runs in its own thread with its own trio loop; stores and shows run in trio's
worker threads, so a long ``compact`` does not stall reads of other files.

This is an edge module: the only one importing pyfuse3/trio.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pyfuse3
import trio

from zramd import control
from zramd.device import ZramDevice
from zramd.errors import ControlDirError, ZramdError
from zramd.runstate import mount_state  # re-exported: decodes the mount table's escapes

FSNAME = "zramd"
ATTR_SIZE = 4096  # what sysfs reports for every attribute
ROOT = pyfuse3.ROOT_INODE
FIRST_INODE = ROOT + 1
_INODES = {i + FIRST_INODE: a for i, a in enumerate(control.ATTRIBUTES)}
_BY_NAME = {a.name.encode(): ino for ino, a in _INODES.items()}


T = TypeVar("T")


def clean_stale(path: Path) -> bool:
    """Unmount a control directory left behind by a killed server; True if one was removed."""
    if mount_state(path) != "stale":
        return False
    for cmd in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        try:
            if subprocess.run(cmd, capture_output=True, check=False).returncode == 0:
                return True
        except FileNotFoundError:
            continue
    raise ControlDirError(f"control directory {path}: a stale mount is left and cannot be removed")


@dataclass(slots=True)
class _Node:
    """What kernfs keeps per node and lets root change: mode, owner, times (ns)."""

    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@dataclass(slots=True)
class _OpenFile:
    """One open attribute file: the text of its last generation and where the last read
    ended (seq_file's buffer and read position); ``lock`` serialises the file's reads and
    writes, as kernfs's per-open mutex does."""

    attr: control.Attribute
    text: bytes | None = None
    pos: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)


class _Ops(pyfuse3.Operations):
    def __init__(self, device: ZramDevice, uid: int, gid: int) -> None:
        super().__init__()
        self.device = device
        self.uid, self.gid = uid, gid
        stamp = time.time_ns()
        self.nodes = {ROOT: _Node(stat.S_IFDIR | 0o755, uid, gid, stamp, stamp, stamp)}
        for inode, attr in _INODES.items():
            self.nodes[inode] = _Node(stat.S_IFREG | attr.mode, uid, gid, stamp, stamp, stamp)
        self.open_files: dict[int, _OpenFile] = {}
        self.next_fh = 1

    def _node(self, inode: int) -> _Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        n = self._node(inode)
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.st_mode = n.mode
        if inode == ROOT:
            e.st_nlink = 2
            e.st_size = 0
        else:
            e.st_nlink = 1
            e.st_size = ATTR_SIZE
        e.st_uid, e.st_gid = n.uid, n.gid
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = n.atime_ns, n.mtime_ns, n.ctime_ns
        e.st_blksize = 4096
        e.attr_timeout = e.entry_timeout = 1.0
        return e

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT and name in _BY_NAME:
            return self._entry(_BY_NAME[name])
        if parent_inode == ROOT and name in (b".", b".."):
            return self._entry(ROOT)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(inode)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        # kernfs_iop_setattr: mode, owner and times are kept, a size change is ignored (so
        # `echo x > file`, which may truncate first, works). Who may change what was checked
        # by the kernel (default_permissions), as setattr_prepare does for sysfs.
        n = self._node(inode)
        changed = False
        if fields.update_mode:
            n.mode = stat.S_IFMT(n.mode) | stat.S_IMODE(attr.st_mode)
            changed = True
        if fields.update_uid:
            n.uid = attr.st_uid
            changed = True
        if fields.update_gid:
            n.gid = attr.st_gid
            changed = True
        if fields.update_atime:
            n.atime_ns = attr.st_atime_ns
            changed = True
        if fields.update_mtime:
            n.mtime_ns = attr.st_mtime_ns
            changed = True
        if fields.update_ctime:
            n.ctime_ns = attr.st_ctime_ns
        elif changed:
            n.ctime_ns = time.time_ns()
        return self._entry(inode)

    # The directory is fixed, as a sysfs device directory is: the kernel's VFS answers
    # "exists", "no such file" and the like first; what reaches these is refused as sysfs
    # refuses it (no ->create in kernfs: EACCES; the other operations: EPERM).

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise pyfuse3.FUSEError(errno.EACCES)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    # sysfs keeps no user extended attributes

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        self._node(inode)
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self._node(inode)
        return []

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return 0

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for inode, attr in _INODES.items():
            if inode <= start_id:
                continue
            if not pyfuse3.readdir_reply(token, attr.name.encode(), self._entry(inode), inode):
                return

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        attr = _INODES.get(inode)
        if attr is None:
            raise pyfuse3.FUSEError(errno.EISDIR if inode == ROOT else errno.ENOENT)
        # kernfs's extra open check for sysfs: the mode must allow it, even for root
        mode = flags & os.O_ACCMODE
        perm = self.nodes[inode].mode
        if mode in (os.O_WRONLY, os.O_RDWR) and not perm & 0o222:
            raise pyfuse3.FUSEError(errno.EACCES)
        if mode in (os.O_RDONLY, os.O_RDWR) and not perm & 0o444:
            raise pyfuse3.FUSEError(errno.EACCES)
        fh = self.next_fh
        self.next_fh += 1
        self.open_files[fh] = _OpenFile(attr)
        # direct_io: no page cache, so each read regenerates as sysfs does and each write(2)
        # arrives as it was made
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        f = self.open_files[fh]
        if f.attr.show is None:  # opened for reading after a chmod: dev_attr_show's EIO
            raise pyfuse3.FUSEError(errno.EIO)
        async with f.lock:
            if off == 0 or f.text is None or off != f.pos:
                f.text = await self._call(control.show, self.device, f.attr.name)
            chunk = f.text[off : off + size]
            f.pos = off + len(chunk)
            return chunk

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        f = self.open_files[fh]
        if f.attr.store is None:  # opened for writing after a chmod: dev_attr_store's EIO
            raise pyfuse3.FUSEError(errno.EIO)
        # The count is the store's (at most 4096): a synchronous write(2) larger than one
        # FUSE request stops at the short count, so it is one store as in sysfs.
        # XXX: an asynchronous O_DIRECT write (AIO, io_uring) larger than one FUSE request may
        # be sent as several requests at once, and each would be stored.
        async with f.lock:
            return await self._call(control.store, self.device, f.attr.name, bytes(buf))

    async def release(self, fh: int) -> None:
        self.open_files.pop(fh, None)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_files = len(_INODES) + 1
        s.f_namemax = 255
        return s

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except ZramdError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            # A bug in one attribute must not take the whole directory down: pyfuse3 ends its
            # main loop on any exception but FUSEError, and the mount goes with it (a NUL byte
            # written to backing_dev did that). The caller gets EIO; the log gets the trace.
            print(f"zramd: control: {args[1:2]}: unexpected error", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            raise pyfuse3.FUSEError(errno.EIO) from None


class ControlDir:
    """Mounts the control directory of ``device`` at ``path`` and serves it in a thread.

    ``check()`` runs before nbdkit forks, so most problems reach the terminal; ``start()``
    mounts and serves in the process that serves (after the fork, once the socket is bound, so
    a server that fails to start never leaves a mount behind). ``stop()`` unmounts.
    """

    def __init__(self, device: ZramDevice, path: Path, *, allow_other: bool = False) -> None:
        self.device = device
        self.path = Path(path)
        self.allow_other = allow_other
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._mounted = False

    def check(self) -> None:
        """Everything that can be verified without mounting: FUSE present, no live mount at
        the path (a stale one is removed), the directory creatable and empty."""
        if not os.path.exists("/dev/fuse"):
            raise ControlDirError("control directory: /dev/fuse is missing (FUSE not available)")
        clean_stale(self.path)
        state = mount_state(self.path)
        if state == "live":
            raise ControlDirError(f"control directory {self.path} is in use (already mounted)")
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ControlDirError(f"control directory {self.path}: {e.strerror}") from e
        if any(self.path.iterdir()):
            raise ControlDirError(f"control directory {self.path} is not empty")

    def mount(self) -> None:
        self.check()
        options = set(pyfuse3.default_options) | {f"fsname={FSNAME}", f"subtype={FSNAME}"}
        if self.allow_other:
            options.add("allow_other")
        ops = _Ops(self.device, os.getuid(), os.getgid())
        try:
            pyfuse3.init(ops, str(self.path), options)
        except RuntimeError as e:
            raise ControlDirError(f"control directory {self.path}: mount failed: {e}") from e
        self._mounted = True

    def start(self) -> None:
        if not self._mounted:
            self.mount()
        self._thread = threading.Thread(target=self._serve, name="zramd-control", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await pyfuse3.main()

        try:
            trio.run(main)
        finally:
            self._close()

    def _close(self) -> None:
        if self._mounted:
            self._mounted = False
            pyfuse3.close(unmount=True)

    def stop(self) -> None:
        """Unmount and stop serving (idempotent)."""
        thread, token = self._thread, self._token
        if thread is not None and token is not None and thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(pyfuse3.terminate, trio_token=token)
            thread.join(10)
        else:
            self._close()
        self._thread = None

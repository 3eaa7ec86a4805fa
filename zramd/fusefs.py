"""The live control tree: zram-control and each device's attributes as files, over FUSE
(pyfuse3 + trio).

Laid out like sysfs, ``/sys/class/zram-control/`` and ``/sys/block/zramN/`` side by side under
one mount point::

    CONTROL/
        zram-control/    hot_add (0400), hot_remove (0200)
        zram0/           disksize, mm_stat, reset, ... (control.ATTRIBUTES)
        zram1/           ...

A device directory appears when the device is added (at start or by reading ``hot_add``) and
goes when it is removed; its name is never cached by the kernel (entry timeout 0), so a path
always reaches the device that holds that name now. An attribute file still open after its
device was removed answers ENODEV, as kernfs does for a removed node. Each file answers as
kernfs/sysfs do:

* One file per attribute with the sysfs mode, 4096 bytes long. The files are opened with
  ``direct_io``, so every read and write reaches this process.
* A read at offset 0 generates the attribute's text afresh (seq_file's rule), so a monitor may
  keep ``mm_stat`` open and ``pread`` it at 0 again and again; a read that continues where the
  previous one ended is served from that same text, and a read anywhere else generates it
  again. (``hot_add`` adds one device per read at offset 0: ``cat hot_add`` adds one.)
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio

from zramd import control
from zramd.device import ZramDevice
from zramd.devices import Devices, Entry, parse_device_name
from zramd.errors import ControlDirError, ZramdError
from zramd.runstate import mount_state  # re-exported: decodes the mount table's escapes

FSNAME = "zramd"
ATTR_SIZE = 4096  # what sysfs reports for every attribute
CLASS_DIR = "zram-control"

# Inodes: the root, zram-control and its files first; then one block of DEVICE_STRIDE inodes
# per device, numbered by its serial (never reused), so a removed device's inodes never name
# the device that later takes its id: the block's first inode is the directory, the attribute
# files follow in table order.
ROOT = pyfuse3.ROOT_INODE
CLASS_INODE = ROOT + 1
_CLASS_FILES = {CLASS_INODE + 1 + i: a for i, a in enumerate(control.CONTROL_ATTRIBUTES)}
_CLASS_BY_NAME = {a.name.encode(): ino for ino, a in _CLASS_FILES.items()}
DEVICE_BASE = 64
DEVICE_STRIDE = 64
assert len(control.ATTRIBUTES) < DEVICE_STRIDE
assert max(_CLASS_FILES) < DEVICE_BASE
_ATTR_INDEX = {a.name.encode(): i for i, a in enumerate(control.ATTRIBUTES)}


def device_inode(serial: int, k: int = 0) -> int:
    """The inode of a device's directory (``k`` 0) or of its attribute ``k - 1``."""
    return DEVICE_BASE + serial * DEVICE_STRIDE + k


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
    writes, as kernfs's per-open mutex does. ``entry`` is the device (None for
    zram-control's files)."""

    attr: control.Attribute[Any]
    entry: Entry | None
    text: bytes | None = None
    pos: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)


@dataclass(frozen=True, slots=True)
class _Where:
    """What an inode is: a directory, or an attribute file (``attr``); ``entry`` is the
    device it belongs to, if any."""

    attr: control.Attribute[Any] | None
    entry: Entry | None = None

    @property
    def is_dir(self) -> bool:
        return self.attr is None


class _Ops(pyfuse3.Operations):
    def __init__(self, devices: Devices, uid: int, gid: int) -> None:
        super().__init__()
        self.devices = devices
        self.uid, self.gid = uid, gid
        self.nodes: dict[int, _Node] = {}
        self.open_files: dict[int, _OpenFile] = {}
        self.next_fh = 1

    def _where(self, inode: int) -> _Where:
        """What ``inode`` is now; ENOENT if nothing (a removed device's inodes included)."""
        if inode in (ROOT, CLASS_INODE):
            return _Where(None)
        if inode in _CLASS_FILES:
            return _Where(_CLASS_FILES[inode])
        serial, k = divmod(inode - DEVICE_BASE, DEVICE_STRIDE)
        if inode < DEVICE_BASE or k > len(control.ATTRIBUTES):
            raise pyfuse3.FUSEError(errno.ENOENT)
        entry = self.devices.by_serial(serial)
        if entry is None:
            for gone in range(DEVICE_STRIDE):  # forget what was kept of a removed device
                self.nodes.pop(device_inode(serial, gone), None)
            raise pyfuse3.FUSEError(errno.ENOENT)
        if k == 0:
            return _Where(None, entry)
        return _Where(control.ATTRIBUTES[k - 1], entry)

    def _node(self, inode: int) -> _Node:
        where = self._where(inode)
        node = self.nodes.get(inode)
        if node is None:
            stamp = time.time_ns()
            mode = stat.S_IFDIR | 0o755 if where.attr is None else stat.S_IFREG | where.attr.mode
            node = self.nodes[inode] = _Node(mode, self.uid, self.gid, stamp, stamp, stamp)
        return node

    def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        n = self._node(inode)
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.st_mode = n.mode
        e.attr_timeout = e.entry_timeout = 1.0
        if stat.S_ISDIR(n.mode):
            e.st_nlink = 2 + (1 + len(self.devices) if inode == ROOT else 0)
            e.st_size = 0
            if inode >= DEVICE_BASE:
                e.entry_timeout = 0  # the name may name another device next time
        else:
            e.st_nlink = 1
            e.st_size = ATTR_SIZE
        e.st_uid, e.st_gid = n.uid, n.gid
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = n.atime_ns, n.mtime_ns, n.ctime_ns
        e.st_blksize = 4096
        return e

    def _children(self, inode: int) -> Iterator[tuple[int, bytes, int]]:
        """A directory's entries as (readdir key, name, inode), keys ascending."""
        if inode == ROOT:
            yield 1, CLASS_DIR.encode(), CLASS_INODE
            for entry in self.devices.entries():
                yield entry.id + 2, entry.name.encode(), device_inode(entry.serial)
        elif inode == CLASS_INODE:
            for key, (child, attr) in enumerate(_CLASS_FILES.items(), 1):
                yield key, attr.name.encode(), child
        else:
            owner = self._where(inode).entry
            assert owner is not None
            for k, dev_attr in enumerate(control.ATTRIBUTES, 1):
                yield k, dev_attr.name.encode(), device_inode(owner.serial, k)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self._entry(parent_inode)
        if name == b"..":
            return self._entry(ROOT)
        if parent_inode == ROOT:
            if name == CLASS_DIR.encode():
                return self._entry(CLASS_INODE)
            dev_id = parse_device_name(name.decode("utf-8", "replace"))
            entry = self.devices.get(dev_id) if dev_id is not None else None
            if entry is not None:
                return self._entry(device_inode(entry.serial))
        elif parent_inode == CLASS_INODE:
            if name in _CLASS_BY_NAME:
                return self._entry(_CLASS_BY_NAME[name])
        elif parent_inode >= DEVICE_BASE and name in _ATTR_INDEX:
            where = self._where(parent_inode)
            if where.entry is not None and where.is_dir:
                return self._entry(device_inode(where.entry.serial, _ATTR_INDEX[name] + 1))
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
        if not self._where(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        try:
            children = list(self._children(fh))
        except pyfuse3.FUSEError:
            return  # a removed device's directory, still open: empty
        for key, name, inode in children:
            if key <= start_id:
                continue
            try:
                attrs = self._entry(inode)
            except pyfuse3.FUSEError:
                continue  # removed meanwhile
            if not pyfuse3.readdir_reply(token, name, attrs, key):
                return

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        where = self._where(inode)
        if where.attr is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        # kernfs's extra open check for sysfs: the mode must allow it, even for root
        mode = flags & os.O_ACCMODE
        perm = self._node(inode).mode
        if mode in (os.O_WRONLY, os.O_RDWR) and not perm & 0o222:
            raise pyfuse3.FUSEError(errno.EACCES)
        if mode in (os.O_RDONLY, os.O_RDWR) and not perm & 0o444:
            raise pyfuse3.FUSEError(errno.EACCES)
        fh = self.next_fh
        self.next_fh += 1
        self.open_files[fh] = _OpenFile(where.attr, where.entry)
        # direct_io: no page cache, so each read regenerates as sysfs does and each write(2)
        # arrives as it was made
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        f = self.open_files[fh]
        if f.attr.show is None:  # opened for reading after a chmod: dev_attr_show's EIO
            raise pyfuse3.FUSEError(errno.EIO)
        async with f.lock:
            if off == 0 or f.text is None or off != f.pos:
                if f.entry is None:
                    f.text = await self._call(control.class_show, self.devices, f.attr.name)
                else:
                    f.text = await self._call(control.show, self._device(f), f.attr.name)
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
            if f.entry is None:
                return await self._call(control.class_store, self.devices, f.attr.name, bytes(buf))
            return await self._call(control.store, self._device(f), f.attr.name, bytes(buf))

    def _device(self, f: _OpenFile) -> ZramDevice:
        """The open file's device; ENODEV once it was removed (kernfs's answer for a removed
        node's open file)."""
        assert f.entry is not None
        if self.devices.by_serial(f.entry.serial) is not f.entry:
            raise pyfuse3.FUSEError(errno.ENODEV)
        return f.entry.device

    async def release(self, fh: int) -> None:
        self.open_files.pop(fh, None)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_files = 2 + len(_CLASS_FILES) + len(self.devices) * (1 + len(control.ATTRIBUTES))
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
    """Mounts the control tree of ``devices`` at ``path`` and serves it in a thread.

    ``check()`` runs before nbdkit forks, so most problems reach the terminal; ``start()``
    mounts and serves in the process that serves (after the fork, once the socket is bound, so
    a server that fails to start never leaves a mount behind). ``stop()`` unmounts.
    """

    def __init__(self, devices: Devices, path: Path, *, allow_other: bool = False) -> None:
        self.devices = devices
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
        ops = _Ops(self.devices, os.getuid(), os.getgid())
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

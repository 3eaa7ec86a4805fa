"""The live control directory: the device's attributes as files, over FUSE (pyfuse3 + trio).

Mirrors ``/sys/block/zramN/`` for scripts: one file per entry of ``control.ATTRIBUTES`` with the
sysfs mode, 4096 bytes long as sysfs reports. A read returns the attribute's text generated when
the file was opened (sysfs does the same per open); each ``write()`` call is one store, acting
before it returns; a refused store fails the write with the attribute's errno and changes
nothing. Reading a write-only file or writing a read-only one fails with EACCES, even for root,
as kernfs does. The mount is owner-only (no ``allow_other`` unless asked for).

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
from pathlib import Path

import pyfuse3
import trio

from zramd import control
from zramd.device import ZramDevice
from zramd.errors import ZramdError
from zramd.runstate import mount_state  # re-exported: decodes the mount table's escapes

FSNAME = "zramd"
ATTR_SIZE = 4096  # what sysfs reports for every attribute
ROOT = pyfuse3.ROOT_INODE
FIRST_INODE = ROOT + 1
_INODES = {i + FIRST_INODE: a for i, a in enumerate(control.ATTRIBUTES)}
_BY_NAME = {a.name.encode(): ino for ino, a in _INODES.items()}


class ControlDirError(ZramdError):
    """The control directory cannot be mounted (missing FUSE, busy path, ...)."""


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


class _Ops(pyfuse3.Operations):
    def __init__(self, device: ZramDevice, uid: int, gid: int) -> None:
        super().__init__()
        self.device = device
        self.uid, self.gid = uid, gid
        self.stamp = time.time_ns()
        self.open_files: dict[int, tuple[control.Attribute, bytes | None]] = {}
        self.next_fh = 1

    def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        if inode == ROOT:
            e.st_mode = stat.S_IFDIR | 0o755
            e.st_nlink = 2
            e.st_size = 0
        else:
            e.st_mode = stat.S_IFREG | _INODES[inode].mode
            e.st_nlink = 1
            e.st_size = ATTR_SIZE
        e.st_uid, e.st_gid = self.uid, self.gid
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = self.stamp
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
        if inode != ROOT and inode not in _INODES:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(inode)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        # `echo x > file` opens with O_TRUNC: accept truncation (sysfs ignores it), nothing else
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._entry(inode)

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
        mode = flags & os.O_ACCMODE
        reading = mode in (os.O_RDONLY, os.O_RDWR)
        writing = mode in (os.O_WRONLY, os.O_RDWR)
        if (reading and attr.show is None) or (writing and attr.store is None):
            raise pyfuse3.FUSEError(errno.EACCES)
        content = None
        if reading:
            content = await self._call(control.show, self.device, attr.name)
        fh = self.next_fh
        self.next_fh += 1
        self.open_files[fh] = (attr, content)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        _, content = self.open_files[fh]
        if content is None:
            raise pyfuse3.FUSEError(errno.EACCES)
        return content[off : off + size]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        attr, _ = self.open_files[fh]
        if buf:
            await self._call(control.store, self.device, attr.name, bytes(buf))
        return len(buf)

    async def release(self, fh: int) -> None:
        self.open_files.pop(fh, None)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_files = len(_INODES) + 1
        s.f_namemax = 255
        return s

    async def _call(self, fn: object, *args: object) -> bytes:
        try:
            result: bytes = await trio.to_thread.run_sync(fn, *args)  # type: ignore[arg-type]
        except ZramdError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            # A bug in one attribute must not take the whole directory down: pyfuse3 ends its
            # main loop on any exception but FUSEError, and the mount goes with it (a NUL byte
            # written to backing_dev did that). The writer gets EIO; the log gets the trace.
            print(f"zramd: control: {args[1:2]}: unexpected error", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            raise pyfuse3.FUSEError(errno.EIO) from None
        return result


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

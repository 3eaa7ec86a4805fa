"""A server's runtime state: its directory, socket, pidfile, log and control mount.

``zramd serve`` creates these, ``zramd stop`` and the supervising shell remove them. Each
function here refuses rather than guesses when a path is not what zramd itself would have put
there, because the paths often live in directories other users can write to (docs/reliability.md,
threat model):

* The runtime directory (``/run/zramd`` for root, ``$XDG_RUNTIME_DIR/zramd``, else
  ``$TMPDIR/zramd-UID`` or ``/tmp/zramd-UID``) is created 0700. One that already exists is used
  only if it is a real directory (not a symlink) owned by the effective uid with mode exactly
  0700; anything else is refused, never chmodded.
* A directory for a file zramd creates elsewhere (``--socket``/``--pidfile``/``--log``) must not
  be writable by others unless it is sticky like /tmp; files are created with
  ``O_NOFOLLOW`` (and ``O_EXCL`` for the pidfile) and checked to belong to the caller.
* Only a stale socket is removed: ``lstat`` says socket and ``connect`` is refused.
* A pid read from a pidfile is signalled only if ``/proc`` shows the nbdkit that serves that
  pidfile with zramd's plugin (``find_server``).
* Mount tables escape space, tab, newline and backslash as ``\\ooo``; fields are decoded before
  paths are compared (``mounts``).

``python -m zramd.runstate exited RC`` is what the supervising shell runs after nbdkit exits
(paths in ``ZRAMD_PIDFILE``, ``ZRAMD_SOCKET``, ``ZRAMD_CONTROL``): it reports the exit and removes
the stale state with the rules above.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import re
import select
import signal
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from zramd.errors import RunStateError

#: sun_path holds 108 bytes with the terminating NUL (unix(7))
SUN_PATH_MAX = 107
#: how long a probe ``connect`` waits before calling a socket live (a full backlog blocks)
PROBE_TIMEOUT = 2.0
#: the fstype of a control mount (FUSE, fsname and subtype ``zramd``)
CONTROL_FSTYPE = "fuse.zramd"
#: how nbdkit's argv names zramd's plugin: the package's script, or a checkout's entry
PLUGIN_SCRIPTS = ("/zramd/nbdkit_plugin.py", "zramd_plugin.py")
#: ``$0`` of the supervising shell (``sh -c SCRIPT zramd-serve nbdkit ...``)
SUPERVISOR_NAME = "zramd-serve"
#: kernel filesystems where a pidfile cannot be created (named in the error)
PSEUDO_FILESYSTEMS = frozenset(
    {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "debugfs", "securityfs", "configfs", "bpf"}
)


# -- describing what is at a path -------------------------------------------------------------


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def describe(st: os.stat_result) -> str:
    """``a directory owned by uid 65534 (nobody), mode 0777``."""
    return f"{_kind(st.st_mode)} owned by {_owner(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"


# -- directories ------------------------------------------------------------------------------


def runtime_dir() -> Path:
    """/run/zramd for root, $XDG_RUNTIME_DIR/zramd otherwise, else $TMPDIR/zramd-UID (TMPDIR
    defaulting to /tmp). Relative XDG_RUNTIME_DIR or TMPDIR values are ignored."""
    if os.geteuid() == 0:
        return Path("/run/zramd")
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "zramd"
    tmp = os.environ.get("TMPDIR", "")
    return Path(tmp if os.path.isabs(tmp) else "/tmp") / f"zramd-{os.geteuid()}"  # noqa: S108


def default_socket() -> Path:
    return runtime_dir() / "zramd.sock"


def default_control() -> Path:
    return runtime_dir() / "control"


def default_pidfile() -> Path:
    return runtime_dir() / "zramd.pid"


def default_log() -> Path:
    return runtime_dir() / "zramd.log"


def check_private_dir(path: Path) -> None:
    """``path`` is a real directory owned by the effective uid with mode 0700 (lstat: a symlink
    is refused even if it points at such a directory). Raises FileNotFoundError if missing and
    RunStateError, naming path, owner and mode, for anything else."""
    st = os.lstat(path)
    uid = os.geteuid()
    if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o700:
        return
    raise RunStateError(
        f"runtime directory {path} is not safe to use: it is {describe(st)}; zramd uses only a "
        f"directory owned by you ({_owner(uid)}) with mode 0700 (remove it if it is not yours, "
        "or set XDG_RUNTIME_DIR)"
    )


def private_dir(path: Path, *, create: bool = True) -> bool:
    """Make sure ``path`` is this user's private directory (``check_private_dir``), creating it
    with mode 0700 when missing and ``create`` is set (its parent must exist). False if it is
    missing and was not created; RunStateError if it cannot be used."""
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise RunStateError(f"runtime directory {path}: cannot create it: {e.strerror}") from e
        else:
            # mkdir's mode went through the umask; this directory is ours, so set it exactly
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)
    try:
        check_private_dir(path)
    except FileNotFoundError:
        if create:
            raise RunStateError(f"runtime directory {path} vanished while being created") from None
        return False
    return True


def usable_dir(path: Path, what: str) -> None:
    """A directory for a file zramd creates (``what`` names the option, for messages): created
    with mode 0700 (and its parents) when missing. An existing one must be a directory owned by
    you or root that others cannot write to, unless it is sticky like /tmp (nobody can then
    remove or rename the files zramd creates there). Group write is accepted for your own
    primary group. Raises RunStateError."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        raise RunStateError(f"{what}: directory {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RunStateError(f"{what}: {path} is {_kind(st.st_mode)}, not a directory")
    if st.st_uid not in (os.geteuid(), 0):
        raise RunStateError(
            f"{what}: directory {path} is {describe(st)}: its owner could replace what zramd "
            "puts there; choose a directory of your own"
        )
    others = st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != os.getegid())
    if others and not st.st_mode & stat.S_ISVTX:
        raise RunStateError(
            f"{what}: directory {path} is {describe(st)}: others can write to it and it is not "
            "sticky, so they could replace what zramd puts there; choose a directory of your own"
        )


# -- mount tables -----------------------------------------------------------------------------

_ESCAPE = re.compile(rb"\\([0-7]{3})")


def unescape_mount_field(raw: bytes) -> str:
    """A path field of /proc/self/mountinfo as the path it names: the kernel writes space, tab,
    newline and backslash as ``\\040``, ``\\011``, ``\\012``, ``\\134`` (fs/proc_namespace.c,
    seq_escape)."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m[1], 8) & 0xFF]), raw))


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str


def mounts() -> list[Mount]:
    """Every mount of this process's namespace, in mount order, paths decoded."""
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.rstrip(b"\n").split(b" ")
            try:
                sep = fields.index(b"-", 6)
            except ValueError:
                continue
            point, fstype = fields[4], fields[sep + 1]
            out.append(Mount(unescape_mount_field(point), unescape_mount_field(fstype)))
    return out


def mount_at(path: str | Path) -> Mount | None:
    """The topmost mount whose mount point is exactly ``path`` (resolved), or None."""
    target = os.path.realpath(path)
    found = None
    for m in mounts():
        if m.point == target:
            found = m
    return found


def filesystem_of(path: str | Path) -> str:
    """The fstype of the mount holding ``path`` (longest mount point prefix), or ''."""
    target = os.path.realpath(path)
    best, fstype = -1, ""
    for m in mounts():
        inside = target == m.point or target.startswith(m.point.rstrip("/") + "/")
        if inside and len(m.point) >= best:
            best, fstype = len(m.point), m.fstype
    return fstype


def mount_state(path: str | Path) -> str:
    """'none', 'live' (a working mount) or 'stale' (its server died) for ``path``."""
    target = os.path.realpath(path)
    if mount_at(target) is None:
        return "none"
    try:
        os.statvfs(target)  # always a round trip: stat() may be answered from the attr cache
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return "stale"
        raise
    return "live"


def unmount_stale(path: str | Path) -> bool:
    """Lazily unmount a stale control mount (fstype fuse.zramd, server gone) at ``path``. True
    if one was removed; False if there is none (or it is live, or not zramd's)."""
    mount = mount_at(path)
    if mount is None or mount.fstype != CONTROL_FSTYPE or mount_state(path) != "stale":
        return False
    for cmd in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        with contextlib.suppress(FileNotFoundError):
            subprocess.run(cmd, capture_output=True, check=False)
        if mount_state(path) == "none":
            return True
    raise RunStateError(f"control directory {path}: a stale mount is left and cannot be removed")


# -- sockets ----------------------------------------------------------------------------------


def socket_state(path: Path) -> str:
    """What is at ``path``: 'none', 'live' (a socket something accepts on), 'stale' (a socket
    whose connect is refused: its server is gone), 'unreachable' (a socket this user may not
    connect to) or 'other' (anything but a socket, symlinks included)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "none"
    if not stat.S_ISSOCK(st.st_mode):
        return "other"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    state = "live"
    try:
        probe.connect(os.fsencode(path))
    except ConnectionRefusedError:
        state = "stale"
    except FileNotFoundError:
        state = "none"
    except PermissionError:
        state = "unreachable"
    except OSError:
        pass  # a full backlog (timeout, EAGAIN) still means a listener
    finally:
        probe.close()
    return state


def check_socket_path(path: Path) -> None:
    """Before ``serve`` binds ``path``: the path length fits sun_path, nothing listens there,
    and a stale socket left by a dead server is removed. Anything else at the path is left
    alone and refused (RunStateError naming it)."""
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise RunStateError(
            f"--socket {path}: the path is {size} bytes long; a Unix socket path can have at "
            f"most {SUN_PATH_MAX} (sun_path); choose a shorter one"
        )
    state = socket_state(path)
    if state == "stale":
        os.unlink(path)
    elif state == "live":
        raise RunStateError(f"socket {path} is in use by a running server")
    elif state == "unreachable":
        raise RunStateError(
            f"socket {path} exists and you may not connect to it "
            f"({describe(os.lstat(path))}); left alone"
        )
    elif state == "other":
        raise RunStateError(
            f"--socket {path}: something else is there ({describe(os.lstat(path))}); zramd "
            "removes only a stale socket: remove it yourself or choose another path"
        )


# -- files ------------------------------------------------------------------------------------


def _own_regular(fd: int, path: Path, what: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise RunStateError(f"{what} {path} is {describe(st)}: not yours to write; left alone")


def open_log(path: Path, *, device_ok: bool = False) -> int:
    """Open (create 0600, or append to) the server log; the descriptor. A symlink at ``path``
    or a file someone else owns is refused (RunStateError); ``device_ok`` lets a character
    device through (a console or /dev/kmsg: swap mode's logs, which must not be on tmpfs)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunStateError(
                f"--log {path} is a symbolic link: zramd does not follow it (remove it)"
            ) from None
        raise RunStateError(f"--log {path}: cannot open it: {e.strerror}") from None
    if not (device_ok and stat.S_ISCHR(os.fstat(fd).st_mode)):
        _own_regular(fd, path, "log")
    os.set_blocking(fd, True)
    return fd


def read_pid(path: Path) -> int | None:
    """The pid in a pidfile, or None when it holds none (empty, garbage). FileNotFoundError if
    there is no pidfile; RunStateError if it is not a regular file owned by you or root (a
    symlink included: it is never followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunStateError(f"pidfile {path} is a symbolic link: not followed") from None
        if e.errno == errno.ENOENT:
            raise
        raise RunStateError(f"pidfile {path}: cannot read it: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0):
            raise RunStateError(f"pidfile {path} is {describe(st)}: not trusted")
        text = os.read(fd, 64)
    finally:
        os.close(fd)
    value = text.strip()
    if not value.isdigit() or not 0 < int(value) < 1 << 22:
        return None
    return int(value)


# -- processes --------------------------------------------------------------------------------


def _btime() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def is_plugin(arg: str) -> bool:
    """Whether an nbdkit argument names zramd's plugin script."""
    return arg.endswith(PLUGIN_SCRIPTS) or arg == PLUGIN_SCRIPTS[0][1:]


@dataclass(frozen=True)
class Process:
    """A process as /proc shows it: argv, parent, and start time (seconds since the epoch,
    rounded down: /proc/stat's btime has whole seconds)."""

    pid: int
    argv: tuple[str, ...]
    ppid: int
    started: float

    @classmethod
    def read(cls, pid: int) -> Process | None:
        """None if ``pid`` is gone (or a zombie, or a kernel thread without argv)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
            with open(f"/proc/{pid}/stat", "rb") as f:
                st = f.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
        if not raw:
            return None
        # fields after the command name, which may itself contain ") "
        rest = st[st.rindex(b")") + 2 :].split()
        if rest[0] == b"Z":
            return None
        started = _btime() + int(rest[19]) / os.sysconf("SC_CLK_TCK")
        argv = tuple(os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0"))
        return cls(pid, argv, int(rest[1]), started)

    def _script(self) -> int:
        """Index of zramd's plugin script in argv (len(argv) if absent)."""
        return next((i for i, a in enumerate(self.argv) if is_plugin(a)), len(self.argv))

    def option(self, short: str, long: str) -> str | None:
        """The value of an nbdkit server option, given before the plugin (``-P X``, ``-PX``,
        ``--pidfile X``, ``--pidfile=X``)."""
        args = self.argv[1 : self._script()]
        for i, a in enumerate(args):
            if a in (short, long):
                return args[i + 1] if i + 1 < len(args) else None
            if a.startswith(long + "="):
                return a[len(long) + 1 :]
            if a.startswith(short) and not a.startswith("--"):
                return a[len(short) :]
        return None

    def plugin_key(self, key: str) -> str | None:
        """The value of a plugin ``key=value`` argument (after the script)."""
        for a in self.argv[self._script() + 1 :]:
            if a.startswith(key + "="):
                return a[len(key) + 1 :]
        return None


@dataclass(frozen=True)
class Server:
    """A running nbdkit serving zramd, found through its pidfile."""

    process: Process
    pidfile: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def socket(self) -> Path | None:
        value = self.process.option("-U", "--unix")
        return Path(value) if value and value != "-" else None

    @property
    def control(self) -> Path | None:
        value = self.process.plugin_key("control")
        return Path(value) if value else None

    def supervisor(self) -> Process | None:
        """The shell ``zramd serve`` runs nbdkit under (background mode), if that is the
        parent."""
        parent = Process.read(self.process.ppid)
        if parent is None or len(parent.argv) < 4:
            return None
        ok = parent.argv[1] == "-c" and parent.argv[3] == SUPERVISOR_NAME
        return parent if ok else None


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def find_server(pid: int, pidfile: Path) -> tuple[Server | None, str]:
    """Whether ``pid`` (read from ``pidfile``) is the nbdkit serving zramd with that pidfile:
    ``(Server, "")``, or ``(None, why not)``.

    Three checks, all from /proc, so that a pid reused by an unrelated process is never taken
    for the server: argv[0] is nbdkit; its arguments name zramd's plugin; its ``-P`` names this
    very pidfile (same inode, so any spelling of the path matches). And the process must have
    started before the pidfile was last written (nbdkit writes it once it listens; a recycled
    pid belongs to a process started later). The start time has whole-second resolution (btime),
    so one second of slack is allowed."""
    proc = Process.read(pid)
    if proc is None:
        return None, f"process {pid} is gone"
    name = os.path.basename(proc.argv[0])
    if name != "nbdkit" or not any(is_plugin(a) for a in proc.argv):
        return None, f"process {pid} is not a zramd server (it runs {name})"
    named = proc.option("-P", "--pidfile")
    if named is None or not _same_file(Path(f"/proc/{pid}/cwd") / named, pidfile):
        return None, f"process {pid} is a zramd server with another pidfile ({named})"
    try:
        written = os.stat(pidfile).st_mtime
    except FileNotFoundError:
        return None, f"pidfile {pidfile} vanished"
    if proc.started > written + 1.0:
        return None, f"process {pid} started after {pidfile} was written (a reused pid)"
    return Server(proc, pidfile), ""


def claim_pidfile(path: Path) -> None:
    """Before nbdkit starts: refuse if a server holds ``path``, remove a stale pidfile, and
    create an empty one (O_EXCL | O_NOFOLLOW, 0644) for nbdkit to fill, so that nbdkit, which
    follows symlinks, writes only into a file zramd created. Raises RunStateError."""
    try:
        pid = read_pid(path)
    except FileNotFoundError:
        pass
    else:
        if pid is not None:
            server, _ = find_server(pid, path)
            if server is not None:
                raise RunStateError(
                    f"a server is already running with pidfile {path} (pid {pid}); "
                    f"stop it first: zramd stop --pidfile {path}"
                )
        os.unlink(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        fs = filesystem_of(path.parent)
        where = f" ({path.parent} is on {fs}, where files cannot be created)"
        reason = (e.strerror or str(e)) + (where if fs in PSEUDO_FILESYSTEMS else "")
        raise RunStateError(f"--pidfile {path}: cannot create it: {reason}") from None
    os.close(fd)


# -- cleaning up after a server that is gone --------------------------------------------------


@dataclass
class Cleanup:
    """What ``clean_up`` removed; what it found in the way and left alone (not zramd's to
    remove); and what of zramd's own state it could not remove."""

    removed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [f"left alone: {x}" for x in self.left] + [f"not removed: {x}" for x in self.failed]

    def lines(self) -> list[str]:
        removed = ["removed " + ", ".join(self.removed)] if self.removed else []
        return removed + self.problems()


def clean_up(pidfile: Path | None, sock: Path | None, control: Path | None) -> Cleanup:
    """Remove what a server that has exited left behind, and only that: the pidfile if no live
    server holds it; the socket if it is a stale socket; the control mount if it is zramd's and
    stale. Anything else at those paths is reported in ``left`` (a live socket, a live mount and
    a missing path are someone else's or nothing, and are not reported). Safe to run twice and
    concurrently (the supervisor and ``zramd stop`` both do)."""
    done = Cleanup()
    if pidfile is not None:
        try:
            pid = read_pid(pidfile)
        except FileNotFoundError:
            pass
        except RunStateError as e:
            done.left.append(str(e))
        else:
            if pid is None or find_server(pid, pidfile)[0] is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(pidfile)
                    done.removed.append(f"pidfile {pidfile}")
    if sock is not None:
        state = socket_state(sock)
        if state == "stale":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock)
                done.removed.append(f"socket {sock}")
        elif state in ("other", "unreachable"):
            with contextlib.suppress(FileNotFoundError):
                done.left.append(f"{sock} is {describe(os.lstat(sock))}, not a stale socket")
    if control is not None:
        try:
            if unmount_stale(control):
                done.removed.append(f"stale control mount {control}")
        except (RunStateError, OSError) as e:
            done.failed.append(str(e))
    return done


def exit_text(status: int) -> str:
    """The supervisor's report of nbdkit's exit: the shell's status (128 + N for signal N)."""
    text = f"nbdkit exited with status {status}"
    if status > 128:
        with contextlib.suppress(ValueError):
            text += f" (killed by {signal.Signals(status - 128).name})"
    return text


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value) if value else None


def supervisor_exit(status: int) -> None:
    """After nbdkit exits under the supervising shell: clean up and report ``status``."""
    for line in clean_up(
        _env_path("ZRAMD_PIDFILE"), _env_path("ZRAMD_SOCKET"), _env_path("ZRAMD_CONTROL")
    ).lines():
        print(f"zramd: {line}", file=sys.stderr)
    print(f"zramd: {exit_text(status)}", file=sys.stderr)


def pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (signals sent through it cannot reach a later process that reuses
    the pid), or None if the process is gone."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def wait_exit(fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the process behind pidfd ``fd`` to exit (it need not
    be our child, and need not be reaped); True if it has."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, round(timeout * 1000))))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "exited" or not sys.argv[2].isdigit():
        sys.exit("usage: python -m zramd.runstate exited STATUS (run by zramd serve's supervisor)")
    supervisor_exit(int(sys.argv[2]))

"""Serving: starting nbdkit with zramd's plugin, waiting until it is ready, stopping it.

What ``zramd serve`` and ``zramd stop`` do, without click (the CLI only parses and prints):

* ``start_nbdkit`` starts any nbdkit command line in the foreground (``-f``) and returns once
  its pidfile holds a pid (the socket listens) and, if asked, its control directory is mounted;
  a start that exits or is not ready within the timeout is stopped and reported with its log
  (``StartError``). Tests and the benchmark scripts start their servers with it too.
* ``start_server`` is ``zramd serve``: checks (nbdkit, its Python plugin, FUSE, TCP, TLS,
  runtime paths, in ``runstate.py``) while errors still reach the terminal, then nbdkit under
  a supervising shell (background) or as a child (foreground), its one-line failure reason
  taken from the log.
* ``stop_server`` is ``zramd stop``: SIGTERM through a pidfd, SIGKILL shortly before the
  timeout (nbdkit 1.32 waits for connected clients), then the supervisor's cleanup.

The plugin is ``zramd/nbdkit_plugin.py`` in the installed package (``plugin_path``); nbdkit
embeds /usr/bin/python3, so ``plugin_env`` puts the installed package's directory and its
site-packages on PYTHONPATH (never a checkout, unless zramd runs from one).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zramd
from zramd import notify, swapmode
from zramd.errors import RunStateError, ServeError
from zramd.native import why_not_native
from zramd.runstate import (
    SUPERVISOR_NAME,
    Cleanup,
    Server,
    check_socket_path,
    claim_pidfile,
    clean_up,
    find_server,
    mount_state,
    open_log,
    pidfd,
    private_dir,
    read_pid,
    usable_dir,
    wait_exit,
)

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: seconds a start may take before it is given up (and stopped)
READY_TIMEOUT = 60.0
#: seconds ``zramd stop`` (and a foreground serve that was told to stop) gives nbdkit to exit
STOP_TIMEOUT = 60.0
#: seconds between two looks at the pidfile and the mount while waiting for readiness
READY_POLL = 0.05
# One nbdkit worker thread per connection: Python requests serialise on the GIL anyway, and
# with nbdkit's default 16 workers each lz4 call's GIL release becomes a handoff between
# threads (docs/performance.md). Connections still run in parallel.
DEFAULT_THREADS = 1
# Fewer glibc malloc arenas: per-thread arenas hold freed memory (docs/performance.md).
MALLOC_ARENA_MAX = "2"


# -- the plugin and its environment -----------------------------------------------------------


def package_root() -> Path:
    """The directory holding the ``zramd`` package: site-packages for an installed wheel, the
    checkout for an editable install."""
    return Path(zramd.__file__).resolve().parent.parent


def plugin_path() -> Path:
    """The nbdkit script: ``nbdkit_plugin.py`` in the zramd package this process imports (the
    installed one; for an editable install, the checkout's)."""
    return Path(zramd.__file__).resolve().parent / "nbdkit_plugin.py"


def plugin_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment nbdkit needs to run the plugin: the embedded /usr/bin/python3 gets the
    directory holding the zramd package and this interpreter's site-packages (its
    dependencies) in front of PYTHONPATH, and a PATH without pyenv shims (the embedded
    interpreter derives sys.prefix from PATH). No NOTIFY_SOCKET: only ``zramd serve``, the
    service's main process, speaks for the service."""
    env = notify.child_environ(base)
    paths = [str(package_root()), sysconfig.get_paths()["purelib"]]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PATH"] = SBIN_PATH
    env.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)
    return env


def data_path() -> str:
    """Which data path the server runs (it inherits this environment and checkout)."""
    why = why_not_native()
    return "C (zramd._zram)" if why is None else f"Python ({why})"


# -- starting nbdkit and waiting for it -------------------------------------------------------


class StartError(ServeError):
    """nbdkit exited or was not ready in time (and was stopped); ``log`` holds what it
    wrote, ``pid`` was its process."""

    def __init__(self, message: str, log: str, pid: int, *, timed_out: bool) -> None:
        super().__init__(message)
        self.log = log
        self.pid = pid
        self.timed_out = timed_out


def is_ready(pidfile: Path, control: Path | None) -> bool:
    """nbdkit writes its pid into the pidfile once the socket listens; the control directory
    is mounted right after (in the plugin's after_fork). Ready when both are there."""
    try:
        listening = read_pid(pidfile) is not None
    except (FileNotFoundError, RunStateError):
        listening = False
    return listening and (control is None or mount_state(control) == "live")


def wait_ready(
    proc: subprocess.Popen[bytes],
    pidfile: Path,
    control: Path | None,
    timeout: float = READY_TIMEOUT,
) -> bool:
    """Wait until ``is_ready``; False if the process exited first or ``timeout`` seconds
    passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if is_ready(pidfile, control):
            return True
        time.sleep(READY_POLL)
    return False


def end_process(proc: subprocess.Popen[bytes], timeout: float, *, group: bool = False) -> int:
    """SIGTERM (to the process group when ``group``), SIGKILL after ``timeout`` seconds; the
    exit status (negative for a signal)."""
    send = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    if proc.poll() is None:
        send(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        return proc.wait()


@dataclass
class Nbdkit:
    """An nbdkit started by ``start_nbdkit``, in the foreground of this process."""

    proc: subprocess.Popen[bytes]
    pidfile: Path
    log: Path | None
    control: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None else ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM; nbdkit waits for connected clients, so SIGKILL after ``timeout`` seconds.
        The exit status (negative for a signal)."""
        return end_process(self.proc, timeout)


def start_nbdkit(
    args: Sequence[str],
    *,
    pidfile: Path,
    log: Path | None = None,
    control: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = READY_TIMEOUT,
) -> Nbdkit:
    """Run ``args`` (an nbdkit command line with ``-f`` and ``-P pidfile``) with its output in
    ``log`` (else inherited) and wait until it is ready (``is_ready``). A process that exits
    or is not ready within ``timeout`` seconds is stopped and StartError raised with its log.
    ``env`` defaults to ``plugin_env()``."""
    out = open(log, "wb") if log is not None else None  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(
            list(args),
            env=dict(plugin_env() if env is None else env),
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    finally:
        if out is not None:
            out.close()
    server = Nbdkit(proc, pidfile, log, control)
    if not wait_ready(proc, pidfile, control, timeout):
        timed_out = proc.poll() is None
        rc = server.stop()
        why = f"not ready within {timeout:g} s" if timed_out else f"exited with status {rc}"
        text = server.log_text()
        message = f"{args[0]} did not start ({why}):\n{text}"
        raise StartError(message, text, proc.pid, timed_out=timed_out)
    return server


# -- checks before serving --------------------------------------------------------------------


def check_nbdkit() -> str:
    """nbdkit's path, once it and its Python plugin are known to be installed."""
    nbdkit = shutil.which("nbdkit", path=SBIN_PATH)
    if nbdkit is None:
        raise ServeError("nbdkit is not installed (apt-get install nbdkit)")
    out = subprocess.run([nbdkit, "--dump-config"], capture_output=True, text=True, check=False)
    plugindir = next(
        (
            line.split("=", 1)[1]
            for line in out.stdout.splitlines()
            if line.startswith("plugindir=")
        ),
        "",
    )
    if not (Path(plugindir) / "nbdkit-python-plugin.so").exists():
        raise ServeError(
            "nbdkit's Python plugin is not installed (apt-get install nbdkit-plugin-python)"
        )
    return nbdkit


def check_control(path: Path) -> None:
    """The control directory can be mounted: FUSE present, no live mount there, and (unless a
    stale mount is there, which the plugin removes) missing or an empty directory."""
    if not os.path.exists("/dev/fuse"):
        raise ServeError(f"control directory {path} cannot be mounted: /dev/fuse is missing")
    state = mount_state(path)
    if state == "live":
        raise ServeError(f"control directory {path} is in use by a running server")
    if state == "stale":
        return
    try:
        entries = os.listdir(path)
    except FileNotFoundError:
        return  # created by the plugin
    except OSError as e:
        raise ServeError(f"control directory {path}: {e.strerror}") from None
    if entries:
        raise ServeError(
            f"control directory {path} is not empty (zramd mounts on an empty directory)"
        )


def parse_tcp(value: str) -> tuple[str, int]:
    """``[HOST:]PORT`` for ``serve --tcp``: HOST defaults to 127.0.0.1 (loopback only); an IPv6
    address goes in brackets (``[::1]:10809``). ValueError names what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: put an IPv6 address in brackets, e.g. [::1]:10809")
    if not host:
        raise ValueError(f"{value!r}: empty host (give HOST:PORT or just PORT)")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{value!r}: port must be a number from 1 to 65535")
    return host, int(port)


def check_tcp(host: str, port: int) -> None:
    """The address exists on this machine and nobody listens on it yet."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServeError(f"--tcp {host}:{port}: unknown host ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(addr)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"--tcp {host}:{port} is in use") from None
        raise ServeError(f"--tcp {host}:{port}: cannot listen: {e.strerror}") from None
    finally:
        probe.close()


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def tls_args(
    tls: str | None, certificates: Path | None, psk: Path | None, verify_peer: bool
) -> list[str]:
    """nbdkit's TLS options, checked. Credentials without ``--tls`` mean ``--tls=require``
    (nbdkit alone would merely offer TLS and still serve clients in the clear)."""
    if certificates is not None and psk is not None:
        raise ServeError("--tls-certificates and --tls-psk: choose one")
    if tls is None:
        tls = "require" if certificates or psk else "off"
    if tls == "off":
        if certificates or psk or verify_peer:
            raise ServeError("--tls=off: TLS credentials or --tls-verify-peer given")
        return []
    if certificates is None and psk is None:
        raise ServeError(f"--tls={tls} needs credentials: --tls-certificates DIR or --tls-psk FILE")
    if verify_peer and certificates is None:
        raise ServeError(
            "--tls-verify-peer checks client certificates: it needs --tls-certificates"
        )
    args = [f"--tls={tls}"]
    if certificates is not None:
        args.append(f"--tls-certificates={certificates.absolute()}")
    if psk is not None:
        mode = psk.stat().st_mode & 0o777
        if mode & 0o077:
            raise ServeError(
                f"--tls-psk {psk}: the keys are readable by others (mode {mode:04o}); "
                f"chmod 600 {psk}"
            )
        args.append(f"--tls-psk={psk.absolute()}")
    if verify_peer:
        args.append("--tls-verify-peer")
    return args


def prepare_paths(
    run: Path, sock: Path | None, pidfile: Path, logfile: Path | None, control: Path | None
) -> None:
    """Directories checked (the runtime directory only if a default path lies in it) and the
    socket path free; nothing is created but missing directories. Raises RunStateError."""
    inside = [p for p in (sock, pidfile, logfile, control) if p is not None and p.parent == run]
    if inside:
        private_dir(run)
    if sock is not None:
        if sock.parent != run:
            usable_dir(sock.parent, "--socket")
        check_socket_path(sock)
    for path, what in ((pidfile, "--pidfile"), (logfile, "--log")):
        if path is not None and path.parent != run:
            usable_dir(path.parent, what)


# -- zramd serve ------------------------------------------------------------------------------

# Background servers run under a tiny shell: nbdkit 1.32 sets PR_SET_PDEATHSIG even with -f,
# so its parent must outlive it, and the shell tidies up after it (nbdkit leaves its socket
# and pidfile behind; a control mount is only left if nbdkit was killed). The trap keeps the
# shell alive through a SIGTERM to the whole group (a failed start, a service manager) until
# nbdkit has exited. The cleanup itself is Python (zramd.runstate): it removes only a stale
# socket, a pidfile no live server holds and zramd's own stale mount, and decodes the mount
# table instead of comparing its escaped text.
SUPERVISOR = """
trap : INT TERM HUP
"$@"
rc=$?
"$ZRAMD_PYTHON" -m zramd.runstate exited "$rc" ||
    echo "zramd: nbdkit exited with status $rc (cleanup did not run: see above)" >&2
exit $rc
"""

# Messages nbdkit and the plugin write, reduced to their reason: a Python exception's last
# line ("zramd.errors.ControlDirError: control directory ... is not empty") and nbdkit's own
# errors ("nbdkit: python[1]: error: ...").
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception): (.+)$")
_NBDKIT_LINE = re.compile(r"^nbdkit: (?:\w+\[\d+\]: )?(?:error: )?(.+)$")


def failure_reason(text: str) -> str:
    """One line saying why nbdkit failed, from what it wrote to its log in this run (the
    supervisor's own ``zramd:`` lines are skipped)."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    lines = [x for x in lines if not x.startswith("zramd:")]
    for line in reversed(lines):
        m = _EXCEPTION_LINE.match(line)
        if m:
            return m[1]
    for line in reversed(lines):
        m = _NBDKIT_LINE.match(line)
        if m and not m[1].startswith("Traceback"):
            return m[1]
    return lines[-1] if lines else "nbdkit exited without a message"


def read_log_from(log: Path, offset: int) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


@dataclass
class ServeOptions:
    """What ``zramd serve`` was asked for; paths absolute. ``plugin_keys`` are the plugin's
    ``key=value`` arguments; ``listen`` is nbdkit's ``-U SOCKET`` or ``-i HOST -p PORT``."""

    nbdkit: str
    listen: list[str]
    pidfile: Path
    socket: Path | None = None
    control: Path | None = None
    logfile: Path | None = None
    threads: int = DEFAULT_THREADS
    tls: list[str] = field(default_factory=list)
    plugin_keys: list[str] = field(default_factory=list)
    foreground: bool = False
    swap: bool = False  #: swap mode: glibc and Python allocate from one warm heap

    def argv(self) -> list[str]:
        args = [self.nbdkit, "-f", f"--threads={self.threads}", *self.listen]
        args += ["-P", str(self.pidfile), *self.tls, "python", str(plugin_path())]
        args += self.plugin_keys
        if self.control is not None:
            args.append(f"control={self.control}")
        return args


@dataclass
class Running:
    """A server ``start_server`` started: the nbdkit (foreground) or its supervisor."""

    proc: subprocess.Popen[bytes]
    pid: int
    options: ServeOptions


def _launch(opts: ServeOptions, log_fd: int | None) -> subprocess.Popen[bytes]:
    env = plugin_env()
    if opts.swap:
        env.update(swapmode.MALLOC_ENV)
    if log_fd is None:
        # its own process group: a Ctrl-C reaches serve alone, which takes the devices down
        # before it stops nbdkit (daemon.py)
        return subprocess.Popen(opts.argv(), env=env, stdin=subprocess.DEVNULL, process_group=0)
    env.update(
        ZRAMD_PYTHON=sys.executable,
        ZRAMD_SOCKET=str(opts.socket or ""),
        ZRAMD_PIDFILE=str(opts.pidfile),
        ZRAMD_CONTROL=str(opts.control or ""),
    )
    return subprocess.Popen(
        ["/bin/sh", "-c", SUPERVISOR, SUPERVISOR_NAME, *opts.argv()],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_fd,
        stderr=log_fd,
        start_new_session=True,
    )


def start_server(opts: ServeOptions, timeout: float | None = None) -> Running:
    """Start nbdkit as ``zramd serve`` does and wait until it is ready (``timeout`` seconds,
    default READY_TIMEOUT). In the background (``logfile`` set) it runs under the supervising
    shell; a start that fails or times out is stopped the same way and leaves nothing behind.
    Raises ServeError with the reason in one line (RunStateError for runtime paths)."""
    if opts.control is not None:
        check_control(opts.control)
    log_fd = None
    if opts.logfile is not None:
        log_fd = open_log(opts.logfile, device_ok=opts.swap)
    try:
        claim_pidfile(opts.pidfile)  # last: from here on, a failure cleans up
    except RunStateError:
        if log_fd is not None:
            os.close(log_fd)
        raise
    log_offset = os.fstat(log_fd).st_size if log_fd is not None else 0
    try:
        proc = _launch(opts, log_fd)
    finally:
        if log_fd is not None:
            os.close(log_fd)
    limit = READY_TIMEOUT if timeout is None else timeout
    if not wait_ready(proc, opts.pidfile, opts.control, limit):
        timed_out = proc.poll() is None
        if proc.poll() is None:
            end_process(proc, 10.0, group=not opts.foreground)
        left = clean_up(opts.pidfile, opts.socket, opts.control)
        if timed_out:
            why = f"not ready within {limit:g} s"
        elif opts.logfile is None:
            why = "see above"
        elif not opts.logfile.is_file():  # a console: nothing to read back
            why = "see the log"
        else:
            why = failure_reason(read_log_from(opts.logfile, log_offset))
        if opts.logfile is not None:
            why += f" (log: {opts.logfile})"
        raise ServeError(
            "\n".join([f"nbdkit did not start: {why}", *(f"zramd: {x}" for x in left.problems())])
        )
    pid = read_pid(opts.pidfile)
    assert pid is not None  # wait_ready saw it
    if opts.socket is not None:
        st = os.lstat(opts.socket)
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.geteuid():
            os.chmod(opts.socket, 0o600)  # nbdkit forces umask 022; only the owner may attach
    return Running(proc, pid, opts)


# -- zramd stop -------------------------------------------------------------------------------


def kill_after(timeout: float) -> float:
    """Seconds ``zramd stop`` waits for a clean exit before SIGKILL: the timeout less a
    reserve for the kill and the supervisor's cleanup (2 s, or half of a short timeout)."""
    return max(0.0, timeout - min(2.0, timeout / 2))


@dataclass
class Stopped:
    """What ``stop_server`` did: killed (SIGKILL after ``grace`` seconds) or not, what the
    cleanup removed, and the server's socket."""

    pid: int
    killed: bool
    grace: float
    cleanup: Cleanup
    socket: Path | None = None


def stop_server(server: Server, fd: int, timeout: float) -> Stopped:
    """SIGTERM through the pidfd; after ``kill_after(timeout)`` s without an exit, SIGKILL
    (nbdkit 1.32 waits at exit for every connected client, even one that never finished its
    handshake, so a clean exit is not in the server's hands). Then wait for the supervising
    shell to clean up, and clean up after it (idempotent). RunStateError if the process
    survives even SIGKILL within the timeout."""
    deadline = time.monotonic() + timeout
    supervisor = server.supervisor()
    sup_fd = pidfd(supervisor.pid) if supervisor is not None else None
    try:
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        grace = kill_after(timeout)
        killed = not wait_exit(fd, grace)
        if killed:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            if not wait_exit(fd, max(deadline - time.monotonic(), 1.0)):
                raise RunStateError(
                    f"server {server.pid} did not die even after SIGKILL (stuck in the kernel?)"
                )
        if sup_fd is not None:
            wait_exit(sup_fd, max(deadline - time.monotonic(), 0.5))
    finally:
        if sup_fd is not None:
            os.close(sup_fd)
    done = clean_up(server.pidfile, server.socket, server.control)
    return Stopped(server.pid, killed, grace, done, server.socket)


def stop(
    pidfile: Path,
    sock: Path | None,
    timeout: float,
    *,
    before: Callable[[Server], None] | None = None,
) -> Stopped:
    """``zramd stop``: stop the server holding ``pidfile`` within ``timeout`` seconds. The pid
    is signalled only if /proc shows the nbdkit serving this pidfile. ServeError (naming the
    pidfile) when there is no server: no pidfile, an empty one (a server starting: left
    alone), or a stale one, which is removed along with ``sock`` if that is a stale socket
    (the message lists what was removed). RunStateError from the runtime-state checks.

    ``before(server)`` runs once the server is found and before it is signalled (the host
    teardown); whatever it raises leaves the server running and propagates."""
    try:
        pid = read_pid(pidfile)
    except FileNotFoundError:
        raise ServeError(f"no server: no pidfile at {pidfile}") from None
    if pid is None:  # serve creates it empty; nbdkit fills it in once it listens
        raise ServeError(
            f"no server: {pidfile} holds no pid (a server may be starting); left alone"
        )
    fd = pidfd(pid)
    if fd is None:
        server, why = None, f"process {pid} is gone"
    else:
        server, why = find_server(pid, pidfile)
    if server is None or fd is None:
        if fd is not None:
            os.close(fd)
        done = clean_up(pidfile, sock, None)
        raise ServeError("\n".join([f"no server: {pidfile} is stale ({why})", *done.lines()]))
    try:
        if before is not None:
            before(server)
        stopped = stop_server(server, fd, timeout)
    finally:
        os.close(fd)
    return stopped

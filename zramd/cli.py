"""The ``zramd`` command: serve a device, and drive it through its control directory.

Every subcommand but ``serve`` and ``stop`` only reads and writes control files, exactly as a
script would with ``cat`` and ``echo``; the CLI has no logic of its own beyond formatting.
"""

from __future__ import annotations

import errno
import ipaddress
import json
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

import zramd
from zramd.compress import DEFAULT, available
from zramd.parse import parse_size
from zramd.native import why_not_native
from zramd.runstate import (
    SUPERVISOR_NAME,
    Cleanup,
    RunStateError,
    Server,
    check_socket_path,
    claim_pidfile,
    clean_up,
    exit_text,
    find_server,
    mount_state,
    open_log,
    pidfd,
    private_dir,
    read_pid,
    runtime_dir,
    usable_dir,
    wait_exit,
)

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_TIMEOUT = 60.0
# One nbdkit worker thread per connection: Python requests serialise on the GIL anyway, and
# with nbdkit's default 16 workers each lz4 call's GIL release becomes a handoff between
# threads. Measured on 2 vCPUs (docs/performance.md): 4 KiB random writes 9.1k -> 24.1k IOPS,
# 128 KiB sequential reads 181 -> 639 MiB/s. Connections still run in parallel.
DEFAULT_THREADS = 1
# Fewer glibc malloc arenas: per-thread arenas hold freed memory (RSS beyond the pool fell
# from 32 to 22 bytes per stored page with 4 connections).
MALLOC_ARENA_MAX = "2"


def default_socket() -> Path:
    return runtime_dir() / "zramd.sock"


def default_control() -> Path:
    return runtime_dir() / "control"


def default_pidfile() -> Path:
    return runtime_dir() / "zramd.pid"


def control_dir(control: Path | None) -> Path:
    """``--control``, or the default one once its runtime directory has passed the ownership
    checks (a directory another user planted could redirect writes through symlinks)."""
    if control is not None:
        return control
    try:
        private_dir(runtime_dir(), create=False)
    except RunStateError as e:
        raise click.ClickException(str(e)) from None
    return default_control()


def plugin_path() -> Path:
    return Path(zramd.__file__).resolve().parent.parent / "plugin" / "zramd_plugin.py"


# -- human sizes like util-linux's size_to_human_string ---------------------------------------


def human_size(n: int) -> str:
    """1024-based, one decimal, a trailing .0 dropped: ``8G``, ``903.8M``, ``512B``."""
    exp = 0
    for shift in range(10, 70, 10):
        if n < (1 << shift):
            exp = shift - 10
            break
    else:
        exp = 60
    letter = "BKMGTPE"[exp // 10]
    dec = n >> exp if exp else n
    frac = n % (1 << exp) if exp else 0
    if frac:
        frac = frac * 1000 // (1 << exp)
        frac = (frac + 50) // 100 * 10  # one decimal, rounded
        if frac == 100:
            dec += 1
            frac = 0
    if frac:
        return f"{dec}.{frac // 10}{letter}"
    return f"{dec}{letter}"


# -- control directory access -----------------------------------------------------------------


class ControlFiles:
    """Reads and writes attributes of one control directory, with one-line errors."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def check(self) -> None:
        if not (self.path / "mm_stat").exists():
            raise click.ClickException(
                f"no zramd control directory at {self.path} (is `zramd serve` running?)"
            )

    def read(self, attr: str) -> str:
        try:
            return (self.path / attr).read_text()
        except OSError as e:
            raise click.ClickException(f"reading {attr}: {os.strerror(e.errno or 0)}") from None

    def write(self, attr: str, value: str) -> None:
        target = self.path / attr
        if not target.exists():
            raise click.ClickException(f"{attr}: no such attribute in {self.path}")
        try:
            fd = os.open(target, os.O_WRONLY)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            raise click.ClickException(
                f"writing {value.strip()!r} to {attr}: {os.strerror(e.errno or 0)} ({name})"
            ) from None

    def mm_stat(self) -> list[int]:
        return [int(x) for x in self.read("mm_stat").split()]


# -- status columns ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    help: str
    value: Callable[[dict[str, int | str]], int | str | float]
    size: bool = False  # shown human-readable unless --bytes
    right: bool = True


def _ratio(d: dict[str, int | str]) -> float:
    total = int(d["total"])
    return int(d["data"]) / total if total else 0.0


COLUMNS = {
    c.name: c
    for c in (
        Column("NAME", "control directory", lambda d: d["name"], right=False),
        Column(
            "DISKSIZE", "limit on the uncompressed amount of data", lambda d: d["disksize"], True
        ),
        Column("DATA", "uncompressed size of stored data", lambda d: d["data"], True),
        Column("COMPR", "compressed size of stored data", lambda d: d["compr"], True),
        Column(
            "ALGORITHM", "the selected compression algorithm", lambda d: d["algorithm"], right=False
        ),
        Column(
            "STREAMS", "number of concurrent compress operations (not applicable)", lambda d: ""
        ),
        Column("ZERO-PAGES", "number of same-filled pages", lambda d: d["same"]),
        Column("TOTAL", "all memory including allocator fragmentation", lambda d: d["total"], True),
        Column(
            "MEM-LIMIT", "memory limit used to store compressed data", lambda d: d["limit"], True
        ),
        Column("MEM-USED", "memory zram has consumed at most (peak)", lambda d: d["max"], True),
        Column("MIGRATED", "number of objects migrated by compaction", lambda d: d["compacted"]),
        Column("COMP-RATIO", "compression ratio: DATA/TOTAL", _ratio),
        Column("HUGE-PAGES", "pages stored uncompressed", lambda d: d["huge"]),
        Column("RSS", "resident memory of the serving process", lambda d: d["rss"], True),
    )
}
DEFAULT_COLUMNS = [
    "NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL",
    "MEM-LIMIT", "MEM-USED", "MIGRATED", "COMP-RATIO",
]  # fmt: skip


def device_values(path: Path) -> dict[str, int | str]:
    files = ControlFiles(path)
    files.check()
    mm = files.mm_stat()
    algo = files.read("comp_algorithm")
    selected = algo[algo.rfind("[") + 1 : algo.rfind("]")] if "[" in algo else ""
    mem = files.read("mem_stat").split()
    return {
        "name": str(path),
        "disksize": int(files.read("disksize")),
        "algorithm": selected,
        "data": mm[0],
        "compr": mm[1],
        "total": mm[2],
        "limit": mm[3],
        "max": mm[4],
        "same": mm[5],
        "compacted": mm[6],
        "huge": mm[7],
        "rss": int(mem[0]),
    }


def parse_columns(spec: str | None) -> list[str]:
    if not spec:
        return list(DEFAULT_COLUMNS)
    base = list(DEFAULT_COLUMNS) if spec.startswith("+") else []
    for name in spec.lstrip("+").split(","):
        col = name.strip().upper()
        if col not in COLUMNS:
            raise click.BadParameter(
                f"unknown column {name!r}; available: {', '.join(COLUMNS)}", param_hint="--output"
            )
        base.append(col)
    return base


def render(value: int | str | float, column: Column, *, raw_bytes: bool) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if column.size and isinstance(value, int) and not raw_bytes:
        return human_size(value)
    return str(value)


# -- the group --------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(zramd.__version__)
def main() -> None:
    """Compressed RAM block devices served over NBD (Linux's zram, in userspace)."""


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value, what=param.name or "size")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def check_nbdkit() -> str:
    nbdkit = shutil.which("nbdkit", path=SBIN_PATH)
    if nbdkit is None:
        raise click.ClickException("nbdkit is not installed (apt-get install nbdkit)")
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
        raise click.ClickException(
            "nbdkit's Python plugin is not installed (apt-get install nbdkit-plugin-python)"
        )
    return nbdkit


def check_control(path: Path) -> None:
    """The control directory can be mounted: FUSE present, no live mount there, and (unless a
    stale mount is there, which the plugin removes) missing or an empty directory."""
    if not os.path.exists("/dev/fuse"):
        raise click.ClickException(
            f"control directory {path} cannot be mounted: /dev/fuse is missing"
        )
    state = mount_state(path)
    if state == "live":
        raise click.ClickException(f"control directory {path} is in use by a running server")
    if state == "stale":
        return
    try:
        entries = os.listdir(path)
    except FileNotFoundError:
        return  # created by the plugin
    except OSError as e:
        raise click.ClickException(f"control directory {path}: {e.strerror}") from None
    if entries:
        raise click.ClickException(
            f"control directory {path} is not empty (zramd mounts on an empty directory)"
        )


def parse_tcp(value: str) -> tuple[str, int]:
    """``[HOST:]PORT`` for ``serve --tcp``: HOST defaults to 127.0.0.1 (loopback only); an IPv6
    address goes in brackets (``[::1]:10809``)."""
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


def _tcp(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return parse_tcp(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def check_tcp(host: str, port: int) -> None:
    """The address exists on this machine and nobody listens on it yet."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise click.ClickException(f"--tcp {host}:{port}: unknown host ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(addr)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise click.ClickException(f"--tcp {host}:{port} is in use") from None
        raise click.ClickException(f"--tcp {host}:{port}: cannot listen: {e.strerror}") from None
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
        raise click.ClickException("--tls-certificates and --tls-psk: choose one")
    if tls is None:
        tls = "require" if certificates or psk else "off"
    if tls == "off":
        if certificates or psk or verify_peer:
            raise click.ClickException("--tls=off: TLS credentials or --tls-verify-peer given")
        return []
    if certificates is None and psk is None:
        raise click.ClickException(
            f"--tls={tls} needs credentials: --tls-certificates DIR or --tls-psk FILE"
        )
    if verify_peer and certificates is None:
        raise click.ClickException(
            "--tls-verify-peer checks client certificates: it needs --tls-certificates"
        )
    args = [f"--tls={tls}"]
    if certificates is not None:
        args.append(f"--tls-certificates={certificates.absolute()}")
    if psk is not None:
        mode = psk.stat().st_mode & 0o777
        if mode & 0o077:
            raise click.ClickException(
                f"--tls-psk {psk}: the keys are readable by others (mode {mode:04o}); "
                f"chmod 600 {psk}"
            )
        args.append(f"--tls-psk={psk.absolute()}")
    if verify_peer:
        args.append("--tls-verify-peer")
    return args


def data_path() -> str:
    """Which data path the server runs (it inherits this environment and checkout)."""
    why = why_not_native()
    return "C (zramd._zram)" if why is None else f"Python ({why})"


def plugin_env() -> dict[str, str]:
    """nbdkit embeds /usr/bin/python3: give it this venv's packages and the zramd checkout,
    and a PATH without pyenv shims (the embedded interpreter derives sys.prefix from PATH)."""
    env = dict(os.environ)
    paths = [str(Path(zramd.__file__).resolve().parent.parent), sysconfig.get_paths()["purelib"]]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PATH"] = SBIN_PATH
    env.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)
    return env


def wait_ready(proc: subprocess.Popen[bytes], pidfile: Path, control: Path | None) -> bool:
    """nbdkit writes its pid into the (empty, pre-created) pidfile once the socket listens;
    the control directory is mounted right after (in after_fork). Ready when both are there;
    False if the server died or did not get ready within READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            listening = read_pid(pidfile) is not None
        except (FileNotFoundError, RunStateError):
            listening = False
        if listening and (control is None or mount_state(control) == "live"):
            return True
        time.sleep(0.05)
    return False


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
# line ("zramd.fusefs.ControlDirError: control directory ... is not empty") and nbdkit's own
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


def stop_failed_start(proc: subprocess.Popen[bytes], *, foreground: bool) -> None:
    """End a start that failed: SIGTERM to nbdkit (and its supervisor, which traps it and
    cleans up after nbdkit), SIGKILL after 10 s."""
    if proc.poll() is None:
        if foreground:
            proc.terminate()
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            if foreground:
                proc.kill()
            else:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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


@main.command()
@click.option("--size", default="1G", show_default=True, callback=_size, help="Disk size.")
@click.option(
    "--algorithm",
    default=DEFAULT,
    show_default=True,
    type=click.Choice(available()),
    help="Compression algorithm.",
)
@click.option("--level", type=int, help="Compression level (algorithm-specific).")
@click.option("--mem-limit", callback=_size, help="Pool memory limit (0 = none).")
@click.option(
    "--backing-dev",
    metavar="FILE|URI",
    help="Where `writeback` sends cold pages: a file, block device or NBD URI.",
)
@click.option(
    "--recomp-algorithm",
    metavar="NAME[,NAME...]",
    help="Secondary algorithms for `recompress`, priority 1 first (e.g. zstd).",
)
@click.option("--socket", "sock", type=click.Path(path_type=Path), help="Unix socket to serve on.")
@click.option(
    "--tcp",
    metavar="[HOST:]PORT",
    callback=_tcp,
    help="Serve over TCP instead of the Unix socket (HOST defaults to 127.0.0.1).",
)
@click.option(
    "--tls",
    type=click.Choice(["off", "on", "require"]),
    help="nbdkit's TLS mode (default: require when credentials are given, else off).",
)
@click.option(
    "--tls-certificates",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory of X.509 certificates (nbdkit-tls(1)).",
)
@click.option(
    "--tls-psk",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Pre-shared keys file (username:hexkey lines, mode 0600).",
)
@click.option("--tls-verify-peer", is_flag=True, help="Require and verify client certificates.")
@click.option("--control", type=click.Path(path_type=Path), help="Control directory to mount.")
@click.option("--no-control", is_flag=True, help="Serve without a control directory.")
@click.option("--pidfile", type=click.Path(path_type=Path), help="Where nbdkit writes its pid.")
@click.option("--log", "logfile", type=click.Path(path_type=Path), help="Server log (background).")
@click.option("--auto-compact", default=30, show_default=True, help="Seconds between checks.")
@click.option(
    "--threads",
    default=DEFAULT_THREADS,
    show_default=True,
    type=click.IntRange(1, 64),
    help="nbdkit worker threads per connection (above 1, nbdkit 1.32 can abort when a client "
    "vanishes mid-request: docs/reliability.md).",
)
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground (Ctrl-C stops).")
def serve(
    size: int,
    algorithm: str,
    level: int | None,
    mem_limit: int | None,
    backing_dev: str | None,
    recomp_algorithm: str | None,
    sock: Path | None,
    tcp: tuple[str, int] | None,
    tls: str | None,
    tls_certificates: Path | None,
    tls_psk: Path | None,
    tls_verify_peer: bool,
    control: Path | None,
    no_control: bool,
    pidfile: Path | None,
    logfile: Path | None,
    auto_compact: int,
    threads: int,
    foreground: bool,
) -> None:
    """Serve a compressed RAM block device over NBD on a Unix socket (owner only), or over
    TCP when asked (--tcp; loopback unless a host is given; TLS with --tls-*)."""
    nbdkit = check_nbdkit()
    tls_opts = tls_args(tls, tls_certificates, tls_psk, tls_verify_peer)
    if tcp is not None and sock is not None:
        raise click.ClickException("--tcp and --socket: nbdkit serves one or the other")
    run = runtime_dir()
    sock = None if tcp is not None else (sock or default_socket()).absolute()
    control = None if no_control else (control or default_control()).absolute()
    pidfile = (pidfile or default_pidfile()).absolute()
    logfile = None if foreground else (logfile or run / "zramd.log").absolute()
    try:
        prepare_paths(run, sock, pidfile, logfile, control)
    except RunStateError as e:
        raise click.ClickException(str(e)) from None
    if tcp is None:
        listen = ["-U", str(sock)]
    else:
        check_tcp(*tcp)
        listen = ["-i", tcp[0], "-p", str(tcp[1])]
        if not is_loopback(tcp[0]) and "--tls=require" not in tls_opts:
            click.echo(
                f"zramd: warning: serving on {tcp[0]}:{tcp[1]} without --tls=require: anyone "
                "who can reach it can read and write the device",
                err=True,
            )
    if control is not None:
        check_control(control)
    args = [nbdkit, "-f", f"--threads={threads}", *listen, "-P", str(pidfile), *tls_opts]
    args += ["python", str(plugin_path())]
    args += [f"size={size}", f"comp_algorithm={algorithm}", f"auto_compact={auto_compact}"]
    if level is not None:
        args.append(f"level={level}")
    if mem_limit is not None:
        args.append(f"mem_limit={mem_limit}")
    if backing_dev is not None:
        spec = backing_dev if "://" in backing_dev else str(Path(backing_dev).absolute())
        args.append(f"backing_dev={spec}")
    if recomp_algorithm is not None:
        args.append(f"recomp_algorithm={recomp_algorithm}")
    if control is not None:
        args.append(f"control={control}")

    log_fd = None
    try:
        if logfile is not None:
            log_fd = open_log(logfile)
        claim_pidfile(pidfile)  # last: from here on, a failure cleans up
    except RunStateError as e:
        if log_fd is not None:
            os.close(log_fd)
        raise click.ClickException(str(e)) from None
    env = plugin_env()
    if log_fd is None:
        proc = subprocess.Popen(args, env=env)
        log_offset = 0
    else:
        env.update(
            ZRAMD_PYTHON=sys.executable,
            ZRAMD_SOCKET=str(sock or ""),
            ZRAMD_PIDFILE=str(pidfile),
            ZRAMD_CONTROL=str(control or ""),
        )
        log_offset = os.fstat(log_fd).st_size
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", SUPERVISOR, SUPERVISOR_NAME, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
    if not wait_ready(proc, pidfile, control):
        timed_out = proc.poll() is None
        stop_failed_start(proc, foreground=foreground)
        left = clean_up(pidfile, sock, control)
        if timed_out:
            why = f"not ready within {READY_TIMEOUT:g} s"
        elif logfile is None:
            why = "see above"
        else:
            why = failure_reason(read_log_from(logfile, log_offset))
        if logfile is not None:
            why += f" (log: {logfile})"
        raise click.ClickException(
            "\n".join([f"nbdkit did not start: {why}", *(f"zramd: {x}" for x in left.problems())])
        )
    pid = read_pid(pidfile)
    if sock is not None:
        st = os.lstat(sock)
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.geteuid():
            os.chmod(sock, 0o600)  # nbdkit forces umask 022; only the owner may attach
        info = [
            f"zramd: serving {human_size(size)} ({algorithm}) on {sock} (pid {pid})",
            f"  nbd-client:  nbd-client -unix {sock} /dev/nbd0 -N zramd -b 4096",
            f"  qemu:        -drive file=nbd:unix:{sock},format=raw,if=virtio",
            f"  nbdfuse:     nbdfuse DIR/disk --unix {sock}   (then losetup -f --show DIR/disk)",
        ]
    else:
        assert tcp is not None
        host = f"[{tcp[0]}]" if ":" in tcp[0] else tcp[0]
        scheme = "nbd" if not tls_opts else "nbds"
        info = [
            f"zramd: serving {human_size(size)} ({algorithm}) on {scheme}://{host}:{tcp[1]} "
            f"(pid {pid})",
            f"  nbd-client:  nbd-client {tcp[0]} {tcp[1]} /dev/nbd0 -N zramd -b 4096",
            f"  nbdinfo:     nbdinfo {scheme}://{host}:{tcp[1]}",
        ]
    if control is not None:
        info.append(f"  control:     {control}   (cat mm_stat; echo 1 > compact)")
    info.append(f"  data path:   {data_path()}")
    if logfile is not None:
        info.append(f"  log:         {logfile}      stop: zramd stop")
    click.echo("\n".join(info))
    if foreground:
        sys.exit(serve_foreground(proc, pidfile, sock, control))


def serve_foreground(
    proc: subprocess.Popen[bytes], pidfile: Path, sock: Path | None, control: Path | None
) -> int:
    """Wait for a foreground nbdkit (Ctrl-C stops it), clean up after it like the supervisor
    does, and return its exit status as a shell would report it."""
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait()
    status = 128 - rc if rc < 0 else rc
    for line in clean_up(pidfile, sock, control).lines():
        click.echo(f"zramd: {line}", err=True)
    if status:
        click.echo(f"zramd: {exit_text(status)}", err=True)
    return status


def kill_after(timeout: float) -> float:
    """Seconds ``zramd stop`` waits for a clean exit before SIGKILL: the timeout less a
    reserve for the kill and the supervisor's cleanup (2 s, or half of a short timeout)."""
    return max(0.0, timeout - min(2.0, timeout / 2))


@dataclass
class Stopped:
    pid: int
    killed: bool
    grace: float
    cleanup: Cleanup


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
    return Stopped(server.pid, killed, grace, done)


@main.command()
@click.option("--pidfile", type=click.Path(path_type=Path), help="The server's pidfile.")
@click.option(
    "--socket", "sock", type=click.Path(path_type=Path), help="Its socket, if it is stale."
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds until stop returns: SIGTERM, then SIGKILL 2 s before the end.",
)
def stop(pidfile: Path | None, sock: Path | None, timeout: float) -> None:
    """Stop a server started by `zramd serve` within TIMEOUT, whatever its clients do.

    The pid is signalled only if /proc shows the nbdkit serving this pidfile. A server still
    there 2 s before the timeout (nbdkit waits for connected clients) is killed; its socket,
    pidfile and control mount are removed either way. A stale pidfile is removed and reported,
    and so is --socket if it is a stale socket; nothing else is ever deleted.
    """
    try:
        if (pidfile is None or sock is None) and not private_dir(runtime_dir(), create=False):
            raise click.ClickException(f"no server: {runtime_dir()} does not exist")
        pidfile = (pidfile or default_pidfile()).absolute()
        given = sock is not None
        sock = (sock or default_socket()).absolute()
        try:
            pid = read_pid(pidfile)
        except FileNotFoundError:
            raise click.ClickException(f"no server: no pidfile at {pidfile}") from None
        if pid is None:  # serve creates it empty; nbdkit fills it in once it listens
            raise click.ClickException(
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
            raise click.ClickException(
                "\n".join([f"no server: {pidfile} is stale ({why})", *done.lines()])
            )
        try:
            stopped = stop_server(server, fd, timeout)
        finally:
            os.close(fd)
    except RunStateError as e:
        raise click.ClickException(str(e)) from None
    if stopped.killed:
        click.echo(
            f"zramd: server {stopped.pid} did not exit within {stopped.grace:g} s of SIGTERM "
            "(nbdkit waits for every connected client); killed it (SIGKILL)",
            err=True,
        )
    for line in stopped.cleanup.lines():
        click.echo(f"zramd: {line}", err=True)
    if given and sock != server.socket:
        click.echo(f"zramd: --socket {sock} is not this server's socket: left alone", err=True)
    if stopped.cleanup.failed:
        raise click.ClickException(f"server {stopped.pid} stopped, but its state is left behind")
    click.echo(f"zramd: stopped server {stopped.pid}" + (" (killed)" if stopped.killed else ""))


control_option = click.option(
    "--control",
    type=click.Path(path_type=Path),
    default=None,
    help="Control directory (default: the one `zramd serve` mounts).",
)


@main.command()
@control_option
@click.option("--raw", is_flag=True, help="Use the raw output format.")
@click.option("--bytes", "-b", "raw_bytes", is_flag=True, help="Print sizes in bytes.")
@click.option("--json", "as_json", is_flag=True, help="Use JSON output.")
@click.option("--noheadings", "-n", is_flag=True, help="Don't print headings.")
@click.option("--output", "-o", help="Columns to print (comma list, +LIST appends).")
def status(
    control: Path | None,
    raw: bool,
    raw_bytes: bool,
    as_json: bool,
    noheadings: bool,
    output: str | None,
) -> None:
    """Show the device's status like zramctl.

    Columns: NAME DISKSIZE DATA COMPR ALGORITHM STREAMS ZERO-PAGES TOTAL MEM-LIMIT MEM-USED
    MIGRATED COMP-RATIO HUGE-PAGES RSS.
    """
    columns = [COLUMNS[c] for c in parse_columns(output)]
    values = device_values(control_dir(control))
    if as_json:
        row = {}
        for c in columns:
            v = c.value(values)
            row[c.name.lower()] = (
                round(v, 4)
                if isinstance(v, float)
                else (render(v, c, raw_bytes=raw_bytes) if c.size and not raw_bytes else v)
            )
        click.echo(json.dumps({"zramd": [row]}, indent=2))
        return
    cells = [render(c.value(values), c, raw_bytes=raw_bytes) for c in columns]
    header = [c.name for c in columns]
    if raw:
        if not noheadings:
            click.echo(" ".join(header))
        click.echo(" ".join(cell or '""' for cell in cells))
        return
    widths = [max(len(h), len(v)) for h, v in zip(header, cells, strict=True)]

    def line(items: list[str]) -> str:
        out = [
            (item.rjust(w) if c.right else item.ljust(w))
            for item, w, c in zip(items, widths, columns, strict=True)
        ]
        return " ".join(out).rstrip()

    if not noheadings:
        click.echo(line(header))
    click.echo(line(cells))


@main.command()
@control_option
def compact(control: Path | None) -> None:
    """Compact the pool now (echo 1 > compact) and say what it freed."""
    files = ControlFiles(control_dir(control))
    files.check()
    before = files.mm_stat()
    files.write("compact", "1\n")
    after = files.mm_stat()
    pages = after[6] - before[6]
    click.echo(
        f"compacted {pages} pages ({human_size(pages * 4096)}); "
        f"pool {human_size(before[2])} -> {human_size(after[2])}"
    )


@main.command(name="set")
@control_option
@click.argument("attr")
@click.argument("value")
def set_(control: Path | None, attr: str, value: str) -> None:
    """Write VALUE to a control attribute (echo VALUE > ATTR)."""
    files = ControlFiles(control_dir(control))
    files.check()
    files.write(attr, value + "\n")


@main.command()
@control_option
def reset(control: Path | None) -> None:
    """Free everything and uninitialise the device (echo 1 > reset)."""
    files = ControlFiles(control_dir(control))
    files.check()
    files.write("reset", "1\n")


def _bd_stat(files: ControlFiles) -> list[int]:
    return [int(x) for x in files.read("bd_stat").split()]


@main.command()
@control_option
@click.option("--idle", "mark", help="First mark pages idle: 'all' or an age in seconds.")
@click.argument("what", nargs=-1, required=True)
def writeback(control: Path | None, mark: str | None, what: tuple[str, ...]) -> None:
    """Write pages out to the backing device (echo WHAT > writeback).

    WHAT is idle, huge, huge_idle, incompressible, type=MODE, page_index=N or
    page_indexes=LO-HI (several indexes may be given). With --idle, pages are marked idle
    first (echo all > idle), so `zramd writeback --idle all idle` writes back everything.
    """
    files = ControlFiles(control_dir(control))
    files.check()
    if mark is not None:
        files.write("idle", mark + "\n")
    before = _bd_stat(files)
    files.write("writeback", " ".join(what) + "\n")
    after = _bd_stat(files)
    pages = after[2] - before[2]
    click.echo(
        f"wrote back {pages} pages ({human_size(pages * 4096)}); "
        f"{after[0]} blocks in use on the backing device"
    )


@main.command()
@control_option
@click.option("--type", "kind", type=click.Choice(["idle", "huge", "huge_idle"]))
@click.option("--threshold", type=int, help="Only objects of at least this many bytes.")
@click.option("--max-pages", type=int, help="Budget: at most this many attempts.")
@click.option("--algo", help="Only this secondary algorithm.")
@click.option("--priority", type=int, help="Only the secondary algorithm of this priority.")
def recompress(
    control: Path | None,
    kind: str | None,
    threshold: int | None,
    max_pages: int | None,
    algo: str | None,
    priority: int | None,
) -> None:
    """Recompress stored pages with the secondary algorithms (echo ... > recompress)."""
    files = ControlFiles(control_dir(control))
    files.check()
    args = {
        "type": kind,
        "threshold": threshold,
        "max_pages": max_pages,
        "algo": algo,
        "priority": priority,
    }
    before = files.mm_stat()
    files.write("recompress", " ".join(f"{k}={v}" for k, v in args.items() if v is not None) + "\n")
    after = files.mm_stat()
    click.echo(
        f"compressed data {human_size(before[1])} -> {human_size(after[1])}; "
        f"huge pages {before[7]} -> {after[7]}"
    )


if __name__ == "__main__":
    main()

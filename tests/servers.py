"""Real nbdkit servers for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbd

from zramd.runstate import mount_state
from zramd.supervise import end_process, plugin_env, plugin_path, start_nbdkit

PLUGIN = str(plugin_path())
ZRAMD = [sys.executable, "-m", "zramd.cli"]  #: the CLI, as a process


def zramd_stop(pidfile: Path, sock: Path) -> subprocess.CompletedProcess[str]:
    """``zramd stop`` for a server started by ``zramd serve``."""
    return subprocess.run(
        [*ZRAMD, "stop", "--pidfile", str(pidfile), "--socket", str(sock)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def plugin_args(*config: str) -> list[str]:
    """``python PLUGIN`` and its keys; background compaction off so tests see exact counters."""
    return ["python", PLUGIN, "auto_compact=0", *config]


def connect_stdio(*config: str) -> nbd.NBD:
    """One private nbdkit per handle over stdin/stdout (nbdkit's own test convention)."""
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    env = plugin_env()
    old = dict(os.environ)
    os.environ.update(env)  # connect_command inherits the environment
    try:
        h.connect_command(["nbdkit", "-s", "--exit-with-parent", *plugin_args(*config)])
    finally:
        os.environ.clear()
        os.environ.update(old)
    return h


@dataclass
class Server:
    """A server ``serve`` started. ``mount`` is its control tree (None without one);
    ``control`` is zram0's directory in it, what the single-device helpers use."""

    proc: subprocess.Popen[bytes]
    socket: Path
    mount: Path | None
    log: Path

    @property
    def control(self) -> Path | None:
        return self.device_dir(0) if self.mount is not None else None

    def device_dir(self, dev_id: int) -> Path:
        assert self.mount is not None
        return self.mount / f"zram{dev_id}"

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.socket}"

    def connect(self, export: str = "") -> nbd.NBD:
        h = nbd.NBD()
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        if export:
            h.set_export_name(export)
        h.connect_unix(str(self.socket))
        return h

    def attr(self, name: str, dev_id: int = 0) -> str:
        return (self.device_dir(dev_id) / name).read_text()

    def mm_stat(self, dev_id: int = 0) -> list[int]:
        return [int(x) for x in self.attr("mm_stat", dev_id).split()]

    def echo(self, value: str, name: str, dev_id: int = 0) -> subprocess.CompletedProcess[str]:
        """``echo VALUE > zramN/NAME`` in bash, as an admin would (dash reports every failed
        write as "I/O error", hiding the errno)."""
        return subprocess.run(
            ["bash", "-c", 'echo "$1" > "$2"', "bash", value, str(self.device_dir(dev_id) / name)],
            capture_output=True,
            text=True,
            check=False,
        )

    def stop(self) -> int:
        """SIGTERM; nbdkit then waits for connected clients, so a test that failed with a
        handle still open gets SIGKILL after 20 s (and the exit check fails loudly)."""
        return end_process(self.proc, 20.0)


@contextmanager
def serve(
    tmp: Path,
    *config: str,
    control: bool = True,
    check_exit: bool = True,
    refusals: bool = False,
    nbdkit_args: Sequence[str] = (),
) -> Iterator[Server]:
    """nbdkit -f on a Unix socket in ``tmp``, with a control tree unless asked not to.
    On exit the server must stop cleanly (status 0, no traceback, control unmounted) unless
    ``check_exit`` is False (a test that kills it); with ``refusals`` the log may hold
    tracebacks (nbdkit logs one for every request or connection the plugin refuses).
    ``nbdkit_args`` go before the plugin (e.g. ``--threads=1``, what ``zramd serve`` runs)."""
    sock = tmp / "zramd.sock"
    pidfile = tmp / "zramd.pid"
    ctl = tmp / "control" if control else None
    log = tmp / "nbdkit.log"
    args = ["nbdkit", "-f", "-U", str(sock), "-P", str(pidfile), *nbdkit_args]
    args += plugin_args(*config)
    if ctl is not None:
        args.append(f"control={ctl}")
    nbdkit = start_nbdkit(args, pidfile=pidfile, log=log, control=ctl)  # StartError: its log
    server = Server(nbdkit.proc, sock, ctl, log)
    try:
        yield server
    finally:
        rc = server.stop()
        text = log.read_text()
    if check_exit:
        assert rc == 0, f"nbdkit exited {rc}:\n{text}"
        assert refusals or "Traceback" not in text, text
        if ctl is not None:
            assert mount_state(ctl) == "none", "control directory left mounted"


def block_status(h: nbd.NBD, length: int, offset: int = 0) -> list[tuple[int, int]]:
    """base:allocation extents ``(length, flags)`` covering ``[offset, offset + length)``,
    asking again until the server has described the whole range."""
    out: list[tuple[int, int]] = []

    def cb(meta: str, off: int, entries: list[int], err: object) -> int:
        if meta == nbd.CONTEXT_BASE_ALLOCATION:
            out.extend(zip(entries[::2], entries[1::2], strict=True))
        return 0

    pos = offset
    while pos < offset + length:
        n = len(out)
        h.block_status(offset + length - pos, pos, cb)
        pos += sum(e[0] for e in out[n:])
    return out

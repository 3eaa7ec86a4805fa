"""Helpers shared by the reliability suite: its two profiles, control-file writers.

Every test that has a long form takes the ``profile`` fixture. It is parametrized twice:
``short`` (the default suite: small traffic, seconds) and ``long`` (marked ``slow``: the figures
in docs/reliability.md). So

    scripts/test -- tests/reliability              short profile only (``-m "not slow"``)
    scripts/test --slow -- tests/reliability       short and long
    scripts/test --slow -- tests/reliability -k long      long only

``ZRAMD_RELIABILITY_SCALE`` (a float, default 1) multiplies the long profile's traffic, for a
soak longer than the documented one.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zramd import control
from zramd.device import ZramDevice
from zramd.errors import ZramdError

import waiting

MiB = 1 << 20


@dataclass(frozen=True)
class Profile:
    name: str
    #: fio load test: bytes of the device, of each verifying job's region, and loops over it
    disksize: int
    region: int
    loops: int
    #: connections opened and dropped in the connection-churn test
    churn: int
    #: examples of the device state machine
    state_machine_examples: int


def _scale() -> float:
    return float(os.environ.get("ZRAMD_RELIABILITY_SCALE", "1"))


SHORT = Profile("short", disksize=64 * MiB, region=16 * MiB, loops=1, churn=200,
                state_machine_examples=60)  # fmt: skip
LONG = Profile("long", disksize=512 * MiB, region=128 * MiB, loops=max(1, round(2 * _scale())),
               churn=1000, state_machine_examples=500)  # fmt: skip


def echo(path: Path, value: bytes) -> None:
    """One ``write()`` of ``value`` to a control file, as ``echo`` does (raises OSError)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


@dataclass
class Poker:
    """What the background control-file writer did."""

    compacts: int = 0
    max_resets: int = 0
    errors: list[str] | None = None


@contextmanager
def poke_control(control: Path, interval: float = 0.1) -> Iterator[Poker]:
    """A thread writing ``1`` to ``compact`` and ``0`` to ``mem_used_max`` every ``interval``
    seconds for as long as the block runs; every failed write is recorded."""
    stats = Poker(errors=[])
    stop = threading.Event()

    def run() -> None:
        assert stats.errors is not None
        while not stop.is_set():
            for name, value in (("compact", b"1\n"), ("mem_used_max", b"0\n")):
                try:
                    echo(control / name, value)
                except OSError as e:
                    stats.errors.append(f"{name}: {e}")
                    continue
                if name == "compact":
                    stats.compacts += 1
                else:
                    stats.max_resets += 1
            stop.wait(interval)

    thread = threading.Thread(target=run, name="poke-control", daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "control writer stuck"


wait_for = waiting.wait_for  # tests of this suite import it from here too


# -- a raw NBD client, for requests no well-behaved client sends ------------------------------

NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_DISC = 0, 1, 2
_OPT_EXPORT_NAME = 1
_FLAG_C_FIXED_NEWSTYLE, _FLAG_C_NO_ZEROES = 1, 2


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"server closed the connection after {len(buf)}/{n} bytes")
        buf += chunk
    return buf


def raw_connect(path: Path, *, handshake: bool = True) -> tuple[socket.socket, int]:
    """A Unix-socket NBD connection negotiated by hand (fixed newstyle, NBD_OPT_EXPORT_NAME,
    so replies are simple); returns the socket and the export size (0 without handshake)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(path))
    if not handshake:
        return s, 0
    hello = _recv_exact(s, 18)
    assert hello[:16] == b"NBDMAGICIHAVEOPT", hello
    s.sendall(struct.pack(">I", _FLAG_C_FIXED_NEWSTYLE | _FLAG_C_NO_ZEROES))
    s.sendall(b"IHAVEOPT" + struct.pack(">II", _OPT_EXPORT_NAME, 0))
    size, _flags = struct.unpack(">QH", _recv_exact(s, 10))
    return s, size


def raw_request(s: socket.socket, cmd: int, offset: int, length: int, handle: int = 1) -> None:
    s.sendall(struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, 0, cmd, handle, offset, length))


def raw_reply(s: socket.socket) -> tuple[int, int]:
    """(errno, handle) of a simple reply (the payload of a read is left unread)."""
    magic, error, handle = struct.unpack(">IIQ", _recv_exact(s, 16))
    assert magic == NBD_SIMPLE_REPLY_MAGIC, hex(magic)
    return error, handle


def snapshot(dev: ZramDevice) -> dict[str, object]:
    """Every readable attribute (mem_stat less the process RSS, which moves on its own) and
    the settings no attribute shows."""
    out: dict[str, object] = {}
    for attr in control.ATTRIBUTES:
        if attr.show is None:
            continue
        try:
            text = control.show(dev, attr.name).decode()
        except ZramdError as e:
            text = f"errno {e.errno}"
        out[attr.name] = text.split()[1:] if attr.name == "mem_stat" else text
    out["params"] = [dev.algorithm_params(p) for p in range(4)]
    out["openers"] = dev.openers
    if dev.initstate:
        out["data"] = dev.read(0, dev.disksize)
    return out

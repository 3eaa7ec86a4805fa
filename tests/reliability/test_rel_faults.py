"""Faults: clients killed or cut off mid-request, connection churn, the server itself killed.

After each fault the server must keep serving, acknowledged data must read back, and the
device's opener count must return to zero (``echo 1 > reset`` succeeds once every client is
gone: reset is EBUSY while any connection is open).

Related tests elsewhere: a stale mount left by a SIGKILLed nbdkit is cleaned by the next
nbdkit (tests/test_e2e_control.py::test_stale_mount_of_a_killed_server_is_cleaned); reset is
EBUSY while a client is attached (test_e2e_control.py::test_reset_busy_while_connected_then_reinit).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbd
import pytest

from zramd.fusefs import mount_state
from zramd.runstate import unmount_stale

from relkit import (
    NBD_CMD_READ,
    NBD_CMD_WRITE,
    Profile,
    raw_connect,
    raw_reply,
    raw_request,
)
from servers import ZRAMD, Server, serve, zramd_stop
from waiting import wait_for

pytestmark = pytest.mark.e2e
P = 4096
# What `zramd serve` runs: one worker thread per connection. With nbdkit's default 16, nbdkit
# 1.32.5 itself can abort ("connections.c:402: raw_send_socket: Assertion `sock >= 0'
# failed") when a client vanishes while several workers still send replies (seen once in this
# suite's fio kill; docs/reliability.md). The clients killed below run against what users run.
SERVE_ARGS = ["--threads=1"]
MiB = 1 << 20


def block(i: int) -> bytes:
    """The 16 KiB written at block ``i`` by the killed client: derived from ``i`` alone."""
    seed = hashlib.sha256(i.to_bytes(8, "little")).digest()
    return (seed * 128)[: 8 * 1024] + seed * 256


BLOCK = len(block(0))

# Runs in a child process: keeps 16 aio writes in flight and prints the index of each write
# as soon as the server has acknowledged it. The parent SIGKILLs it mid-stream.
WRITER = """
import hashlib, sys, nbd
def block(i):
    seed = hashlib.sha256(i.to_bytes(8, "little")).digest()
    return (seed * 128)[: 8 * 1024] + seed * 256
h = nbd.NBD()
h.connect_unix(sys.argv[1])
nblocks = h.get_size() // len(block(0))
def done(i):
    def cb(err):
        if err.value == 0:
            print(i, flush=True)
        return 1
    return cb
i = 0
while True:
    while h.aio_in_flight() < 16:
        n = i % nblocks
        h.aio_pwrite(block(n), n * len(block(n)), completion=done(n))
        i += 1
    h.poll(-1)
"""


def reset_succeeds(srv: Server) -> bool:
    return srv.echo("1", "reset").returncode == 0


def test_sigkilled_client_loses_nothing_acknowledged(tmp_path: Path) -> None:
    with serve(tmp_path, "size=32M", nbdkit_args=SERVE_ARGS) as srv:
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(srv.socket)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        acked: set[int] = set()
        for line in child.stdout:
            acked.add(int(line))
            if len(acked) >= 600:  # the device holds 2048 blocks: mid-stream, still writing
                break
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        acked.update(int(x) for x in rest.split())
        assert child.returncode == -signal.SIGKILL
        h = srv.connect()
        for i in sorted(acked):
            assert h.pread(BLOCK, i * BLOCK) == block(i), f"acknowledged block {i} lost"
        h.shutdown()
        # the killed connection is closed: the device has no opener left
        wait_for(lambda: reset_succeeds(srv), what="reset after the client was killed")


def test_sigkilled_fio_leaves_the_server_serving(tmp_path: Path) -> None:
    with serve(tmp_path, "size=64M", nbdkit_args=SERVE_ARGS) as srv:
        out = tmp_path / "fio.json"
        fio = subprocess.Popen(
            ["fio", "--name=killed", "--ioengine=nbd", f"--uri={srv.uri}", "--rw=randrw",
             "--bs=4k", "--iodepth=32", "--numjobs=2", "--thread", "--time_based", "--runtime=60",
             "--output-format=json", f"--output={out}"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: srv.mm_stat()[0] > 4 * MiB, what="fio to write")
        # --thread: the jobs are threads of this one process (forked jobs would each call
        # setsid and survive their parent)
        fio.send_signal(signal.SIGKILL)
        fio.wait()
        # requests already in the socket buffer may still be served; once reset succeeds the
        # killed connections are closed, and nothing can write any more
        wait_for(lambda: reset_succeeds(srv), what="reset after fio was killed")
        assert srv.attr("initstate") == "0\n"
        assert srv.echo("64M", "disksize").returncode == 0
        h = srv.connect()
        data = os.urandom(64 * 1024)
        h.pwrite(data, 0)
        assert h.pread(len(data), 0) == data
        h.shutdown()
        assert srv.mm_stat()[0] == len(data)  # ours alone: no request of fio's came after
        wait_for(lambda: reset_succeeds(srv), what="reset after the check")


def test_disconnect_mid_write_request(tmp_path: Path) -> None:
    with serve(tmp_path, "size=16M", nbdkit_args=SERVE_ARGS) as srv:
        h = srv.connect()
        old = os.urandom(64 * 1024)
        h.pwrite(old, 0)
        for cut in (0, 1, 512, 4096, 32 * 1024, 64 * 1024 - 1):
            s, size = raw_connect(srv.socket)
            assert size == 16 * MiB
            raw_request(s, NBD_CMD_WRITE, 0, 64 * 1024)
            s.sendall(os.urandom(cut))  # then the client goes away
            s.close()
        # a header cut short, too
        s, _ = raw_connect(srv.socket)
        s.sendall(b"\x25\x60\x95\x13\x00\x00")
        s.close()
        # nbdkit never passed the incomplete writes on: the old data is intact
        assert h.pread(len(old), 0) == old
        # and a complete raw request still works
        s, _ = raw_connect(srv.socket)
        raw_request(s, NBD_CMD_READ, 0, 4096, handle=7)
        assert raw_reply(s) == (0, 7)
        s.close()
        h.shutdown()
        wait_for(lambda: reset_succeeds(srv), what="reset after cut-off clients")


def _churn(srv: Server, n: int, worker: int, errors: list[BaseException]) -> None:
    try:
        _churn_one(srv, n, worker)
    except BaseException as e:  # reported by the test, not lost in the thread
        errors.append(e)


def _churn_one(srv: Server, n: int, worker: int) -> None:
    """``n`` connections, each dropped a different way."""
    for k in range(n):
        how = (k + worker) % 5
        if how == 0:  # connect, say nothing, close
            s, _ = raw_connect(srv.socket, handshake=False)
            s.close()
        elif how == 1:  # close in the middle of the handshake
            s, _ = raw_connect(srv.socket, handshake=False)
            s.recv(8)
            s.close()
        elif how == 2:  # full handshake, a request, then drop without NBD_CMD_DISC
            s, _ = raw_connect(srv.socket)
            raw_request(s, NBD_CMD_READ, 0, 512)
            s.close()
        elif how == 3:  # libnbd, a write, then the handle is closed without shutdown
            h = srv.connect()
            h.pwrite(bytes([worker]) * 512, (worker * 64 + k % 64) * 512)
            del h  # libnbd closes the socket when the handle goes
        else:  # a polite client
            h = srv.connect()
            h.pread(512, 0)
            h.shutdown()


def test_connection_churn(tmp_path: Path, profile: Profile) -> None:
    with serve(tmp_path, "size=16M", nbdkit_args=SERVE_ARGS) as srv:
        h = srv.connect()
        data = os.urandom(MiB)
        h.pwrite(data, 8 * MiB)
        workers = 4
        errors: list[BaseException] = []
        start = time.monotonic()
        threads = [
            threading.Thread(target=_churn, args=(srv, profile.churn // workers, w, errors))
            for w in range(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        elapsed = time.monotonic() - start
        assert h.pread(len(data), 8 * MiB) == data  # the survivor is still served
        h.shutdown()
        recover = wait_for(lambda: reset_succeeds(srv), what="reset after churn")
        print(
            "FIGURES",
            json.dumps(
                {"connections": profile.churn, "seconds": round(elapsed, 2),
                 "per_s": round(profile.churn / elapsed), "reset_after_s": round(recover, 2)}
            ),
        )  # fmt: skip


# -- the server itself -------------------------------------------------------------------------


def zramd_serve(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ZRAMD, "serve", "--size", "16M", "--control", str(tmp / "ctl"),
         "--socket", str(tmp / "s.sock"), "--pidfile", str(tmp / "s.pid"),
         "--log", str(tmp / "s.log"), *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_sigterm_unmounts_and_removes_the_socket(tmp_path: Path) -> None:
    r = zramd_serve(tmp_path)
    assert r.returncode == 0, r.stderr
    pid = int((tmp_path / "s.pid").read_text())
    h = nbd.NBD()
    h.connect_unix(str(tmp_path / "s.sock"))
    h.pwrite(b"x" * P, 0)
    h.shutdown()
    os.kill(pid, signal.SIGTERM)
    took = wait_for(
        lambda: "nbdkit exited with status 0" in (tmp_path / "s.log").read_text(),
        what="nbdkit to exit",
    )
    assert not (tmp_path / "s.sock").exists()
    assert not (tmp_path / "s.pid").exists()
    assert mount_state(tmp_path / "ctl") == "none"
    print("FIGURES", json.dumps({"sigterm_to_clean_s": round(took, 2)}))


def test_sigkilled_server_is_replaced_by_the_next_serve(tmp_path: Path) -> None:
    r = zramd_serve(tmp_path)
    assert r.returncode == 0, r.stderr
    pid = int((tmp_path / "s.pid").read_text())
    # the whole session at once, supervisor shell included (an OOM kill of the group, kill -9
    # of the service): nothing is left to tidy up
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="nbdkit to die")
    assert mount_state(tmp_path / "ctl") == "stale"
    assert (tmp_path / "s.sock").exists()
    start = time.monotonic()
    r = zramd_serve(tmp_path)
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    try:
        assert mount_state(tmp_path / "ctl") == "live"
        assert (tmp_path / "ctl" / "zram0" / "initstate").read_text() == "1\n"
        h = nbd.NBD()
        h.connect_unix(str(tmp_path / "s.sock"))
        assert h.get_size() == 16 * MiB
        h.shutdown()
    finally:
        stop = zramd_stop(tmp_path / "s.pid", tmp_path / "s.sock")
    assert stop.returncode == 0, stop.stderr
    assert mount_state(tmp_path / "ctl") == "none"
    print("FIGURES", json.dumps({"restart_after_sigkill_s": round(took, 2)}))


def test_sigkilled_nbdkit_is_tidied_by_its_supervisor(tmp_path: Path) -> None:
    r = zramd_serve(tmp_path)
    assert r.returncode == 0, r.stderr
    pid = int((tmp_path / "s.pid").read_text())
    os.kill(pid, signal.SIGKILL)  # nbdkit alone: the supervising shell survives it
    wait_for(
        lambda: "nbdkit exited with status 137" in (tmp_path / "s.log").read_text(),
        what="the supervisor to clean up",
    )
    assert not (tmp_path / "s.pid").exists()
    assert mount_state(tmp_path / "ctl") == "none"
    # and a client now gets a clean refusal, not a hang
    s = socket.socket(socket.AF_UNIX)
    with pytest.raises(FileNotFoundError):
        s.connect(str(tmp_path / "s.sock"))
    s.close()


@pytest.mark.slow
def test_repeated_fio_kills(tmp_path: Path) -> None:
    """20 servers, each losing a 2-connection fio mid-run: every one survives (with nbdkit's
    default 16 workers per connection, 6 of 40 aborted here; docs/reliability.md)."""
    trials = 20
    for trial in range(trials):
        d = tmp_path / str(trial)
        d.mkdir()
        with serve(d, "size=64M", nbdkit_args=SERVE_ARGS) as srv:
            fio = subprocess.Popen(
                ["fio", "--name=k", "--ioengine=nbd", f"--uri={srv.uri}", "--rw=randrw",
                 "--bs=4k", "--iodepth=32", "--numjobs=2", "--thread", "--time_based",
                 "--runtime=60", "--output=/dev/null"],
                cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            wait_for(lambda: srv.mm_stat()[0] > 4 * MiB, what="fio to write")  # mid-run
            fio.send_signal(signal.SIGKILL)
            fio.wait()
            # nbdkit has dropped both connections (and survived doing so) once reset succeeds
            wait_for(
                lambda: srv.proc.poll() is not None or reset_succeeds(srv),
                what="the killed connections to close",
            )
            assert srv.proc.poll() is None, f"trial {trial}: nbdkit died:\n{srv.log.read_text()}"
            assert srv.echo("64M", "disksize").returncode == 0
            h = srv.connect()
            h.pread(P, 0)
            h.shutdown()


# -- stopping, whatever clients do -------------------------------------------------------------


def idle_clients(tmp: Path) -> list[socket.socket]:
    """Clients that hold the server without ever finishing a request: one connects and says
    nothing, one stops halfway through the handshake (the client flags, then no option), one
    negotiates and then sits idle. nbdkit 1.32 waits for each of them at exit."""
    silent, _ = raw_connect(tmp / "s.sock", handshake=False)
    half, _ = raw_connect(tmp / "s.sock", handshake=False)
    assert half.recv(18)[:8] == b"NBDMAGIC"
    half.sendall(b"\0\0\0\3")
    idle, _ = raw_connect(tmp / "s.sock")
    return [silent, half, idle]


def test_stop_ends_within_its_timeout_whatever_clients_do(tmp_path: Path) -> None:
    r = zramd_serve(tmp_path)
    assert r.returncode == 0, r.stderr
    pid = int((tmp_path / "s.pid").read_text())
    clients = idle_clients(tmp_path)
    try:
        # the bound: subprocess's timeout fails the test; nbdkit alone would wait forever
        stop = subprocess.run(
            [*ZRAMD, "stop", "--pidfile", str(tmp_path / "s.pid"), "--socket",
             str(tmp_path / "s.sock"), "--timeout", "10"],
            capture_output=True, text=True, timeout=10 + 5, check=False,
        )  # fmt: skip
    finally:
        for c in clients:
            c.close()
    assert stop.returncode == 0, stop.stderr
    assert f"server {pid} did not exit within 8 s of SIGTERM" in stop.stderr
    assert stop.stdout == f"zramd: stopped server {pid} (killed)\n"
    assert not os.path.exists(f"/proc/{pid}")
    assert not (tmp_path / "s.sock").exists()
    assert not (tmp_path / "s.pid").exists()
    assert mount_state(tmp_path / "ctl") == "none"
    log = (tmp_path / "s.log").read_text()
    assert "zramd: nbdkit exited with status 137 (killed by SIGKILL)" in log


def test_stop_over_tcp_with_a_silent_client(tmp_path: Path) -> None:
    """Over --tcp any local user can be that client."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run(
        [*ZRAMD, "serve", "--size", "16M", "--no-control", "--tcp", str(port),
         "--pidfile", str(tmp_path / "s.pid"), "--log", str(tmp_path / "s.log")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        stop = subprocess.run(
            [*ZRAMD, "stop", "--pidfile", str(tmp_path / "s.pid"), "--timeout", "3"],
            capture_output=True, text=True, timeout=3 + 5, check=False,
        )  # fmt: skip
    finally:
        silent.close()
    assert stop.returncode == 0, stop.stderr
    assert "(killed)" in stop.stdout
    assert not (tmp_path / "s.pid").exists()


def test_stop_never_signals_a_process_that_reused_the_pid(tmp_path: Path) -> None:
    """nbdkit and its supervisor SIGKILLed, the pid taken by an unrelated process: stop leaves
    that process alone, says the pidfile is stale, and removes it and the stale socket."""
    r = zramd_serve(tmp_path)
    assert r.returncode == 0, r.stderr
    pid = int((tmp_path / "s.pid").read_text())
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="nbdkit to die")
    assert (tmp_path / "s.sock").exists()
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        wait_for(lambda: Path(f"/proc/{bystander.pid}/cmdline").read_bytes().startswith(b"sleep"),
                 what="sleep to start")  # fmt: skip
        (tmp_path / "s.pid").write_text(f"{bystander.pid}\n")  # the pid, reused
        stop = zramd_stop(tmp_path / "s.pid", tmp_path / "s.sock")
        assert stop.returncode == 1
        assert (
            f"no server: {tmp_path / 's.pid'} is stale (process {bystander.pid} is not a zramd "
            "server (it runs sleep))"
        ) in stop.stderr
        assert f"removed pidfile {tmp_path / 's.pid'}, socket {tmp_path / 's.sock'}" in stop.stderr
        assert bystander.poll() is None  # not signalled
        assert not (tmp_path / "s.pid").exists()
        assert not (tmp_path / "s.sock").exists()
    finally:
        bystander.kill()
        bystander.wait()
        unmount_stale(tmp_path / "ctl")  # the next serve would; this test ends here

"""The zramd CLI: through click's CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from zramd import supervise, zramctl
from zramd.cli import main
from zramd.runstate import mount_state, mounts
from zramd.testing import synthetic_pages
from zramd.zramctl import human_size

from servers import ZRAMD, Server, serve, zramd_stop

P = 4096


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serve(tmp_path, "size=64M") as srv:
        yield srv


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0B"), (512, "512B"), (1023, "1023B"), (1024, "1K"), (1536, "1.5K"),
     (8 << 30, "8G"), (947708723, "903.8M"), (1048575, "1024K"), (1 << 60, "1E")],
)  # fmt: skip
def test_human_size_like_util_linux(n: int, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.e2e
def test_status_table(runner: CliRunner, server: Server) -> None:
    h = server.connect()
    # enough data that the first, partly filled zspage of each class stops mattering
    h.pwrite(b"".join(synthetic_pages(4096, seed=1)), 0)
    r = runner.invoke(main, ["status", "--control", str(server.mount)])
    assert r.exit_code == 0, r.output
    header, row = r.output.splitlines()
    assert header.split() == zramctl.DEFAULT_COLUMNS
    cells = row.split()
    assert cells[0] == "zram0"
    assert cells[1] == "lz4"
    assert cells[2] == "64M"
    assert float(cells[-1]) > 1.0  # COMP-RATIO: data / total
    h.shutdown()


@pytest.mark.e2e
def test_status_raw_bytes_json_columns(runner: CliRunner, server: Server) -> None:
    ctl = ["--control", str(server.mount)]
    r = runner.invoke(main, ["status", *ctl, "--raw", "--bytes", "-n", "-o", "DISKSIZE,ZERO-PAGES"])
    assert r.output == f"{64 << 20} 0\n"
    r = runner.invoke(main, ["status", *ctl, "--json", "--bytes", "-o", "+RSS"])
    doc = json.loads(r.output)
    (dev,) = doc["zramd"]
    assert dev["disksize"] == 64 << 20
    assert dev["rss"] > 10 << 20
    assert dev["algorithm"] == "lz4"
    r = runner.invoke(main, ["status", *ctl, "-o", "NOPE"])
    assert r.exit_code == 2
    assert "unknown column 'NOPE'" in r.output


@pytest.mark.e2e
def test_compact_set_reset(runner: CliRunner, server: Server) -> None:
    ctl = ["--control", str(server.mount)]
    h = server.connect()
    pages = [p for p in synthetic_pages(2048, seed=3) if p[8:] != p[:-8]]
    h.pwrite(b"".join(pages), 0)
    for i in range(0, len(pages), 2):
        h.trim(P, i * P)
    r = runner.invoke(main, ["compact", *ctl])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("compacted ")
    assert int(r.output.split()[1]) > 0
    r = runner.invoke(main, ["set", *ctl, "mem_limit", "128M"])
    assert r.exit_code == 0, r.output
    assert server.mm_stat()[3] == 128 << 20
    r = runner.invoke(main, ["set", *ctl, "mem_limit", "lots"])
    assert r.exit_code == 1
    assert "Invalid argument (EINVAL)" in r.output
    r = runner.invoke(main, ["set", *ctl, "nonsense", "1"])
    assert "no such attribute" in r.output
    r = runner.invoke(main, ["reset", *ctl])
    assert r.exit_code == 1
    assert "Device or resource busy (EBUSY)" in r.output  # a client is connected
    h.shutdown()


def test_no_control_directory(runner: CliRunner, tmp_path: Path) -> None:
    r = runner.invoke(main, ["status", "--control", str(tmp_path / "none")])
    assert r.exit_code == 1
    assert "no zramd control tree" in r.output


def test_serve_without_nbdkit(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise.shutil, "which", lambda *a, **k: None)
    r = runner.invoke(main, ["serve"])
    assert r.exit_code == 1
    assert "nbdkit is not installed (apt-get install nbdkit)" in r.output


def test_serve_without_python_plugin(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = subprocess.run

    def fake_run(args: list[str], **kw: object) -> object:
        if args[1:] == ["--dump-config"]:
            return subprocess.CompletedProcess(args, 0, "plugindir=/nonexistent\n", "")
        return real_run(args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(supervise.subprocess, "run", fake_run)
    r = runner.invoke(main, ["serve"])
    assert "apt-get install nbdkit-plugin-python" in r.output


@pytest.mark.parametrize("size", ["lots", "1.5G", "-1", "12Q"])
def test_serve_bad_size(runner: CliRunner, size: str) -> None:
    r = runner.invoke(main, ["serve", "--size", size])
    assert r.exit_code == 2
    assert "is not a size" in r.output


def paths(tmp: Path) -> list[str]:
    return ["--socket", str(tmp / "s.sock"), "--pidfile", str(tmp / "s.pid"),
            "--log", str(tmp / "s.log")]  # fmt: skip


@pytest.mark.e2e
def test_serve_status_stop_as_subprocesses(tmp_path: Path) -> None:
    ctl = tmp_path / "ctl"
    with open(tmp_path / "wb.img", "wb") as f:
        f.truncate(64 << 20)
    r = subprocess.run(
        [*ZRAMD, "serve", "--size", "128M", "--algorithm", "zstd", "--control", str(ctl),
         "--backing-dev", "wb.img", "--recomp-algorithm", "lz4hc,deflate", *paths(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    assert (ctl / "zram0" / "backing_dev").read_text() == f"{tmp_path / 'wb.img'}\n"  # absolute
    assert (ctl / "zram0" / "recomp_algorithm").read_text().count("#") == 2
    assert "nbd-client -unix" in r.stdout
    assert f"file=nbd:unix:{tmp_path / 's.sock'}" in r.stdout
    assert "data path:   C (zramd._zram)" in r.stdout
    assert oct((tmp_path / "s.sock").stat().st_mode & 0o777) == "0o600"
    try:
        st = subprocess.run([*ZRAMD, "status", "--control", str(ctl), "--raw", "-n"],
                            capture_output=True, text=True, check=True)  # fmt: skip
        assert st.stdout.split()[:3] == ["zram0", "zstd", "128M"]
        again = subprocess.run(
            [*ZRAMD, "serve", "--control", str(tmp_path / "ctl2"), *paths(tmp_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert again.returncode == 1
        assert "is in use by a running server" in again.stderr
    finally:
        stop = zramd_stop(tmp_path / "s.pid", tmp_path / "s.sock")
    assert stop.returncode == 0, stop.stderr
    assert not (tmp_path / "s.sock").exists()
    assert not os.path.ismount(ctl)
    assert "nbdkit exited with status 0" in (tmp_path / "s.log").read_text()


def leftovers(tmp: Path) -> list[str]:
    """What a stopped or failed server left in ``tmp``: the socket, the pidfile, a mount."""
    left = [p.name for p in (tmp / "s.sock", tmp / "s.pid") if os.path.lexists(p)]
    return left + [m.point for m in mounts() if m.point.startswith(str(tmp))]


@pytest.mark.e2e
def test_serve_control_not_mountable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run(
        [*ZRAMD, "serve", "--size", "16M", "--control", str(blocker / "ctl"), *paths(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr == f"Error: control directory {blocker / 'ctl'}: Not a directory\n"
    assert leftovers(tmp_path) == []


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: p.write_text("precious\n"), "a regular file"),
        (lambda p: p.mkdir(), "a directory"),
        (lambda p: p.symlink_to("/dev/null"), "a symbolic link"),
    ],
    ids=["file", "directory", "symlink"],
)
def test_serve_removes_nothing_but_a_stale_socket(
    tmp_path: Path, make: Callable[[Path], None], what: str
) -> None:
    sock = tmp_path / "s.sock"
    make(sock)
    before = os.lstat(sock)
    r = subprocess.run([*ZRAMD, "serve", "--size", "16M", "--no-control", *paths(tmp_path)],
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert r.returncode == 1
    assert f"--socket {sock}: something else is there ({what} owned by uid" in r.stderr
    assert "zramd removes only a stale socket" in r.stderr
    after = os.lstat(sock)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert not (tmp_path / "s.pid").exists()


@pytest.mark.e2e
def test_serve_replaces_a_stale_socket_and_refuses_a_live_one(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    listener.listen()
    try:
        r = subprocess.run([*ZRAMD, "serve", "--no-control", *paths(tmp_path)],
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert r.returncode == 1
        assert f"socket {sock} is in use by a running server" in r.stderr
    finally:
        listener.close()  # the socket file stays: now stale
    r = subprocess.run([*ZRAMD, "serve", "--size", "16M", "--no-control", *paths(tmp_path)],
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    stop = zramd_stop(tmp_path / "s.pid", sock)
    assert stop.returncode == 0, stop.stderr
    assert leftovers(tmp_path) == []


@pytest.mark.e2e
def test_stop_removes_nothing_but_a_stale_socket(tmp_path: Path) -> None:
    """--socket naming a regular file, and the server's own socket replaced by one: both
    survive ``zramd stop`` and the supervisor, with a message naming them."""
    other = tmp_path / "other"
    other.write_text("precious\n")
    r = subprocess.run([*ZRAMD, "serve", "--size", "16M", "--no-control", *paths(tmp_path)],
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    sock = tmp_path / "s.sock"
    sock.unlink()
    sock.write_text("replaced\n")
    stop = zramd_stop(tmp_path / "s.pid", other)
    assert stop.returncode == 0, stop.stderr
    assert other.read_text() == "precious\n"
    assert sock.read_text() == "replaced\n"
    assert f"--socket {other} is not this server's socket: left alone" in stop.stderr
    assert f"left alone: {sock} is a regular file" in stop.stderr
    assert f"zramd: left alone: {sock} is a regular file" in (tmp_path / "s.log").read_text()
    assert not (tmp_path / "s.pid").exists()
    # no server any more: a stale pidfile is reported, the file at --socket still survives
    (tmp_path / "s.pid").write_text("1\n")  # init: alive, and certainly not our nbdkit
    stop = zramd_stop(tmp_path / "s.pid", sock)
    assert stop.returncode == 1
    assert "is stale (process 1 is not a zramd server" in stop.stderr
    assert f"left alone: {sock} is a regular file" in stop.stderr
    assert sock.read_text() == "replaced\n"
    assert not (tmp_path / "s.pid").exists()


def test_stop_leaves_the_empty_pidfile_of_a_starting_server(
    runner: CliRunner, tmp_path: Path
) -> None:
    pidfile = tmp_path / "s.pid"
    pidfile.write_text("")  # what serve creates before nbdkit fills it in
    r = runner.invoke(main, ["stop", "--pidfile", str(pidfile), "--socket", str(tmp_path / "s")])
    assert r.exit_code == 1
    assert "holds no pid (a server may be starting); left alone" in r.output
    assert pidfile.exists()


@pytest.mark.e2e
def test_control_path_with_spaces(tmp_path: Path) -> None:
    """Mount tables write a space as \\040: serve must still see its mount (it waited 60 s and
    failed, leaving the socket and pidfile), and stop must still remove it."""
    ctl = tmp_path / "ctl with space\tand tab"
    r = subprocess.run(
        [*ZRAMD, "serve", "--size", "16M", "--control", str(ctl), *paths(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    try:
        assert r.returncode == 0, r.stderr
        assert mount_state(ctl) == "live"
        columns = ["--raw", "-n", "-o", "DISKSIZE,ALGORITHM"]
        st = subprocess.run([*ZRAMD, "status", "--control", str(ctl), *columns],
                            capture_output=True, text=True, check=False)  # fmt: skip
        assert st.stdout == "16M lz4\n", st.stderr
    finally:
        stop = zramd_stop(tmp_path / "s.pid", tmp_path / "s.sock")
    assert stop.returncode == 0, stop.stderr
    assert leftovers(tmp_path) == []


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--socket", "/tmp/" + "s" * 120], "the path is 125 bytes long; a Unix socket path can "
         "have at most 107 (sun_path)"),
        (["--pidfile", "/proc/zramd-test.pid"], "--pidfile /proc/zramd-test.pid: cannot create "
         "it: No such file or directory (/proc is on proc, where files cannot be created)"),
        (["--control", "CTL"], "control directory CTL is not empty"),
        (["--recomp-algorithm", "nope"], "nbdkit did not start: recomp_algorithm: 'nope' is not "
         "available; choose"),
        (["--backing-dev", "/nonexistent/wb.img"], "nbdkit did not start: backing_dev "
         "/nonexistent/wb.img: "),
    ],
    ids=["socket-too-long", "pidfile-in-proc", "control-not-empty", "plugin-config", "backing"],
)  # fmt: skip
def test_serve_says_why_it_did_not_start(tmp_path: Path, args: list[str], reason: str) -> None:
    """One line with the reason, checked before nbdkit starts where possible and otherwise
    taken from nbdkit's log; nothing left behind."""
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    (ctl / "junk").write_text("")
    args = [a.replace("CTL", str(ctl)) for a in args]
    reason = reason.replace("CTL", str(ctl))
    defaults = {"--socket": str(tmp_path / "s.sock"), "--pidfile": str(tmp_path / "s.pid"),
                "--log": str(tmp_path / "s.log")}  # fmt: skip
    defaults.update(dict(zip(args[::2], args[1::2], strict=True)))
    if "--control" not in args:
        defaults["--no-control"] = ""
    argv = [x for kv in defaults.items() for x in kv if x]
    r = subprocess.run([*ZRAMD, "serve", "--size", "16M", *argv],
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert r.returncode == 1
    (line,) = r.stderr.splitlines()
    assert reason in line
    assert "exited with status" not in line
    if "did not start" in reason:
        assert line.endswith(f" (log: {tmp_path / 's.log'})")
    assert leftovers(tmp_path) == []
    assert os.listdir(ctl) == ["junk"]


@pytest.mark.e2e
def test_a_start_that_times_out_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nbdkit listens and mounts, but serve never sees it ready (as with the escaped mount
    path): serve gives up, and the socket, pidfile and mount go with the server."""
    monkeypatch.setattr(supervise, "READY_TIMEOUT", 3.0)
    monkeypatch.setattr(supervise, "mount_state", lambda path: "none")
    ctl = tmp_path / "ctl"
    r = CliRunner().invoke(main, ["serve", "--size", "16M", "--control", str(ctl),
                                  *paths(tmp_path)])  # fmt: skip
    assert r.exit_code == 1
    assert f"nbdkit did not start: not ready within 3 s (log: {tmp_path / 's.log'})" in r.output
    assert leftovers(tmp_path) == []
    assert "zramd: nbdkit exited with status 0" in (tmp_path / "s.log").read_text()


@pytest.mark.e2e
def test_foreground_serve_cleans_up_after_stop(tmp_path: Path) -> None:
    args = [*ZRAMD, "serve", "--foreground", "--size", "16M", "--control", str(tmp_path / "ctl"),
            "--socket", str(tmp_path / "s.sock"), "--pidfile", str(tmp_path / "s.pid")]  # fmt: skip
    fg = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert fg.stdout is not None
    first = fg.stdout.readline()  # printed once ready
    assert first.startswith("zramd: serving 16M"), first + fg.communicate()[1]
    stop = zramd_stop(tmp_path / "s.pid", tmp_path / "s.sock")
    assert stop.returncode == 0, stop.stderr
    _, err = fg.communicate(timeout=60)
    assert fg.returncode == 0, err
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        ("nbdkit: -U: path too long: length 135 > max 107 bytes\nzramd: nbdkit exited with "
         "status 1\n", "-U: path too long: length 135 > max 107 bytes"),
        ("nbdkit: error: /p/zramd_plugin.py: get_ready: error: Traceback (most recent call "
         "last):\n   File \"x\", line 1\n zramd.errors.ControlDirError: control directory /c is "
         "not empty\n\nzramd: nbdkit exited with status 1\n",
         "control directory /c is not empty"),
        ("nbdkit: python[1]: error: cannot open file\n", "cannot open file"),
        ("/proc/zz.pid: No such file or directory\nzramd: nbdkit exited with status 1\n",
         "/proc/zz.pid: No such file or directory"),
        ("zramd: nbdkit exited with status 1\n", "nbdkit exited without a message"),
    ],
)  # fmt: skip
def test_failure_reason(log: str, reason: str) -> None:
    assert supervise.failure_reason(log) == reason


def test_kill_after() -> None:
    assert supervise.kill_after(10) == 8
    assert supervise.kill_after(60) == 58
    assert supervise.kill_after(2) == 1
    assert supervise.kill_after(0) == 0


def test_data_path_names_the_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    from zramd import native  # noqa: PLC0415

    assert supervise.data_path() == "C (zramd._zram)"
    monkeypatch.setenv("ZRAMD_NATIVE", "0")
    assert supervise.data_path() == "Python (ZRAMD_NATIVE=0)"
    monkeypatch.setattr(native, "native_module", lambda: None)
    assert "not built" in supervise.data_path()

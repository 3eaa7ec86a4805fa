"""Runtime state (zramd/runstate.py): the checks that keep other users' directories, symlinks,
files and processes out of a server's socket, pidfile, log and runtime directory."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zramd import runstate
from zramd.runstate import (
    Process,
    RunStateError,
    check_socket_path,
    claim_pidfile,
    clean_up,
    find_server,
    is_plugin,
    open_log,
    private_dir,
    read_pid,
    socket_state,
    unescape_mount_field,
    usable_dir,
)

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on: what a SIGKILLed server leaves."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


def unrelated_process() -> subprocess.Popen[bytes]:
    """A live ``sleep``, waited for until /proc shows it running sleep (right after fork,
    before exec, it still shows its parent's argv)."""
    proc = subprocess.Popen(["sleep", "600"])
    deadline = time.monotonic() + 30
    while (p := Process.read(proc.pid)) is None or p.argv[0] != "sleep":
        assert time.monotonic() < deadline, "sleep did not start"
        time.sleep(0.01)
    return proc


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = unrelated_process()
    yield proc
    proc.kill()
    proc.wait()


# -- the runtime directory --------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o277])
def test_private_dir_is_created_0700_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    run = tmp_path / "zramd-1000"
    old = os.umask(umask)
    try:
        assert private_dir(run)
    finally:
        os.umask(old)
    assert mode(run) == 0o700
    assert os.lstat(run).st_uid == os.geteuid()
    assert private_dir(run)  # and an existing one of ours is accepted


def test_private_dir_is_not_created_when_asked_not_to(tmp_path: Path) -> None:
    assert not private_dir(tmp_path / "none", create=False)
    assert not (tmp_path / "none").exists()


@root_only
def test_private_dir_refuses_another_users_directory(tmp_path: Path) -> None:
    """The hijack: another user made /tmp/zramd-UID first, mode 0777."""
    run = tmp_path / "zramd-1000"
    run.mkdir()
    os.chown(run, NOBODY, NOBODY)
    run.chmod(0o777)
    with pytest.raises(RunStateError) as e:
        private_dir(run)
    assert str(run) in str(e.value)
    assert "owned by uid 65534 (nobody), mode 0777" in str(e.value)
    assert mode(run) == 0o777  # not chmodded
    assert os.lstat(run).st_uid == NOBODY


@pytest.mark.parametrize("bad_mode", [0o755, 0o711, 0o1700, 0o770])
def test_private_dir_refuses_our_directory_with_another_mode(tmp_path: Path, bad_mode: int) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(bad_mode)
    with pytest.raises(RunStateError, match=f"mode {bad_mode:04o}"):
        private_dir(run)
    assert mode(run) == bad_mode


def test_private_dir_refuses_a_symlink_even_to_a_good_directory(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "run"
    link.symlink_to(real)
    with pytest.raises(RunStateError, match="is not safe to use: it is a symbolic link"):
        private_dir(link)


def test_private_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    with pytest.raises(RunStateError, match="a regular file"):
        private_dir(tmp_path / "run")


def test_runtime_dir_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert runstate.runtime_dir() == Path("/run/user/1000/zramd")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/ignored")
    monkeypatch.setenv("TMPDIR", "/var/tmp/me")
    assert runstate.runtime_dir() == Path("/var/tmp/me/zramd-1000")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.delenv("TMPDIR")
    assert runstate.runtime_dir() == Path("/tmp/zramd-1000")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert runstate.runtime_dir() == Path("/run/zramd")


# -- directories for --socket / --pidfile / --log ---------------------------------------------


def test_usable_dir_creates_missing_directories_0700(tmp_path: Path) -> None:
    usable_dir(tmp_path / "a" / "b", "--pidfile")
    assert mode(tmp_path / "a" / "b") == 0o700


def test_usable_dir_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RunStateError, match="others can write to it and it is not sticky"):
        usable_dir(shared, "--log")
    shared.chmod(0o1777)  # sticky, like /tmp: files created there stay the creator's
    usable_dir(shared, "--log")


@root_only
def test_usable_dir_refuses_another_users_directory(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(RunStateError, match=r"--socket: directory .* owned by uid 65534"):
        usable_dir(theirs, "--socket")


# -- files ------------------------------------------------------------------------------------


def test_open_log_refuses_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    log = tmp_path / "zramd.log"
    log.symlink_to(victim)
    with pytest.raises(RunStateError, match="is a symbolic link: zramd does not follow it"):
        open_log(log)
    assert victim.read_text() == "precious\n"


@root_only
def test_open_log_refuses_a_file_someone_else_owns(tmp_path: Path) -> None:
    log = tmp_path / "zramd.log"
    log.write_text("theirs\n")
    os.chown(log, NOBODY, NOBODY)
    with pytest.raises(RunStateError, match=r"owned by uid 65534 .*not yours to write"):
        open_log(log)


def test_open_log_creates_0600_and_appends(tmp_path: Path) -> None:
    log = tmp_path / "zramd.log"
    for text in (b"one\n", b"two\n"):
        fd = open_log(log)
        os.write(fd, text)
        os.close(fd)
    assert log.read_bytes() == b"one\ntwo\n"
    assert mode(log) == 0o600


def test_claim_pidfile_refuses_a_planted_symlink(tmp_path: Path) -> None:
    """nbdkit writes its pidfile through symlinks: zramd creates the file itself first."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    pidfile = tmp_path / "zramd.pid"
    pidfile.symlink_to(victim)
    with pytest.raises(RunStateError, match="symbolic link"):
        claim_pidfile(pidfile)
    assert victim.read_text() == "precious\n"
    assert pidfile.is_symlink()


def test_claim_pidfile_replaces_a_stale_one(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pidfile = tmp_path / "zramd.pid"
    pidfile.write_text(f"{sleeper.pid}\n")  # a live process, but not our server
    claim_pidfile(pidfile)
    assert pidfile.read_text() == ""
    assert sleeper.poll() is None


def test_claim_pidfile_in_proc_says_why(tmp_path: Path) -> None:
    with pytest.raises(RunStateError) as e:
        claim_pidfile(Path("/proc/zramd-test.pid"))
    assert str(e.value) == (
        "--pidfile /proc/zramd-test.pid: cannot create it: No such file or directory "
        "(/proc is on proc, where files cannot be created)"
    )


@pytest.mark.parametrize("text", ["", "\n", "abc", "-1", "0", "99999999999", "12 13"])
def test_read_pid_garbage_is_no_pid(tmp_path: Path, text: str) -> None:
    (tmp_path / "p").write_text(text)
    assert read_pid(tmp_path / "p") is None


def test_read_pid_does_not_hang_on_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p")
    with pytest.raises(RunStateError, match="a FIFO"):
        read_pid(tmp_path / "p")


# -- sockets ----------------------------------------------------------------------------------


def test_socket_states(tmp_path: Path) -> None:
    assert socket_state(tmp_path / "none") == "none"
    stale_socket(tmp_path / "stale")
    assert socket_state(tmp_path / "stale") == "stale"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(tmp_path / "live"))
    live.listen()
    try:
        assert socket_state(tmp_path / "live") == "live"
    finally:
        live.close()
    (tmp_path / "file").write_text("")
    assert socket_state(tmp_path / "file") == "other"
    (tmp_path / "link").symlink_to(tmp_path / "stale")
    assert socket_state(tmp_path / "link") == "other"  # lstat: never followed


def test_check_socket_path_removes_only_a_stale_socket(tmp_path: Path) -> None:
    stale_socket(tmp_path / "s")
    check_socket_path(tmp_path / "s")
    assert not (tmp_path / "s").exists()
    (tmp_path / "s").mkdir()
    with pytest.raises(RunStateError, match=r"something else is there \(a directory"):
        check_socket_path(tmp_path / "s")
    assert (tmp_path / "s").is_dir()


def test_check_socket_path_length(tmp_path: Path) -> None:
    base = Path("/tmp")
    ok = base / ("x" * (107 - len("/tmp/")))
    check_socket_path(ok)  # 107 bytes: fits sun_path with its NUL
    with pytest.raises(RunStateError, match="is 108 bytes long; a Unix socket path can have at"):
        check_socket_path(base / ("x" * (108 - len("/tmp/"))))


# -- processes --------------------------------------------------------------------------------


def test_find_server_rejects_an_unrelated_process(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pidfile = tmp_path / "zramd.pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    server, why = find_server(sleeper.pid, pidfile)
    assert server is None
    assert why == f"process {sleeper.pid} is not a zramd server (it runs sleep)"


def test_process_options_as_nbdkit_parses_them() -> None:
    argv = ("nbdkit", "-f", "--threads=1", "-U", "/r/s.sock", "-P/r/p", "python",
            "/x/plugin/zramd_plugin.py", "size=1", "control=/r/ctl dir")  # fmt: skip
    p = Process(1, argv, 0, 0.0)
    assert p.option("-U", "--unix") == "/r/s.sock"
    assert p.option("-P", "--pidfile") == "/r/p"
    assert p.plugin_key("control") == "/r/ctl dir"
    assert p.plugin_key("size") == "1"
    p = Process(1, ("nbdkit", "--pidfile=/p", "--unix", "/s", "python", "zramd_plugin.py"), 0, 0)
    assert p.option("-P", "--pidfile") == "/p"
    assert p.option("-U", "--unix") == "/s"
    assert p.plugin_key("control") is None


@pytest.mark.parametrize(
    ("script", "ours"),
    [("/venv/lib/python3.11/site-packages/zramd/nbdkit_plugin.py", True),  # zramd serve's
     ("zramd/nbdkit_plugin.py", True), ("/x/plugin/zramd_plugin.py", True),
     ("/x/other/nbdkit_plugin.py", False), ("/x/zramd/nbdkit_plugin.pyc", False)],
)  # fmt: skip
def test_the_plugin_is_recognised_where_a_wheel_installs_it(script: str, ours: bool) -> None:
    """``zramd serve`` runs the installed package's script; a key after it is the plugin's,
    and only an nbdkit running zramd's script counts as a server."""
    p = Process(1, ("nbdkit", "-P", "/p", "python", script, "control=/c"), 0, 0.0)
    assert p.plugin_key("control") == ("/c" if ours else None)
    assert is_plugin(script) is ours


def test_clean_up_removes_only_stale_state(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pidfile, sock = tmp_path / "p", tmp_path / "s"
    pidfile.write_text(f"{sleeper.pid}\n")
    stale_socket(sock)
    done = clean_up(pidfile, sock, tmp_path / "ctl")
    assert done.removed == [f"pidfile {pidfile}", f"socket {sock}"]
    assert done.left == done.failed == []
    sock.write_text("not a socket")
    done = clean_up(pidfile, sock, None)
    assert done.removed == []
    (left,) = done.left
    assert left.startswith(f"{sock} is a regular file owned by uid {os.geteuid()}")
    assert left.endswith(", not a stale socket")
    assert sock.read_text() == "not a socket"


# -- mount tables -----------------------------------------------------------------------------


def test_unescape_mount_field() -> None:
    assert unescape_mount_field(rb"/a\040b\011c\012d\134e") == "/a b\tc\nd\\e"
    assert unescape_mount_field(rb"/plain") == "/plain"
    assert unescape_mount_field(rb"/caf\303\251") == "/café"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_mount_table_paths_with_spaces_are_found(tmp_path: Path) -> None:
    """/proc/self/mountinfo escapes a space as \\040 and a tab as \\011; a mount at such a
    path is still found."""
    target = tmp_path / "dir with space\tand tab"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "zt", str(target)], check=True)
    try:
        mount = runstate.mount_at(target)
        assert mount is not None
        assert mount.fstype == "tmpfs"
        assert runstate.mount_state(target) == "live"
        assert runstate.filesystem_of(target / "x") == "tmpfs"
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert runstate.mount_state(target) == "none"

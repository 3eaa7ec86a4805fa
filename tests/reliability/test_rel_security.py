"""Security defaults (threat model: docs/reliability.md): only the owner can attach, change knobs
or read statistics; no TCP listener unless asked for, and then on loopback; TLS passed through
to nbdkit, required as soon as credentials are given."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbd
import pytest
from click.testing import CliRunner

from zramd.cli import main
from zramd.supervise import parse_tcp

from relkit import wait_for
from servers import ZRAMD, zramd_stop

pytestmark = pytest.mark.e2e
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_listeners(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on (IPv4 and IPv6)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state == "0A" and inode in inodes:  # 0A = LISTEN
                    addr, port = local.split(":")
                    raw = bytes.fromhex(addr)[:width]
                    if table == "tcp":
                        text = socket.inet_ntop(socket.AF_INET, raw[::-1])
                    else:
                        words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                        text = socket.inet_ntop(socket.AF_INET6, b"".join(words))
                    out.append((text, int(port, 16)))
    return out


def mount_options(path: Path) -> tuple[str, set[str], set[str]]:
    """(fstype, mount options, superblock options) of the mount at ``path``."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            cols = line.split()
            if cols[4] == str(path):
                sep = cols.index("-")
                return cols[sep + 1], set(cols[5].split(",")), set(cols[sep + 3].split(","))
    raise AssertionError(f"{path} is not mounted")


class Served:
    """Paths another user can reach (pytest's temp dirs are 0700, which would deny everything
    before zramd's own permissions are even looked at): a 0755 base with a 0755 directory for
    the socket; the pidfile and log in a directory ``serve`` creates itself."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pub = base / "pub"
        self.pub.mkdir(mode=0o755)
        self.sock = self.pub / "s.sock"
        self.run = base / "run"  # does not exist yet: serve creates it
        self.pidfile = self.run / "s.pid"
        self.ctl = base / "ctl"

    def start(self, *extra: str) -> subprocess.CompletedProcess[str]:
        args = [*ZRAMD, "serve", "--size", "16M", "--control", str(self.ctl),
                "--pidfile", str(self.pidfile), "--log", str(self.run / "s.log"),
                *extra]  # fmt: skip
        if "--tcp" not in extra:
            args += ["--socket", str(self.sock)]
        return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def stop(self) -> None:
        r = zramd_stop(self.pidfile, self.sock)
        assert r.returncode == 0, r.stderr


@pytest.fixture
def served() -> Iterator[Served]:
    base = Path(tempfile.mkdtemp(prefix="zramd-security-"))
    try:
        base.chmod(0o755)
        s = Served(base)
        yield s
        if s.pidfile.exists():
            s.stop()
    finally:
        shutil.rmtree(base)


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True, check=False)


def test_defaults_owner_only_and_no_tcp(served: Served) -> None:
    r = served.start()
    assert r.returncode == 0, r.stderr
    # the socket: owner only, in a directory of its own that only the owner can enter
    assert served.sock.stat().st_mode & 0o777 == 0o600
    assert served.run.stat().st_mode & 0o777 == 0o700
    assert tcp_listeners(served.pid) == []
    # the control directory: FUSE, owner-only (no allow_other), permissions checked by the
    # kernel, nothing writable by group or others
    fstype, opts, super_opts = mount_options(served.ctl)
    assert fstype == "fuse.zramd"
    assert {"nosuid", "nodev"} <= opts
    assert "default_permissions" in super_opts
    assert "allow_other" not in super_opts
    assert "allow_other" not in opts
    assert f"user_id={os.getuid()}" in super_opts
    paths = [*served.ctl.iterdir(), *served.ctl.glob("*/*")]  # zram-control, zram0, files
    modes = {str(p.relative_to(served.ctl)): p.stat().st_mode & 0o777 for p in paths}
    assert "zram0/compact" in modes
    assert all(m & 0o022 == 0 for m in modes.values()), modes
    assert served.ctl.stat().st_mode & 0o022 == 0
    # another user can neither attach, nor read statistics, nor change a knob (who can reach
    # the paths: the denials below are zramd's own permissions)
    assert as_nobody("ls", str(served.pub)).returncode == 0
    connect = f"import socket; socket.socket(socket.AF_UNIX).connect({str(served.sock)!r})"
    attach = as_nobody("/usr/bin/python3", "-c", connect)
    assert attach.returncode != 0
    assert "PermissionError: [Errno 13] Permission denied" in attach.stderr
    stats = as_nobody("cat", str(served.ctl / "zram0" / "mm_stat"))
    assert stats.returncode != 0
    assert "Permission denied" in stats.stderr
    knob = as_nobody("sh", "-c", f"echo 1 > {served.ctl / 'zram0' / 'compact'}")
    assert knob.returncode != 0
    assert "Permission denied" in knob.stderr
    listing = as_nobody("ls", str(served.ctl))
    assert listing.returncode != 0


def test_tcp_binds_loopback_by_default(served: Served) -> None:
    port = free_port()
    r = served.start("--tcp", str(port))
    assert r.returncode == 0, r.stderr
    assert f"nbd://127.0.0.1:{port}" in r.stdout
    assert "warning" not in r.stderr
    assert tcp_listeners(served.pid) == [("127.0.0.1", port)]
    assert not served.sock.exists()  # TCP instead of the Unix socket, not as well
    h = nbd.NBD()
    h.connect_tcp("127.0.0.1", str(port))
    h.pwrite(b"z" * 4096, 0)
    assert h.pread(4096, 0) == b"z" * 4096
    h.shutdown()


def test_tls_psk_is_required_once_given(served: Served, tmp_path: Path) -> None:
    keys = tmp_path / "keys.psk"
    keys.write_text(f"alice:{secrets.token_hex(32)}\n")
    keys.chmod(0o600)
    port = free_port()
    r = served.start("--tcp", f"127.0.0.1:{port}", "--tls-psk", str(keys))
    assert r.returncode == 0, r.stderr
    assert f"nbds://127.0.0.1:{port}" in r.stdout
    # in the clear: refused
    plain = nbd.NBD()
    with pytest.raises(nbd.Error):
        plain.connect_tcp("127.0.0.1", str(port))
    # wrong key: refused
    wrong = tmp_path / "wrong.psk"
    wrong.write_text(f"alice:{secrets.token_hex(32)}\n")
    bad = nbd.NBD()
    bad.set_tls(nbd.TLS_REQUIRE)
    bad.set_tls_psk_file(str(wrong))
    bad.set_tls_username("alice")
    with pytest.raises(nbd.Error):
        bad.connect_tcp("127.0.0.1", str(port))
    # the key: served
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_psk_file(str(keys))
    h.set_tls_username("alice")
    h.connect_tcp("127.0.0.1", str(port))
    assert h.get_tls_negotiated()
    h.pwrite(b"s" * 4096, 0)
    assert h.pread(4096, 0) == b"s" * 4096
    h.shutdown()


def test_tcp_on_all_interfaces_without_tls_warns(served: Served) -> None:
    port = free_port()
    r = served.start("--tcp", f"0.0.0.0:{port}")
    assert r.returncode == 0, r.stderr
    assert "without --tls=require" in r.stderr
    assert tcp_listeners(served.pid) == [("0.0.0.0", port)]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "port must be a number from 1 to 65535"),
        ("65536", "port must be a number from 1 to 65535"),
        ("http", "port must be a number from 1 to 65535"),
        ("127.0.0.1:", "port must be a number from 1 to 65535"),
        (":10809", "empty host"),
        ("::1:10809", "put an IPv6 address in brackets"),
    ],
)
def test_bad_tcp_values(value: str, message: str) -> None:
    r = CliRunner().invoke(main, ["serve", "--tcp", value])
    assert r.exit_code == 2
    assert message in r.output


def test_parse_tcp() -> None:
    assert parse_tcp("10809") == ("127.0.0.1", 10809)
    assert parse_tcp("0.0.0.0:1") == ("0.0.0.0", 1)
    assert parse_tcp("[::1]:10809") == ("::1", 10809)
    assert parse_tcp("localhost:80") == ("localhost", 80)


def test_bad_tls_and_listen_combinations(tmp_path: Path) -> None:
    keys = tmp_path / "keys.psk"
    keys.write_text(f"alice:{secrets.token_hex(32)}\n")
    keys.chmod(0o644)
    certs = tmp_path / "certs"
    certs.mkdir()
    runner = CliRunner()
    cases = [
        (["--tls", "require"], "--tls=require needs credentials"),
        (["--tls", "on"], "--tls=on needs credentials"),
        (["--tls-psk", str(keys)], "readable by others (mode 0644); chmod 600"),
        (["--tls", "off", "--tls-certificates", str(certs)], "--tls=off: TLS credentials"),
        (["--tls-psk", str(keys), "--tls-certificates", str(certs)], "choose one"),
        (["--tls-verify-peer"], "--tls=off: TLS credentials or --tls-verify-peer given"),
        (["--tcp", "10809", "--socket", str(tmp_path / "s")], "nbdkit serves one or the other"),
        (["--tcp", "no.such.host.invalid:10809"], "unknown host"),
        (["--tcp", "192.0.2.1:10809"], "cannot listen: Cannot assign requested address"),
    ]
    keys_0600 = tmp_path / "ok.psk"
    keys_0600.write_text(keys.read_text())
    keys_0600.chmod(0o600)
    cases.append(
        (["--tls-psk", str(keys_0600), "--tls-verify-peer"], "it needs --tls-certificates")
    )
    for args, message in cases:
        r = runner.invoke(main, ["serve", *args])
        assert r.exit_code == 1, (args, r.output)
        assert message in r.output, (args, r.output)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = runner.invoke(main, ["serve", "--tcp", str(port)])
        assert r.exit_code == 1
        assert f"--tcp 127.0.0.1:{port} is in use" in r.output


# -- runtime state another local user could plant -----------------------------------------------


def as_user_without_xdg(tmpdir: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """``cmd`` as nobody with no XDG_RUNTIME_DIR, so the runtime directory is
    $TMPDIR/zramd-65534 (TMPDIR pointing into this test's own directory, not /tmp)."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(tmpdir)
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True, timeout=120,
                          check=False, env=env, cwd=tmpdir)  # fmt: skip


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory like /tmp (1777, root's) that nobody can reach."""
    base = Path(tempfile.mkdtemp(prefix="zramd-tmp-"))
    try:
        base.chmod(0o1777)
        yield base
    finally:
        shutil.rmtree(base)


def test_a_runtime_dir_planted_by_another_user_is_refused(shared_tmp: Path) -> None:
    """Another user creates the victim's /tmp/zramd-UID first (0777) with a symlink for the
    log and a pidfile naming one of the victim's processes: serve and stop refuse the
    directory, name its owner and mode, and touch nothing in it."""
    planted = shared_tmp / "zramd-65534"
    planted.mkdir()
    planted.chmod(0o777)
    target = shared_tmp / "victim-file"
    target.write_text("precious\n")
    target.chmod(0o666)  # writable by the victim: only the refusal protects it
    (planted / "zramd.log").symlink_to(target)
    victims_process = subprocess.Popen([*NOBODY, "sleep", "600"])
    try:
        wait_for(lambda: Path(f"/proc/{victims_process.pid}/cmdline").read_bytes()
                 .startswith(b"sleep"), what="sleep to start")  # fmt: skip
        (planted / "zramd.pid").write_text(f"{victims_process.pid}\n")
        why = (
            f"runtime directory {planted} is not safe to use: it is a directory owned by uid 0 "
            "(root), mode 0777; zramd uses only a directory owned by you (uid 65534 (nobody)) "
            "with mode 0700"
        )
        for cmd in (["serve", "--size", "16M", "--no-control"], ["stop"], ["status"]):
            r = as_user_without_xdg(shared_tmp, *ZRAMD, *cmd)
            assert r.returncode == 1, (cmd, r.stdout, r.stderr)
            assert why in r.stderr, (cmd, r.stderr)
        assert victims_process.poll() is None  # stop did not signal it
    finally:
        victims_process.kill()
        victims_process.wait()
    assert target.read_text() == "precious\n"
    assert sorted(os.listdir(planted)) == ["zramd.log", "zramd.pid"]
    assert planted.stat().st_mode & 0o7777 == 0o777  # not chmodded either


def test_a_non_root_user_gets_a_private_runtime_dir(shared_tmp: Path) -> None:
    r = as_user_without_xdg(shared_tmp, *ZRAMD, "serve", "--size", "16M", "--no-control")
    run = shared_tmp / "zramd-65534"
    try:
        assert r.returncode == 0, r.stderr
        st = os.lstat(run)
        assert (st.st_uid, st.st_mode & 0o7777) == (65534, 0o700)
        sock = os.lstat(run / "zramd.sock")
        assert (sock.st_uid, sock.st_mode & 0o777) == (65534, 0o600)
        assert os.lstat(run / "zramd.log").st_mode & 0o777 == 0o600
    finally:
        stop = as_user_without_xdg(shared_tmp, *ZRAMD, "stop")
    assert stop.returncode == 0, stop.stderr
    assert sorted(os.listdir(run)) == ["zramd.log"]


def test_serve_does_not_follow_a_symlinked_log(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n")
    (tmp_path / "s.log").symlink_to(target)
    r = subprocess.run(
        [*ZRAMD, "serve", "--size", "16M", "--no-control", "--socket", str(tmp_path / "s.sock"),
         "--pidfile", str(tmp_path / "s.pid"), "--log", str(tmp_path / "s.log")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert f"--log {tmp_path / 's.log'} is a symbolic link: zramd does not follow it" in r.stderr
    assert target.read_text() == "precious\n"
    assert sorted(os.listdir(tmp_path)) == ["s.log", "victim"]

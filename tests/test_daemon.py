"""zramd serve as a service's main process (zramd/daemon.py): readiness against a fake service
manager (a datagram socket where NOTIFY_SOCKET points), a configuration's device ids and sizes,
the stop sequence, a refused teardown, and the progress that extends the stop timeout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbd
import pytest
from click.testing import CliRunner

from zramd import attach, daemon, genconf, supervise
from zramd.cli import main
from zramd.runstate import default_control, mount_state, read_pid, socket_state
from zramd.zramctl import ControlTree

from servers import ZRAMD, serve
from test_attach import CONTROL, SOCK, SWAP, FakeHost

MiB = 1 << 20
PAGE = 4096

# three devices with gaps between their ids, sizes from zram-generator's expression language
CONFIG = """
[zram0]
zram-size = ram / 1000
compression-algorithm = zstd(level=3) lz4hc
zram-resident-limit = 2 ^ 4

[zram2]
zram-size = min(ram / 2, 4096) / 64

[zram5]
zram-size = max(int(ram * 0.001), 3) + 0.5
fs-type = ext4
mount-point = /nonexistent/zram5
"""


def page_align(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


class Manager:
    """A fake service manager: the datagram socket NOTIFY_SOCKET names, and what it heard."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(120)
        self.heard: list[dict[str, str]] = []

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "NOTIFY_SOCKET": str(self.path)}

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        message = dict(line.split("=", 1) for line in data.splitlines())
        self.heard.append(message)
        return message

    def until(self, key: str) -> dict[str, str]:
        """Messages until one carries ``key``; that one."""
        while True:
            message = self.receive()
            if key in message:
                return message


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(tmp_path / "notify")
    try:
        yield m
    finally:
        m.sock.close()


def paths(tmp: Path) -> list[str]:
    return ["--socket", str(tmp / "s.sock"), "--control", str(tmp / "ctl"),
            "--pidfile", str(tmp / "s.pid")]  # fmt: skip


@pytest.mark.e2e
def test_ready_only_once_socket_control_tree_and_devices_are_there_then_sigterm(
    tmp_path: Path, manager: Manager
) -> None:
    """READY=1 comes from `zramd serve --foreground --config`, after the socket listens, the
    control tree is mounted and every configured device (ids 0, 2 and 5, nothing else) has its
    configured size; nbdkit never sees NOTIFY_SOCKET; SIGTERM brings STOPPING=1 and a clean
    exit well within the stop timeout."""
    conf = tmp_path / "zramd.conf"
    conf.write_text(CONFIG)
    ctl, sock, pidfile = tmp_path / "ctl", tmp_path / "s.sock", tmp_path / "s.pid"
    proc = subprocess.Popen(
        [*ZRAMD, "serve", "--foreground", "--config", str(conf), "--no-attach", *paths(tmp_path)],
        env=manager.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = manager.until("READY")
        # checked the moment READY=1 arrives: a premature one would find nothing yet
        listening = socket_state(sock)
        mounted = mount_state(ctl)
        ids = ControlTree(ctl).device_ids() if mounted == "live" else None
        sizes = {i: int((ctl / f"zram{i}" / "disksize").read_text()) for i in ids or []}
    except BaseException:
        proc.kill()
        raise AssertionError(proc.communicate()[1]) from None
    assert ready["READY"] == "1"
    assert listening == "live"
    assert mounted == "live"
    assert ids == [0, 2, 5]
    ram = genconf.meminfo_ram_mib()
    assert sizes == {
        0: page_align(int(ram / 1000 * MiB)),
        2: page_align(int(min(ram / 2, 4096) / 64 * MiB)),
        5: page_align(int((max(int(ram * 0.001), 3) + 0.5) * MiB)),
    }
    assert ready["STATUS"] == f"serving zram0, zram2, zram5 on {sock}"
    before = [m["STATUS"] for m in manager.heard[:-1]]
    assert before == ["starting nbdkit", "configuring the devices"]
    zram0 = ctl / "zram0"
    assert "[zstd]" in (zram0 / "comp_algorithm").read_text()
    assert "#1: " in (zram0 / "recomp_algorithm").read_text()
    assert "[lz4hc]" in (zram0 / "recomp_algorithm").read_text()
    assert int((zram0 / "mm_stat").read_text().split()[3]) == 16 * MiB  # zram-resident-limit
    pid = read_pid(pidfile)
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not [e for e in environ if e.startswith(b"NOTIFY_SOCKET=")]
    assert os.getpgid(pid) == pid  # its own process group: a Ctrl-C reaches serve alone
    h = nbd.NBD()
    h.set_export_name("zram2")
    h.connect_unix(str(sock))
    assert h.get_size() == sizes[2]
    h.shutdown()
    h = nbd.NBD()
    h.set_export_name("zram1")  # a gap: no such device
    with pytest.raises(nbd.Error):
        h.connect_unix(str(sock))

    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stopping = manager.until("STOPPING")
    out, err = proc.communicate(timeout=supervise.STOP_TIMEOUT)
    assert time.monotonic() - t < 20
    assert proc.returncode == 0, err
    assert stopping == {"STOPPING": "1", "STATUS": "stopping: stopping nbdkit"}
    assert "zramd: SIGTERM: stopping" in err
    assert not sock.exists()
    assert not pidfile.exists()
    assert mount_state(ctl) == "none"
    assert f"status:      serving zram0, zram2, zram5 on {sock}" in out


@pytest.mark.e2e
def test_ctrl_c_to_the_terminals_process_group_stops_through_serve(
    tmp_path: Path, manager: Manager
) -> None:
    """SIGINT to the whole foreground group (what a terminal's Ctrl-C does) reaches serve, and
    serve stops nbdkit: nbdkit must not die first under devices still set up."""
    proc = subprocess.Popen(
        [*ZRAMD, "serve", "--foreground", "--size", "16M", *paths(tmp_path)],
        env=manager.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    manager.until("READY")
    nbdkit = read_pid(tmp_path / "s.pid")
    assert nbdkit is not None
    assert os.getpgid(nbdkit) != proc.pid  # outside the group a Ctrl-C signals
    os.killpg(proc.pid, signal.SIGINT)
    assert manager.until("STOPPING")["STOPPING"] == "1"
    _, err = proc.communicate(timeout=supervise.STOP_TIMEOUT)
    assert proc.returncode == 0, err
    assert "zramd: SIGINT: stopping" in err


def test_serve_checks_a_configuration_before_it_starts_anything(tmp_path: Path) -> None:
    """Options that do not go with --config, and a bad file: refused, nothing started."""
    conf = tmp_path / "z.conf"
    conf.write_text("[zram0]\nzram-size = 16\n")
    cases = [
        (["--size", "1G"], "--config describes the devices; --size cannot go with it"),
        (["--devices", "2", "--algorithm", "zstd"], "--devices, --algorithm cannot go with it"),
        (["--no-control"], "--no-control cannot go with it"),
        (["--tcp", "10809"], "--tcp needs --no-attach"),
    ]
    for extra, message in cases:
        r = subprocess.run([*ZRAMD, "serve", "--config", str(conf), *extra, *paths(tmp_path)],
                           capture_output=True, text=True, check=False)  # fmt: skip
        assert r.returncode == 2, r.stderr
        assert message in r.stderr
    r = subprocess.run([*ZRAMD, "serve", "--no-attach", *paths(tmp_path)],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert "--no-attach goes with --config" in r.stderr
    conf.write_text("[zram0]\nzram-size = ram // 2\n")
    r = subprocess.run([*ZRAMD, "serve", "--config", str(conf), "--no-attach", *paths(tmp_path)],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 1
    assert f"{conf}:2: [zram0] zram-size" in r.stderr
    assert os.listdir(tmp_path) == ["z.conf"]  # nothing was started


def test_serve_refuses_a_host_with_devices_still_recorded(tmp_path: Path) -> None:
    """A record left by a server that was killed: the devices it names may still be swap;
    serve --config must not set up over them."""
    record = daemon.record_path(tmp_path / "s.pid")
    attach.setup([SWAP], attach.targets([SWAP], SOCK, CONTROL), state=record, host=FakeHost(),
                 log=lambda _: None)  # fmt: skip
    conf = tmp_path / "z.conf"
    conf.write_text("[zram0]\nzram-size = 16\n")
    r = subprocess.run([*ZRAMD, "serve", "--config", str(conf), *paths(tmp_path)],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 1
    assert f"{record} records devices still set up on this host: zram0 (/dev/nbd0)" in r.stderr
    assert "zramd teardown" in r.stderr
    assert not (tmp_path / "s.sock").exists()


# -- the stop sequence, in this process against a stand-in nbdkit -----------------------------


def stand_in(tmp: Path) -> supervise.Running:
    """A child that plays nbdkit: it runs until SIGTERM."""
    proc = subprocess.Popen(["sleep", "600"])
    opts = supervise.ServeOptions("nbdkit", [], tmp / "none.pid", foreground=True)
    return supervise.Running(proc, proc.pid, opts)


def test_a_refused_swapoff_keeps_nbdkit_serving_until_a_retry_succeeds(
    tmp_path: Path, manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM with a swap set up whose swapoff fails (ENOMEM): STOPPING=1, STATUS says the
    stop is refused, nbdkit is not signalled; the teardown is retried, and once swapoff works
    the device goes down and only then is nbdkit stopped."""
    monkeypatch.setattr(daemon, "RETRY_INTERVAL", 0.2)
    host = FakeHost()
    record = tmp_path / "s.attached.json"
    attach.setup([SWAP], attach.targets([SWAP], SOCK, CONTROL), state=record, host=host,
                 log=lambda _: None)  # fmt: skip
    host.fail["swapoff"] = "swapoff: /dev/nbd0: swapoff failed: Cannot allocate memory"
    running = stand_in(tmp_path)
    refusals: list[str] = []
    problems: list[str] = []

    def service_manager() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            manager.until("STOPPING")
            refusals.append(manager.until("STATUS")["STATUS"])
            time.sleep(0.5)  # several retries, none of which may stop nbdkit
            if running.proc.poll() is not None:
                problems.append("nbdkit was stopped under an active swap")
            del host.fail["swapoff"]
        except BaseException as e:
            problems.append(repr(e))
            running.proc.kill()

    helper = threading.Thread(target=service_manager)
    lines: list[str] = []
    with daemon.Signals() as signals:
        helper.start()
        code = daemon.serve_foreground(
            running, signals, record=record, status="serving zram0", report=lines.append,
            tell=daemon.Notifier(lines.append, manager.env), host=host,
        )  # fmt: skip
    helper.join()
    assert problems == []
    assert refusals[0].startswith(
        "stop refused, nbdkit keeps serving: still attached, the server must keep serving: "
        "zram0: swapoff /dev/nbd0 failed"
    )
    assert "Cannot allocate memory" in refusals[0]
    assert code == 128 + signal.SIGTERM  # the stand-in dies of the SIGTERM that stops nbdkit
    assert host.swaps == set()
    assert host.nbd == {}
    assert not record.exists()
    assert commands_after(host.log, "swapon").count("swapoff /dev/nbd0") >= 2
    assert manager.until("EXTEND_TIMEOUT_USEC") == {
        "STATUS": "stopping nbdkit", "EXTEND_TIMEOUT_USEC": "70000000"
    }  # fmt: skip
    assert "zramd: SIGTERM: stopping" in lines


def commands_after(log: list[str], first: str) -> list[str]:
    start = next(i for i, line in enumerate(log) if line.startswith(first))
    return log[start + 1 :]


def test_nbdkit_exiting_by_itself_with_devices_set_up_is_reported(
    tmp_path: Path, manager: Manager
) -> None:
    host = FakeHost()
    record = tmp_path / "s.attached.json"
    attach.setup([SWAP], attach.targets([SWAP], SOCK, CONTROL), state=record, host=host,
                 log=lambda _: None)  # fmt: skip
    running = stand_in(tmp_path)
    lines: list[str] = []
    threading.Timer(0.2, running.proc.kill).start()
    with daemon.Signals() as signals:
        code = daemon.serve_foreground(
            running, signals, record=record, status="x", report=lines.append,
            tell=daemon.Notifier(lines.append, manager.env), host=host,
        )  # fmt: skip
    assert code == 128 + signal.SIGKILL
    assert any("nbdkit exited while zram0 (/dev/nbd0) were set up" in x for x in lines), lines
    assert record.exists()  # for `zramd teardown`
    assert "swapoff /dev/nbd0" not in host.log


def test_swapoff_progress_extends_the_stop_timeout_only_while_swap_shrinks(
    manager: Manager,
) -> None:
    amounts = iter([{"/dev/nbd0": 8192}, {"/dev/nbd0": 6144}, {"/dev/nbd0": 6144},
                    {"/dev/nbd0": 1024}, {}])  # fmt: skip
    progress = daemon.SwapoffProgress(daemon.Notifier(print, manager.env), lambda: next(amounts))
    progress.start()
    for _ in range(4):
        progress(["swapoff", "/dev/nbd0"])
    progress(["umount", "/mnt"])  # not a swapoff: nothing to say
    extend = {"EXTEND_TIMEOUT_USEC": "30000000"}
    assert [manager.receive() for _ in range(3)] == [
        {"STATUS": "stopping: swapoff /dev/nbd0: 6 MiB still in swap", **extend},
        {"STATUS": "stopping: swapoff /dev/nbd0: 6 MiB still in swap"},
        {"STATUS": "stopping: swapoff /dev/nbd0: 1 MiB still in swap", **extend},
    ]
    manager.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        manager.receive()  # the device left /proc/swaps: done, and the umount said nothing


def test_host_reports_progress_while_a_command_runs_and_still_times_out() -> None:
    calls: list[list[str]] = []
    host = attach.Host(progress=lambda argv: calls.append(list(argv)), interval=0.05)
    assert host.run(["sh", "-c", "sleep 0.4; echo done"]) == "done\n"
    assert len(calls) >= 3
    assert calls[0] == ["sh", "-c", "sleep 0.4; echo done"]
    t = time.monotonic()
    with pytest.raises(attach.AttachError, match=r"sleep 30: no answer within 0\.3 s"):
        host.run(["sleep", "30"], timeout=0.3)
    assert time.monotonic() - t < 5
    with pytest.raises(attach.AttachError, match=r"failed \(exit 3\): oops"):
        host.run(["sh", "-c", "echo oops >&2; exit 3"])


def test_signals_wake_the_wait_and_are_taken_in_order() -> None:
    with daemon.Signals() as signals:
        assert signals.take() is None
        t = time.monotonic()
        signals.wait([], 0.1)  # nothing: returns after the timeout
        assert time.monotonic() - t >= 0.09
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGHUP)).start()
        signals.wait([], 30)
        assert signals.take() == signal.SIGHUP
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.take() == signal.SIGTERM
        assert signals.take() == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# -- a server that is already running ---------------------------------------------------------


@pytest.mark.e2e
def test_ensure_devices_adds_the_configured_ids_and_nothing_else(tmp_path: Path) -> None:
    """zram-generator's way with a running server: hot_add until the configured ids exist;
    the ids added on the way are removed again."""
    with serve(tmp_path, "devices=1") as srv:
        assert srv.mount is not None
        tree = ControlTree(srv.mount)
        added: list[str] = []
        daemon.ensure_devices(tree, [0, 3, 4], added.append)
        assert tree.device_ids() == [0, 3, 4]
        assert added == ["zram3: added (zram-control/hot_add)",
                         "zram4: added (zram-control/hot_add)"]  # fmt: skip
        daemon.ensure_devices(tree, [3], added.append)  # present: nothing happens
        assert tree.device_ids() == [0, 3, 4]
        assert tree.hot_add() == 1  # the lowest free id, as the kernel's


def test_record_sits_beside_the_pidfile() -> None:
    assert daemon.record_path(Path("/run/zramd/zramd.pid")) == Path(
        "/run/zramd/zramd.attached.json"
    )


def test_plugin_keys_create_exactly_the_configured_ids(tmp_path: Path) -> None:
    conf = tmp_path / "z.conf"
    conf.write_text(CONFIG)
    assert daemon.plugin_keys(daemon.read_config(conf)) == ["device_ids=0,2,5"]


# -- the commands: setup, teardown, stop --------------------------------------------------------

SETUP_CONFIG = """
[zram0]
zram-size = 64
swap-priority = 7

[zram2]
zram-size = 32
fs-type = ext4
mount-point = /srv/zram2
"""


@pytest.mark.e2e
def test_setup_dry_run_prints_the_plan_for_the_running_server(tmp_path: Path) -> None:
    conf = tmp_path / "z.conf"
    conf.write_text(SETUP_CONFIG)
    with serve(tmp_path, "devices=1") as srv:
        assert srv.mount is not None
        pidfile = tmp_path / "zramd.pid"
        r = CliRunner().invoke(
            main, ["setup", "--config", str(conf), "--pidfile", str(pidfile), "--dry-run"]
        )
        assert r.exit_code == 0, r.output
        config = daemon.read_config(conf)
        plan = attach.setup_script(
            config.devices, attach.targets(config.devices, srv.socket, srv.mount)
        ).splitlines()
        assert r.output.splitlines() == [
            *plan[:2],
            f"# zram2 is not served yet: added first (cat {srv.mount}/zram-control/hot_add "
            "until it exists)",
            *plan[2:],
        ]
        assert "swapon -p 7 -o discard" in r.output
        assert ControlTree(srv.mount).device_ids() == [0]  # a dry run changes nothing
        assert not daemon.record_path(pidfile).exists()


def test_setup_without_a_server(tmp_path: Path) -> None:
    conf = tmp_path / "z.conf"
    conf.write_text(SETUP_CONFIG)
    pidfile = tmp_path / "none.pid"
    r = CliRunner().invoke(main, ["setup", "--config", str(conf), "--pidfile", str(pidfile)])
    assert r.exit_code == 1
    assert f"no server: no pidfile at {pidfile}" in r.output
    r = CliRunner().invoke(
        main, ["setup", "--config", str(conf), "--pidfile", str(pidfile), "--dry-run"]
    )
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[2] == (
        f"# no server runs with pidfile {pidfile}: serve's default paths"
    )
    assert f"echo 67108864 > {default_control()}/zram0/disksize" in r.output
    r = CliRunner().invoke(main, ["setup", "--config", str(tmp_path / "nope.conf"),
                                  "--pidfile", str(pidfile)])  # fmt: skip
    assert r.exit_code == 1
    assert "nope.conf: the configuration file does not exist" in r.output


def safe_record(tmp: Path, pidfile: Path) -> Path:
    """A record naming devices this host does not have: a real teardown touches nothing."""
    record = daemon.record_path(pidfile)
    state = attach.State(record)
    for name, fs, mp in (("zram0", "swap", None), ("zram2", "ext4", "/nonexistent/zramd-mp")):
        state.devices.append(attach.Attached(
            name, str(tmp / "s.sock"), name, str(tmp / "ctl" / name), fs, mp, 32 * MiB,
            configured=True, nbd=f"/dev/nbd-zramd-test-{name}", formatted=True, active=True,
        ))  # fmt: skip
    state.save()
    return record


def test_teardown_dry_run_and_for_real(tmp_path: Path) -> None:
    pidfile = tmp_path / "s.pid"
    r = CliRunner().invoke(main, ["teardown", "--pidfile", str(pidfile), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "# nothing is recorded as set up" in r.output
    record = safe_record(tmp_path, pidfile)
    r = CliRunner().invoke(main, ["teardown", "--pidfile", str(pidfile), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert r.output == attach.teardown_script(record)
    assert r.output.splitlines()[2:] == [
        "# zram2",
        "umount /nonexistent/zramd-mp",
        "nbd-client -d /dev/nbd-zramd-test-zram2",
        f"echo 1 > {tmp_path}/ctl/zram2/reset",
        "# zram0",
        "swapoff /dev/nbd-zramd-test-zram0",
        "nbd-client -d /dev/nbd-zramd-test-zram0",
        f"echo 1 > {tmp_path}/ctl/zram0/reset",
    ]
    assert record.exists()  # the dry run changed nothing
    r = CliRunner().invoke(main, ["teardown", "--pidfile", str(pidfile)])
    assert r.exit_code == 0, r.output
    assert "zram2: /nonexistent/zramd-mp is no longer mounted from" in r.output
    assert "zram0: /dev/nbd-zramd-test-zram0 is no longer active swap" in r.output
    assert "zram0: taken down" in r.output
    assert not record.exists()


@pytest.mark.e2e
def test_stop_takes_the_devices_down_first_and_refuses_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve(tmp_path, "devices=1") as srv:
        pidfile, sock = tmp_path / "zramd.pid", tmp_path / "zramd.sock"
        record = safe_record(tmp_path, pidfile)
        real = daemon.tear_down
        calls: list[bool] = []

        def refused(record: Path, **kw: object) -> None:
            raise attach.AttachError(
                "still attached, the server must keep serving: zram0: swapoff /dev/nbd0 "
                "failed (exit 255): Cannot allocate memory"
            )

        monkeypatch.setattr(daemon, "tear_down", refused)
        args = ["stop", "--pidfile", str(pidfile), "--socket", str(sock)]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1
        assert "Error: not stopped: still attached, the server must keep serving: zram0" in r.output
        assert srv.proc.poll() is None  # still serving the swap
        assert record.exists()

        def first(record: Path, **kw: Any) -> None:
            calls.append(srv.proc.poll() is None)  # the server still runs during teardown
            real(record, **kw)

        monkeypatch.setattr(daemon, "tear_down", first)
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        assert calls == [True]
        assert "zram0: taken down" in r.output
        assert f"stopped server {srv.proc.pid}" in r.output
        assert not record.exists()
        assert srv.proc.wait(10) == 0


def test_a_configuration_of_skipped_devices_sets_nothing_up(tmp_path: Path) -> None:
    """Every section skipped (host-memory-limit below this host's RAM, a size of 0): no
    modprobe, no command, no record."""
    conf = tmp_path / "z.conf"
    conf.write_text("[zram0]\nhost-memory-limit = 1\n\n[zram1]\nzram-size = 0\n")
    config = daemon.read_config(conf)
    assert config.devices == ()
    assert daemon.plugin_keys(config) == ["device_ids="]
    host = FakeHost()
    record = tmp_path / "s.attached.json"
    assert daemon.set_up(config, CONTROL, sock=SOCK, record=record, host=host, log=print) == []
    assert host.log == []
    assert not record.exists()

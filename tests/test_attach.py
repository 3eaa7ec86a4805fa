"""Host setup and teardown (zramd/attach.py) against a fake host that plays the kernel's part:
NBD devices, /proc/swaps, mounts and the control files."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from zramd import attach
from zramd.attach import AttachError, Target
from zramd.genconf import Algorithm, DeviceConfig

MiB = 1 << 20
SOCK = Path("/run/zramd/zramd.sock")
CONTROL = Path("/run/zramd/control")

SWAP = DeviceConfig(
    "zram0", 0, 64 * MiB, mem_limit=16 * MiB,
    algorithms=(Algorithm("zstd", ("level=3",)), Algorithm("lz4hc")),
    recompress="type=idle",
)  # fmt: skip
FS = DeviceConfig("zram1", 1, 32 * MiB, fs_type="ext4", mount_point="/srv/z1", options="")


class FakeHost(attach.Host):
    """Commands change the fake system state as the real ones would; every call is logged."""

    def __init__(self, names: Sequence[str] = ("zram0", "zram1")) -> None:
        self.log: list[str] = []
        self.attrs: dict[Path, str] = {}
        for name in names:
            self.attrs[CONTROL / name / "initstate"] = "0"
            self.attrs[CONTROL / name / "disksize"] = "0"
        self.refuse: dict[str, int] = {}  #: attribute name -> errno of a refused write
        self.fail: dict[str, str] = {}  #: command (or "swapoff /dev/nbd0") -> its error
        self.missing: set[str] = set()
        self.loaded: set[str] = set()
        self.nbd: dict[str, str] = {}  #: connected /dev/nbdN -> export
        self.swaps: set[str] = set()
        self.mounts: dict[str, str] = {}  #: mount point -> MAJOR:MINOR
        self.dirs: set[str] = set()
        self.files: set[str] = set()
        self.busy_resets = 0  #: resets answered with EBUSY before one succeeds
        self.clock = 0.0

    def run(self, argv: Sequence[str], *, timeout: float | None = None) -> str:
        line = " ".join(argv)
        self.log.append(line)
        for key in (line, argv[0]):
            if key in self.fail:
                raise AttachError(f"{line} failed (exit 1): {self.fail[key]}")
        cmd = argv[0]
        if cmd == "modprobe":
            self.loaded.add(argv[1])
        elif cmd == "nbd-client" and argv[1] == "-d":
            self.nbd.pop(argv[2])
        elif cmd == "nbd-client":
            export = argv[argv.index("-N") + 1]
            n = next(i for i in range(16) if f"/dev/nbd{i}" not in self.nbd)
            self.nbd[f"/dev/nbd{n}"] = export
            return f"Negotiation: ..size = 64MB\nConnected /dev/nbd{n}\n"
        elif cmd == "swapon":
            self.swaps.add(argv[-1])
        elif cmd == "swapoff":
            self.swaps.discard(argv[1])
        elif cmd == "mount":
            self.mounts[argv[-1]] = self.device_number(argv[-2]) or "?"
        elif cmd == "umount":
            del self.mounts[argv[1]]
        return ""

    def which(self, name: str) -> str | None:
        return None if name in self.missing else f"/usr/sbin/{name}"

    def read_attr(self, path: Path) -> str:
        self.log.append(f"cat {path}")
        return self.attrs[path] + "\n"

    def write_attr(self, path: Path, value: str) -> None:
        self.log.append(f"echo {value} > {path}")
        if path.name in self.refuse:
            raise OSError(self.refuse[path.name], os.strerror(self.refuse[path.name]))
        if path.name == "reset":
            if self.busy_resets:
                self.busy_resets -= 1
                raise OSError(errno.EBUSY, "busy")
            self.attrs[path.parent / "initstate"] = "0"
            self.attrs[path.parent / "disksize"] = "0"
        elif path.name == "disksize":
            self.attrs[path] = str(attach._page_align(int(value)))
            self.attrs[path.parent / "initstate"] = "1"

    def exists(self, path: Path) -> bool:
        return path in self.attrs or str(path) in self.dirs | self.files

    def is_dir(self, path: Path) -> bool:
        return str(path) in self.dirs

    def makedirs(self, path: Path) -> None:
        self.log.append(f"mkdir -p {path}")
        self.dirs.add(str(path))

    def module_loaded(self, name: str) -> bool:
        return name in self.loaded

    def active_swaps(self) -> set[str]:
        return set(self.swaps)

    def mount_source(self, point: str) -> str | None:
        return self.mounts.get(point)

    def device_number(self, device: str) -> str | None:
        return f"43:{int(device.removeprefix('/dev/nbd')) * 32}" if device in self.nbd else None

    def nbd_size(self, device: str) -> int | None:
        export = self.nbd.get(device)
        return None if export is None else int(self.attrs[CONTROL / export / "disksize"])

    def sleep(self, seconds: float) -> None:
        self.clock += seconds

    def monotonic(self) -> float:
        return self.clock


def where(*devices: DeviceConfig) -> dict[str, Target]:
    return attach.targets(devices, SOCK, CONTROL)


def commands(host: FakeHost) -> list[str]:
    return [x for x in host.log if not x.startswith("cat ")]


def test_setup_then_teardown_two_devices(tmp_path: Path) -> None:
    host = FakeHost()
    state = tmp_path / "attached.json"
    messages: list[str] = []
    done = attach.setup([SWAP, FS], where(SWAP, FS), state=state, host=host, log=messages.append)
    c0, c1 = CONTROL / "zram0", CONTROL / "zram1"
    assert commands(host) == [
        "modprobe nbd",
        # zram-generator's order: algorithms (+ params), recompress, backing_dev, mem_limit,
        # disksize
        f"echo zstd > {c0}/comp_algorithm",
        f"echo priority=0 level=3 > {c0}/algorithm_params",
        f"echo algo=lz4hc priority=1 > {c0}/recomp_algorithm",
        f"echo type=idle > {c0}/recompress",
        f"echo {16 * MiB} > {c0}/mem_limit",
        f"echo {64 * MiB} > {c0}/disksize",
        f"nbd-client -unix {SOCK} -N zram0 -b 4096",
        "mkswap /dev/nbd0",
        "swapon -p 100 -o discard /dev/nbd0",
        f"echo 0 > {c1}/mem_limit",
        f"echo {32 * MiB} > {c1}/disksize",
        f"nbd-client -unix {SOCK} -N zram1 -b 4096",
        "mkfs.ext4 -q /dev/nbd1",
        "mkdir -p /srv/z1",
        "mount -t ext4 /dev/nbd1 /srv/z1",  # options = (empty): no -o
    ]
    assert [(d.name, d.nbd, d.active) for d in done] == [
        ("zram0", "/dev/nbd0", True),
        ("zram1", "/dev/nbd1", True),
    ]
    assert host.swaps == {"/dev/nbd0"}
    assert "/srv/z1" in host.mounts
    assert messages[-2:] == [
        "zram0: /dev/nbd0 is swap, priority 100",
        "zram1: /dev/nbd1 is ext4 at /srv/z1",
    ]
    record = json.loads(state.read_text())
    assert record["version"] == 1
    assert [d["nbd"] for d in record["devices"]] == ["/dev/nbd0", "/dev/nbd1"]
    assert oct(state.stat().st_mode & 0o777) == "0o600"

    host.log.clear()
    attach.teardown(state=state, host=host, log=messages.append)
    assert commands(host) == [
        "umount /srv/z1",
        "nbd-client -d /dev/nbd1",
        f"echo 1 > {c1}/reset",
        "swapoff /dev/nbd0",
        "nbd-client -d /dev/nbd0",
        f"echo 1 > {c0}/reset",
    ]
    assert not state.exists()
    assert host.swaps == set()
    assert host.mounts == {}
    assert host.nbd == {}
    assert host.attrs[c0 / "initstate"] == "0"


def test_modprobe_only_without_the_module(tmp_path: Path) -> None:
    host = FakeHost()
    host.loaded.add("nbd")
    attach.setup([FS], where(FS), state=tmp_path / "s.json", host=host, log=lambda _: None)
    assert "modprobe nbd" not in host.log


def test_refused_algorithm_is_a_warning_as_in_zram_generator(tmp_path: Path) -> None:
    host = FakeHost()
    host.refuse = {"comp_algorithm": errno.EINVAL, "algorithm_params": errno.EINVAL}
    messages: list[str] = []
    attach.setup([SWAP], where(SWAP), state=tmp_path / "s.json", host=host, log=messages.append)
    assert any("comp_algorithm refused 'zstd': Invalid argument" in m for m in messages)
    assert host.swaps == {"/dev/nbd0"}  # set up all the same


def test_refused_backing_dev_fails_and_undoes_everything(tmp_path: Path) -> None:
    host = FakeHost(("zram1", "zram2"))
    host.refuse = {"backing_dev": errno.EBUSY}
    dev = DeviceConfig("zram2", 2, 8 * MiB, backing_dev="/dev/sdb2")
    state = tmp_path / "s.json"
    with pytest.raises(AttachError, match=r"zram2: backing_dev refused '/dev/sdb2'.*busy.*undone"):
        attach.setup([FS, dev], where(FS, dev), state=state, host=host, log=lambda _: None)
    assert host.nbd == {}
    assert host.mounts == {}
    assert host.log[-4:] == [
        f"echo 1 > {CONTROL / 'zram2'}/reset",  # half-configured: back to its defaults
        "umount /srv/z1",
        "nbd-client -d /dev/nbd0",
        f"echo 1 > {CONTROL / 'zram1'}/reset",
    ]
    assert not state.exists()


def test_failure_after_connecting_disconnects_that_device_too(tmp_path: Path) -> None:
    host = FakeHost()
    host.fail["mkfs.ext4"] = "mkfs.ext4: Device size reported to be zero"
    state = tmp_path / "s.json"
    with pytest.raises(AttachError, match=r"setup failed: mkfs\.ext4 -q /dev/nbd1 failed"):
        attach.setup([SWAP, FS], where(SWAP, FS), state=state, host=host, log=lambda _: None)
    assert commands(host)[-5:] == [
        "nbd-client -d /dev/nbd1",  # connected, not formatted: disconnected
        f"echo 1 > {CONTROL / 'zram1'}/reset",
        "swapoff /dev/nbd0",
        "nbd-client -d /dev/nbd0",
        f"echo 1 > {CONTROL / 'zram0'}/reset",
    ]
    assert host.nbd == {}
    assert host.swaps == set()
    assert not state.exists()


def test_failure_that_cannot_be_undone_is_reported_and_recorded(tmp_path: Path) -> None:
    host = FakeHost()
    host.fail["mkfs.ext4"] = "no space"
    host.fail["swapoff /dev/nbd0"] = "swapoff: /dev/nbd0: Cannot allocate memory"
    state = tmp_path / "s.json"
    with pytest.raises(AttachError, match=r"could not undo: zram0: swapoff /dev/nbd0 failed"):
        attach.setup([SWAP, FS], where(SWAP, FS), state=state, host=host, log=lambda _: None)
    assert host.nbd == {"/dev/nbd0": "zram0"}  # never disconnected under an active swap
    record = json.loads(state.read_text())
    assert [(d["name"], d["active"]) for d in record["devices"]] == [("zram0", True)]


def test_an_initialised_device_is_not_reconfigured_or_reset(tmp_path: Path) -> None:
    host = FakeHost()
    host.attrs[CONTROL / "zram0" / "initstate"] = "1"
    host.attrs[CONTROL / "zram0" / "disksize"] = str(64 * MiB)
    messages: list[str] = []
    state = tmp_path / "s.json"
    attach.setup([SWAP], where(SWAP), state=state, host=host, log=messages.append)
    assert not any(x.startswith("echo") for x in host.log)
    assert "zram0: already initialised with this disksize; not reconfigured" in messages
    attach.teardown(state=state, host=host, log=messages.append)
    assert not any("reset" in x for x in host.log)  # setup did not initialise it: left as is


def test_an_initialised_device_of_another_size_is_refused(tmp_path: Path) -> None:
    host = FakeHost()
    host.attrs[CONTROL / "zram0" / "initstate"] = "1"
    host.attrs[CONTROL / "zram0" / "disksize"] = str(1 * MiB)
    with pytest.raises(AttachError, match=r"initialised with disksize 1048576.*says 67108864"):
        attach.setup([SWAP], where(SWAP), state=tmp_path / "s", host=host, log=lambda _: None)
    assert not any(x.startswith("nbd-client") for x in host.log)


def test_disksize_is_compared_page_aligned(tmp_path: Path) -> None:
    host = FakeHost()
    dev = DeviceConfig("zram0", 0, 4102553600 + 1)  # min(ram / 2, 4096) MiB is page aligned
    host.attrs[CONTROL / "zram0" / "initstate"] = "1"
    host.attrs[CONTROL / "zram0" / "disksize"] = str(attach._page_align(dev.disksize))
    attach.setup([dev], where(dev), state=tmp_path / "s", host=host, log=lambda _: None)


@pytest.mark.parametrize(
    ("prepare", "problem"),
    [
        (lambda h: h.attrs.clear(), r"zram0: no control directory at /run/zramd/control/zram0"),
        (lambda h: h.missing.add("nbd-client"), "not installed: nbd-client"),
        (lambda h: h.missing.update({"mkswap", "mkfs.ext4"}), "not installed: mkfs.ext4, mkswap"),
        (lambda h: h.files.add("/srv/z1"), "mount-point /srv/z1 exists and is not a directory"),
        (lambda h: h.mounts.update({"/srv/z1": "8:1"}), "something is already mounted at /srv/z1"),
    ],
)
def test_preflight_refuses_before_touching_anything(
    tmp_path: Path, prepare: object, problem: str
) -> None:
    host = FakeHost()
    prepare(host)  # type: ignore[operator]
    with pytest.raises(AttachError, match=problem):
        attach.setup([SWAP, FS], where(SWAP, FS), state=tmp_path / "s", host=host)
    assert commands(host) == []


def test_setup_twice_is_refused(tmp_path: Path) -> None:
    host = FakeHost()
    state = tmp_path / "s.json"
    attach.setup([SWAP], where(SWAP), state=state, host=host, log=lambda _: None)
    with pytest.raises(AttachError, match=r"records devices still set up: zram0 \(/dev/nbd0\)"):
        attach.setup([SWAP], where(SWAP), state=state, host=host)


def test_teardown_keeps_a_device_whose_swapoff_fails(tmp_path: Path) -> None:
    host = FakeHost()
    state = tmp_path / "s.json"
    attach.setup([SWAP, FS], where(SWAP, FS), state=state, host=host, log=lambda _: None)
    host.fail["swapoff /dev/nbd0"] = "swapoff: /dev/nbd0: Cannot allocate memory"
    with pytest.raises(AttachError, match="still attached, the server must keep serving: zram0"):
        attach.teardown(state=state, host=host, log=lambda _: None)
    assert host.nbd == {"/dev/nbd0": "zram0"}  # zram0 stays connected, zram1 is gone
    assert [d["name"] for d in json.loads(state.read_text())["devices"]] == ["zram0"]
    del host.fail["swapoff /dev/nbd0"]
    attach.teardown(state=state, host=host, log=lambda _: None)  # a second try finishes it
    assert host.nbd == {}
    assert not state.exists()


def test_teardown_skips_what_is_already_undone(tmp_path: Path) -> None:
    host = FakeHost()
    state = tmp_path / "s.json"
    attach.setup([SWAP, FS], where(SWAP, FS), state=state, host=host, log=lambda _: None)
    host.swaps.clear()  # someone ran swapoff
    host.mounts.clear()  # and umount
    del host.nbd["/dev/nbd1"]  # and nbd-client -d
    messages: list[str] = []
    host.log.clear()
    attach.teardown(state=state, host=host, log=messages.append)
    assert commands(host) == [
        f"echo 1 > {CONTROL / 'zram1'}/reset",
        "nbd-client -d /dev/nbd0",
        f"echo 1 > {CONTROL / 'zram0'}/reset",
    ]
    assert "zram0: /dev/nbd0 is no longer active swap" in messages
    assert "zram1: /srv/z1 is no longer mounted from /dev/nbd1" in messages
    assert "zram1: /dev/nbd1 is no longer connected" in messages


def test_teardown_leaves_an_nbd_device_that_now_serves_something_else(tmp_path: Path) -> None:
    host = FakeHost()
    state = tmp_path / "s.json"
    attach.setup([FS], where(FS), state=state, host=host, log=lambda _: None)
    host.mounts.clear()
    host.attrs[CONTROL / "zram1" / "disksize"] = str(5 * MiB)  # reconnected to another export
    with pytest.raises(AttachError, match=r"/dev/nbd0 now has 5242880 bytes.*left connected"):
        attach.teardown(state=state, host=host, log=lambda _: None)
    assert "/dev/nbd0" in host.nbd


def test_reset_waits_while_the_server_still_counts_the_connection(tmp_path: Path) -> None:
    host = FakeHost()
    state = tmp_path / "s.json"
    attach.setup([FS], where(FS), state=state, host=host, log=lambda _: None)
    host.busy_resets = 5
    attach.teardown(state=state, host=host, log=lambda _: None)
    assert host.attrs[CONTROL / "zram1" / "initstate"] == "0"
    assert host.clock == pytest.approx(0.25)
    attach.setup([FS], where(FS), state=state, host=host, log=lambda _: None)
    host.busy_resets = 10**6  # busy for good: a warning after RESET_WAIT
    messages: list[str] = []
    attach.teardown(state=state, host=host, log=messages.append)
    assert any("zram1: reset: Device or resource busy" in m for m in messages)
    assert not state.exists()


def test_a_file_system_without_mount_point_is_only_formatted(tmp_path: Path) -> None:
    plain = DeviceConfig("zram1", 1, 8 * MiB, fs_type="ext2")
    host = FakeHost()
    state = tmp_path / "s.json"
    attach.setup([plain], where(plain), state=state, host=host, log=lambda _: None)
    assert commands(host)[-1] == "mkfs.ext2 -q /dev/nbd0"
    attach.teardown(state=state, host=host, log=lambda _: None)
    assert host.nbd == {}


def test_a_pinned_nbd_device_is_passed_to_nbd_client(tmp_path: Path) -> None:
    host = FakeHost()
    target = {"zram1": Target(SOCK, "zram1", CONTROL / "zram1", "/dev/nbd0")}
    attach.setup([FS], target, state=tmp_path / "s", host=host, log=lambda _: None)
    assert f"nbd-client -unix {SOCK} -N zram1 -b 4096 /dev/nbd0" in host.log


def test_a_bad_state_file_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text("not json")
    with pytest.raises(AttachError, match="not a zramd attach record"):
        attach.teardown(state=state, host=FakeHost())
    state.write_text('{"version": 9, "devices": []}')
    with pytest.raises(AttachError, match="attach record version 9, not 1"):
        attach.teardown(state=state, host=FakeHost())


def test_setup_script_is_what_setup_runs() -> None:
    script = attach.setup_script([SWAP, FS], where(SWAP, FS))
    assert script.splitlines() == [
        "#!/bin/sh -e",
        "# zramd setup: what it would do",
        "[ -d /sys/module/nbd ] || modprobe nbd",
        "",
        "# zram0: 64 MiB (67108864 bytes), swap, priority 100",
        "# (the control writes are skipped if the server initialised the device)",
        "echo zstd > /run/zramd/control/zram0/comp_algorithm  # a refusal is only a warning",
        "echo 'priority=0 level=3' > /run/zramd/control/zram0/algorithm_params"
        "  # a refusal is only a warning",
        "echo 'algo=lz4hc priority=1' > /run/zramd/control/zram0/recomp_algorithm"
        "  # a refusal is only a warning",
        "echo type=idle > /run/zramd/control/zram0/recompress  # a refusal is only a warning",
        "echo 16777216 > /run/zramd/control/zram0/mem_limit",
        "echo 67108864 > /run/zramd/control/zram0/disksize",
        "zram0=$(nbd-client -unix /run/zramd/zramd.sock -N zram0 -b 4096"
        " | sed -n 's/^Connected //p')",
        'mkswap "$zram0"',
        'swapon -p 100 -o discard "$zram0"',
        "",
        "# zram1: 32 MiB (33554432 bytes), ext4 at /srv/z1",
        "# (the control writes are skipped if the server initialised the device)",
        "echo 0 > /run/zramd/control/zram1/mem_limit",
        "echo 33554432 > /run/zramd/control/zram1/disksize",
        "zram1=$(nbd-client -unix /run/zramd/zramd.sock -N zram1 -b 4096"
        " | sed -n 's/^Connected //p')",
        'mkfs.ext4 -q "$zram1"',
        "mkdir -p /srv/z1",
        'mount -t ext4 "$zram1" /srv/z1',
    ]


def test_teardown_script_follows_the_record(tmp_path: Path) -> None:
    host = FakeHost()
    state = tmp_path / "s.json"
    assert "nothing is recorded" in attach.teardown_script(state)
    attach.setup([SWAP, FS], where(SWAP, FS), state=state, host=host, log=lambda _: None)
    assert attach.teardown_script(state).splitlines()[2:] == [
        "# zram1",
        "umount /srv/z1",
        "nbd-client -d /dev/nbd1",
        "echo 1 > /run/zramd/control/zram1/reset",
        "# zram0",
        "swapoff /dev/nbd0",
        "nbd-client -d /dev/nbd0",
        "echo 1 > /run/zramd/control/zram0/reset",
    ]

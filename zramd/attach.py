"""Put the configured devices to use on this host, and take them out of use again.

What zram-generator's units do for a kernel zram device, done for zramd's devices, which the
kernel reaches over NBD. For each device, in the order of the configuration:

1. configure, through the device's control directory, in zram-generator's order
   (``--setup-device``): comp_algorithm, recomp_algorithm, algorithm_params, recompress,
   backing_dev, mem_limit, disksize. An algorithm or parameter the device refuses is a
   warning, as zram-generator makes it (the device keeps its default); anything else refused
   is an error. Skipped for a device that is already initialised with the configured disksize
   (the server set it up from the same file); another disksize is an error.
2. connect: ``nbd-client -unix SOCKET -N EXPORT -b 4096``; nbd-client 3.24 talks netlink, so
   without a device argument the kernel picks a free ``/dev/nbdN`` (nbd-client prints it).
3. format: ``mkswap`` or ``mkfs.FSTYPE``.
4. activate: ``swapon -p PRIORITY [-o OPTIONS]``, or ``mkdir -p`` and ``mount -t FSTYPE
   [-o OPTIONS]`` at the mount point.

Teardown undoes what setup did, in reverse: swapoff or umount, ``nbd-client -d``, then
``echo 1 > reset`` for a device setup configured (the memory is freed, as zram-generator's
``--reset-device``). What was done is recorded after every step in a state file (JSON, in the
server's private runtime directory), so teardown needs neither the configuration (which may
have changed since) nor the setup process, and acts only on what the record names and the
system still shows: a swap still in /proc/swaps, a mount point still mounted from that NBD
device, an NBD device still connected with the recorded size. A device whose swapoff or
umount fails stays attached and recorded, and teardown then fails naming it: the caller must
not stop the server under an active swap or a mounted file system.

A setup that fails undoes everything it did, in reverse, and raises AttachError; a host
with devices recorded as attached is refused until teardown. Mount points setup creates are
left in place (as systemd's mount units leave theirs).

configure() does step 1 alone, for devices served to other machines. setup_script() and
teardown_script() print what setup and teardown would run, as a shell
script (``zramd setup --dry-run``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zramd import notify
from zramd.genconf import DeviceConfig
from zramd.runstate import unescape_mount_field

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NBD_BLOCK_SIZE = 4096
#: seconds nbd-client may take to connect or disconnect (a wedged server must not hang setup)
NBD_TIMEOUT = 60.0
#: seconds between two ``Host.progress`` calls while a command runs
PROGRESS_INTERVAL = 5.0
#: seconds teardown retries ``reset`` while the server still counts the closing NBD connection
RESET_WAIT = 10.0
PAGE_SIZE = 4096
STATE_VERSION = 1
#: mkfs flags per file system type: quiet; nothing else is needed on a fresh, zeroed device
MKFS_FLAGS = {"ext2": ["-q"], "ext3": ["-q"], "ext4": ["-q"], "xfs": ["-q"], "btrfs": ["-q"]}
_CONNECTED = re.compile(r"Connected (/dev/nbd[0-9]+)")


class AttachError(Exception):
    """A setup or teardown step failed; the message names the device, step and reason."""


# -- where each device is served --------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a configured device is served: the server's Unix socket, the NBD export name,
    the device's control directory, and optionally the ``/dev/nbdN`` to use (None: the
    kernel picks a free one)."""

    socket: Path
    export: str
    control: Path
    nbd_device: str | None = None


def targets(devices: Iterable[DeviceConfig], socket: Path, control: Path) -> dict[str, Target]:
    """One server for all devices (``zramd serve --devices``): export ``zramN`` on ``socket``,
    control directory ``control/zramN``."""
    return {d.name: Target(socket, d.name, control / d.name) for d in devices}


# -- the system, as attach sees it ------------------------------------------------------------


class Host:
    """The commands and files setup and teardown use. Tests replace it with a fake.

    ``progress(argv)`` is called every ``interval`` seconds while a command runs (the service
    extends its stop timeout while a long swapoff makes progress); it must not raise."""

    def __init__(
        self,
        *,
        progress: Callable[[Sequence[str]], None] | None = None,
        interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.progress = progress
        self.interval = interval

    def run(self, argv: Sequence[str], *, timeout: float | None = None) -> str:
        """Run a command (found in the sbin directories); its stdout. AttachError if it cannot
        run, fails or times out, with the end of its stderr."""
        exe = shutil.which(argv[0], path=f"{SBIN_PATH}:{os.environ.get('PATH', '')}")
        if exe is None:
            raise AttachError(f"{argv[0]} is not installed")
        try:
            proc = subprocess.Popen(
                [exe, *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=notify.child_environ(),
            )
        except OSError as e:
            raise AttachError(f"{shlex.join(argv)}: {e.strerror}") from None
        with proc:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                step = self.interval if self.progress is not None else None
                if deadline is not None:
                    left = max(deadline - time.monotonic(), 0.0)
                    step = left if step is None else min(step, left)
                try:
                    out, err = proc.communicate(timeout=step)
                    break
                except subprocess.TimeoutExpired:
                    if deadline is not None and time.monotonic() >= deadline:
                        proc.kill()
                        proc.communicate()
                        raise AttachError(
                            f"{shlex.join(argv)}: no answer within {timeout:g} s"
                        ) from None
                    if self.progress is not None:
                        self.progress(argv)
                except BaseException:
                    proc.kill()  # a signal's exception: the command must not outlive us
                    raise
        if proc.returncode:
            why = " ".join(err.strip().splitlines()[-3:]) or "no message"
            raise AttachError(f"{shlex.join(argv)} failed (exit {proc.returncode}): {why}")
        return out

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=f"{SBIN_PATH}:{os.environ.get('PATH', '')}")

    def read_attr(self, path: Path) -> str:
        return path.read_text()

    def write_attr(self, path: Path, value: str) -> None:
        """One write(2) of ``value``, as ``echo value > path`` does; OSError as the file
        answers (EINVAL, EBUSY, ...)."""
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def makedirs(self, path: Path) -> None:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)

    def module_loaded(self, name: str) -> bool:
        return Path("/sys/module", name).is_dir()

    def swaps(self) -> dict[str, int]:
        """The files and devices in /proc/swaps (names decoded) and the KiB each holds."""
        out = {}
        with open("/proc/swaps", "rb") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if len(fields) >= 4:
                    out[unescape_mount_field(fields[0])] = int(fields[3])
        return out

    def active_swaps(self) -> set[str]:
        """The files and devices in /proc/swaps (names decoded)."""
        return set(self.swaps())

    def mount_source(self, point: str) -> str | None:
        """``MAJOR:MINOR`` of the file system mounted last at ``point``, or None."""
        found = None
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split(b" ")
                if len(fields) > 4 and unescape_mount_field(fields[4]) == point:
                    found = fields[2].decode()
        return found

    def device_number(self, device: str) -> str | None:
        """``MAJOR:MINOR`` of a block device node, or None."""
        try:
            st = os.stat(device)
        except FileNotFoundError:
            return None
        if not stat.S_ISBLK(st.st_mode):
            return None
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

    def nbd_size(self, device: str) -> int | None:
        """Bytes of a connected NBD device, None when it is not connected."""
        sysdir = Path("/sys/block", Path(device).name)
        if not (sysdir / "pid").exists():
            return None
        return int((sysdir / "size").read_text()) * 512

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()


def _stderr(line: str) -> None:
    print(f"zramd: {line}", file=sys.stderr)


# -- the record -------------------------------------------------------------------------------


@dataclass
class Attached:
    """What setup has done to one device so far (one entry of the state file)."""

    name: str
    socket: str
    export: str
    control: str
    fs_type: str
    mount_point: str | None = None
    disksize: int = 0
    configured: bool = False  #: setup initialised the device (teardown resets it)
    nbd: str | None = None  #: the connected NBD device
    formatted: bool = False
    active: bool = False  #: swap on, or file system mounted


@dataclass
class State:
    path: Path
    devices: list[Attached] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> State:
        """The record at ``path``; an empty one when there is none. AttachError for a file
        that is not zramd's record."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as e:
            raise AttachError(f"{path}: cannot read the attach record: {e.strerror}") from None
        try:
            data = json.loads(raw)
            version = data.get("version")
            devices = [Attached(**d) for d in data["devices"]]
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise AttachError(f"{path}: not a zramd attach record ({e})") from None
        if version != STATE_VERSION:
            raise AttachError(f"{path}: attach record version {version!r}, not {STATE_VERSION}")
        return cls(path, devices)

    def save(self) -> None:
        """Write the record atomically (a private file renamed over the old one); remove it
        when no device is left."""
        if not self.devices:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        data = json.dumps(
            {"version": STATE_VERSION, "devices": [asdict(d) for d in self.devices]}, indent=1
        )
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


# -- commands ---------------------------------------------------------------------------------


def _connect_argv(target: Target) -> list[str]:
    argv = ["nbd-client", "-unix", str(target.socket), "-N", target.export]
    argv += ["-b", str(NBD_BLOCK_SIZE)]
    return [*argv, target.nbd_device] if target.nbd_device else argv


def _format_argv(dev: DeviceConfig, device: str) -> list[str]:
    if dev.is_swap:
        return ["mkswap", device]
    return [f"mkfs.{dev.fs_type}", *MKFS_FLAGS.get(dev.fs_type, []), device]


def _activate_argv(dev: DeviceConfig, device: str) -> list[str]:
    options = ["-o", dev.options] if dev.options else []
    if dev.is_swap:
        return ["swapon", "-p", str(dev.swap_priority), *options, device]
    assert dev.mount_point is not None
    return ["mount", "-t", dev.fs_type, *options, device, dev.mount_point]


def control_writes(dev: DeviceConfig) -> list[tuple[str, str, bool]]:
    """(attribute, value, refusal is only a warning) in zram-generator's order."""
    writes: list[tuple[str, str, bool]] = []
    for priority, algorithm in enumerate(dev.algorithms):
        if priority == 0:
            writes.append(("comp_algorithm", algorithm.name, True))
        else:
            writes.append(("recomp_algorithm", f"algo={algorithm.name} priority={priority}", True))
        if algorithm.params:
            writes.append(
                ("algorithm_params", f"priority={priority} {algorithm.params_text}", True)
            )
    if dev.recompress:
        writes.append(("recompress", dev.recompress, True))
    if dev.backing_dev:
        writes.append(("backing_dev", dev.backing_dev, False))
    writes.append(("mem_limit", str(dev.mem_limit), False))
    writes.append(("disksize", str(dev.disksize), False))
    return writes


def _page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


# -- setup ------------------------------------------------------------------------------------


def _preflight(
    devices: Sequence[DeviceConfig], where: Mapping[str, Target], host: Host, state: State
) -> None:
    """Everything that can be checked before touching anything."""
    if state.devices:
        names = ", ".join(f"{d.name} ({d.nbd or 'not connected'})" for d in state.devices)
        raise AttachError(
            f"{state.path} records devices still set up: {names}; run `zramd teardown` first"
        )
    tools = {"nbd-client"}
    for dev in devices:
        if dev.name not in where:
            raise AttachError(f"{dev.name}: no server export given for it")
        tools |= {"mkswap", "swapon"} if dev.is_swap else {f"mkfs.{dev.fs_type}"}
        if dev.mount_point is not None:
            tools.add("mount")
        control = where[dev.name].control
        if not host.exists(control / "disksize"):
            raise AttachError(
                f"{dev.name}: no control directory at {control} (is the server serving it?)"
            )
        if dev.mount_point is not None:
            mp = Path(dev.mount_point)
            if host.exists(mp) and not host.is_dir(mp):
                raise AttachError(f"{dev.name}: mount-point {mp} exists and is not a directory")
            if host.mount_source(dev.mount_point) is not None:
                raise AttachError(f"{dev.name}: something is already mounted at {mp}")
    missing = sorted(t for t in tools if host.which(t) is None)
    if missing:
        raise AttachError(f"not installed: {', '.join(missing)}")


def _initialised(dev: DeviceConfig, target: Target, host: Host) -> bool:
    """Whether the device is initialised already (with the configured disksize; another one is
    an AttachError)."""
    control = target.control
    try:
        initialised = host.read_attr(control / "initstate").strip() == "1"
        current = int(host.read_attr(control / "disksize"))
    except (OSError, ValueError) as e:
        raise AttachError(f"{dev.name}: cannot read {control}: {e}") from None
    if initialised and current != _page_align(dev.disksize):
        raise AttachError(
            f"{dev.name} is initialised with disksize {current}, the configuration says "
            f"{dev.disksize}: reset it first (echo 1 > {control}/reset)"
        )
    return initialised


def _configure(dev: DeviceConfig, target: Target, host: Host, log: Callable[[str], None]) -> None:
    """Write the device's attributes in zram-generator's order (control_writes)."""
    for attr, value, soft in control_writes(dev):
        try:
            host.write_attr(target.control / attr, value)
        except OSError as e:
            why = f"{dev.name}: {attr} refused {value!r}: {os.strerror(e.errno or 0)}"
            if soft:
                log(f"warning: {why} (the device keeps its default, as with zram-generator)")
                continue
            raise AttachError(why) from None


def _connect(dev: DeviceConfig, target: Target, host: Host) -> str:
    out = host.run(_connect_argv(target), timeout=NBD_TIMEOUT)
    m = _CONNECTED.search(out)
    device = m.group(1) if m else target.nbd_device
    if device is None:
        raise AttachError(f"{dev.name}: nbd-client did not say which device it connected")
    return device


def configure(
    devices: Sequence[DeviceConfig],
    control: Path,
    *,
    host: Host | None = None,
    log: Callable[[str], None] = _stderr,
) -> None:
    """Only setup's first step: write each device's attributes in ``control/zramN`` (a device
    already initialised with the configured disksize is left as it is), for devices that are
    served but attached elsewhere (a VM, another machine). Nothing is recorded: nothing on
    this host needs undoing. AttachError for a device without a control directory or a
    refused write; the devices configured before it stay configured."""
    host = host or Host()
    for dev in devices:
        target = Target(Path(), dev.name, control / dev.name)
        if not host.exists(target.control / "disksize"):
            raise AttachError(
                f"{dev.name}: no control directory at {target.control} (is the server serving it?)"
            )
        if _initialised(dev, target, host):
            log(f"{dev.name}: already initialised with this disksize; not reconfigured")
        else:
            _configure(dev, target, host, log)


def setup(
    devices: Sequence[DeviceConfig],
    where: Mapping[str, Target],
    *,
    state: Path,
    host: Host | None = None,
    log: Callable[[str], None] = _stderr,
) -> list[Attached]:
    """Configure, connect, format and activate every device (module docstring), recording
    each step in ``state``. All or nothing: on a failure, what this call did is undone and
    AttachError says what failed (and what could not be undone, if anything)."""
    host = host or Host()
    record = State.load(state)
    _preflight(devices, where, host, record)
    if not host.module_loaded("nbd"):
        host.run(["modprobe", "nbd"], timeout=NBD_TIMEOUT)
    try:
        for dev in devices:
            target = where[dev.name]
            rec = Attached(
                dev.name, str(target.socket), target.export, str(target.control), dev.fs_type,
                dev.mount_point, dev.disksize,
            )  # fmt: skip
            record.devices.append(rec)
            if _initialised(dev, target, host):
                log(f"{dev.name}: already initialised with this disksize; not reconfigured")
            else:
                rec.configured = True  # from the first write on, undo resets the device
                record.save()
                _configure(dev, target, host, log)
            record.save()
            rec.nbd = _connect(dev, target, host)
            record.save()
            host.run(_format_argv(dev, rec.nbd))
            rec.formatted = True
            if dev.is_swap or dev.mount_point is not None:  # else: formatted, left unmounted
                if dev.mount_point is not None:
                    host.makedirs(Path(dev.mount_point))
                host.run(_activate_argv(dev, rec.nbd))
                rec.active = True
            record.save()
            log(f"{dev.name}: {rec.nbd} is {_use(dev)}")
    except (AttachError, OSError) as e:
        problems = _undo(record, host, log)
        left = f"; could not undo: {'; '.join(problems)}" if problems else "; undone"
        raise AttachError(f"setup failed: {e}{left}") from None
    return record.devices


# -- teardown ---------------------------------------------------------------------------------


def _reset(rec: Attached, host: Host, log: Callable[[str], None]) -> None:
    """``echo 1 > reset``, retried for up to RESET_WAIT s while the server still counts the
    NBD connection that was just closed (EBUSY); a device that stays busy is a warning."""
    deadline = host.monotonic() + RESET_WAIT
    while True:
        try:
            host.write_attr(Path(rec.control) / "reset", "1")
        except OSError as e:
            if e.errno == errno.EBUSY and host.monotonic() < deadline:
                host.sleep(0.05)
                continue
            log(f"warning: {rec.name}: reset: {os.strerror(e.errno or 0)} (its memory stays "
                "in use until the server stops)")  # fmt: skip
        return


def _undo_one(rec: Attached, host: Host, log: Callable[[str], None]) -> None:
    """Undo one device's steps in reverse; AttachError leaves the rest (and the record) as is."""
    if rec.active and rec.nbd is not None:
        if rec.fs_type == "swap":
            if rec.nbd in host.active_swaps():
                host.run(["swapoff", rec.nbd])
            else:
                log(f"{rec.name}: {rec.nbd} is no longer active swap")
        elif rec.mount_point is not None:
            source = host.mount_source(rec.mount_point)
            if source is not None and source == host.device_number(rec.nbd):
                host.run(["umount", rec.mount_point])
            else:
                log(f"{rec.name}: {rec.mount_point} is no longer mounted from {rec.nbd}")
    rec.active = False
    if rec.nbd is not None:
        size = host.nbd_size(rec.nbd)
        if size is None:
            log(f"{rec.name}: {rec.nbd} is no longer connected")
        elif size != _page_align(rec.disksize) and size != rec.disksize:
            raise AttachError(
                f"{rec.name}: {rec.nbd} now has {size} bytes, not this device's "
                f"{rec.disksize}: left connected"
            )
        else:
            host.run(["nbd-client", "-d", rec.nbd], timeout=NBD_TIMEOUT)
        rec.nbd = None
    if rec.configured:
        _reset(rec, host, log)
        rec.configured = False


def _undo(record: State, host: Host, log: Callable[[str], None]) -> list[str]:
    """Undo every recorded device, last first; the problems, one per device left."""
    problems = []
    for rec in reversed(list(record.devices)):
        try:
            _undo_one(rec, host, log)
        except (AttachError, OSError) as e:
            problems.append(f"{rec.name}: {e}")
            continue
        finally:
            record.save()
        record.devices.remove(rec)
        record.save()
        log(f"{rec.name}: taken down")
    return problems


def teardown(
    *, state: Path, host: Host | None = None, log: Callable[[str], None] = _stderr
) -> None:
    """Undo what setup recorded in ``state``, last device first. AttachError names every
    device left attached (its swap or mount still active): the server must keep serving it."""
    record = State.load(state)
    problems = _undo(record, host or Host(), log)
    if problems:
        raise AttachError("still attached, the server must keep serving: " + "; ".join(problems))


# -- dry run ----------------------------------------------------------------------------------


def _size_text(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g} {unit}"
    return f"{n} B"


def _use(dev: DeviceConfig) -> str:
    if dev.is_swap:
        return f"swap, priority {dev.swap_priority}"
    return f"{dev.fs_type} at {dev.mount_point or '(not mounted)'}"


def setup_script(devices: Sequence[DeviceConfig], where: Mapping[str, Target]) -> str:
    """What setup() would run, as a shell script (control writes as ``echo``)."""
    q = shlex.quote
    lines = ["#!/bin/sh -e", "# zramd setup: what it would do"]
    lines.append("[ -d /sys/module/nbd ] || modprobe nbd")
    for dev in devices:
        target = where[dev.name]
        lines.append("")
        lines.append(
            f"# {dev.name}: {_size_text(dev.disksize)} ({dev.disksize} bytes), {_use(dev)}"
        )
        lines.append("# (the control writes are skipped if the server initialised the device)")
        for attr, value, soft in control_writes(dev):
            note = "  # a refusal is only a warning" if soft else ""
            lines.append(f"echo {q(value)} > {q(str(target.control / attr))}{note}")
        var = dev.name
        connect = shlex.join(_connect_argv(target))
        if target.nbd_device:
            lines.append(f"{var}={q(target.nbd_device)}; {connect}")
        else:
            lines.append(f"{var}=$({connect} | sed -n 's/^Connected //p')")
        ref = f'"${var}"'
        lines.append(shlex.join(_format_argv(dev, "DEV")).replace("DEV", ref))
        if dev.mount_point is not None:
            lines.append(f"mkdir -p {q(dev.mount_point)}")
        if dev.is_swap or dev.mount_point is not None:
            lines.append(shlex.join(_activate_argv(dev, "DEV")).replace("DEV", ref))
    return "\n".join(lines) + "\n"


def teardown_script(state: Path) -> str:
    """What teardown() would run for the devices recorded in ``state``."""
    q = shlex.quote
    record = State.load(state)
    lines = ["#!/bin/sh -e", f"# zramd teardown: what it would do ({state})"]
    for rec in reversed(record.devices):
        lines.append(f"# {rec.name}")
        if rec.active and rec.nbd:
            if rec.fs_type == "swap":
                lines.append(f"swapoff {q(rec.nbd)}")
            elif rec.mount_point:
                lines.append(f"umount {q(rec.mount_point)}")
        if rec.nbd:
            lines.append(f"nbd-client -d {q(rec.nbd)}")
        if rec.configured:
            lines.append(f"echo 1 > {q(str(Path(rec.control) / 'reset'))}")
    if not record.devices:
        lines.append("# nothing is recorded as set up")
    return "\n".join(lines) + "\n"

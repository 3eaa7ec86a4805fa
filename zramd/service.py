"""What the nbdkit plugin serves: configuration, the devices, their control tree and
background compaction, independent of nbdkit itself (the plugin only delegates here).

Configuration keys (``nbdkit python zramd/nbdkit_plugin.py KEY=VALUE ...``) are listed with
their help in ``CONFIG_KEYS``. ``devices=N`` creates zram0..zramN-1 at start, as the kernel's
``num_devices`` does; ``device_ids=0,2`` creates exactly those ids instead (what ``zramd serve
--config`` asks for: one device per ``[zramN]`` section, gaps included). The device keys
(``size``, ``comp_algorithm``, ``level``, ``mem_limit``, ``backing_dev``, ``recomp_algorithm``)
configure each of them, and a device added later through ``zram-control/hot_add`` starts
uninitialised with the kernel's defaults, as the kernel's does. ``chain``, ``swap`` and the
``auto_compact*`` keys are the process's own settings and apply to every device, hot-added
ones too (``swap``: ``swapmode.py``).

Each device is exported under its name (``zram0`` ...); the default export (an empty name) is
``zram0``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from zramd import swapmode
from zramd.compress import DEFAULT, available
from zramd.device import ZramDevice
from zramd.devices import MAX_DEVICES, Devices, Entry, device_name, parse_device_name
from zramd.errors import ConfigError, NoDeviceError, ZramdError
from zramd.parse import parse_size
from zramd.shrinker import Shrinker
from zramd.size_class import DEFAULT_CHAIN_SIZE, MAX_CHAIN_SIZE, MIN_CHAIN_SIZE

if TYPE_CHECKING:
    from zramd.fusefs import ControlDir

#: key -> help text (also printed by ``--dump-plugin``)
CONFIG_KEYS: dict[str, str] = {
    "size": "disksize (e.g. 1G); without it the device starts uninitialised, like a fresh zram",
    "devices": f"devices created at start, zram0..zramN-1 (like num_devices; 0..{MAX_DEVICES}, "
    "default 1), each with the keys above and below",
    "device_ids": "instead of devices=N: the ids of the devices created at start, e.g. 0,2 "
    "(zram0 and zram2, as a configuration's [zramN] sections name them)",
    "comp_algorithm": f"compression algorithm: {' '.join(available())} (default {DEFAULT})",
    "level": "compression level of the algorithm (backend-specific; default: the kernel's)",
    "mem_limit": "pool memory limit (e.g. 512M; 0 = none); writes beyond it fail with ENOSPC",
    "control": "directory to mount the control tree on: zram-control/ and zramN/ (like sysfs)",
    "allow_other": "true to let other users into the control directory (needs fuse.conf)",
    "chain": f"zsmalloc chain size {MIN_CHAIN_SIZE}..{MAX_CHAIN_SIZE} "
    f"(default {DEFAULT_CHAIN_SIZE})",
    "auto_compact": "seconds between background compaction checks (0 = off; default 30)",
    "auto_compact_min": "background compaction frees at least this much (default 1M) ...",
    "auto_compact_percent": "... and at least this % of the pool (default 3)",
    "backing_dev": "file or NBD URI that writeback sends cold pages to (like zram's backing_dev)",
    "recomp_algorithm": "secondary algorithms for recompress, priority 1 first (e.g. zstd,deflate)",
    "swap": "true to serve as this host's own swap (swapmode.py): each device's pool reserve "
    "(mem_limit, else disksize / 2) and slot table locked, the process mlocked; needs root",
}


def _bool(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}={value!r}: expected true or false")


def _int(key: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value, 10)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected an integer") from None
    if not lo <= n <= hi:
        raise ConfigError(f"{key}={value}: outside {lo}..{hi}")
    return n


def _ids(key: str, value: str) -> list[int]:
    """``device_ids``: distinct ids in 0..MAX_DEVICES-1, comma-separated, in any order (the
    devices are created in ascending order); an empty value is no device."""
    if not value.strip():
        return []
    ids = [_int(key, word.strip(), 0, MAX_DEVICES - 1) for word in value.split(",")]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{key}={value}: an id is given twice")
    return sorted(ids)


#: the export an NBD client gets when it names none
DEFAULT_EXPORT = device_name(0)


@dataclass
class Settings:
    devices: int = 1
    device_ids: list[int] | None = None
    size: int | None = None
    comp_algorithm: str = DEFAULT
    level: int | None = None
    mem_limit: int = 0
    control: Path | None = None
    allow_other: bool = False
    chain: int = DEFAULT_CHAIN_SIZE
    auto_compact: float = 30.0
    auto_compact_min: int | None = None
    auto_compact_percent: int | None = None
    backing_dev: str | None = None
    recomp_algorithm: list[str] = field(default_factory=list)
    swap: bool = False
    seen: set[str] = field(default_factory=set)


class Service:
    """Lifecycle: ``config``* -> ``config_complete`` -> ``prepare`` (before nbdkit forks)
    -> ``start`` (in the serving process) -> ``stop``. Between start and stop, devices come
    and go through ``devices`` (hot_add/hot_remove), each with its own shrinker."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.devices = Devices(self._fresh_device, on_add=self._added, on_remove=self._removed)
        self.control: ControlDir | None = None
        self.shrinkers: dict[int, Shrinker] = {}  # by serial
        self._started = False

    def config(self, key: str, value: str) -> None:
        s = self.settings
        if key not in CONFIG_KEYS:
            raise ConfigError(f"unknown key {key!r}; known keys: {', '.join(CONFIG_KEYS)}")
        if key in s.seen:
            raise ConfigError(f"{key} given twice")
        s.seen.add(key)
        try:
            if key == "devices":
                s.devices = _int(key, value, 0, MAX_DEVICES)
            elif key == "device_ids":
                s.device_ids = _ids(key, value)
            elif key == "size":
                s.size = parse_size(value, what="size")
                if s.size <= 0:
                    raise ConfigError("size=0: the device needs at least one page")
            elif key == "comp_algorithm":
                if value not in available():
                    choices = " ".join(available())
                    raise ConfigError(f"comp_algorithm={value!r}: not available; choose {choices}")
                s.comp_algorithm = value
            elif key == "level":
                s.level = _int(key, value, -(1 << 17), 22)
            elif key == "mem_limit":
                s.mem_limit = parse_size(value, what="mem_limit")
            elif key == "control":
                if not value:
                    raise ConfigError("control=: empty path")
                s.control = Path(os.path.abspath(value))  # nbdkit chdirs to / when it forks
            elif key == "allow_other":
                s.allow_other = _bool(key, value)
            elif key == "chain":
                s.chain = _int(key, value, MIN_CHAIN_SIZE, MAX_CHAIN_SIZE)
            elif key == "auto_compact":
                s.auto_compact = float(_int(key, value, 0, 86400))
            elif key == "auto_compact_min":
                s.auto_compact_min = parse_size(value, what=key)
            elif key == "auto_compact_percent":
                s.auto_compact_percent = _int(key, value, 0, 100)
            elif key == "backing_dev":
                if not value:
                    raise ConfigError("backing_dev=: empty path")
                s.backing_dev = value if "://" in value else os.path.abspath(value)
            elif key == "recomp_algorithm":
                names = value.split(",")
                if not 1 <= len(names) <= 3:
                    raise ConfigError(f"{key}={value!r}: one to three names, comma-separated")
                for name in names:
                    if name not in available():
                        choices = " ".join(available())
                        raise ConfigError(f"{key}: {name!r} is not available; choose {choices}")
                s.recomp_algorithm = names
            elif key == "swap":
                s.swap = _bool(key, value)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _fresh_device(self, algorithm: str = DEFAULT) -> ZramDevice:
        """A device as hot_add makes it: uninitialised, the kernel's defaults (``algorithm``
        aside), the process's chain size and background compaction policy."""
        s = self.settings
        dev = ZramDevice(algorithm, chain=s.chain, swap=s.swap)
        dev.set_auto_compact(
            interval=s.auto_compact,
            min_bytes=s.auto_compact_min,
            min_percent=s.auto_compact_percent,
        )
        return dev

    def config_complete(self) -> None:
        """Build the ``devices`` devices, or those of ``device_ids`` (each initialised when
        ``size`` was given)."""
        s = self.settings
        if s.swap:  # before a pool is locked: say what is missing, not what mlock said
            swapmode.check_privileges()
        if s.device_ids is not None and "devices" in s.seen:
            raise ConfigError("devices and device_ids: give one or the other")
        count = s.devices if s.device_ids is None else len(s.device_ids)
        if s.backing_dev is not None and count > 1:
            given = f"devices={count}"
            if s.device_ids is not None:
                given = "device_ids=" + ",".join(map(str, s.device_ids))
            raise ConfigError(
                f"backing_dev: a store belongs to one device, and {given}; set each "
                "device's backing_dev in its control directory instead"
            )
        if s.device_ids is None:
            for _ in range(s.devices):
                self.devices.add(self._configured_device())
        else:
            for dev_id in s.device_ids:
                self.devices.add(self._configured_device(), dev_id=dev_id)

    def _configured_device(self) -> ZramDevice:
        s = self.settings
        dev = self._fresh_device(s.comp_algorithm)
        if s.level is not None:
            try:
                dev.set_algorithm_params(level=s.level)
            except ZramdError as e:
                raise ConfigError(f"level={s.level}: {e}") from None
        try:
            dev.set_mem_limit(s.mem_limit)
        except ZramdError as e:
            raise ConfigError(f"mem_limit={s.mem_limit}: {e}") from None
        for prio, name in enumerate(s.recomp_algorithm, 1):
            dev.set_recomp_algorithm(name, prio)
        if s.backing_dev is not None:
            try:
                dev.set_backing_dev(s.backing_dev)
            except ZramdError as e:
                raise ConfigError(str(e)) from None
        if s.size is not None:
            dev.set_disksize(s.size)
        return dev

    @property
    def device(self) -> ZramDevice | None:
        """zram0, if it exists (what a single-device server serves)."""
        entry = self.devices.get(0)
        return entry.device if entry is not None else None

    def export_names(self) -> list[str]:
        """The NBD exports: one per device, by id."""
        return [e.name for e in self.devices.entries()]

    def open(self, export: str) -> ZramDevice:
        """A client attaches to the device named ``export`` (``""`` is zram0); ENODEV (the
        client is refused) if there is no such device."""
        dev_id = parse_device_name(export or DEFAULT_EXPORT)
        if dev_id is None:
            raise NoDeviceError(f"no export {export!r}: the exports are zram0, zram1, ...")
        device = self.devices.open(dev_id)
        if self.settings.swap:  # the connection's thread serves it: nothing to allocate later
            try:
                swapmode.prepare_thread(device)
            except BaseException:
                device.close()  # the opener count open() raised
                raise
        return device

    def _added(self, entry: Entry) -> None:
        if self._started:
            self._start_shrinker(entry)

    def _removed(self, entry: Entry) -> None:
        shrinker = self.shrinkers.pop(entry.serial, None)
        if shrinker is not None:
            shrinker.stop()

    def _start_shrinker(self, entry: Entry) -> None:
        shrinker = Shrinker(entry.device)
        self.shrinkers[entry.serial] = shrinker
        shrinker.start()

    def prepare(self) -> None:
        """Checks, while errors can still reach the user's terminal (before nbdkit forks)."""
        if self.settings.control is not None:
            from zramd.fusefs import ControlDir  # noqa: PLC0415 - FUSE only when asked for

            self.control = ControlDir(
                self.devices, self.settings.control, allow_other=self.settings.allow_other
            )
            self.control.check()

    def start(self) -> None:
        """Start the threads (the process that serves: after nbdkit's fork). In swap mode,
        first make the process fit to serve swap (``swapmode.protect_process``): the threads
        started here inherit PR_SET_IO_FLUSHER and find the heap warm."""
        if self.settings.swap:
            swapmode.protect_process()
        if self.control is not None:
            self.control.start()
        self._started = True
        for entry in self.devices.entries():
            self._start_shrinker(entry)

    def stop(self) -> None:
        """Unmount the control tree (no hot_add can start another shrinker after it), then
        stop every shrinker."""
        self._started = False
        if self.control is not None:
            self.control.stop()
            self.control = None
        for shrinker in list(self.shrinkers.values()):
            shrinker.stop()
        self.shrinkers.clear()

"""Several devices in one process, the kernel's way: ``zram_index_idr`` and zram-control.

The kernel keeps its zram devices in an IDR (``zram_index_idr``, guarded by
``zram_index_mutex``): ``num_devices`` are added at module load, ``zram_add`` takes the lowest
free id (``idr_alloc(..., 0, 0, ...)``, so a removed id is reused), and
``/sys/class/zram-control/`` adds and removes devices at run time:

* ``hot_add`` (mode 0400): *reading* it adds an uninitialised device and prints its id.
* ``hot_remove`` (mode 0200): writing an id removes that device: ``kstrtoint`` (base 10)
  errors first (EINVAL, ERANGE), a negative id EINVAL, no such device ENODEV, a device open
  by anyone EBUSY; otherwise the device is reset (everything freed) and gone.

``Devices`` is that index (drivers/block/zram/zram_drv.c: ``zram_add``, ``zram_remove``,
``hot_add_show``, ``hot_remove_store``). The devices share nothing but the process: each has
its own pool, limits, statistics, compaction policy and control directory. Each device also
gets a *serial* number that is never reused, so the control directory can tell a removed
device's files from those of a new device that took the same id.

Only ``open`` makes a device busy: the plugin opens devices through it, under the same lock
``remove`` checks under, so no connection can slip in between the check and the removal.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from zramd.device import ZramDevice
from zramd.errors import DeviceBusyError, DeviceExistsError, NoDeviceError, TooManyDevicesError

#: nbdkit lists at most 10000 exports (server/exports.c, MAX_EXPORTS), and every device must
#: be one; the kernel's range is [0, INT_MAX]
MAX_DEVICES = 10000
PREFIX = "zram"


def device_name(dev_id: int) -> str:
    """``zram<id>``: the device's export name and its control directory's name."""
    return f"{PREFIX}{dev_id}"


def parse_device_name(name: str) -> int | None:
    """The id in a device name written as the kernel writes it (``zram7``, never ``zram07``
    or ``zram+7``); None for anything else."""
    digits = name.removeprefix(PREFIX)
    if digits == name or not digits.isascii() or not digits.isdigit():
        return None
    if digits != str(int(digits)):
        return None
    return int(digits)


@dataclass(frozen=True, slots=True)
class Entry:
    """One device in the index: its id (reused after removal) and serial (never reused)."""

    id: int
    serial: int
    device: ZramDevice

    @property
    def name(self) -> str:
        return device_name(self.id)


class Devices:
    """The index of devices by id. ``make`` builds a fresh (uninitialised) device for
    ``add``; ``on_add``/``on_remove`` are told about each entry after the index changed (the
    service starts and stops the device's background compaction there). Thread-safe."""

    def __init__(
        self,
        make: Callable[[], ZramDevice],
        *,
        on_add: Callable[[Entry], None] | None = None,
        on_remove: Callable[[Entry], None] | None = None,
    ) -> None:
        self._make = make
        self._on_add = on_add
        self._on_remove = on_remove
        self._lock = threading.Lock()  # zram_index_mutex
        self._by_id: dict[int, Entry] = {}
        self._by_serial: dict[int, Entry] = {}
        self._next_serial = 0

    def add(self, device: ZramDevice | None = None, *, dev_id: int | None = None) -> int:
        """``zram_add``: a new device (``device``, else a fresh one) under the lowest free id;
        the id. ENOSPC when all MAX_DEVICES ids are taken.

        ``dev_id`` asks for that id instead (``idr_alloc(id, id + 1)``), for a server that
        serves a configuration's ``[zramN]`` sections, gaps included: DeviceExistsError (EEXIST)
        if it is taken, ValueError outside 0..MAX_DEVICES-1."""
        if dev_id is not None and not 0 <= dev_id < MAX_DEVICES:
            raise ValueError(f"device id {dev_id}: outside 0..{MAX_DEVICES - 1}")
        with self._lock:
            if dev_id is None:
                dev_id = next(i for i in range(len(self._by_id) + 1) if i not in self._by_id)
            elif dev_id in self._by_id:
                raise DeviceExistsError(f"{device_name(dev_id)} exists already")
            if dev_id >= MAX_DEVICES:
                raise TooManyDevicesError(f"hot_add: all {MAX_DEVICES} device ids are in use")
            entry = Entry(dev_id, self._next_serial, device or self._make())
            self._next_serial += 1
            self._by_id[dev_id] = entry
            self._by_serial[entry.serial] = entry
        if self._on_add is not None:
            self._on_add(entry)
        return dev_id

    def remove(self, dev_id: int) -> None:
        """``hot_remove_store`` after parsing: ENODEV for an id no device has, EBUSY while a
        client has the device open; otherwise reset it (freeing everything, releasing its
        backing device) and remove it."""
        with self._lock:
            entry = self._by_id.get(dev_id)
            if entry is None:
                raise NoDeviceError(f"hot_remove: there is no {device_name(dev_id)}")
            if entry.device.openers:
                raise DeviceBusyError(
                    f"hot_remove: {entry.name} is open ({entry.device.openers} connections)"
                )
            entry.device.reset()
            del self._by_id[dev_id]
            del self._by_serial[entry.serial]
        if self._on_remove is not None:
            self._on_remove(entry)

    def open(self, dev_id: int) -> ZramDevice:
        """A client attaches to device ``dev_id`` (its opener count goes up; ``close`` on the
        device undoes it). ENODEV if there is no such device."""
        with self._lock:
            entry = self._by_id.get(dev_id)
            if entry is None:
                raise NoDeviceError(f"there is no {device_name(dev_id)}")
            entry.device.open()
            return entry.device

    def get(self, dev_id: int) -> Entry | None:
        return self._by_id.get(dev_id)

    def by_serial(self, serial: int) -> Entry | None:
        return self._by_serial.get(serial)

    def entries(self) -> list[Entry]:
        """Every device, by id."""
        with self._lock:
            return sorted(self._by_id.values(), key=lambda e: e.id)

    def __len__(self) -> int:
        return len(self._by_id)

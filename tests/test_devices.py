"""Several devices: the index (zram_add/zram_remove), zram-control's hot_add and hot_remove as
the kernel parses and answers them, and a service of N devices that share nothing."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from zramd import build_class_table, control
from zramd.device import ZramDevice
from zramd.devices import Devices, device_name, parse_device_name
from zramd.errors import ConfigError, ZramdError
from zramd.service import Service
from zramd.testing import synthetic_pages

P = 4096
MiB = 1 << 20


@pytest.fixture
def devices() -> Iterator[Devices]:
    d = Devices(ZramDevice)
    yield d
    for entry in d.entries():
        entry.device.openers = 0
        d.remove(entry.id)


def hot_add(devices: Devices) -> bytes:
    return control.class_show(devices, "hot_add")


def hot_remove_errno(devices: Devices, data: bytes) -> int:
    with pytest.raises(ZramdError) as info:
        control.class_store(devices, "hot_remove", data)
    return info.value.errno


def test_hot_add_prints_the_lowest_free_id(devices: Devices) -> None:
    """idr_alloc(&zram_index_idr, zram, 0, 0, ...): the lowest free id, so removed ids are
    reused, lowest first."""
    assert [hot_add(devices) for _ in range(4)] == [b"0\n", b"1\n", b"2\n", b"3\n"]
    assert control.class_store(devices, "hot_remove", b"2\n") == 2
    assert control.class_store(devices, "hot_remove", b"0") == 1
    assert [e.id for e in devices.entries()] == [1, 3]
    assert hot_add(devices) == b"0\n"
    assert hot_add(devices) == b"2\n"
    assert hot_add(devices) == b"4\n"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"-1\n", errno.EINVAL),  # a negative id, after kstrtoint accepted it
        (b"abc", errno.EINVAL),  # kstrtoint: junk
        (b"1 ", errno.EINVAL),  # kstrtoint: only one trailing newline
        (b"", errno.EINVAL),  # no digits (a store sees "" only through class_store)
        (b"0x1", errno.EINVAL),  # base 10
        (b"2147483648", errno.ERANGE),  # above INT_MAX: kstrtoint's ERANGE comes first
        (b"-2147483649", errno.ERANGE),
        (b"99999999999999999999", errno.ERANGE),
        (b"7\n", errno.ENODEV),  # no such device
        (b"+7", errno.ENODEV),  # kstrtoint takes a leading +
    ],
)
def test_hot_remove_parses_as_the_kernel(devices: Devices, data: bytes, code: int) -> None:
    devices.add()
    if data == b"":
        with pytest.raises(ZramdError) as info:
            control.hot_remove_store(devices, data)
        assert info.value.errno == code
    else:
        assert hot_remove_errno(devices, data) == code
    assert [e.id for e in devices.entries()] == [0]  # nothing removed


def test_hot_remove_of_an_open_device_is_ebusy_and_changes_nothing(devices: Devices) -> None:
    devices.add()
    dev = devices.open(0)
    dev.set_disksize(MiB)
    dev.write(0, synthetic_pages(1, seed=1)[0])
    assert hot_remove_errno(devices, b"0") == errno.EBUSY
    assert dev.initstate
    assert dev.mm_stat().orig_data_size == P
    dev.close()
    assert control.class_store(devices, "hot_remove", b"0") == 1
    assert not dev.initstate  # zram_remove resets the device: its memory is freed
    assert devices.get(0) is None


def test_hot_remove_releases_the_backing_store(devices: Devices, tmp_path: Path) -> None:
    """The reset frees the backing device claim, so another device can take the store."""
    store = tmp_path / "wb.img"
    store.write_bytes(bytes(MiB))
    devices.add()
    devices.add()
    a, b = (e.device for e in devices.entries())
    a.set_backing_dev(str(store))
    with pytest.raises(ZramdError) as info:
        b.set_backing_dev(str(store))
    assert info.value.errno == errno.EBUSY
    control.class_store(devices, "hot_remove", b"0")
    b.set_backing_dev(str(store))
    assert b.backing_dev == str(store)


def test_ids_run_out_with_enospc(devices: Devices, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("zramd.devices.MAX_DEVICES", 3)
    for _ in range(3):
        hot_add(devices)
    with pytest.raises(ZramdError) as info:
        hot_add(devices)
    assert info.value.errno == errno.ENOSPC
    control.class_store(devices, "hot_remove", b"1")
    assert hot_add(devices) == b"1\n"


def test_modes_as_in_sysfs() -> None:
    modes = {a.name: a.mode for a in control.CONTROL_ATTRIBUTES}
    assert modes == {"hot_add": 0o400, "hot_remove": 0o200}
    d = Devices(ZramDevice)
    with pytest.raises(ZramdError) as info:
        control.class_store(d, "hot_add", b"1")
    assert info.value.errno == errno.EACCES
    with pytest.raises(ZramdError) as info:
        control.class_show(d, "hot_remove")
    assert info.value.errno == errno.EACCES
    assert d.entries() == []  # neither added a device


@pytest.mark.parametrize(
    ("name", "dev_id"),
    [("zram0", 0), ("zram17", 17), ("zram", None), ("zram01", None), ("zram+1", None),
     ("zram-1", None), ("zram1x", None), ("nbd0", None), ("", None), ("zram٣", None)],
)  # fmt: skip
def test_device_names_as_the_kernel_writes_them(name: str, dev_id: int | None) -> None:
    assert parse_device_name(name) == dev_id
    if dev_id is not None:
        assert device_name(dev_id) == name


# -- a service of several devices -----------------------------------------------------------


def service(*config: str) -> Service:
    """A configured service (background compaction off unless ``config`` sets it)."""
    s = Service()
    given = [item.split("=", 1)[0] for item in config]
    for item in (*(() if "auto_compact" in given else ("auto_compact=0",)), *config):
        s.config(*item.split("=", 1))
    s.config_complete()
    return s


def test_devices_share_nothing_but_the_process() -> None:
    s = service("devices=3", "size=4M", "mem_limit=2M", "comp_algorithm=zstd")
    assert s.export_names() == ["zram0", "zram1", "zram2"]
    devs = [s.open(name) for name in ("", "zram1", "zram2")]
    assert devs[0] is s.device
    assert len({id(d) for d in devs}) == 3
    assert len({id(d.pool) for d in devs}) == 3
    assert all(d.disksize == 4 * MiB and d.comp_algorithm == "zstd" for d in devs)
    devs[1].set_mem_limit(8 * MiB)
    assert [d.mem_limit for d in devs] == [2 * MiB, 8 * MiB, 2 * MiB]
    pages = synthetic_pages(32, seed=2)
    devs[1].write(0, b"".join(pages))
    assert [d.mm_stat().orig_data_size for d in devs] == [0, 32 * P, 0]
    assert devs[0].read(0, P) == bytes(P)
    devs[2].write(P, pages[5])
    assert devs[1].read(P, P) == pages[1]
    assert [d.openers for d in devs] == [1, 1, 1]
    for d in devs:
        d.close()
        d.reset()


def test_unknown_exports_are_refused() -> None:
    s = service("devices=2", "size=1M")
    for name in ("zram2", "zramd", "zram01", "0"):
        with pytest.raises(ZramdError) as info:
            s.open(name)
        assert info.value.errno == errno.ENODEV
    control.class_store(s.devices, "hot_remove", b"1")
    assert s.export_names() == ["zram0"]
    with pytest.raises(ZramdError):
        s.open("zram1")  # a removed device takes no new connection


def test_zero_devices_like_num_devices_0() -> None:
    s = service("devices=0", "size=1M")
    assert s.export_names() == []
    with pytest.raises(ZramdError):
        s.open("")
    assert hot_add(s.devices) == b"0\n"
    assert s.open("").disksize == 0  # hot_add's device is uninitialised, as the kernel's


def test_a_hot_added_device_starts_as_the_kernels_does() -> None:
    """Uninitialised, the default algorithm; the process's chain and compaction policy."""
    s = service("devices=1", "size=8M", "comp_algorithm=zstd", "mem_limit=1M", "chain=4",
                "auto_compact=7")  # fmt: skip
    dev_id = int(hot_add(s.devices))
    new = s.devices.get(dev_id)
    assert new is not None
    fresh = ZramDevice()
    assert (new.device.disksize, new.device.mem_limit) == (0, 0)
    assert new.device.comp_algorithm == fresh.comp_algorithm
    assert new.device.auto_compact.interval == 7
    new.device.set_disksize(MiB)
    pool = new.device.pool
    assert pool is not None
    assert pool.stats().huge_class_size == build_class_table(4).huge_class_size


def test_one_backing_store_cannot_serve_several_devices() -> None:
    with pytest.raises(ConfigError, match="a store belongs to one device, and devices=2"):
        service("devices=2", "size=1M", "backing_dev=/tmp/x.img")


@pytest.mark.parametrize("value", ["-1", "10001", "two", ""])
def test_devices_key_is_checked(value: str) -> None:
    with pytest.raises(ConfigError, match="devices"):
        service(f"devices={value}")


def test_each_device_has_its_own_shrinker_while_serving() -> None:
    s = service("devices=2", "size=1M")
    s.start()  # no control tree: only the shrinkers
    try:
        assert len(s.shrinkers) == 2
        dev_id = int(hot_add(s.devices))
        assert len(s.shrinkers) == 3
        entry = s.devices.get(dev_id)
        assert entry is not None
        shrinker = s.shrinkers[entry.serial]
        assert shrinker.device is entry.device
        control.class_store(s.devices, "hot_remove", str(dev_id).encode())
        assert len(s.shrinkers) == 2
        assert shrinker._thread is None  # stopped and joined
    finally:
        s.stop()
    assert s.shrinkers == {}


def test_device_ids_create_exactly_those_devices() -> None:
    """serve --config's [zram0] and [zram5]: zram0 and zram5 and nothing between; hot_add
    then fills the gap from the bottom, as the kernel's lowest free id would."""
    s = service("device_ids=5,0", "size=1M")
    assert s.export_names() == ["zram0", "zram5"]
    assert [e.device.size for e in s.devices.entries()] == [1 * MiB, 1 * MiB]
    assert hot_add(s.devices) == b"1\n"
    assert service("device_ids=").export_names() == []
    assert service("device_ids=3").export_names() == ["zram3"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (["device_ids=1,1"], "an id is given twice"),
        (["device_ids=-1"], "outside 0..9999"),
        (["device_ids=10000"], "outside 0..9999"),
        (["device_ids=zram1"], "expected an integer"),
        (["devices=2", "device_ids=0,1"], "devices and device_ids: give one or the other"),
        (["device_ids=0,2", "size=1M", "backing_dev=/tmp/x.img"],
         "a store belongs to one device, and device_ids=0,2"),
    ],
)  # fmt: skip
def test_device_ids_key_is_checked(config: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        service(*config)


def test_adding_a_taken_id_is_eexist(devices: Devices) -> None:
    assert devices.add(dev_id=4) == 4
    with pytest.raises(ZramdError, match="zram4 exists already") as info:
        devices.add(dev_id=4)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(ValueError, match="outside"):
        devices.add(dev_id=10000)
    assert devices.add() == 0
    assert [e.id for e in devices.entries()] == [0, 4]

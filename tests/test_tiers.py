"""Memory tiers in the device: idle tracking, writeback to a backing store, recompression."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from zramd._types import BytesLike
from zramd.backing import BackingDevice, FileStore, open_store
from zramd.device import ZramDevice
from zramd.errors import (
    BackingError,
    DeviceBusyError,
    InvalidValueError,
    MemLimitError,
    NoDeviceError,
    TryAgainError,
    ZramdError,
)
from zramd.postproc import PP_HUGE, PP_IDLE, PP_INCOMPRESSIBLE
from zramd.slots import (
    ZRAM_COMP_PRIORITY_MASK,
    ZRAM_HUGE,
    ZRAM_IDLE,
    ZRAM_INCOMPRESSIBLE,
    ZRAM_PP_SLOT,
    ZRAM_WB,
)
from zramd.stats import BdStat
from zramd.testing import synthetic_pages
from zramd.writeback import WB_BATCH_MAX

pytestmark = pytest.mark.usefixtures("pool_impl")  # C and Python object loops

P = 4096
PAGES = 256


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backing_file(tmp_path: Path, blocks: int = 1024) -> str:
    path = tmp_path / "backing.img"
    with open(path, "wb") as f:
        f.truncate(blocks * P)
    return str(path)


def random_page(seed: int) -> bytes:
    return os.urandom(P) if seed < 0 else bytes((seed * 7 + i * 13) % 251 for i in range(P))


@pytest.fixture
def data() -> bytes:
    return b"".join(synthetic_pages(PAGES, seed=5))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dev(tmp_path: Path, data: bytes, clock: Clock) -> Iterator[ZramDevice]:
    d = ZramDevice(clock=clock)
    d.set_backing_dev(backing_file(tmp_path))
    d.set_disksize(PAGES * P)
    d.write(0, data)
    yield d
    d.reset()


def stored_objects(d: ZramDevice) -> int:
    pool = d.pool
    assert pool is not None
    return pool.stats().objects


# -- idle ---------------------------------------------------------------------------------------


def object_pages(d: ZramDevice) -> list[int]:
    """Pages that hold a pool object (not same-filled, not written back)."""
    return [i for i in range(PAGES) if d.slot_flags(i) & 0x1FFF]


def test_idle_by_age_uses_the_injected_clock(dev: ZramDevice, clock: Clock, data: bytes) -> None:
    first, second = object_pages(dev)[:2]
    clock.now += 100
    dev.write(first * P, data[first * P : (first + 1) * P])  # fresh; the rest 100 s old
    marked = dev.mark_idle(50)
    assert not dev.slot_flags(first) & ZRAM_IDLE
    assert dev.slot_flags(second) & ZRAM_IDLE
    dev.read(second * P, P)  # any access clears IDLE
    assert not dev.slot_flags(second) & ZRAM_IDLE
    assert dev.mark_idle(50) == marked - 1
    clock.now += 100
    assert dev.mark_idle(50) == marked + 1 == len(object_pages(dev))  # same pages never idle


# -- writeback ----------------------------------------------------------------------------------


def test_writeback_moves_idle_pages_out_and_reads_them_back(dev: ZramDevice, data: bytes) -> None:
    before = dev.mm_stat()
    candidates = stored_objects(dev)
    dev.mark_idle()
    assert dev.writeback([(PP_IDLE, 0, PAGES)]) == candidates
    after = dev.mm_stat()
    assert after.orig_data_size == before.orig_data_size  # written-back pages still count
    assert (after.compr_data_size, after.mem_used_total, after.huge_pages) == (0, 0, 0)
    assert after.same_pages == before.same_pages
    assert dev.bd_stat() == BdStat(candidates, 0, candidates)
    assert dev.read(0, len(data)) == data
    assert dev.bd_stat().bd_reads == candidates
    # not brought back into RAM by reading; an overwrite or discard frees the block
    assert dev.bd_stat().bd_count == candidates
    dev.write(0, data[P : 3 * P])
    dev.discard(5 * P, P)
    flags = [dev.slot_flags(i) for i in (0, 1, 5)]
    assert not any(f & ZRAM_WB for f in flags)
    freed = sum(1 for i in (0, 1, 5) if data[i * P : i * P + 8] * 512 != data[i * P : (i + 1) * P])
    assert dev.bd_stat().bd_count == candidates - freed
    expect = bytearray(data)
    expect[0 : 2 * P] = data[P : 3 * P]
    expect[5 * P : 6 * P] = bytes(P)
    assert dev.read(0, len(data)) == expect


def test_writeback_filters_by_mode(tmp_path: Path, clock: Clock) -> None:
    d = ZramDevice(clock=clock)
    d.set_backing_dev(backing_file(tmp_path))
    d.set_disksize(16 * P)
    incompressible = os.urandom(4 * P)
    d.write(0, incompressible)  # pages 0-3 HUGE
    d.write(4 * P, b"".join(synthetic_pages(12, seed=9)))
    huge = [i for i in range(16) if d.slot_flags(i) & ZRAM_HUGE]
    assert huge[:4] == [0, 1, 2, 3]
    d.mark_idle()
    d.read(0, P)  # page 0 is huge but no longer idle
    assert d.writeback([(PP_HUGE | PP_IDLE, 0, 16)]) == len(huge) - 1
    assert not d.slot_flags(0) & ZRAM_WB
    assert d.writeback([(PP_HUGE, 0, 16)]) == 1
    assert d.writeback([(PP_INCOMPRESSIBLE, 0, 16)]) == 0  # nothing marked incompressible
    # a page range takes any stored page; same-filled pages are never written back
    d.write(15 * P, b"\x07" * P)
    stored = [i for i in range(8, 16) if not d.slot_flags(i) & ZRAM_WB and i not in huge]
    assert d.writeback([(0, 8, 16)]) == len(stored) - 1
    assert d.read(0, 4 * P) == incompressible
    d.reset()


def test_writeback_limit(dev: ZramDevice, data: bytes) -> None:
    dev.set_writeback_limit(10)
    dev.set_writeback_limit_enable(True)
    with pytest.raises(ZramdError) as e:
        dev.writeback([(0, 0, PAGES)])
    assert e.value.errno == errno.EIO
    assert dev.bd_stat().bd_writes == 10  # the budget was spent, no more
    assert dev.writeback_limit == 0
    with pytest.raises(ZramdError):
        dev.writeback([(0, 0, PAGES)])
    dev.set_writeback_limit_enable(False)  # disabled: no limit, budget untouched
    dev.writeback([(0, 0, PAGES)])
    assert dev.writeback_limit == 0
    assert dev.read(0, len(data)) == data


def test_writeback_in_batches(dev: ZramDevice, data: bytes) -> None:
    dev.set_writeback_batch_size(7)
    n = dev.writeback([(0, 0, PAGES)])
    assert n == dev.bd_stat().bd_count > 7
    assert dev.read(0, len(data)) == data
    with pytest.raises(InvalidValueError):
        dev.set_writeback_batch_size(0)


def test_backing_store_full_is_enospc(tmp_path: Path, data: bytes) -> None:
    d = ZramDevice()
    d.set_backing_dev(backing_file(tmp_path, blocks=9))  # block 0 is never used: 8 usable
    d.set_disksize(PAGES * P)
    d.write(0, data)
    with pytest.raises(ZramdError) as e:
        d.writeback([(0, 0, PAGES)])
    assert e.value.errno == errno.ENOSPC
    assert d.bd_stat().bd_count == 8
    assert d.read(0, len(data)) == data
    d.reset()


def test_writeback_errors(tmp_path: Path, data: bytes) -> None:
    d = ZramDevice()
    with pytest.raises(InvalidValueError, match="not initialised"):
        d.writeback([(0, 0, 1)])
    d.set_disksize(PAGES * P)
    with pytest.raises(NoDeviceError):
        d.writeback([(0, 0, 1)])
    with pytest.raises(DeviceBusyError):
        d.set_backing_dev(backing_file(tmp_path))
    d.reset()


def test_backing_dev_open_errors(tmp_path: Path) -> None:
    d = ZramDevice()
    with pytest.raises(BackingError) as e:
        d.set_backing_dev(str(tmp_path / "missing"))
    assert e.value.errno == errno.ENOENT
    with pytest.raises(BackingError) as e:
        d.set_backing_dev(str(tmp_path))
    assert e.value.errno == errno.EISDIR
    with pytest.raises(BackingError) as e:
        d.set_backing_dev("/dev/null")
    assert e.value.errno == errno.ENOTBLK
    (tmp_path / "tiny").write_bytes(b"x" * P)
    with pytest.raises(BackingError) as e:
        d.set_backing_dev(str(tmp_path / "tiny"))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(BackingError) as e:
        d.set_backing_dev("nbd+unix:///?socket=" + str(tmp_path / "nobody.sock"))
    assert e.value.errno in (errno.ENOENT, errno.ECONNREFUSED)
    assert d.backing_dev is None
    d.set_backing_dev(backing_file(tmp_path))
    assert d.backing_dev == str(tmp_path / "backing.img")
    d.set_backing_dev("none")
    assert d.backing_dev is None


def test_reset_detaches_the_backing_device(dev: ZramDevice, tmp_path: Path) -> None:
    dev.writeback([(0, 0, 8)])
    dev.reset()
    assert dev.backing_dev is None
    assert dev.bd_stat() == BdStat(0, 0, 0)
    dev.set_disksize(P * 4)
    with pytest.raises(NoDeviceError):
        dev.writeback([(0, 0, 4)])


def test_file_store_round_trip(tmp_path: Path) -> None:
    store = open_store(backing_file(tmp_path, 4))
    assert isinstance(store, FileStore)
    assert store.nr_blocks == 4
    pages = [random_page(1), random_page(2)]
    store.write_blocks([3, 1], pages)
    assert store.read_blocks([1, 3]) == [pages[1], pages[0]]
    store.close()


def test_a_page_accessed_during_writeback_stays_in_memory(
    dev: ZramDevice, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    backing = dev._state.backing  # type: ignore[union-attr]
    assert backing is not None
    real = backing.write
    touched: list[int] = []

    def write_and_touch(blocks: list[int], pages: list[bytes]) -> None:
        if not touched:  # while the first batch is in flight, a client reads page 1
            dev.read(P, P)  # and overwrites page 2
            dev.write(2 * P, data[10 * P : 11 * P])
            touched.append(1)
        real(blocks, pages)

    monkeypatch.setattr(backing, "write", write_and_touch)
    n = dev.writeback([(0, 0, 4)])
    assert n == 2  # pages 0 and 3; 1 was read and 2 rewritten meanwhile
    assert dev.bd_stat().bd_count == 2  # the blocks of 1 and 2 went back
    assert [bool(dev.slot_flags(i) & ZRAM_WB) for i in range(4)] == [True, False, False, True]
    assert not any(dev.slot_flags(i) & ZRAM_PP_SLOT for i in range(PAGES))
    assert dev.read(0, 4 * P) == data[: 2 * P] + data[10 * P : 11 * P] + data[3 * P : 4 * P]


def test_only_one_post_processing_at_a_time(
    dev: ZramDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    backing = dev._state.backing  # type: ignore[union-attr]
    assert backing is not None
    real = backing.write
    inside = threading.Event()
    release = threading.Event()

    def slow_write(blocks: list[int], pages: list[bytes]) -> None:
        inside.set()
        release.wait(10)
        real(blocks, pages)

    monkeypatch.setattr(backing, "write", slow_write)
    object_pages_before = object_pages(dev)
    t = threading.Thread(target=dev.writeback, args=([(0, 0, 8)],))
    t.start()
    assert inside.wait(10)
    with pytest.raises(TryAgainError):
        dev.writeback([(0, 8, 16)])
    release.set()
    t.join()
    assert dev.bd_stat().bd_count == len([i for i in object_pages_before if i < 8])


# -- recompression ------------------------------------------------------------------------------


def recomp_device(tmp_path: Path | None = None, *algos: str) -> ZramDevice:
    d = ZramDevice("lz4")
    for prio, name in enumerate(algos, 1):
        d.set_recomp_algorithm(name, prio)
    d.set_disksize(PAGES * P)
    return d


def test_recompress_keeps_only_smaller_classes(data: bytes) -> None:
    d = recomp_device(None, "zstd")
    d.write(0, data)
    before = d.mm_stat()
    n = d.recompress()
    after = d.mm_stat()
    assert n > 0
    assert after.compr_data_size < before.compr_data_size
    assert d.read(0, len(data)) == data
    pool = d.pool
    assert pool is not None
    recompressed = [i for i in range(PAGES) if d.slot_flags(i) & ZRAM_COMP_PRIORITY_MASK]
    assert len(recompressed) == n
    # nothing left to try: zstd was the last algorithm, every other page is INCOMPRESSIBLE
    assert d.recompress() == 0
    for i in range(PAGES):
        f = d.slot_flags(i)
        if f & 0x1FFF and not f & ZRAM_COMP_PRIORITY_MASK:
            assert f & ZRAM_INCOMPRESSIBLE
    d.reset()


def test_recompress_incompressible_and_huge(data: bytes) -> None:
    d = recomp_device(None, "zstd", "deflate")
    noise = os.urandom(2 * P)
    d.write(0, noise)
    d.write(2 * P, data[: 30 * P])
    assert d.slot_flags(0) & ZRAM_HUGE
    huge_before = d.mm_stat().huge_pages
    assert d.recompress(mode=PP_HUGE) == 0  # random data: no algorithm helps
    assert d.slot_flags(0) & ZRAM_INCOMPRESSIBLE
    assert d.mm_stat().huge_pages == huge_before
    # incompressible pages can be written back by that mode ... (no backing here: ENODEV)
    with pytest.raises(NoDeviceError):
        d.writeback([(PP_INCOMPRESSIBLE, 0, PAGES)])
    assert d.read(0, 2 * P) == noise
    d.reset()


def test_recompress_of_a_compressible_huge_page() -> None:
    d = ZramDevice("lz4")
    d.set_recomp_algorithm("zstd")
    d.set_disksize(PAGES * P)
    # lz4 stores it raw (≥ huge_class_size) but zstd's entropy coding shrinks it
    page = bytes(b & 0x3F for b in os.urandom(P))
    d.write(0, page)
    assert d.slot_flags(0) & ZRAM_HUGE
    assert d.recompress(mode=PP_HUGE) == 1
    f = d.slot_flags(0)
    assert not f & ZRAM_HUGE
    assert f & ZRAM_COMP_PRIORITY_MASK
    s = d.mm_stat()
    assert (s.huge_pages, s.huge_pages_since) == (0, 1)
    assert d.read(0, P) == page
    d.reset()


def test_recompress_budget_threshold_and_selection(data: bytes) -> None:
    d = recomp_device(None, "lz4hc", "zstd")
    d.write(0, data)
    assert d.recompress(max_pages=3) <= 3
    assert d.recompress(algo="zstd", max_pages=0) == 0
    with pytest.raises(InvalidValueError, match="algo=deflate"):
        d.recompress(algo="deflate")
    with pytest.raises(InvalidValueError, match="priority=3"):
        d.recompress(priority=3)
    pool = d.pool
    assert pool is not None
    with pytest.raises(InvalidValueError, match="threshold"):
        d.recompress(threshold=pool.huge_class_size)
    # with a threshold, objects below it are left alone and results must fall below it
    d.recompress(threshold=2000, priority=2)
    for i in range(PAGES):
        f = d.slot_flags(i)
        if f & ZRAM_COMP_PRIORITY_MASK:
            assert f & 0x1FFF < 2000
    assert d.read(0, len(data)) == data
    d.reset()


def test_recompress_needs_a_secondary_algorithm() -> None:
    d = ZramDevice()
    d.set_disksize(P)
    with pytest.raises(InvalidValueError, match="no recomp_algorithm"):
        d.recompress()
    with pytest.raises(DeviceBusyError):
        d.set_recomp_algorithm("zstd")
    d.reset()
    with pytest.raises(InvalidValueError, match="priority=4"):
        d.set_recomp_algorithm("zstd", 4)
    with pytest.raises(InvalidValueError, match="unknown"):
        d.set_recomp_algorithm("zippy")
    d.set_recomp_algorithm("zstd", 3)
    assert d.recomp_algorithms == {3: "zstd"}
    d.reset()
    assert d.recomp_algorithms == {}  # reset forgets secondary algorithms


def test_written_back_and_recompressed_pages_mix(tmp_path: Path, data: bytes) -> None:
    d = ZramDevice()
    d.set_recomp_algorithm("zstd")
    d.set_backing_dev(backing_file(tmp_path))
    d.set_disksize(PAGES * P)
    d.write(0, data)
    d.recompress()
    d.writeback([(0, 0, PAGES // 2)])
    assert d.read(0, len(data)) == data
    # sub-page writes into written-back and recompressed pages (read-modify-write)
    d.write(P + 100, b"patch")
    d.write((PAGES - 1) * P + 4000, b"tail")
    expect = bytearray(data)
    expect[P + 100 : P + 105] = b"patch"
    expect[(PAGES - 1) * P + 4000 : (PAGES - 1) * P + 4004] = b"tail"
    assert d.read(0, len(data)) == expect
    d.reset()


def test_a_block_device_as_backing_dev(tmp_path: Path, data: bytes) -> None:
    """The kernel's usual case: a block device (here a loop device over a file)."""
    image = backing_file(tmp_path, blocks=512)
    loop = subprocess.run(
        ["losetup", "--find", "--show", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        d = ZramDevice()
        d.set_backing_dev(loop)
        assert d.backing_dev == loop
        d.set_disksize(PAGES * P)
        d.write(0, data)
        n = d.writeback([(0, 0, PAGES)])
        assert n == d.bd_stat().bd_count > 0
        assert d.read(0, len(data)) == data
        d.reset()  # closes the device, so the loop can go
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


# -- the backing store: exclusive claims, cost of a big store, batch memory, a full filesystem ---


def test_a_backing_file_is_claimed_by_one_device(tmp_path: Path, data: bytes) -> None:
    """As the kernel opens its backing device exclusively: a second device (of the same
    process) is refused with EBUSY naming the file, until the first one lets go."""
    path = backing_file(tmp_path)
    first, second = ZramDevice(), ZramDevice()
    first.set_backing_dev(path)
    with pytest.raises(BackingError) as e:
        second.set_backing_dev(path)
    assert e.value.errno == errno.EBUSY
    assert path in str(e.value)
    assert second.backing_dev is None
    via_link = tmp_path / "link"
    via_link.symlink_to(path)  # another name for the same file
    with pytest.raises(BackingError) as e:
        second.set_backing_dev(str(via_link))
    assert e.value.errno == errno.EBUSY
    # the holder may set its file again (the kernel lets a holder claim again) and keeps it
    first.set_backing_dev(path)
    first.set_backing_dev(str(via_link))
    with pytest.raises(BackingError):
        second.set_backing_dev(path)
    first.set_disksize(PAGES * P)
    first.write(0, data)
    assert first.writeback([(0, 0, PAGES)]) > 0
    assert first.read(0, len(data)) == data
    first.reset()  # releases the file
    second.set_backing_dev(path)
    second.set_backing_dev("none")  # so does detaching
    first.set_backing_dev(path)
    first.reset()


def test_open_store_claims_a_file_until_closed(tmp_path: Path) -> None:
    path = backing_file(tmp_path, 4)
    store = open_store(path)
    with pytest.raises(BackingError) as e:
        open_store(path)
    assert e.value.errno == errno.EBUSY
    store.close()
    open_store(path).close()


HOLD_STORE = """
import sys
from zramd.backing import open_store
store = open_store(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()
store.close()
"""


def test_a_backing_file_is_claimed_across_processes(tmp_path: Path) -> None:
    """Two servers on one backing file would read each other's pages: the second is refused."""
    path = backing_file(tmp_path, 4)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_STORE, path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"
        d = ZramDevice()
        with pytest.raises(BackingError) as e:
            d.set_backing_dev(path)
        assert e.value.errno == errno.EBUSY
        assert "in use" in str(e.value)
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0
    d.set_backing_dev(path)  # the other process let go
    d.set_backing_dev("none")


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A loop device over a 16 MiB file in tmp_path (root and free loop devices needed)."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    image = backing_file(tmp_path, blocks=4096)
    r = subprocess.run(
        ["losetup", "--find", "--show", image], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        pytest.skip(f"no loop device: {r.stderr.strip()}")
    loop = r.stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def test_a_mounted_block_device_is_refused(loop_device: str, tmp_path: Path, data: bytes) -> None:
    """A loop device holding a mounted ext4 is in use: EBUSY, and the filesystem untouched."""
    subprocess.run(["mkfs.ext4", "-q", "-F", loop_device], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", loop_device, str(mnt)], check=True)
    try:
        (mnt / "kept").write_bytes(b"precious")
        d = ZramDevice()
        with pytest.raises(BackingError) as e:
            d.set_backing_dev(loop_device)
        assert e.value.errno == errno.EBUSY
        assert loop_device in str(e.value)
        assert d.backing_dev is None
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    fsck = subprocess.run(
        ["e2fsck", "-f", "-n", loop_device], capture_output=True, text=True, check=False
    )
    assert fsck.returncode == 0, fsck.stdout
    d.set_backing_dev(loop_device)  # unmounted: free to use
    d.set_backing_dev("none")


def test_a_block_device_is_claimed_by_one_device(loop_device: str, data: bytes) -> None:
    first, second = ZramDevice(), ZramDevice()
    first.set_backing_dev(loop_device)
    with pytest.raises(BackingError) as e:
        second.set_backing_dev(loop_device)
    assert e.value.errno == errno.EBUSY
    r = subprocess.run(
        ["mkfs.ext4", "-q", "-F", loop_device], capture_output=True, text=True, check=False
    )
    assert r.returncode != 0  # mkfs opens exclusively too: it is refused while zramd holds it
    first.set_backing_dev(loop_device)  # the holder may set it again
    first.set_disksize(PAGES * P)
    first.write(0, data)
    assert first.writeback([(0, 0, PAGES)]) > 0
    assert first.read(0, len(data)) == data
    first.reset()
    second.set_backing_dev(loop_device)
    second.reset()


def test_attaching_a_huge_sparse_file_costs_nothing(tmp_path: Path, data: bytes) -> None:
    """The block map grows with the blocks in use, not with the store: a 1 TiB file costs
    nothing to attach (it cost 256 MiB, one byte per block)."""
    path = tmp_path / "huge.img"
    try:
        with open(path, "wb") as f:
            f.truncate(1 << 40)
    except OSError as e:
        pytest.skip(f"no 1 TiB sparse file here: {e.strerror}")
    d = ZramDevice()
    tracemalloc.start()
    try:
        d.set_backing_dev(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10, peak
    d.set_disksize(PAGES * P)
    d.write(0, data)
    n = d.writeback([(0, 0, PAGES)])
    backing = d._state.backing  # type: ignore[union-attr]
    assert backing is not None
    assert backing.nr_blocks == 1 << 28
    assert backing.map_bytes() == n + 1  # lowest blocks first: the map covers just those
    assert d.read(0, len(data)) == data
    d.reset()


class HugeStore:
    """A store of 2**63 - 1 bytes (the largest a file or an NBD export can be) that keeps
    what is written in a dict."""

    name = "huge"
    nr_blocks = ((1 << 63) - 1) >> 12

    def __init__(self) -> None:
        self.blocks: dict[int, bytes] = {}

    def write_blocks(self, blocks: Sequence[int], pages: Sequence[BytesLike]) -> None:
        self.blocks.update(zip(blocks, map(bytes, pages), strict=True))

    def read_blocks(self, blocks: Sequence[int]) -> list[bytes]:
        return [self.blocks[b] for b in blocks]

    def close(self) -> None:
        pass


def test_the_block_map_of_the_largest_store() -> None:
    bd = BackingDevice(HugeStore())
    assert bd.map_bytes() == 1
    blocks = [bd.alloc() for _ in range(5)]
    assert blocks == [1, 2, 3, 4, 5]  # lowest first, as alloc_block_bdev
    bd.free([2, 4])
    assert bd.alloc() == 2
    assert bd.alloc() == 4
    assert bd.alloc() == 6
    assert (bd.count, bd.map_bytes()) == (6, 7)
    with pytest.raises(BackingError, match="freed twice"):
        bd.free([7])
    with pytest.raises(BackingError, match="freed twice"):
        bd.free([0])
    bd.free([1, 2, 3, 4, 5, 6])
    assert bd.count == 0
    with pytest.raises(BackingError, match="freed twice"):
        bd.free([3])


def test_a_huge_writeback_batch_holds_a_bounded_number_of_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """writeback_batch_size keeps the kernel's range (up to 2**32 - 1), but one writeback holds
    at most WB_BATCH_MAX decompressed pages at a time (it held the whole batch)."""
    pages = 4 * WB_BATCH_MAX
    data = b"".join(synthetic_pages(pages, seed=11))
    d = ZramDevice()
    d.set_backing_dev(backing_file(tmp_path, blocks=pages + 1))
    d.set_disksize(pages * P)
    d.write(0, data)
    d.set_writeback_batch_size((1 << 32) - 1)
    assert d.writeback_batch_size == (1 << 32) - 1
    backing = d._state.backing  # type: ignore[union-attr]
    assert backing is not None
    held = [0, 0]  # now, peak: pages taken out of the pool and not yet written
    core, write = d._state.core, backing.write  # type: ignore[union-attr]

    class CountingCore:
        """The device's core, counting the pages writeback takes out of it."""

        def __getattr__(self, name: str) -> object:
            return getattr(core, name)

        def take_page(self, index: int) -> tuple[int, int, bytes] | None:
            taken = core.take_page(index)
            if taken is not None:
                held[0] += 1
                held[1] = max(held)
            return taken

    def counting_write(blocks: Sequence[int], batch: Sequence[BytesLike]) -> None:
        write(blocks, batch)
        held[0] -= len(batch)

    monkeypatch.setattr(d._state, "core", CountingCore())
    monkeypatch.setattr(backing, "write", counting_write)
    n = d.writeback([(0, 0, pages)])
    assert n == d.bd_stat().bd_count > 2 * WB_BATCH_MAX
    assert held == [0, WB_BATCH_MAX]
    assert d.read(0, len(data)) == data
    d.reset()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted in tmp_path (root needed)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "zramd-test", str(mnt)], check=False
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_writeback_to_a_full_filesystem_is_enospc(small_fs: Path, data: bytes) -> None:
    """A sparse backing file bigger than its filesystem: writeback fails with ENOSPC (as
    docs/control-abi.md promises for a full backing device), not EIO, and loses nothing."""
    path = small_fs / "backing.img"
    with open(path, "wb") as f:
        f.truncate(4 << 20)  # 1024 blocks, where 16 fit
    d = ZramDevice()
    d.set_backing_dev(str(path))
    try:
        d.set_disksize(PAGES * P)
        d.write(0, data)
        d.set_writeback_batch_size(4)
        with pytest.raises(ZramdError) as e:
            d.writeback([(0, 0, PAGES)])
        assert e.value.errno == errno.ENOSPC
        assert "No space left on device" in str(e.value)
        written = d.bd_stat().bd_count
        assert 0 < written <= 16  # the batches that fit stay written back
        assert d.read(0, len(data)) == data
    finally:
        d.reset()  # closes the file, so the filesystem can go


def test_a_refused_write_across_a_written_back_page_keeps_no_pin(tmp_path: Path) -> None:
    """A write whose first edge page is written back (its block must be fetched) and whose
    last edge page is refused at mem_limit changes nothing, and the pin its first edge took is
    dropped: blocks freed afterwards go back to the store (bd_stat)."""
    d = ZramDevice()
    d.set_backing_dev(backing_file(tmp_path))
    d.set_disksize(8 * P)
    pages = [random_page(1), os.urandom(P), os.urandom(P)]  # page 0 compressible, 1 and 2 huge
    d.write(0, b"".join(pages))
    assert d.writeback([(0, 0, 1)]) == 1
    d.set_mem_limit(P)  # below the two huge pages' frames: no new object fits
    with pytest.raises(MemLimitError):
        d.write(P // 2, bytes(range(256)) * (P // 256))  # half of page 0, half of page 1
    d.set_mem_limit(0)
    assert d.read(0, 3 * P) == b"".join(pages)
    assert d.io_stat().failed_writes == 1
    d.write(0, pages[2])  # frees page 0's block
    assert d.bd_stat().bd_count == 0  # reclaimed: no reader holds a pin
    d.reset()


def test_a_block_freed_during_one_read_waits_for_that_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A written-back block freed while a read of the store is in flight goes back to the
    store once that read is done, even if other reads have started since: a stream of
    overlapping reads does not keep every freed block out of the store (it used to: writeback
    then failed with ENOSPC on a store mostly holding freed blocks)."""
    d = ZramDevice()
    d.set_backing_dev(backing_file(tmp_path))
    d.set_disksize(8 * P)
    pages = [random_page(i) for i in range(1, 5)]
    d.write(0, b"".join(pages))
    assert d.writeback([(0, 0, 4)]) == 4
    st = d._state
    assert st is not None
    assert st.backing is not None
    block = [st.core.slot(i)[0] for i in range(4)]
    store = st.backing.store
    real = store.read_blocks
    gates = {block[0]: threading.Event(), block[2]: threading.Event()}
    inside = {b: threading.Event() for b in gates}

    def read_blocks(blocks: Sequence[int]) -> list[bytes]:
        for b in blocks:
            if b in gates:
                inside[b].set()
                assert gates[b].wait(30)
        return real(blocks)

    monkeypatch.setattr(store, "read_blocks", read_blocks)
    got: dict[int, bytes] = {}

    def read(page: int) -> threading.Thread:
        t = threading.Thread(target=lambda: got.__setitem__(page, d.read(page * P, P)))
        t.start()
        assert inside[block[page]].wait(30)
        return t

    first = read(0)  # in the store, pinned
    d.write(P, pages[3])  # frees page 1's block while the first read may be reading it
    assert d.bd_stat().bd_count == 4  # so it stays taken for now
    second = read(2)  # another read starts
    gates[block[0]].set()
    first.join()
    assert d.bd_stat().bd_count == 3  # the first read is done: the block is back
    gates[block[2]].set()
    second.join()
    assert got == {0: pages[0], 2: pages[2]}
    assert d.read(0, 4 * P) == pages[0] + pages[3] + pages[2] + pages[3]
    d.reset()


def test_a_read_failing_in_any_way_drops_its_pin(
    pool_impl: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that meets a written-back page pins the freed blocks' generation; if it then
    fails with anything at all (here a RuntimeError while decoding the next page), the pin
    goes with it: blocks freed afterwards still go back to the store."""
    d = ZramDevice()
    d.set_backing_dev(backing_file(tmp_path))
    d.set_disksize(8 * P)
    d.write(0, random_page(1) + random_page(2))
    assert d.writeback([(0, 0, 1)]) == 1  # page 0 in the store, page 1 in the pool
    st = d._state
    assert st is not None
    core = st.core
    if pool_impl == "python":  # the C core decodes in C: fail it in the pool's load instead
        monkeypatch.setattr(core, "_decode", lambda *a: (_ for _ in ()).throw(RuntimeError("x")))
        with pytest.raises(RuntimeError):
            d.read(0, 2 * P)
        monkeypatch.undo()
    else:  # a buffer the C core refuses after its pin cannot be made; the failing fetch is it
        store = st.backing.store if st.backing is not None else None
        assert store is not None
        monkeypatch.setattr(
            store, "read_blocks", lambda blocks: (_ for _ in ()).throw(RuntimeError("x"))
        )
        with pytest.raises(RuntimeError):
            d.read(0, 2 * P)
        monkeypatch.undo()
    d.write(0, random_page(3))  # frees page 0's block
    assert d.bd_stat().bd_count == 0  # nobody reads it: back in the store
    assert d.read(0, 2 * P) == random_page(3) + random_page(2)
    d.reset()


def test_bd_stat_gives_freed_blocks_back_to_their_own_store(tmp_path: Path) -> None:
    """bd_stat hands the blocks a core freed to that core's store: read with the state taken
    before a reset and a new store set meanwhile, they must not free the new store's blocks
    (one would then hold two pages)."""
    d = ZramDevice()
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    d.set_backing_dev(backing_file(tmp_path / "old"))
    d.set_disksize(8 * P)
    d.write(0, random_page(1))
    assert d.writeback([(0, 0, 1)]) == 1
    d.write(0, random_page(2))  # page 0's block freed, waiting in the old core's queue
    old = d._state
    d.reset()
    d.set_backing_dev(backing_file(tmp_path / "new"))
    d.set_disksize(8 * P)
    d.write(0, random_page(3))
    assert d.writeback([(0, 0, 1)]) == 1  # block 1 of the new store holds page 0
    new = d._state
    d._state = old  # bd_stat as a thread that read the state before the reset sees it
    try:
        d.bd_stat()
    finally:
        d._state = new
    assert d.bd_stat().bd_count == 1
    d.write(P, random_page(4))
    assert d.writeback([(0, 1, 2)]) == 1  # must not reuse page 0's block
    assert d.read(0, 2 * P) == random_page(3) + random_page(4)
    d.reset()

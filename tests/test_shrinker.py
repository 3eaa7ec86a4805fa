"""Background compaction: compacts when worthwhile or under memory pressure, never otherwise."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from zramd.device import ZramDevice
from zramd.shrinker import Shrinker, memory_pressure
from zramd.testing import synthetic_pages

pytestmark = pytest.mark.usefixtures("pool_impl")  # C and Python object loops

P = 4096


MIN_THRESHOLD_PAGES = 256  # the default policy: at least 1 MiB ...


def sparse_device(pages: int) -> ZramDevice:
    dev = ZramDevice()
    dev.set_disksize(pages * P)
    data = [p for p in synthetic_pages(pages, seed=1) if p[8:] != p[:-8]]
    dev.write(0, b"".join(data))
    for i in range(0, len(data), 2):
        dev.discard(i * P, P)
    return dev


def test_scan_compacts_above_the_threshold() -> None:
    dev = sparse_device(8192)
    pool = dev.pool
    assert pool is not None
    assert pool.can_compact() >= MIN_THRESHOLD_PAGES
    s = Shrinker(dev, pressure=lambda: False)
    freed = s.scan()
    assert freed > 0
    assert pool.can_compact() == 0
    cs = dev.compact_stat()
    assert (cs.auto_runs, cs.auto_pages_freed) == (1, freed)
    assert (cs.direct_runs, cs.direct_pages_freed) == (0, 0)
    assert dev.mm_stat().pages_compacted == freed
    assert s.scan() == 0  # nothing left to do
    dev.reset()


def test_small_gains_wait_for_pressure() -> None:
    dev = sparse_device(512)
    pool = dev.pool
    assert pool is not None
    assert 0 < pool.can_compact() < MIN_THRESHOLD_PAGES
    assert Shrinker(dev, pressure=lambda: False).scan() == 0
    assert Shrinker(dev, pressure=lambda: True).scan() > 0
    dev.reset()


def test_thresholds_follow_the_policy() -> None:
    dev = sparse_device(2048)
    pool = dev.pool
    assert pool is not None
    freeable = pool.can_compact()
    total = pool.total_pages
    s = Shrinker(dev, pressure=lambda: False)
    # a byte threshold just above what can be freed: nothing happens
    dev.set_auto_compact(min_bytes=(freeable + 1) * P, min_percent=0)
    assert s.scan() == 0
    # the byte threshold met, but the percentage not
    dev.set_auto_compact(min_bytes=freeable * P, min_percent=-(-(freeable + 1) * 100 // total))
    assert s.scan() == 0
    # both met
    dev.set_auto_compact(min_percent=freeable * 100 // total)
    assert s.scan() == freeable
    dev.reset()


def test_thread_runs_and_stops() -> None:
    dev = sparse_device(8192)
    dev.set_auto_compact(interval=0)  # off: the thread only watches the policy
    s = Shrinker(dev, pressure=lambda: False)
    s.start()
    time.sleep(0.3)
    assert dev.compact_stat().auto_runs == 0
    dev.set_auto_compact(interval=0.05)  # switched on while the thread runs
    deadline = time.monotonic() + 10
    while not dev.compact_stat().auto_runs and time.monotonic() < deadline:
        time.sleep(0.02)
    s.stop()
    cs = dev.compact_stat()
    assert cs.auto_runs == 1
    assert dev.mm_stat().pages_compacted == cs.auto_pages_freed > 0
    assert 0 < cs.max_pause_us < 50_000  # one slice: a single source zspage
    dev.reset()


def test_uninitialised_device_is_left_alone() -> None:
    assert Shrinker(ZramDevice()).scan() == 0


def test_psi_parsing(tmp_path: Path) -> None:
    f = tmp_path / "memory"
    f.write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 total=0\n")
    assert not memory_pressure(str(f))
    f.write_text("some avg10=1.25 avg60=0.10 avg300=0.00 total=123\n")
    assert memory_pressure(str(f))
    assert not memory_pressure(str(tmp_path / "missing"))

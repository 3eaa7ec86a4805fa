"""Background compaction: compacts when worthwhile or under memory pressure, never otherwise."""

from __future__ import annotations

import time
from pathlib import Path

from zramd.device import ZramDevice
from zramd.shrinker import MIN_THRESHOLD_PAGES, Shrinker, memory_pressure
from zramd.testing import synthetic_pages

P = 4096


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
    s = Shrinker(dev, 0, pressure=lambda: False)
    freed = s.scan()
    assert freed > 0
    assert pool.can_compact() == 0
    assert (s.runs, s.pages_freed) == (1, freed)
    assert s.scan() == 0  # nothing left to do
    dev.reset()


def test_small_gains_wait_for_pressure() -> None:
    dev = sparse_device(512)
    pool = dev.pool
    assert pool is not None
    assert 0 < pool.can_compact() < MIN_THRESHOLD_PAGES
    assert Shrinker(dev, 0, pressure=lambda: False).scan() == 0
    assert Shrinker(dev, 0, pressure=lambda: True).scan() > 0
    dev.reset()


def test_thread_runs_and_stops() -> None:
    dev = sparse_device(8192)
    s = Shrinker(dev, 0.05, pressure=lambda: False)
    s.start()
    deadline = time.monotonic() + 10
    while not s.runs and time.monotonic() < deadline:
        time.sleep(0.02)
    s.stop()
    assert s.runs == 1
    assert dev.mm_stat().pages_compacted == s.pages_freed
    dev.reset()


def test_uninitialised_device_is_left_alone() -> None:
    assert Shrinker(ZramDevice(), 0).scan() == 0


def test_psi_parsing(tmp_path: Path) -> None:
    f = tmp_path / "memory"
    f.write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 total=0\n")
    assert not memory_pressure(str(f))
    f.write_text("some avg10=1.25 avg60=0.10 avg300=0.00 total=123\n")
    assert memory_pressure(str(f))
    assert not memory_pressure(str(tmp_path / "missing"))

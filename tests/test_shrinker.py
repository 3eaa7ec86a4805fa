"""Background compaction: compacts when worthwhile or under memory pressure, never otherwise."""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from zramd import compaction, shrinker
from zramd.device import ZramDevice
from zramd.shrinker import Shrinker, memory_pressure
from zramd.testing import synthetic_pages

from waiting import wait_for

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


class CountingEvent(threading.Event):
    """The shrinker's stop event, counting the thread's waits: one per look at the policy."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def test_thread_runs_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    # the pass's clock reads the source zspages migrated so far, as µs: a slice that holds
    # the class lock for one source zspage lasts exactly 1
    migrated = 0
    real_migrate = compaction.Compactor.migrate_zspage

    def migrate(*args: Any) -> None:
        nonlocal migrated
        migrated += 1
        real_migrate(*args)

    monkeypatch.setattr(compaction.Compactor, "migrate_zspage", migrate)
    monkeypatch.setattr(
        compaction,
        "time",
        types.SimpleNamespace(perf_counter_ns=lambda: migrated * 1000, sleep=time.sleep),
    )
    monkeypatch.setattr(shrinker, "IDLE_POLL", 0.01)
    dev = sparse_device(8192)
    dev.set_auto_compact(interval=0)  # off: the thread only watches the policy
    s = Shrinker(dev, pressure=lambda: False)
    stop = s._stop = CountingEvent()
    s.start()
    wait_for(lambda: stop.waits >= 3, what="the thread to look at the policy twice")
    assert dev.compact_stat().auto_runs == 0
    dev.set_auto_compact(interval=0.05)  # switched on while the thread runs
    wait_for(lambda: dev.compact_stat().auto_runs, what="a background compaction")
    s.stop()
    cs = dev.compact_stat()
    assert cs.auto_runs == 1
    assert dev.mm_stat().pages_compacted == cs.auto_pages_freed > 0
    if dev.native:  # the C pool times its slices itself (one per source zspage: zsmalloc.c)
        assert cs.max_pause_us * 1000 <= dev.pool.max_slice_ns  # type: ignore[union-attr]
    else:
        assert migrated > 1
        assert cs.max_pause_us == 1  # one slice: a single source zspage
    dev.reset()


def test_the_thread_survives_a_failing_check() -> None:
    """An exception in a check (here: PSI unreadable in an unexpected way) is reported and
    counted; the thread goes on checking, and compacts once the cause is gone."""
    dev = sparse_device(8192)
    dev.set_auto_compact(interval=0.01, min_bytes=1 << 40)  # only pressure can trigger it
    failing = True
    reports: list[str] = []

    def pressure() -> bool:
        if failing:
            raise OSError(5, "Input/output error")
        return True

    s = Shrinker(dev, pressure=pressure, report=reports.append)
    s.start()
    wait_for(lambda: s.failures >= 3, what="three failed checks")
    assert s._thread is not None
    assert s._thread.is_alive()
    assert reports[0] == (
        "zramd: background compaction failed, will retry: OSError: [Errno 5] Input/output error"
    )
    failing = False
    wait_for(lambda: dev.compact_stat().auto_runs, what="a compaction after the failures")
    s.stop()
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

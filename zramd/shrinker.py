"""Compaction without an admin: the userspace counterpart of zsmalloc's shrinker.

The kernel registers a shrinker per pool (2015, "zsmalloc: use shrinker to trigger
auto-compaction"): under memory pressure it asks how many pages compaction could free
(``zs_can_compact`` summed over classes) and compacts. A userspace process gets no reclaim
callback, so this thread polls instead: every ``interval`` seconds it compacts when the pool
could give back enough (``AutoCompact.threshold_pages``: at least ``min_bytes`` and
``min_percent`` of the pool), or when the system reports memory pressure
(``/proc/pressure/memory``, PSI) and anything at all can be freed. The policy lives in the
device so the control directory's ``auto_compact`` changes it while the thread runs.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from zramd.errors import InvalidValueError, ZramdError
from zramd.page import PAGE_SHIFT

if TYPE_CHECKING:
    from zramd.device import ZramDevice

PSI_PATH = "/proc/pressure/memory"
IDLE_POLL = 1.0  # seconds between looks at the policy while background compaction is off


class AutoCompact:
    """Background compaction: the policy the shrinker thread reads on every check (so a
    change through the control directory applies at once) and what it has done.

    The pool is compacted when it could give back at least ``min_bytes`` and at least
    ``min_percent`` % of its frames, or under memory pressure when anything can be freed.
    ``interval`` 0 switches it off.
    """

    __slots__ = ("interval", "max_pause_ns", "min_bytes", "min_percent", "pages_freed", "runs")

    def __init__(self) -> None:
        self.interval = 30.0  #: seconds between checks; 0 = off
        self.min_bytes = 1 << 20  # below 1 MiB a pass costs more than it returns
        self.min_percent = 3
        self.runs = 0  #: compactions started in the background
        self.pages_freed = 0  #: frames they freed
        self.max_pause_ns = 0  #: longest a class lock was held by one of their slices

    def threshold_pages(self, total_pages: int) -> int:
        return max(self.min_bytes >> PAGE_SHIFT, total_pages * self.min_percent // 100, 1)

    def update(
        self,
        *,
        interval: float | None = None,
        min_bytes: int | None = None,
        min_percent: int | None = None,
    ) -> None:
        """Change the policy (the thread reads it on every check). EINVAL for a negative
        interval or size, or a percentage outside 0..100; nothing changes then."""
        if interval is not None and interval < 0:
            raise InvalidValueError(f"auto_compact: interval={interval} must not be negative")
        if min_bytes is not None and min_bytes < 0:
            raise InvalidValueError(f"auto_compact: min_bytes={min_bytes} must not be negative")
        if min_percent is not None and not 0 <= min_percent <= 100:
            raise InvalidValueError(f"auto_compact: min_percent={min_percent} outside 0..100")
        if interval is not None:
            self.interval = interval
        if min_bytes is not None:
            self.min_bytes = min_bytes
        if min_percent is not None:
            self.min_percent = min_percent


def memory_pressure(path: str = PSI_PATH) -> bool:
    """True when tasks stalled on memory in the last 10 s (PSI ``some avg10`` > 0)."""
    try:
        with open(path) as f:
            first = f.readline().split()
    except OSError:
        return False
    fields = dict(item.split("=", 1) for item in first[1:] if "=" in item)
    return float(fields.get("avg10", "0")) > 0


def report_stderr(line: str) -> None:
    """Where background threads report by default: stderr, the server log."""
    print(line, file=sys.stderr, flush=True)


class Shrinker:
    """Background compaction of one device, following ``device.auto_compact`` (interval,
    thresholds) and counting its work there (``compact_stat``)."""

    def __init__(
        self,
        device: ZramDevice,
        *,
        pressure: Callable[[], bool] = memory_pressure,
        report: Callable[[str], None] = report_stderr,
    ) -> None:
        self.device = device
        self.pressure = pressure
        self.report = report
        self.failures = 0  #: checks that raised (reported, then the thread went on)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scan(self) -> int:
        """One check; compacts (gently: sliced, yielding the GIL) if worthwhile. Returns pages
        freed."""
        policy = self.device.auto_compact
        pool = self.device.pool
        if pool is None:
            return 0
        freeable = pool.can_compact()
        if not freeable:
            return 0
        if freeable < policy.threshold_pages(pool.total_pages) and not self.pressure():
            return 0
        try:
            freed = self.device.compact(gentle=True)
        except ZramdError:  # reset under our feet: nothing to do until re-initialised
            return 0
        policy.runs += 1
        policy.pages_freed += freed
        policy.max_pause_ns = max(policy.max_pause_ns, pool.max_slice_ns)
        return freed

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="zramd-shrinker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            interval = self.device.auto_compact.interval
            if self._stop.wait(interval if interval > 0 else IDLE_POLL):
                return
            if self.device.auto_compact.interval > 0:
                self.check()

    def check(self) -> None:
        """``scan``, in the thread: an exception is reported and counted, never the thread's
        end (a device whose compaction failed once still needs it later)."""
        try:
            self.scan()
        except Exception as e:
            self.failures += 1
            self.report(f"zramd: background compaction failed, will retry: {type(e).__name__}: {e}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

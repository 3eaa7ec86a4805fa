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

import threading
from collections.abc import Callable

from zramd.device import ZramDevice
from zramd.errors import ZramdError

PSI_PATH = "/proc/pressure/memory"
IDLE_POLL = 1.0  # seconds between looks at the policy while background compaction is off


def memory_pressure(path: str = PSI_PATH) -> bool:
    """True when tasks stalled on memory in the last 10 s (PSI ``some avg10`` > 0)."""
    try:
        with open(path) as f:
            first = f.readline().split()
    except OSError:
        return False
    fields = dict(item.split("=", 1) for item in first[1:] if "=" in item)
    return float(fields.get("avg10", "0")) > 0


class Shrinker:
    """Background compaction of one device, following ``device.auto_compact`` (interval,
    thresholds) and counting its work there (``compact_stat``)."""

    def __init__(
        self,
        device: ZramDevice,
        *,
        pressure: Callable[[], bool] = memory_pressure,
    ) -> None:
        self.device = device
        self.pressure = pressure
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
                self.scan()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

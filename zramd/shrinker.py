"""Compaction without an admin: the userspace counterpart of zsmalloc's shrinker.

The kernel registers a shrinker per pool (2015, "zsmalloc: use shrinker to trigger
auto-compaction"): under memory pressure it asks how many pages compaction could free
(``zs_can_compact`` summed over classes) and compacts. A userspace process gets no reclaim
callback, so this thread polls instead: every ``interval`` seconds it compacts when the pool
could give back at least ``threshold`` pages, or when the system reports memory pressure
(``/proc/pressure/memory``, PSI) and anything at all can be freed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from zramd.device import ZramDevice
from zramd.errors import ZramdError

MIN_THRESHOLD_PAGES = 256  # 1 MiB: below this a compaction pass costs more than it returns
THRESHOLD_SHARE = 32  # or 1/32 of the pool, whichever is larger
PSI_PATH = "/proc/pressure/memory"


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
    """Background compaction of one device."""

    def __init__(
        self,
        device: ZramDevice,
        interval: float,
        *,
        pressure: Callable[[], bool] = memory_pressure,
    ) -> None:
        self.device = device
        self.interval = interval
        self.pressure = pressure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0  #: compactions started by the shrinker
        self.pages_freed = 0

    def threshold(self, total_pages: int) -> int:
        return max(MIN_THRESHOLD_PAGES, total_pages // THRESHOLD_SHARE)

    def scan(self) -> int:
        """One check; compacts if worthwhile. Returns pages freed."""
        pool = self.device.pool
        if pool is None:
            return 0
        freeable = pool.can_compact()
        if not freeable:
            return 0
        if freeable < self.threshold(pool.total_pages) and not self.pressure():
            return 0
        try:
            freed = self.device.compact()
        except ZramdError:  # reset under our feet: nothing to do until re-initialised
            return 0
        self.runs += 1
        self.pages_freed += freed
        return freed

    def start(self) -> None:
        if self.interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="zramd-shrinker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.scan()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

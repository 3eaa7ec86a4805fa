"""Statistics as values: frozen snapshots named and ordered like the kernel's.

Only the control layer (``zramd.control``) turns these into text; everything else passes the
objects around. Field order of ``MmStat``, ``IoStat`` and ``DebugStat`` is the ABI of the
corresponding sysfs files (Documentation/admin-guide/blockdev/zram.rst).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Fullness-group column names of zsmalloc's debugfs ``classes`` file (kernel >= 6.4).
FULLNESS_COLUMNS = ("10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "99%", "100%")


@dataclass(frozen=True, slots=True)
class ClassStat:
    """One row of ``/sys/kernel/debug/zsmalloc/<pool>/classes``."""

    index: int  #: ``class``: slot number of the class
    size: int  #: object size including the 8-byte header (huge: 4096, no header)
    fullness: tuple[int, ...]  #: zspages in each group of FULLNESS_COLUMNS
    obj_allocated: int  #: object slots in all zspages of the class
    obj_used: int  #: live objects
    pages_used: int  #: obj_allocated / objs_per_zspage * pages_per_zspage
    pages_per_zspage: int
    freeable: int  #: pages compaction could free now (``zs_can_compact``)


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Pool totals plus the per-class table."""

    total_pages: int  #: frames held by live zspages (mm_stat mem_used_total / 4096)
    pages_compacted: int  #: frames freed by compaction since the pool was created
    huge_class_size: int
    classes: tuple[ClassStat, ...]
    frames_cached: int  #: freed frames still resident, awaiting a batched release
    frames_reserved: int  #: size of the arena's address-space reservation, in frames
    metadata_bytes: int  #: handle tables, zspage and frame descriptors
    objects: int  #: live objects in all classes

    @property
    def freeable(self) -> int:
        """Total pages compaction could free (the shrinker's count)."""
        return sum(c.freeable for c in self.classes)

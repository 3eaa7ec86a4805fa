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


@dataclass(frozen=True, slots=True)
class MmStat:
    """``mm_stat``: nine fields, this order is the ABI (bytes unless noted)."""

    orig_data_size: int  #: pages stored x 4096, same-filled pages included
    compr_data_size: int  #: sum of stored object sizes (huge objects count 4096)
    mem_used_total: int  #: frames held by the pool x 4096, fragmentation included
    mem_limit: int  #: 0 = no limit
    mem_used_max: int  #: high-water mark of mem_used_total
    same_pages: int  #: count of same-filled pages (no pool memory)
    pages_compacted: int  #: count of frames freed by compaction since init
    huge_pages: int  #: count of pages stored uncompressed
    huge_pages_since: int  #: count of huge stores since init (never decremented)


@dataclass(frozen=True, slots=True)
class IoStat:
    """``io_stat`` (counts)."""

    failed_reads: int
    failed_writes: int
    invalid_io: int  #: always 0, printed as a literal since kernel 6.5
    notify_free: int  #: pages freed by discard / write-zeroes (each page visited counts)


@dataclass(frozen=True, slots=True)
class DebugStat:
    """``debug_stat`` (format version 1; writestall is gone since 6.15)."""

    version: int
    miss_free: int  #: slot frees skipped because the slot was busy (never, here)


@dataclass(frozen=True, slots=True)
class BdStat:
    """``bd_stat``, in 4 KiB blocks."""

    bd_count: int  #: blocks of the backing device in use now
    bd_reads: int  #: blocks read from it since init
    bd_writes: int  #: blocks written to it since init


@dataclass(frozen=True, slots=True)
class CompactStat:
    """``compact_stat`` (zramd only): compaction nobody asked for, since init."""

    auto_runs: int  #: background compactions (the shrinker thread)
    auto_pages_freed: int  #: frames they freed
    direct_runs: int  #: compactions before refusing a write (mem_limit, full arena)
    direct_pages_freed: int  #: frames they freed
    max_pause_us: int  #: longest a size class was locked by one background slice


@dataclass(frozen=True, slots=True)
class MemStat:
    """``mem_stat`` (zramd only): what the device really costs this process, in bytes."""

    rss: int  #: resident set of the whole process (interpreter included)
    mem_used_total: int  #: frames held by the pool (= mm_stat field 3)
    arena_cached: int  #: freed frames still resident, awaiting a batched release
    pool_metadata: int  #: handle tables, zspage descriptors, frame links
    slot_table: int  #: the 16-byte-per-page slot table, fully written
    arena_reserved: int  #: address space reserved for frames (not memory)


@dataclass(frozen=True, slots=True)
class CoreStats:
    """What the data path counts (``ZramCore.stats()``): sums over the table's stripes, the
    failure and compaction counters, and the limit it enforces."""

    stored: int  #: slots holding anything (pages_stored)
    compr: int  #: bytes of pool objects (compr_data_size)
    same: int  #: same-filled slots
    huge: int  #: slots stored raw
    huge_since: int  #: raw stores since init
    notify_free: int  #: pages visited by discard / write-zeroes
    failed_reads: int
    failed_writes: int
    direct_runs: int  #: compactions before refusing a write
    direct_freed: int  #: frames they freed
    max_pages: int  #: high-water mark of the pool, in frames
    limit_pages: int  #: mem_limit in frames (0 = none)
    wb_pending: int  #: written-back blocks freed by I/O, not yet reclaimed

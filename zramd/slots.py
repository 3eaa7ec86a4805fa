"""The slot table's layout: one 16-byte entry per 4 KiB page of the device (zram's ``table[]``).

=========  ====  ===============================================================
column     type  meaning
=========  ====  ===============================================================
handle     u64   pool handle; or the fill word of a same-filled page
flags      u32   object size in the low 13 bits, then the ZRAM_* flag bits
actime     u32   last access, whole seconds of the device's clock
=========  ====  ===============================================================

The columns are lazily committed arrays: a 16 GiB device reserves 64 MiB of address space for
its table and pays memory only for the parts that have been written (0.39 % of the data at most).

Flag bits are numbered as in the 7.0-era kernel. ``ZRAM_ENTRY_LOCK`` is kept for the numbering
but unused: zramd locks slots with striped locks (``core.py``, ``csrc/zram.c``), not a bit in
the entry. The columns themselves are the core's.
"""

from __future__ import annotations

ZRAM_FLAG_SHIFT = 13  # PAGE_SHIFT + 1: sizes 0..4096 fit below the flags
ZRAM_SIZE_MASK = (1 << ZRAM_FLAG_SHIFT) - 1
ZRAM_SAME = 1 << 13  #: one repeated 64-bit word; ``handle`` holds the word, no pool memory
ZRAM_ENTRY_LOCK = 1 << 14  #: unused (striped locks)
ZRAM_WB = 1 << 15  #: written back: ``handle`` holds the block on the backing device
ZRAM_PP_SLOT = 1 << 16  #: picked by a writeback/recompress pass; any access drops it
ZRAM_HUGE = 1 << 17  #: stored raw: the page did not compress below huge_class_size
ZRAM_IDLE = 1 << 18  #: not accessed since the last ``idle`` marking
ZRAM_INCOMPRESSIBLE = 1 << 19
ZRAM_COMP_PRIORITY_SHIFT = 20  #: two bits: which algorithm produced the object (0 = primary)
ZRAM_COMP_PRIORITY_MASK = 3 << ZRAM_COMP_PRIORITY_SHIFT

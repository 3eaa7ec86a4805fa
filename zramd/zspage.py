"""Zspage descriptors: one row per zspage in flat arrays, and the per-class fullness lists.

A zspage is a chain of ``pages_per_zspage`` frames (linked through the arena's link words)
holding ``objs_per_zspage`` objects of one class; object ``i`` starts at byte ``i * size`` of
the concatenated chain, so it may begin in one frame and end in the next.

Object layout inside a (non-huge) zspage, one 64-bit *header* word in front of every object::

    allocated:  | size (16) | handle (47) | 1 |   then the payload
    free:       |   arena offset of the next free object   | 0 |   (0 ends the free list)

The header of an allocated object is the reverse map compaction needs (object -> handle); the
size lets ``read(handle)`` return exactly the bytes written. Huge zspages (one frame, one object)
keep no header: their object is the whole frame.

Descriptor columns, indexed by zspage id (0 is "none"), live in lazily committed arrays sized
for the arena, so only ids in use cost memory: 32 bytes per zspage.

============  =====  ========================================================
column        type   meaning
============  =====  ========================================================
inuse         u16    live objects
freeobj       i64    arena offset of the first object on the free list (0: empty)
fresh         i64    arena offset of the next never-used object (0: none left)
fresh_left    u16    never-used objects left
first         i32    first frame of the chain
prev, next    i32    neighbours in the class's fullness list; ``next`` also
                     threads free descriptor ids
============  =====  ========================================================

Free objects are found on the free list first (freed objects, LIFO, as in the kernel), then
past the *fresh* cursor. The kernel carves every object of a new zspage into its free list up
front; in Python that is a store per object, so objects are carved lazily instead: a new
zspage costs O(1), and only objects below the cursor have ever held a header (compaction and
the invariant checker look no further).

Not locked here: a zspage belongs to one class and is touched only under that class's lock;
``alloc_id``/``free_id`` run under the pool's page lock.
"""

from __future__ import annotations

from zramd.frames import lazy_array
from zramd.page import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from zramd.size_class import SizeClass

#: a handle is ``slot << HANDLE_CLASS_BITS | class index``: the entry of its class's handle
#: table that holds the object's location
HANDLE_CLASS_BITS = 8  # 255 class slots
HANDLE_CLASS_MASK = (1 << HANDLE_CLASS_BITS) - 1
#: a location is ``zspage id << LOC_SHIFT | arena offset`` (huge: ``size << LOC_SHIFT | frame
#: offset``): arena offsets stay below 2**37 (MAX_FRAMES frames)
LOC_SHIFT = 37
LOC_OFF_MASK = (1 << LOC_SHIFT) - 1

OBJ_ALLOCATED_TAG = 1
HDR_HANDLE_SHIFT = 1
HDR_SIZE_SHIFT = 48
HDR_HANDLE_MASK = (1 << HDR_SIZE_SHIFT) - 1  # handle and tag bits
MAX_HANDLE = (1 << (HDR_SIZE_SHIFT - HDR_HANDLE_SHIFT)) - 1


def object_header(handle: int, size: int) -> int:
    """Header word of an allocated object."""
    return (size << HDR_SIZE_SHIFT) | (handle << HDR_HANDLE_SHIFT) | OBJ_ALLOCATED_TAG


class ZspageTable:
    """All zspage descriptors of a pool."""

    __slots__ = (
        "_free_id",
        "count",
        "first",
        "freeobj",
        "fresh",
        "fresh_left",
        "inuse",
        "max_zspages",
        "next",
        "prev",
        "top",
    )

    def __init__(self, max_zspages: int) -> None:
        self.max_zspages = max_zspages
        self.inuse = lazy_array("H", max_zspages)
        self.freeobj = lazy_array("q", max_zspages)
        self.fresh = lazy_array("q", max_zspages)
        self.fresh_left = lazy_array("H", max_zspages)
        self.first = lazy_array("i", max_zspages)
        self.prev = lazy_array("i", max_zspages)
        self.next = lazy_array("i", max_zspages)
        self.top = 1  #: ids [1, top) have been used
        self._free_id = 0
        self.count = 0  #: live zspages

    def alloc_id(self) -> int:
        """A free descriptor id (the caller fills every column)."""
        zid = self._free_id
        if zid:
            self._free_id = self.next[zid]
        else:
            zid = self.top
            self.top = zid + 1
        self.count += 1
        return zid

    def free_id(self, zid: int) -> None:
        self.next[zid] = self._free_id
        self._free_id = zid
        self.count -= 1

    # -- fullness lists (the kernel's insert_zspage / remove_zspage) ---------------------------

    def link(self, cls: SizeClass, zid: int, group: int) -> None:
        """File ``zid`` at the head of ``cls``'s list for ``group`` (1..10)."""
        head = cls.heads[group]
        self.prev[zid] = 0
        self.next[zid] = head
        if head:
            self.prev[head] = zid
        else:
            cls.mask |= 1 << group
        cls.heads[group] = zid
        cls.counts[group] += 1

    def unlink(self, cls: SizeClass, zid: int, group: int) -> None:
        """Take ``zid`` off ``cls``'s list for ``group``."""
        prev = self.prev[zid]
        nxt = self.next[zid]
        if prev:
            self.next[prev] = nxt
        else:
            cls.heads[group] = nxt
            if not nxt:
                cls.mask &= ~(1 << group)
        if nxt:
            self.prev[nxt] = prev
        cls.counts[group] -= 1

    # -- object placement -----------------------------------------------------------------------

    def init_zspage(self, zid: int, first: int, cls: SizeClass) -> None:
        """An empty zspage on the chain starting at frame ``first``: O(1), nothing carved."""
        self.first[zid] = first
        self.inuse[zid] = 0
        self.freeobj[zid] = 0
        self.fresh[zid] = first << PAGE_SHIFT
        self.fresh_left[zid] = cls.objs_per_zspage

    def take_object(self, zid: int, size: int, links: memoryview, words: memoryview) -> int:
        """``obj_malloc``'s first half: a free object's arena offset (the caller checked that
        the zspage is not full, and writes the header)."""
        off: int = self.freeobj[zid]
        if off:
            self.freeobj[zid] = words[off >> 3] >> 1
            return off
        off = self.fresh[zid]
        left = self.fresh_left[zid] - 1
        self.fresh_left[zid] = left
        if not left:
            self.fresh[zid] = 0
        elif (off & PAGE_MASK) + size < PAGE_SIZE:
            self.fresh[zid] = off + size
        else:  # the next object starts in the next frame of the chain
            self.fresh[zid] = (links[off >> PAGE_SHIFT] << PAGE_SHIFT) + (
                (off & PAGE_MASK) + size - PAGE_SIZE
            )
        return off

    def put_object(self, zid: int, off: int, words: memoryview) -> None:
        """``obj_free``'s list half: push the object on the zspage's free list."""
        words[off >> 3] = self.freeobj[zid] << 1
        self.freeobj[zid] = off

    def object_offsets(self, zid: int, cls: SizeClass, links: memoryview) -> list[int]:
        """Arena offsets of the objects handed out at least once, in index order."""
        size = cls.size
        frame = self.first[zid]
        base = 0  # chain offset where ``frame`` starts
        offsets = []
        carved = cls.objs_per_zspage - self.fresh_left[zid]
        for co in range(0, carved * size, size):
            while co >= base + PAGE_SIZE:
                frame = links[frame]
                base += PAGE_SIZE
            offsets.append((frame << PAGE_SHIFT) + co - base)
        return offsets

    def metadata_bytes(self) -> int:
        """Descriptor bytes of every id ever used (the resident part of the columns)."""
        return self.top * sum(column.itemsize for column in self._columns())

    def _columns(self) -> tuple[memoryview, ...]:
        return (
            self.inuse,
            self.freeobj,
            self.fresh,
            self.fresh_left,
            self.first,
            self.prev,
            self.next,
        )

    def close(self) -> None:
        for column in self._columns():
            column.release()

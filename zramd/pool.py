"""zsmalloc in userspace: a pool of compressed objects on 4 KiB frames.

Design (after mm/zsmalloc.c)
============================

Compressed pages come in every size from a few bytes to 4 KiB. Giving each its own frame wastes
half the memory; a general heap fragments and cannot give frames back. zsmalloc instead sorts
objects into *size classes* 16 bytes apart and packs each class into *zspages*: chains of up to
``chain`` independent frames (8 by default) sized so the chain's tail waste is minimal, objects
laid end to end across frame boundaries. Frames come from one mmap reservation (``frames``) and
go back to the OS with madvise when their zspage empties.

Users hold *handles*, never locations. A handle names an entry of its class's handle table; the
entry records where the object is now. Compaction moves an object by copying its bytes and
rewriting that one entry, so the device's slot table never changes when objects move::

    handle = entry << 8 | class index
       |
       v
    cls.handles[entry] = zspage id << 37 | arena offset          (the "location"; huge objects:
       |                     |                                   size << 37 | frame offset)
       |                     v
       |           zspages: inuse, freeobj, fresh cursor, first frame, prev/next
       |                     |
       v                     v
    arena: frame f ---link---> frame g ---link---> 0           (frames of one zspage)
           [hdr|obj 0 ...][hdr|obj 1 .....|..... obj 1][hdr|obj 2 ...] ...
             ^ header = size | handle | 1: the way back from an object to its handle

Allocation takes an object from the fullest non-full zspage of the class (fullness groups in
10 % steps, kernel >= 6.4); a zspage whose last object is freed is released at once.
Compaction (``compaction.py``) walks classes from the largest down, moving objects from the
emptiest zspage into the fullest until ``can_compact`` is zero.

Metadata per live object: 8 bytes of handle table plus the zspage's descriptor (32 bytes) and
its frames' link words (4 bytes each) shared by all objects of the zspage; the test suite holds
the total to at most 16 bytes per object (measured figures: docs/performance.md).

Locking
=======

Lock order (outermost first)::

    pool._compact_lock  (single flight: a second compact() returns 0 at once)
      -> cls.lock       (one per size class: its lists, counters, handle table, object bytes)
        -> pool._page_lock  (leaf: frame arena, zspage ids)

The device adds its slot locks outside all of these. No code holds two class locks at once.
Compaction takes a class lock per source zspage and drops it in between, so I/O on the class is
never stalled for a whole pass. The GIL makes each array store atomic but not the multi-step
updates, which is why every step above runs under its class lock.

This pool is the reference twin of ``zramd/csrc/zsmalloc.c`` (``zramd._zram.Pool``), which
owns its memory and pthread mutexes and runs with the GIL released: the same calls on both give
the same handles, locations, statistics and errors (``pool_api.PoolAPI`` is the contract;
``tests/test_pool_differential.py`` holds them to it). ``zramd.native`` picks one.
"""

from __future__ import annotations

import errno
import sys
import threading
from collections.abc import Iterable, Sequence

from zramd._types import BytesLike
from zramd.compaction import Compactor
from zramd.errors import CorruptionError, InvalidHandleError, MemoryLockError, PoolExhaustedError
from zramd.frames import MAX_FRAMES, RELEASE_BATCH, FrameArena
from zramd.page import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from zramd.size_class import (
    DEFAULT_CHAIN_SIZE,
    ZS_HANDLE_SIZE,
    ZS_INUSE_RATIO_100,
    ZS_MAX_ALLOC_SIZE,
    ClassSpec,
    SizeClass,
    build_class_table,
)
from zramd.stats import ClassStat, PoolStats
from zramd.zspage import (
    HANDLE_CLASS_BITS,
    HANDLE_CLASS_MASK,
    HDR_HANDLE_MASK,
    HDR_SIZE_SHIFT,
    LOC_OFF_MASK,
    LOC_SHIFT,
    MAX_HANDLE,
    OBJ_ALLOCATED_TAG,
    ZspageTable,
)

FULL = ZS_INUSE_RATIO_100

assert MAX_FRAMES << PAGE_SHIFT <= 1 << LOC_SHIFT


class ZsPool:
    """A zsmalloc pool of at most ``max_bytes`` of frames.

    ``max_bytes`` sizes the address-space reservation (nothing is committed up front);
    ``chain`` is CONFIG_ZSMALLOC_CHAIN_SIZE (4..16). All methods are thread-safe.

    The batch calls the device makes once per request:

    * ``store_many(objs) -> handles``: store each buffer as a new object; handles in order.
      All or nothing: if one cannot be stored (bad size, arena exhausted), those already
      stored are freed and the exception propagates.
    * ``load_many(handles) -> list[bytes]``: copies of the objects' bytes, in order, each taken
      under its class lock, so callers decompress with no lock held while compaction goes on.
    * ``free_many(handles)``: free every handle; stops at the first invalid one
      (InvalidHandleError), having freed those before it.
    """

    def __init__(
        self,
        max_bytes: int,
        *,
        chain: int = DEFAULT_CHAIN_SIZE,
        release_batch: int = RELEASE_BATCH,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"pool size {max_bytes} must be positive")
        max_frames = -(-max_bytes // PAGE_SIZE) + 1  # + the guard frame 0
        if max_frames > MAX_FRAMES:
            raise ValueError(f"pool size {max_bytes} exceeds {(MAX_FRAMES - 1) * PAGE_SIZE} bytes")
        self.class_table = build_class_table(chain)
        self.huge_class_size = self.class_table.huge_class_size
        self._arena = FrameArena(max_frames, release_batch)
        self._zspages = ZspageTable(max_frames)
        self._words = self._arena.view.cast("Q")  # 64-bit view for object headers
        self._classes = tuple(SizeClass(spec) for spec in self.class_table.classes)
        by_index: list[SizeClass | None] = [None] * (HANDLE_CLASS_MASK + 1)
        for cls in self._classes:
            by_index[cls.index] = cls
        self._by_index = by_index
        self._by_size: list[SizeClass] = [self._classes[0]] + [
            self._class_at(self.class_table.for_size(size))
            for size in range(1, ZS_MAX_ALLOC_SIZE + 1)
        ]
        self._page_lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self.pages_compacted = 0
        self._compactor = Compactor(self._zspages, self._arena, self._words, self._free_zspage)
        self._closed = False

    @property
    def native(self) -> bool:
        """Whether the pool runs in C: this one is the Python reference."""
        return False

    def _class_at(self, spec: ClassSpec) -> SizeClass:
        cls = self._by_index[spec.index]
        assert cls is not None
        return cls

    # -- lookups -------------------------------------------------------------------------------

    @property
    def total_pages(self) -> int:
        """Frames held by live zspages (``zs_get_total_pages``)."""
        return self._arena.in_use

    @property
    def bytes_moved(self) -> int:
        """Object bytes (headers included) copied by compaction."""
        return self._compactor.bytes_moved

    @property
    def max_slice_ns(self) -> int:
        """Longest class-lock hold of a gentle compaction slice, in nanoseconds."""
        return self._compactor.max_slice_ns

    @property
    def peak_pages(self) -> int:
        """The most frames held at once since the pool was created."""
        return self._arena.peak

    def class_for_size(self, size: int) -> ClassSpec:
        """The class a ``malloc(size)`` lands in (``zs_lookup_class_index``)."""
        return self.class_table.for_size(size)

    def _class_of(self, handle: int) -> SizeClass:
        cls = self._by_index[handle & HANDLE_CLASS_MASK] if handle > HANDLE_CLASS_MASK else None
        if cls is None:
            raise InvalidHandleError(f"handle {handle} was not returned by malloc")
        return cls

    def _location(self, cls: SizeClass, handle: int) -> int:
        """The live location of ``handle`` (caller holds ``cls.lock``)."""
        entry = handle >> HANDLE_CLASS_BITS
        handles = cls.handles
        if entry >= len(handles) or (loc := handles[entry]) < 0:
            raise InvalidHandleError(f"handle {handle} is not allocated (freed, or never returned)")
        return loc

    def _header(self, cls: SizeClass, handle: int, off: int) -> int:
        hdr: int = self._words[off >> 3]
        if hdr & HDR_HANDLE_MASK != (handle << 1) | OBJ_ALLOCATED_TAG:
            raise CorruptionError(
                f"object at arena offset {off} has header {hdr:#x}, expected handle {handle} "
                f"(class {cls.size})"
            )
        return hdr

    def locate(self, handle: int) -> tuple[int, int]:
        """(zspage id, arena offset) of a live object; zspage 0 for a huge object."""
        cls = self._class_of(handle)
        with cls.lock:
            loc = self._location(cls, handle)
        return (0 if cls.huge else loc >> LOC_SHIFT), loc & LOC_OFF_MASK

    def object_size(self, handle: int) -> int:
        """The size ``handle`` was allocated with."""
        cls = self._class_of(handle)
        with cls.lock:
            loc = self._location(cls, handle)
            if cls.huge:
                return loc >> LOC_SHIFT
            return self._header(cls, handle, loc & LOC_OFF_MASK) >> HDR_SIZE_SHIFT

    # -- allocation ----------------------------------------------------------------------------
    #
    # One allocation path (_alloc) and one free path (_free_locked), both called with the class
    # lock held; the public single-object calls go through the batch ones, which the device
    # uses for whole requests (one Python call per request, not per page).

    def malloc(self, size: int) -> int:
        """Allocate an object of ``size`` bytes (1..4096) and return its handle.

        Raises ValueError for a bad size, PoolExhaustedError when the arena has no frame left.
        The object's contents are undefined until written.
        """
        cls = self._class_for(size)
        with cls.lock:
            return self._alloc(cls, size)[0]

    def _class_for(self, size: int) -> SizeClass:
        if not 0 < size <= ZS_MAX_ALLOC_SIZE:
            raise ValueError(f"object size {size} outside 1..{ZS_MAX_ALLOC_SIZE}")
        return self._by_size[size]

    def store(self, data: BytesLike) -> int:
        """``malloc(len(data))`` and ``write`` in one step."""
        return self.store_many((data,))[0]

    def store_many(self, objs: Sequence[BytesLike]) -> list[int]:
        handles: list[int] = []
        class_for = self._class_for
        write = self._arena.write
        try:
            for obj in objs:
                cls = class_for(len(obj))
                with cls.lock:
                    handle, off = self._alloc(cls, len(obj))
                    write(off if cls.huge else off + ZS_HANDLE_SIZE, obj)
                handles.append(handle)
        except BaseException:
            self.free_many(handles)
            raise
        return handles

    def _alloc(self, cls: SizeClass, size: int) -> tuple[int, int]:
        """``obj_malloc``: an object and a handle (caller holds ``cls.lock``).

        Returns the handle and the object's arena offset (of its header, or of the frame for a
        huge object). Takes from the fullest non-full zspage; carves a new one only when none
        has room.
        """
        if cls.huge:
            with self._page_lock:
                frame = self._arena.alloc_chain(1)
            off = frame << PAGE_SHIFT
            loc = (size << LOC_SHIFT) | off
            cls.counts[FULL] += 1
            cls.obj_allocated += 1
        else:
            zspages = self._zspages
            mask = cls.mask
            if mask:
                group = mask.bit_length() - 1
                zid = cls.heads[group]
            else:
                zid = self._new_zspage(cls)
                group = 0
            off = zspages.take_object(zid, cls.size, self._arena.links, self._words)
            inuse = zspages.inuse[zid] + 1
            zspages.inuse[zid] = inuse
            new_group = cls.group_of[inuse]
            if new_group != group:
                if group:
                    zspages.unlink(cls, zid, group)
                if new_group == FULL:
                    cls.counts[FULL] += 1
                else:
                    zspages.link(cls, zid, new_group)
            loc = (zid << LOC_SHIFT) | off
        handles = cls.handles
        entry = cls.free_entry
        if entry:
            cls.free_entry = -1 - handles[entry]
            handles[entry] = loc
        else:
            entry = len(handles)
            handles.append(loc)
        handle = (entry << HANDLE_CLASS_BITS) | cls.index
        if not cls.huge:
            if handle > MAX_HANDLE:  # 2**39 live objects in one class: unreachable in practice
                raise PoolExhaustedError(f"class {cls.size} has no handle left")
            self._words[off >> 3] = (size << HDR_SIZE_SHIFT) | (handle << 1) | OBJ_ALLOCATED_TAG
        cls.obj_used += 1
        return handle, off

    def _new_zspage(self, cls: SizeClass) -> int:
        """``alloc_zspage``: frames for an empty zspage (under cls.lock)."""
        with self._page_lock:
            first = self._arena.alloc_chain(cls.pages_per_zspage)
            zid = self._zspages.alloc_id()
        self._zspages.init_zspage(zid, first, cls)
        cls.obj_allocated += cls.objs_per_zspage
        return zid

    def _free_zspage(self, cls: SizeClass, zid: int) -> None:
        """Release an empty, unlisted zspage: frames to the arena, id to the table."""
        first = self._zspages.first[zid]
        cls.obj_allocated -= cls.objs_per_zspage
        with self._page_lock:
            self._zspages.free_id(zid)
            self._arena.free_chain(first)

    def free(self, handle: int) -> None:
        """Free an object. Raises InvalidHandleError for a handle that is not allocated."""
        self.free_many((handle,))

    def free_many(self, handles: Iterable[int]) -> None:
        class_of = self._class_of
        for handle in handles:
            cls = class_of(handle)
            with cls.lock:
                self._free_locked(cls, handle)

    def _free_locked(self, cls: SizeClass, handle: int) -> None:
        """``obj_free`` + ``fix_fullness_group`` (caller holds ``cls.lock``)."""
        entry = handle >> HANDLE_CLASS_BITS
        table = cls.handles
        loc = table[entry] if entry < len(table) else -1
        if loc < 0:
            self._location(cls, handle)  # raises InvalidHandleError
        off = loc & LOC_OFF_MASK
        if cls.huge:
            table[entry] = -1 - cls.free_entry
            cls.free_entry = entry
            cls.counts[FULL] -= 1
            cls.obj_allocated -= 1
            cls.obj_used -= 1
            with self._page_lock:
                self._arena.free_chain(off >> PAGE_SHIFT)
            return
        if self._words[off >> 3] & HDR_HANDLE_MASK != (handle << 1) | OBJ_ALLOCATED_TAG:
            self._header(cls, handle, off)  # raises CorruptionError
        table[entry] = -1 - cls.free_entry
        cls.free_entry = entry
        zid = loc >> LOC_SHIFT
        zspages = self._zspages
        zspages.put_object(zid, off, self._words)
        inuse = zspages.inuse[zid]
        group = cls.group_of[inuse]
        inuse -= 1
        zspages.inuse[zid] = inuse
        cls.obj_used -= 1
        new_group = cls.group_of[inuse]
        if new_group != group:
            if group == FULL:
                cls.counts[FULL] -= 1
            else:
                zspages.unlink(cls, zid, group)
            if new_group:
                zspages.link(cls, zid, new_group)
            else:
                self._free_zspage(cls, zid)

    # -- object bytes --------------------------------------------------------------------------

    def write(self, handle: int, data: BytesLike) -> None:
        """Write ``data`` (at most the allocated size) at the start of the object."""
        cls = self._class_of(handle)
        n = len(data)
        with cls.lock:
            loc = self._location(cls, handle)
            off = loc & LOC_OFF_MASK
            if cls.huge:
                size = loc >> LOC_SHIFT
            else:
                size = self._header(cls, handle, off) >> HDR_SIZE_SHIFT
                off += ZS_HANDLE_SIZE
            if n > size:
                raise ValueError(f"{n} bytes do not fit object {handle} of {size} bytes")
            self._arena.write(off, data)

    def read(self, handle: int) -> bytes:
        """A copy of the object's bytes (its allocated size)."""
        return self.load_many((handle,))[0]

    def load_many(self, handles: Iterable[int]) -> list[bytes]:
        out: list[bytes] = []
        class_of = self._class_of
        mapped = self._arena.map
        words = self._words
        for handle in handles:
            cls = class_of(handle)
            with cls.lock:
                # the checks of _location/_header, inline on the hot path; they raise
                entry = handle >> HANDLE_CLASS_BITS
                table = cls.handles
                loc = table[entry] if entry < len(table) else -1
                if loc < 0:
                    self._location(cls, handle)
                off = loc & LOC_OFF_MASK
                if cls.huge:
                    out.append(mapped[off : off + (loc >> LOC_SHIFT)])
                    continue
                hdr = words[off >> 3]
                if hdr & HDR_HANDLE_MASK != (handle << 1) | OBJ_ALLOCATED_TAG:
                    self._header(cls, handle, off)
                size = hdr >> HDR_SIZE_SHIFT
                off += ZS_HANDLE_SIZE
                if (off & PAGE_MASK) + size <= PAGE_SIZE:
                    out.append(mapped[off : off + size])
                else:
                    out.append(self._arena.read(off, size))
        return out

    # -- compaction ----------------------------------------------------------------------------

    def can_compact(self) -> int:
        """Frames compaction could free now, summed over classes (the shrinker's count)."""
        return sum(cls.can_compact() for cls in self._classes)

    def compact(self, *, gentle: bool = False) -> int:
        """``zs_compact``: move objects to free whole zspages; returns frames freed.

        Single flight: if a compaction is already running, returns 0 at once. ``gentle`` (for
        background passes): give waiting threads the GIL after every slice and record the
        longest slice in ``max_slice_ns``.
        """
        if not self._compact_lock.acquire(blocking=False):
            return 0
        try:
            freed = 0
            for cls in reversed(self._classes):  # largest first: fewest moves per frame freed
                if cls.can_compact():
                    freed += self._compactor.compact_class(cls, gentle=gentle)
            self.pages_compacted += freed
            with self._page_lock:
                self._arena.release_cached()
            return freed
        finally:
            self._compact_lock.release()

    # -- statistics ----------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A snapshot; each class row is consistent (taken under its lock)."""
        rows = []
        objects = 0
        handle_bytes = 0
        for cls in self._classes:
            with cls.lock:
                rows.append(
                    ClassStat(
                        index=cls.index,
                        size=cls.size,
                        fullness=tuple(cls.counts[1:]),
                        obj_allocated=cls.obj_allocated,
                        obj_used=cls.obj_used,
                        pages_used=cls.obj_allocated // cls.objs_per_zspage * cls.pages_per_zspage,
                        pages_per_zspage=cls.pages_per_zspage,
                        freeable=cls.can_compact(),
                    )
                )
                objects += cls.obj_used
                handle_bytes += sys.getsizeof(cls.handles)
        with self._page_lock:
            metadata = handle_bytes + self._zspages.metadata_bytes() + self._arena.metadata_bytes()
            return PoolStats(
                total_pages=self._arena.in_use,
                pages_compacted=self.pages_compacted,
                huge_class_size=self.huge_class_size,
                classes=tuple(rows),
                frames_cached=self._arena.cached,
                frames_reserved=self._arena.max_frames,
                metadata_bytes=metadata,
                objects=objects,
            )

    def check(self) -> None:
        """Cross-check every structure (the classes' fullness lists, each zspage's free list
        and fresh cursor against its inuse count, every live handle's header, the class
        counters, and ``total_pages`` against the frames of all zspages); CorruptionError
        naming the first mismatch. Exact on an idle pool; for tests (it visits every
        object). The C pool's walk is ``zs_check``."""
        try:
            self._walk()
        except AssertionError as e:
            raise CorruptionError(f"pool check: {e}") from e

    def _walk(self) -> None:
        """The walk behind ``check``: AssertionError at the first mismatch."""
        zs = self._zspages
        words = self._words
        links = self._arena.links
        frames = 0
        zspages_seen = 0
        for cls in self._classes:
            live = {}
            for entry, loc in enumerate(cls.handles):
                if entry and loc >= 0:
                    live[(entry << HANDLE_CLASS_BITS) | cls.index] = loc
            assert cls.obj_used == len(live), (cls.size, cls.obj_used, len(live))
            if cls.huge:
                assert cls.counts[11] == cls.obj_used == cls.obj_allocated
                assert sum(cls.counts[:11]) == 0
                assert cls.mask == 0
                frames += cls.obj_used
                continue
            members: dict[int, int] = {}
            for group in range(1, 11):
                zid, prev, n = cls.heads[group], 0, 0
                assert bool(zid) == bool(cls.mask & (1 << group)), (cls.size, group)
                while zid:
                    assert zs.prev[zid] == prev, "broken back link"
                    assert zid not in members, "zspage listed twice"
                    members[zid] = group
                    assert cls.group_of[zs.inuse[zid]] == group, "zspage filed in the wrong group"
                    prev, zid, n = zid, zs.next[zid], n + 1
                assert n == cls.counts[group], (cls.size, group, n, cls.counts[group])
            # objects per zspage from the handle table
            per_zspage: dict[int, int] = {}
            for handle, loc in live.items():
                zid, off = loc >> LOC_SHIFT, loc & LOC_OFF_MASK
                hdr = words[off >> 3]
                assert hdr & HDR_HANDLE_MASK == (handle << 1) | OBJ_ALLOCATED_TAG, (
                    "header does not name its handle"
                )
                per_zspage[zid] = per_zspage.get(zid, 0) + 1
            full = [zid for zid, n in per_zspage.items() if n == cls.objs_per_zspage]
            assert len(full) == cls.counts[11], (cls.size, len(full), cls.counts[11])
            for zid, n in per_zspage.items():
                assert zs.inuse[zid] == n, (cls.size, zid, zs.inuse[zid], n)
                assert (zid in members) == (n < cls.objs_per_zspage)
                free, off = 0, zs.freeobj[zid]
                while off:
                    assert not words[off >> 3] & OBJ_ALLOCATED_TAG, (
                        "allocated object on a free list"
                    )
                    free += 1
                    off = words[off >> 3] >> 1
                assert free + zs.fresh_left[zid] == cls.objs_per_zspage - n
                carved = zs.object_offsets(zid, cls, links)
                assert len(carved) == cls.objs_per_zspage - zs.fresh_left[zid]
                if zs.fresh_left[zid]:  # the cursor points at the first never-used object
                    co, frame = len(carved) * cls.size, zs.first[zid]
                    while co >= PAGE_SIZE:
                        frame, co = links[frame], co - PAGE_SIZE
                    assert zs.fresh[zid] == (frame << 12) + co, "fresh cursor out of place"
                assert sum(bool(words[o >> 3] & OBJ_ALLOCATED_TAG) for o in carved) == n
                chain, frame = 0, zs.first[zid]
                while frame:
                    chain += 1
                    frame = links[frame]
                assert chain == cls.pages_per_zspage
            assert set(members) <= set(per_zspage), "an empty zspage was kept"
            assert cls.obj_allocated == len(per_zspage) * cls.objs_per_zspage
            frames += len(per_zspage) * cls.pages_per_zspage
            zspages_seen += len(per_zspage)
        assert zs.count == zspages_seen, (zs.count, zspages_seen)
        assert self.total_pages == frames, (self.total_pages, frames)

    @property
    def locked_frames(self) -> int:
        """Always 0: the Python pool is never locked (``lock_frames``)."""
        return 0

    def lock_frames(self, frames: int, /) -> None:
        """Not in the Python reference: a locked pool (swap mode) is the C pool's alone, since
        this pool's own loops allocate Python objects on every call."""
        raise MemoryLockError(
            "lock_frames: only the C pool (zramd._zram) can be locked", errno.EOPNOTSUPP
        )

    def close(self) -> None:
        """Unmap everything; every handle becomes invalid. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._words.release()
        self._zspages.close()
        self._arena.close()

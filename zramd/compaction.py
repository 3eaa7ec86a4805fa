"""Compaction: move objects out of sparse zspages so whole zspages, and their frames, come free.

Policy, as in ``__zs_compact`` (kernel >= 6.4):

* classes are visited from the largest down (the pool's loop): a large class frees a frame
  with few moves;
* per class, while ``can_compact`` (free slots that add up to whole zspages) is non-zero:
  the *destination* is the fullest non-full zspage (groups 99 % down to 10 %), the *source* the
  emptiest (10 % up to 99 %); objects move in index order until the destination is full or the
  source empty; an emptied source is freed at once;
* both are *isolated* (off their fullness lists) while objects move, and filed back after.

The class lock is held for one source zspage at a time and dropped in between, so reads and
writes on the class interleave with a long pass (the kernel drops its locks when contended).
A background pass (``gentle``) also gives the GIL away after every slice, so a waiting I/O
thread runs at once instead of after the interpreter's 5 ms switch interval; it records the
longest slice, which bounds how long any request waited for the class.

A ``Compactor`` works on what the pool hands it at creation (its zspage table, frame arena,
object headers, and how to free an emptied zspage) and on the classes it is given, so the pool
and compaction each keep their own internals.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from zramd.frames import FrameArena
from zramd.size_class import ZS_HANDLE_SIZE, ZS_INUSE_RATIO_100, SizeClass
from zramd.zspage import (
    HANDLE_CLASS_BITS,
    HDR_HANDLE_MASK,
    HDR_SIZE_SHIFT,
    LOC_SHIFT,
    OBJ_ALLOCATED_TAG,
    ZspageTable,
)


class Compactor:
    """Compaction of one pool's classes (``zs_compact``'s per-class part)."""

    __slots__ = ("_arena", "_free_zspage", "_words", "_zspages", "bytes_moved", "max_slice_ns")

    def __init__(
        self,
        zspages: ZspageTable,
        arena: FrameArena,
        words: memoryview,
        free_zspage: Callable[[SizeClass, int], None],
    ) -> None:
        self._zspages = zspages
        self._arena = arena
        self._words = words  # the arena as 64-bit words: object headers
        self._free_zspage = free_zspage  # releases an empty, unlisted zspage (class lock held)
        self.bytes_moved = 0  #: object bytes (headers included) copied
        self.max_slice_ns = 0  #: longest class-lock hold of a gentle slice

    def compact_class(self, cls: SizeClass, *, gentle: bool = False) -> int:
        """Compact one class; returns frames freed. ``gentle``: yield the GIL between slices
        and record the longest slice in ``max_slice_ns``. The pool runs one at a time."""
        zspages = self._zspages
        freed = 0
        clock = time.perf_counter_ns
        while True:
            if gentle:
                time.sleep(0)
                t0 = clock()
            with cls.lock:
                if not cls.can_compact():
                    break
                # isolate_dst_zspage: fullest non-full
                mask = cls.mask
                if not mask:
                    break
                dst_group = mask.bit_length() - 1
                dst = cls.heads[dst_group]
                zspages.unlink(cls, dst, dst_group)
                # isolate_src_zspage: emptiest non-empty (lowest set group bit)
                mask = cls.mask
                if not mask:
                    zspages.link(cls, dst, dst_group)
                    break
                src_group = (mask & -mask).bit_length() - 1
                src = cls.heads[src_group]
                zspages.unlink(cls, src, src_group)

                self.migrate_zspage(cls, src, dst)

                # putback: the source only lost objects, the destination only gained them
                src_inuse = zspages.inuse[src]
                if src_inuse:
                    zspages.link(cls, src, cls.group_of[src_inuse])
                else:
                    self._free_zspage(cls, src)
                    freed += cls.pages_per_zspage
                dst_group = cls.group_of[zspages.inuse[dst]]
                if dst_group == ZS_INUSE_RATIO_100:
                    cls.counts[ZS_INUSE_RATIO_100] += 1
                else:
                    zspages.link(cls, dst, dst_group)
            if gentle:
                self.max_slice_ns = max(self.max_slice_ns, clock() - t0)
        return freed

    def migrate_zspage(self, cls: SizeClass, src: int, dst: int) -> None:
        """Move live objects of ``src`` into ``dst`` in index order (caller holds ``cls.lock``)."""
        zspages = self._zspages
        words = self._words
        links = self._arena.links
        objs = cls.objs_per_zspage
        inuse = zspages.inuse
        for off in zspages.object_offsets(src, cls, links):
            if not words[off >> 3] & OBJ_ALLOCATED_TAG:
                continue
            dst_off = zspages.take_object(dst, cls.size, links, words)  # obj_malloc in dst
            inuse[dst] += 1
            self.move_object(cls, off, dst, dst_off)
            zspages.put_object(src, off, words)  # obj_free in src
            inuse[src] -= 1
            if inuse[dst] == objs or not inuse[src]:
                break

    def move_object(self, cls: SizeClass, src_off: int, dst_zid: int, dst_off: int) -> None:
        """Copy the object at ``src_off`` (header included) to ``dst_off`` and repoint its
        handle: ``zs_object_copy`` + ``record_obj`` (caller holds ``cls.lock``)."""
        hdr = self._words[src_off >> 3]
        n = ZS_HANDLE_SIZE + (hdr >> HDR_SIZE_SHIFT)
        self._arena.write(dst_off, self._arena.read(src_off, n))
        handle = (hdr & HDR_HANDLE_MASK) >> 1
        cls.handles[handle >> HANDLE_CLASS_BITS] = (dst_zid << LOC_SHIFT) | dst_off
        cls.moves += 1
        self.bytes_moved += n  # single flight: no other writer

"""Compaction: move objects out of sparse zspages so whole zspages, and their frames, come free.

Policy, as in ``__zs_compact`` (kernel >= 6.4):

* classes are visited from the largest down (the caller's loop): a large class frees a frame
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
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from zramd.size_class import ZS_INUSE_RATIO_100, SizeClass
from zramd.zspage import OBJ_ALLOCATED_TAG

if TYPE_CHECKING:
    from zramd.pool import ZsPool


def compact_class(pool: ZsPool, cls: SizeClass, *, gentle: bool = False) -> int:
    """Compact one class; returns frames freed. ``gentle``: yield the GIL between slices and
    record the longest slice in ``pool.max_slice_ns``."""
    zspages = pool.zspages
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

            migrate_zspage(pool, cls, src, dst)

            # putback: the source only lost objects, the destination only gained them
            src_inuse = zspages.inuse[src]
            if src_inuse:
                zspages.link(cls, src, cls.group_of[src_inuse])
            else:
                pool.free_zspage(cls, src)
                freed += cls.pages_per_zspage
            dst_group = cls.group_of[zspages.inuse[dst]]
            if dst_group == ZS_INUSE_RATIO_100:
                cls.counts[ZS_INUSE_RATIO_100] += 1
            else:
                zspages.link(cls, dst, dst_group)
        if gentle:
            pool.max_slice_ns = max(pool.max_slice_ns, clock() - t0)
    return freed


def migrate_zspage(pool: ZsPool, cls: SizeClass, src: int, dst: int) -> None:
    """Move live objects of ``src`` into ``dst`` in index order (caller holds ``cls.lock``)."""
    zspages = pool.zspages
    words = pool.words
    links = pool.arena.links
    objs = cls.objs_per_zspage
    inuse = zspages.inuse
    for off in zspages.object_offsets(src, cls, links):
        if not words[off >> 3] & OBJ_ALLOCATED_TAG:
            continue
        dst_off = zspages.take_object(dst, cls.size, links, words)  # obj_malloc in dst
        inuse[dst] += 1
        pool.move_object(cls, off, dst, dst_off)
        zspages.put_object(src, off, words)  # obj_free in src
        inuse[src] -= 1
        if inuse[dst] == objs or not inuse[src]:
            break

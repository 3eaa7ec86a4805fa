"""Frames: 4 KiB pages carved from one anonymous mmap reservation.

The arena reserves address space for the pool's maximum up front (``MAP_NORESERVE``: no memory is
committed until a frame is first written) and hands out frame numbers. A frame's bytes live at
``frame << PAGE_SHIFT`` in the mapping. Frame 0 is never handed out, so a zero offset can mean
"none" in the allocator's links.

Every frame has one 32-bit *link* word (``links``), used the way the kernel reuses fields of
``struct page``: while a frame belongs to a zspage it holds the next frame of the chain (0 ends
it); while the frame is free it threads the free list.

Freed frames are given back to the OS with ``madvise(MADV_DONTNEED)`` so process RSS really falls.
One madvise per frame costs a system call and a TLB shootdown, so frees are batched: up to
``release_batch`` freed frames stay resident ("cached") and are reused first (they are warm, and
reuse skips a page fault); when the cache fills, it is sorted, coalesced into runs and released
with one madvise per run. ``release_cached()`` drops the cache at once (compaction calls it).

Not thread-safe: the pool serialises calls under its page lock.
"""

from __future__ import annotations

import mmap
import struct
from typing import Literal, TypeAlias

from zramd._types import BytesLike
from zramd.errors import PoolExhaustedError
from zramd.page import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE

IntCode: TypeAlias = Literal["B", "H", "i", "I", "q", "Q"]

MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux value; Python 3.11 lacks the name
MAX_FRAMES = 1 << 25  # 128 GiB of address space: object offsets are kept in 37 bits
RELEASE_BATCH = 64  # 256 KiB: bounds the RSS the cache may hide; see docs/performance.md


def anonymous_map(length: int) -> mmap.mmap:
    """A private, lazily committed, zero-filled mapping of ``length`` bytes."""
    return mmap.mmap(
        -1, max(length, PAGE_SIZE), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
    )


def lazy_array(typecode: IntCode, length: int) -> memoryview:
    """A zero-filled typed array whose memory is committed page by page as it is written.

    Metadata tables sized for a maximum (one entry per possible frame, zspage or device page)
    cost RSS only for the part in use. ``release()`` the view to unmap it.
    """
    return memoryview(anonymous_map(length * struct.calcsize(typecode))).cast(typecode)


class FrameArena:
    """Allocates frames from a fixed reservation and returns freed ones to the OS."""

    __slots__ = (
        "_cache",
        "_free_head",
        "free_frames",
        "in_use",
        "links",
        "map",
        "max_frames",
        "peak",
        "release_batch",
        "releases",
        "top",
        "view",
    )

    def __init__(self, max_frames: int, release_batch: int = RELEASE_BATCH) -> None:
        if not 2 <= max_frames <= MAX_FRAMES:
            raise ValueError(f"arena of {max_frames} frames outside 2..{MAX_FRAMES}")
        self.max_frames = max_frames
        self.release_batch = max(1, release_batch)
        #: the whole arena; frame f is map[f<<12 : (f+1)<<12]. Slicing the mmap copies straight
        #: into a bytes object; ``view`` is for zero-copy pieces.
        self.map = anonymous_map(max_frames << PAGE_SHIFT)
        self.view = memoryview(self.map)
        self.links = lazy_array("i", max_frames)  #: one link word per frame
        self.top = 1  #: frames [1, top) have been handed out at least once (frame 0 is a guard)
        self._free_head = 0  #: released (non-resident) free frames, threaded through links
        self.free_frames = 0  #: length of that list
        self._cache: list[int] = []  #: freed frames still resident, reused first
        self.in_use = 0  #: frames currently held by callers
        self.peak = 0  #: the most frames held at once
        self.releases = 0  #: madvise calls made (for benchmarks and tests)

    @property
    def cached(self) -> int:
        """Freed frames not yet returned to the OS."""
        return len(self._cache)

    def available(self) -> int:
        """Frames that ``alloc_chain`` can still hand out."""
        return self.max_frames - self.top + self.free_frames + len(self._cache)

    def alloc_chain(self, count: int) -> int:
        """Take ``count`` frames, link them into a chain and return its first frame.

        Raises PoolExhaustedError (and takes nothing) when fewer than ``count`` are available.
        """
        if self.available() < count:
            raise PoolExhaustedError(
                f"arena exhausted: need {count} frames, {self.available()} of "
                f"{self.max_frames} left"
            )
        links = self.links
        cache = self._cache
        first = prev = 0
        for _ in range(count):
            if cache:
                frame = cache.pop()
            elif self._free_head:
                frame = self._free_head
                self._free_head = links[frame]
                self.free_frames -= 1
            else:
                frame = self.top
                self.top = frame + 1
            if prev:
                links[prev] = frame
            else:
                first = frame
            prev = frame
        links[prev] = 0
        self.in_use += count
        self.peak = max(self.peak, self.in_use)
        return first

    def free_chain(self, first: int) -> int:
        """Give back every frame of the chain starting at ``first``; returns how many."""
        links = self.links
        cache = self._cache
        count = 0
        frame = first
        while frame:
            nxt = links[frame]
            cache.append(frame)
            count += 1
            frame = nxt
        self.in_use -= count
        if len(cache) >= self.release_batch:
            self.release_cached()
        return count

    def release_cached(self) -> int:
        """Return every cached frame to the OS, one madvise per contiguous run."""
        cache = self._cache
        if not cache:
            return 0
        cache.sort()
        links = self.links
        n = len(cache)
        run_start = prev = cache[0]
        for frame in cache[1:]:
            if frame != prev + 1:
                self._release_run(run_start, prev)
                run_start = frame
            prev = frame
        self._release_run(run_start, prev)
        head = self._free_head
        for frame in cache:
            links[frame] = head
            head = frame
        self._free_head = head
        self.free_frames += n
        cache.clear()
        return n

    def _release_run(self, first: int, last: int) -> None:
        self.map.madvise(mmap.MADV_DONTNEED, first << PAGE_SHIFT, (last - first + 1) << PAGE_SHIFT)
        self.releases += 1

    def read(self, off: int, n: int) -> bytes:
        """``n`` bytes at arena offset ``off``, following the chain to the next frame when they
        cross a frame boundary (objects straddle frames)."""
        end = (off | PAGE_MASK) + 1
        if off + n <= end:
            return self.map[off : off + n]  # one copy, straight into a bytes object
        view = self.view
        nxt = self.links[off >> PAGE_SHIFT] << PAGE_SHIFT
        return b"".join((view[off:end], view[nxt : nxt + n - (end - off)]))

    def write(self, off: int, data: BytesLike) -> None:
        """Write ``data`` at arena offset ``off``, its tail in the chain's next frame when it
        crosses a frame boundary: two copies, no join."""
        n = len(data)
        end = (off | PAGE_MASK) + 1
        if off + n <= end:
            self.map[off : off + n] = data
            return
        src = memoryview(data)
        first = end - off
        self.map[off:end] = src[:first]
        nxt = self.links[off >> PAGE_SHIFT] << PAGE_SHIFT
        self.map[nxt : nxt + n - first] = src[first:]

    def metadata_bytes(self) -> int:
        """Link words of every frame ever handed out (the part of ``links`` that is resident)."""
        return self.top * self.links.itemsize

    def close(self) -> None:
        """Unmap the arena (every view into it must be gone)."""
        self.links.release()
        self.view.release()
        self.map.close()

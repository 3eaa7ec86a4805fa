"""Recompression: secondary algorithms for pages already stored (CONFIG_ZRAM_MULTI_COMP).

A candidate holds a pool object, matches the mode (idle, huge), is not INCOMPRESSIBLE, is at
least ``threshold`` bytes, and has a configured priority above its own left to try. Each
algorithm tried costs one of ``max_pages``. A result is kept only if it lands in a smaller size
class than the old object (and under ``threshold`` when one is set): anything else would not
give memory back. A page the last algorithm could not improve is marked INCOMPRESSIBLE and
never tried again; every page looked at loses IDLE. The priority that produced an object is
kept in its slot's two priority bits, so reads use the right decompressor.
"""

from __future__ import annotations

from typing import Protocol

from zramd.errors import InvalidValueError
from zramd.page import PAGE_SIZE
from zramd.pool_api import PoolAPI
from zramd.postproc import Picker, candidates
from zramd.slots import ZRAM_INCOMPRESSIBLE, ZRAM_SAME, ZRAM_SIZE_MASK, ZRAM_WB
from zramd.zcomp import Comps, priority_of


class RecompressCore(Picker, Protocol):
    """What recompression needs of the data path's core."""

    def take_page(self, index: int) -> tuple[int, int, bytes] | None: ...

    def tried(self, index: int, handle: int, incompressible: bool) -> None: ...

    def complete_recompress(
        self, index: int, handle: int, new: int, size: int, prio: int
    ) -> bool: ...

    def note_peak(self, pages: int) -> None: ...


def priorities(comps: Comps, algo: str | None, priority: int | None) -> list[int]:
    """The secondary priorities a ``recompress`` uses: ``priority`` alone, else those named
    ``algo``, else all configured. EINVAL when none (or not the one asked for) is."""
    configured = comps.secondary()
    if not configured:
        raise InvalidValueError("recompress: no recomp_algorithm was configured")
    if priority is not None:
        if priority not in configured:
            raise InvalidValueError(
                f"recompress: priority={priority} names no configured recomp_algorithm"
            )
        return [priority]
    if algo is not None:
        prios = [p for p in configured if comps.name(p) == algo]
        if not prios:
            raise InvalidValueError(f"recompress: algo={algo} is not a recomp_algorithm")
        return prios
    return configured


def recompress(
    core: RecompressCore,
    pool: PoolAPI,
    comps: Comps,
    prios: list[int],
    *,
    scan: tuple[int, int, int],
    threshold: int,
    max_pages: int | None,
) -> int:
    """Recompress the pages ``scan`` (mode, lo, hi) picks with the ``prios`` algorithms;
    returns the pages recompressed."""
    class_of = pool.class_for_size
    last = comps.secondary()[-1]
    budget = max_pages
    done = 0
    with candidates(core, [scan], ZRAM_WB | ZRAM_SAME | ZRAM_INCOMPRESSIBLE) as picked:
        for index, picked_flags in picked:
            if budget is not None and budget <= 0:
                break
            todo = [p for p in prios if p > priority_of(picked_flags)]
            if not todo:
                continue
            taken = core.take_page(index)
            if taken is None:
                continue
            f, handle, page = taken
            size = f & ZRAM_SIZE_MASK
            if size < threshold:
                continue
            old_class = class_of(size).index
            found: tuple[int, bytes] | None = None
            tried = 0
            for p in todo:
                if budget is not None:
                    if budget <= 0:
                        break
                    budget -= 1
                tried += 1
                comp = comps.get(p)
                assert comp is not None
                c = comp.compress(page)
                n = len(c)
                if (
                    n < PAGE_SIZE
                    and class_of(n).index < old_class
                    and (not threshold or n < threshold)
                ):
                    found = (p, c)
                    break
            if found is None:
                core.tried(index, handle, tried == len(todo) and todo[-1] == last)
                continue
            p, c = found
            new = pool.store_many([c])[0]
            if core.complete_recompress(index, handle, new, len(c), p):
                done += 1
            else:
                pool.free_many([new])
    core.note_peak(pool.total_pages)
    return done

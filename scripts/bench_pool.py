"""Pool micro-benchmark: store/read/free rates, compaction throughput, metadata per object.

Objects are lz4-compressed synthetic pages (zramd.testing.synthetic_pages: a seeded mix whose
compressed sizes spread like swapped-out memory), stored raw when they would be huge, exactly
as the device stores them. Each figure is the median of --runs runs (min-max alongside).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable

import lz4.block
from benchlib import HUGE_CLASS_SIZE, PAGE, summarize

from zramd import ZsPool
from zramd.testing import synthetic_pages


def objects(count: int, seed: int) -> list[bytes]:
    out = []
    for page in synthetic_pages(count, seed):
        c = lz4.block.compress(page, store_size=False)
        if len(c) >= HUGE_CLASS_SIZE:
            out.append(page)
        elif page != bytes(len(page)) and page[8:] != page[:-8]:  # zram keeps same pages out
            out.append(c)
    return out


def one_run(objs: list[bytes], seed: int) -> dict[str, float]:
    pool = ZsPool(len(objs) * PAGE * 2)
    t0 = time.perf_counter()
    store = pool.store
    handles = [store(o) for o in objs]
    t1 = time.perf_counter()
    read = pool.read
    for h in handles:
        read(h)
    t2 = time.perf_counter()
    stats = pool.stats()
    metadata = stats.metadata_bytes / stats.objects
    used_after_fill = pool.total_pages
    rng = random.Random(seed)
    victims = rng.sample(handles, len(handles) // 2)
    free = pool.free
    t3 = time.perf_counter()
    for h in victims:
        free(h)
    t4 = time.perf_counter()
    freeable = pool.can_compact()
    t5 = time.perf_counter()
    freed = pool.compact()
    t6 = time.perf_counter()
    moved = pool.bytes_moved
    result = {
        "store_ops": len(objs) / (t1 - t0),
        "read_ops": len(objs) / (t2 - t1),
        "free_ops": len(victims) / (t4 - t3),
        "compact_mb_s": moved / (t6 - t5) / 1e6,
        "compact_seconds": t6 - t5,
        "frames_freed": freed,
        "freeable_before": freeable,
        "metadata_bytes_per_object": metadata,
        "packing": sum(map(len, objs)) / (used_after_fill * PAGE),
    }
    assert freed == freeable
    pool.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    objs = objects(args.objects, args.seed)
    sizes = sorted(map(len, objs))
    runs = []
    for i in range(args.runs):
        runs.append(one_run(objs, args.seed + i))
    summary = {k: summarize(r[k] for r in runs) for k in runs[0]}
    fmt: dict[str, Callable[[float], str]] = {
        "store_ops": lambda v: f"{v / 1e3:,.0f} k/s",
        "read_ops": lambda v: f"{v / 1e3:,.0f} k/s",
        "free_ops": lambda v: f"{v / 1e3:,.0f} k/s",
        "compact_mb_s": lambda v: f"{v:,.0f} MB/s",
        "compact_seconds": lambda v: f"{v:.3f} s",
        "frames_freed": lambda v: f"{v:,.0f}",
        "freeable_before": lambda v: f"{v:,.0f}",
        "metadata_bytes_per_object": lambda v: f"{v:.2f} B",
        "packing": lambda v: f"{v * 100:.1f} %",
    }
    print(
        f"{len(objs)} objects, median size {statistics.median(sizes):.0f} B "
        f"(p10 {sizes[len(sizes) // 10]}, p90 {sizes[len(sizes) * 9 // 10]}), {args.runs} runs, "
        f"Python {platform.python_version()}"
    )
    for k, v in summary.items():
        print(f"  {k:28s} {fmt[k](v['median']):>14s}   ({fmt[k](v['min'])} .. {fmt[k](v['max'])})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"objects": len(objs), "runs": runs, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()

"""Pool micro-benchmark: store/read/free rates, compaction, metadata per object, thread scaling.

Objects are lz4-compressed synthetic pages (zramd.testing.synthetic_pages: a seeded mix whose
compressed sizes spread like swapped-out memory), stored raw when they would be huge, exactly
as the device stores them; compression happens before any timing. Each figure is the median
of --runs runs (min-max alongside), for each pool implementation:

  python   ZsPool, the Python reference (ZRAMD_NATIVE=0)
  c        zramd._zram.Pool: the C pool the device runs, GIL released for every call
  c-alone  (scaling mode only) the same C pool with no Python at all: tests/c/bench_pool.c,
           compiled here with gcc and fed the same objects

Default mode: single-object calls (store/read/free one object per call), then compaction.
--threads 1,2,4: thread scaling. Each thread stores, loads and frees objects of its own in
batches of --batch (32 = a 128 KiB request), the phases separated by barriers. Figures: all
threads' objects per second of wall time (the threads' own clocks, first start to last
end) and its ratio to one thread; and objects per CPU-second of the working threads ("eff":
its ratio to one thread, 1.00 = no cost from sharing). On a machine whose other CPUs are
busy the wall ratio is capped; eff is not. Phases shorter than a thread's start-up do not
overlap: use tens of thousands of objects.
For c-alone, each thread's schedstat also splits its time into CPU, waiting for a CPU (other
load) and blocked (a mutex, a page fault); "unqueued" is the rate with the CPU waits taken
out, i.e. what free cores would give (meaningful up to as many threads as CPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lz4.block
from benchlib import HUGE_CLASS_SIZE, PAGE, summarize

from zramd import ZsPool
from zramd.native import native_module
from zramd.pool_api import PoolAPI
from zramd.testing import synthetic_pages


def implementations() -> dict[str, Callable[[int], PoolAPI]]:
    impls: dict[str, Callable[[int], PoolAPI]] = {"python": ZsPool}
    module = native_module()
    if module is not None:
        impls["c"] = module.Pool
    return impls


def objects(count: int, seed: int) -> list[bytes]:
    out = []
    for page in synthetic_pages(count, seed):
        c = lz4.block.compress(page, store_size=False)
        if len(c) >= HUGE_CLASS_SIZE:
            out.append(page)
        elif page != bytes(len(page)) and page[8:] != page[:-8]:  # zram keeps same pages out
            out.append(c)
    return out


def one_run(make: Callable[[int], PoolAPI], objs: list[bytes], seed: int) -> dict[str, float]:
    pool = make(len(objs) * PAGE * 2)
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


PHASES = ("store", "load", "free")


class CoreBench:
    """tests/c/bench_pool.c: the C pool alone, no Python, fed the same objects on stdin."""

    def __init__(self, objs: list[bytes], workdir: str) -> None:
        root = Path(__file__).resolve().parent.parent
        self.binary = os.path.join(workdir, "bench_pool")
        subprocess.run(
            [
                os.environ.get("CC", "gcc"),
                "-O2",
                "-pthread",
                f"-I{root / 'zramd/csrc'}",
                str(root / "tests/c/bench_pool.c"),
                "-o",
                self.binary,
            ],
            check=True,
        )
        self.input = b"".join(len(o).to_bytes(4, "little") + o for o in objs)

    def run(self, threads: int, batch: int) -> dict[str, float]:
        out = subprocess.run(
            [self.binary, str(threads), str(batch), "1"],
            input=self.input,
            capture_output=True,
            check=True,
        ).stdout.decode()
        result = {}
        for line in out.splitlines():
            phase, _, wall, cpu, blocked, queued, unqueued = line.split()
            result[phase] = float(wall)
            result[phase + "_cpu"] = float(cpu)
            result[phase + "_blocked"] = float(blocked)
            result[phase + "_queued"] = float(queued)
            result[phase + "_unqueued"] = float(unqueued)
        return result


def scaling_run(impl: str, objs: list[bytes], threads: int, batch: int) -> dict[str, float]:
    """Objects per second (wall, and per CPU-second) of each phase with ``threads`` threads,
    each on its own objects."""
    pool = implementations()[impl](threads * len(objs) * PAGE * 2)
    batches = [objs[i : i + batch] for i in range(0, len(objs), batch)]

    def work() -> list[Callable[[], None]]:
        handles: list[list[int]] = []

        def store() -> None:
            handles.extend(pool.store_many(b) for b in batches)

        def load() -> None:
            for hb in handles:
                pool.load_many(hb)

        def free() -> None:
            for hb in handles:
                pool.free_many(hb)

        return [store, load, free]

    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []
    # (start, end, CPU seconds) per thread and phase, on the threads' own clocks: a main
    # thread timing the phase between barriers would itself wait for the GIL and a CPU.
    spans: list[list[tuple[float, float, float]]] = [[] for _ in PHASES]

    def worker() -> None:
        try:
            for k, phase in enumerate(work()):
                barrier.wait()
                t0, c0 = time.perf_counter(), time.thread_time()
                phase()
                spans[k].append((t0, time.perf_counter(), time.thread_time() - c0))
                barrier.wait()
        except BaseException as e:  # reported below; the barrier breaks for everyone
            errors.append(e)
            barrier.abort()

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        for _ in PHASES:
            barrier.wait()
            barrier.wait()
    finally:
        for t in workers:
            t.join()
    result = {}
    for k, phase in enumerate(PHASES):
        wall = max(end for _, end, _ in spans[k]) - min(start for start, _, _ in spans[k])
        result[phase] = threads * len(objs) / wall
        result[phase + "_cpu"] = threads * len(objs) / sum(cpu for _, _, cpu in spans[k])
    if errors:
        raise errors[0]
    assert pool.total_pages == 0
    pool.close()
    return result


FORMATS: dict[str, Callable[[float], str]] = {
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


def single_thread(
    impls: dict[str, Callable[[int], PoolAPI]], objs: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    summaries = {}
    for name, make in impls.items():
        runs = [one_run(make, objs, args.seed + i) for i in range(args.runs)]
        summaries[name] = {k: summarize(r[k] for r in runs) for k in runs[0]}
    print(f"  {'':26s}" + "".join(f"{name:>34s}" for name in impls))
    for k, fmt in FORMATS.items():
        cells = []
        for name in impls:
            s = summaries[name][k]
            cells.append(f"{fmt(s['median'])} ({fmt(s['min'])}..{fmt(s['max'])})")
        print(f"  {k:26s}" + "".join(f"{c:>34s}" for c in cells))
    return summaries


def scaling(impls: list[str], objs: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(t) for t in args.threads.split(",")]
    # Interleave implementations and thread counts run by run, so that load from elsewhere on
    # the machine spreads over all of them instead of skewing one ratio.
    raw: dict[str, dict[int, list[dict[str, float]]]] = {
        name: {t: [] for t in counts} for name in impls
    }
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as workdir:
        core = CoreBench(objs, workdir) if "c-alone" in impls else None
        for _ in range(args.runs):
            for name in impls:
                for t in counts:
                    if core is not None and name == "c-alone":
                        raw[name][t].append(core.run(t, args.batch))
                    else:
                        raw[name][t].append(scaling_run(name, objs, t, args.batch))
    out: dict[str, Any] = {}
    print(
        f"  thread scaling, batches of {args.batch}, median of {args.runs}; load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs)\n"
        f"  objects/s of all threads (ratio to {counts[0]} thread), objects per CPU-second "
        f"(eff: ratio to {counts[0]} thread)"
    )
    for name in impls:
        out[name] = {}
        for phase in PHASES:
            wall = {t: statistics.median(r[phase] for r in raw[name][t]) for t in counts}
            cpu = {t: statistics.median(r[phase + "_cpu"] for r in raw[name][t]) for t in counts}
            out[name][phase] = {str(t): {"wall": wall[t], "cpu": cpu[t]} for t in counts}
            w0, c0 = wall[counts[0]], cpu[counts[0]]
            cells = [
                f"{t}: {wall[t] / 1e3:6,.0f} k/s ({wall[t] / w0:.2f}x) "
                f"{cpu[t] / 1e3:6,.0f} k/cpu-s (eff {cpu[t] / c0:.2f})"
                for t in counts
            ]
            print(f"  {name:7s} {phase:6s} " + " | ".join(cells))
            if name == "c-alone":  # where the threads' time went (schedstat)
                med = {
                    t: {
                        k: statistics.median(r[f"{phase}_{k}"] for r in raw[name][t])
                        for k in ("blocked", "queued", "unqueued")
                    }
                    for t in counts
                }
                u0 = med[counts[0]]["unqueued"]
                cells = [
                    f"{t}: blocked {m['blocked']:4.0%}, waiting for a CPU {m['queued']:4.0%}, "
                    f"unqueued {m['unqueued'] / 1e3:6,.0f} k/s ({m['unqueued'] / u0:.2f}x)"
                    for t, m in med.items()
                ]
                print(f"  {'':14s} " + " | ".join(cells))
                for t, m in med.items():
                    out[name][phase][str(t)].update(m)
    return {"batch": args.batch, "runs": raw, "medians": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--objects", type=int, default=100_000, help="pages per thread")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--impl", help="comma-separated: python,c,c-alone (default: all built)")
    ap.add_argument("--threads", help="thread-scaling mode: thread counts, e.g. 1,2,4")
    ap.add_argument("--batch", type=int, default=32, help="objects per call (scaling mode)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    impls = implementations()
    available = [*impls, "c-alone"] if "c" in impls and args.threads else list(impls)
    wanted = args.impl.split(",") if args.impl else available
    missing = [name for name in wanted if name not in available]
    if missing:
        ap.error(f"not available (not built?): {', '.join(missing)}")
    if "c-alone" in wanted and not args.threads:
        ap.error("c-alone is measured in the thread-scaling mode (--threads) only")
    objs = objects(args.objects, args.seed)
    sizes = sorted(map(len, objs))
    print(
        f"{len(objs)} objects, median size {statistics.median(sizes):.0f} B "
        f"(p10 {sizes[len(sizes) // 10]}, p90 {sizes[len(sizes) * 9 // 10]}), {args.runs} runs, "
        f"Python {platform.python_version()}"
    )
    if args.threads:
        results = scaling(wanted, objs, args)
    else:
        results = single_thread({name: impls[name] for name in wanted}, objs, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"objects": len(objs), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

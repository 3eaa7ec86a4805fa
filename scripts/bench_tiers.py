"""Memory tiers benchmark: writeback throughput, recompression, and what compaction costs the
requests running beside it. In-process (no nbdkit in front), on the swap-like image.

* writeback MB/s (of uncompressed pages written out) to a file and to nbdkit's memory plugin
  through an NBD URI, with writeback_batch_size 1 (one page at a time, as before 7.0) and 32;
* recompression lz4 -> zstd: pages/s and the bytes it saved;
* compaction pauses: 4 KiB reads on one thread while another compacts a half-discarded pool,
  background-style (``gentle``: sliced, yielding the GIL) and as one manual pass; read latency
  percentiles against reads with no compaction, and the longest slice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import PAGE, RESULTS, summarize, swap_image

from zramd.device import ZramDevice
from zramd.supervise import Nbdkit, start_nbdkit

MB = 1e6


def filled(
    image: memoryview, *, backing: str | None = None, recomp: str | None = None
) -> ZramDevice:
    d = ZramDevice("lz4")
    if recomp:
        d.set_recomp_algorithm(recomp)
    if backing:
        d.set_backing_dev(backing)
    d.set_disksize(len(image))
    for off in range(0, len(image), 128 << 10):
        d.write(off, image[off : off + (128 << 10)])
    return d


def writeback_mbs(image: memoryview, backing: str, batch: int) -> float:
    d = filled(image, backing=backing)
    d.set_writeback_batch_size(batch)
    t = time.perf_counter()
    n = d.writeback([(0, 0, len(image) // PAGE)])
    dt = time.perf_counter() - t
    d.reset()
    return n * PAGE / dt / MB


def recompress(image: memoryview) -> tuple[float, float]:
    d = filled(image, recomp="zstd")
    before = d.mm_stat()
    t = time.perf_counter()
    n = d.recompress()
    dt = time.perf_counter() - t
    after = d.mm_stat()
    d.reset()
    return n / dt, 100 * (before.mem_used_total - after.mem_used_total) / before.mem_used_total


def read_latencies(d: ZramDevice, seconds: float, busy: threading.Event | None) -> list[float]:
    """4 KiB random reads for ``seconds`` (or while ``busy`` is set); latencies in µs."""
    rng = random.Random(7)
    pages = d.disksize // PAGE
    out: list[float] = []
    clock = time.perf_counter_ns
    end = time.monotonic() + seconds
    while (busy.is_set() if busy is not None else time.monotonic() < end) or len(out) < 100:
        i = rng.randrange(pages)
        t = clock()
        d.read(i * PAGE, PAGE)
        out.append((clock() - t) / 1000)
    return out


def pauses(image: memoryview, gentle: bool) -> dict[str, float]:
    d = filled(image)
    rng = random.Random(3)
    for i in rng.sample(range(len(image) // PAGE), len(image) // PAGE // 2):
        d.discard(i * PAGE, PAGE)
    quiet = read_latencies(d, 1.0, None)
    busy = threading.Event()
    busy.set()
    result: dict[str, float] = {}

    def compact() -> None:
        time.sleep(0.05)
        t = time.perf_counter()
        result["freed"] = d.compact(gentle=gentle)
        result["seconds"] = time.perf_counter() - t
        busy.clear()

    th = threading.Thread(target=compact)
    th.start()
    during = read_latencies(d, 0, busy)
    th.join()
    pool = d.pool
    assert pool is not None
    slice_us = pool.max_slice_ns / 1000
    d.reset()

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]

    return {
        "compaction_ms": result["seconds"] * 1000,
        "pages_freed": result["freed"],
        "quiet_p50_us": statistics.median(quiet),
        "quiet_p99_us": pct(quiet, 0.99),
        "during_p50_us": statistics.median(during),
        "during_p99_us": pct(during, 0.99),
        "during_max_us": max(during),
        "reads_during": len(during),
        "max_slice_us": slice_us,
    }


def memory_server(tmp: Path, size: int) -> tuple[Nbdkit, str]:
    sock = tmp / "m.sock"
    pid = tmp / "m.pid"
    args = ["nbdkit", "-f", "-U", str(sock), "-P", str(pid), "memory", str(size)]
    server = start_nbdkit(args, pidfile=pid, log=tmp / "m.log", env=os.environ)
    return server, f"nbd+unix:///?socket={sock}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=64 << 20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    image = swap_image(args.size)
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        backing = Path(tmp) / "backing.img"
        with open(backing, "wb") as f:
            f.truncate(args.size + PAGE)
        server, uri = memory_server(Path(tmp), args.size + PAGE)
        try:
            for run in range(args.runs):
                for batch in (1, 32):
                    add(
                        f"writeback file batch {batch} (MB/s)",
                        writeback_mbs(image, str(backing), batch),
                    )
                    add(f"writeback NBD batch {batch} (MB/s)", writeback_mbs(image, uri, batch))
                rate, saved = recompress(image)
                add("recompress lz4->zstd (pages/s)", rate)
                add("recompress: pool memory saved (%)", saved)
                for gentle in (True, False):
                    kind = "background" if gentle else "manual"
                    for k, v in pauses(image, gentle).items():
                        add(f"{kind} compaction: {k}", v)
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        finally:
            server.stop()
    out = {k: summarize(v) for k, v in rows.items()}
    for k, v in out.items():
        assert v is not None
        print(f"| {k} | {v['median']:,.1f} ({v['min']:,.1f}–{v['max']:,.1f}) |")
    if args.json:
        args.json.write_text(
            json.dumps({"size": args.size, "runs": args.runs, "results": out}, indent=2)
        )
    os.sync()


if __name__ == "__main__":
    main()

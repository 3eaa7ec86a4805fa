"""In-process thread scaling of the device: N threads calling ZramDevice.write / read_into at
once, as N nbdkit connections do, without nbdkit.

Every thread gets a region of its own, the size of the swap-like image, and writes the image
into it, then reads it back (checking the bytes once, outside the timing), in requests of
4 KiB (random order) and 128 KiB (sequential). Figures: pages per second of wall time for all
threads together, its ratio to one thread in the same run ("x1"), and pages per CPU-second of
the process ("eff", 1.00 = threads cost nothing extra). Each figure is the median of --runs
runs, the thread counts interleaved run by run. Both data paths are measured: "c" (zramd._zram,
the GIL released once per request) and "python" (the reference).

  scripts/bench-threads [--threads 1,2,4] [--runs 5] [--size 32M] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_swap_image import ensure_image  # noqa: E402

from zramd.device import ZramDevice  # noqa: E402
from zramd.native import native_module  # noqa: E402
from zramd.page import PAGE_SIZE  # noqa: E402

KINDS = (("write", 4 << 10), ("read", 4 << 10), ("write", 128 << 10), ("read", 128 << 10))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(native: bool, threads: int, image: memoryview, seed: int) -> dict[str, tuple[float, float]]:
    """One run: {kind: (pages/s of wall time, pages per CPU-second)}."""
    region = len(image)
    d = ZramDevice(native=native)
    d.set_disksize(region * threads)
    out: dict[str, tuple[float, float]] = {}
    for op, req in KINDS:
        offsets = list(range(0, region, req))
        if req == PAGE_SIZE:
            random.Random(seed).shuffle(offsets)
        start = threading.Barrier(threads + 1)
        done = threading.Barrier(threads + 1)
        errors: list[BaseException] = []

        def work(
            t: int,
            op: str = op,
            req: int = req,
            offsets: list[int] = offsets,
            start: threading.Barrier = start,
            done: threading.Barrier = done,
            errors: list[BaseException] = errors,
        ) -> None:
            base = t * region
            buf = memoryview(bytearray(req))
            try:
                start.wait()
                if op == "write":
                    write = d.write
                    for off in offsets:
                        write(base + off, image[off : off + req])
                else:
                    read = d.read_into
                    for off in offsets:
                        read(base + off, buf)
            except BaseException as e:
                errors.append(e)
            finally:
                done.wait()

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        start.wait()
        c0, t0 = cpu_seconds(), time.perf_counter()
        done.wait()
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
        pages = threads * region // PAGE_SIZE
        out[f"{op} {req >> 10}K"] = (pages / wall, pages / max(cpu, 1e-9))
    for t in range(threads):  # the data is right (outside the timing)
        if d.read(t * region, region) != image:
            raise SystemExit(f"bench-threads: region {t} reads back wrong ({native=})")
    d.reset()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=32 << 20, help="bytes of image per thread")
    ap.add_argument("--impl", default="c,python")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    counts = [int(n) for n in args.threads.split(",")]
    impls = args.impl.split(",")
    if "c" in impls and native_module() is None:
        raise SystemExit("bench-threads: zramd._zram is not built (pip install -e .)")
    path = ROOT / "bench-results" / f"swap-{args.size >> 20}M-seed1.img"
    ensure_image(path, args.size, 1)
    image = memoryview(path.read_bytes())
    samples: dict[str, dict[int, dict[str, list[tuple[float, float]]]]] = {
        impl: {n: {} for n in counts} for impl in impls
    }
    for run in range(args.runs):
        for impl in impls:
            for n in counts:
                for kind, v in one(impl == "c", n, image, run).items():
                    samples[impl][n].setdefault(kind, []).append(v)
    result: dict[str, Any] = {"threads": counts, "runs": args.runs, "size": args.size}
    for impl in impls:
        result[impl] = {}
        print(f"{impl}: pages/s (median of {args.runs}), x1 = vs 1 thread, eff = per CPU-second")
        for kind in samples[impl][counts[0]]:
            base = statistics.median(v[0] for v in samples[impl][counts[0]][kind])
            cells = []
            for n in counts:
                rate = statistics.median(v[0] for v in samples[impl][n][kind])
                eff = statistics.median(v[1] for v in samples[impl][n][kind])
                result[impl].setdefault(kind, {})[n] = {"rate": rate, "x1": rate / base, "eff": eff}
                cells.append(f"{n}T {rate / 1e3:7.1f}k x{rate / base:4.2f} eff {eff / 1e3:6.1f}k")
            print(f"  {kind:10s} " + "   ".join(cells))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

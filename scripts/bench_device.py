"""In-process device micro-benchmark: per-page cost of zramd's data path without nbdkit.

Writes and reads the swap-like image in 128 KiB and 4 KiB requests on one thread and compares
with the Python ceiling's loop (lz4 into a dict) run the same way. Useful for profiling:
``--profile write`` runs pyinstrument on the write phase.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchlib import PAGE, swap_image
from ceiling import Ceiling

from zramd.device import ZramDevice


def run(target: object, image: memoryview, req: int) -> tuple[float, float]:
    t = time.perf_counter()
    write = target.write  # type: ignore[attr-defined]
    for off in range(0, len(image), req):
        write(off, image[off : off + req])
    t1 = time.perf_counter()
    buf = memoryview(bytearray(req))
    read = target.read_into  # type: ignore[attr-defined]
    for off in range(0, len(image), req):
        read(off, buf)
    t2 = time.perf_counter()
    pages = len(image) // PAGE
    return (t1 - t) / pages * 1e6, (t2 - t1) / pages * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=64 << 20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--algorithm", default="lz4")
    ap.add_argument("--profile", choices=["write", "read"])
    args = ap.parse_args()
    image = swap_image(args.size)

    def device() -> ZramDevice:
        d = ZramDevice(args.algorithm)
        d.set_disksize(args.size)
        return d

    if args.profile:
        from pyinstrument import Profiler  # noqa: PLC0415

        d = device()
        p = Profiler(interval=0.0002)
        if args.profile == "write":
            p.start()
            run(d, image, 128 << 10)
            p.stop()
        else:
            run(d, image, 128 << 10)
            buf = memoryview(bytearray(128 << 10))
            p.start()
            for off in range(0, len(image), 128 << 10):
                d.read_into(off, buf)
            p.stop()
        print(p.output_text(unicode=True, color=False, show_all=False))
        return
    for req in (128 << 10, 4 << 10):
        rows = {"zramd": [], "ceiling": []}
        for _ in range(args.runs):
            d = device()
            rows["zramd"].append(run(d, image, req))
            d.reset()
            rows["ceiling"].append(run(Ceiling(PAGE), image, req))
        z_w = statistics.median(r[0] for r in rows["zramd"])
        z_r = statistics.median(r[1] for r in rows["zramd"])
        c_w = statistics.median(r[0] for r in rows["ceiling"])
        c_r = statistics.median(r[1] for r in rows["ceiling"])
        print(f"{req >> 10:4d} KiB requests, µs per page (median of {args.runs}):  "
              f"write zramd {z_w:.2f} ceiling {c_w:.2f} ({c_w / z_w:.2f}x)   "
              f"read zramd {z_r:.2f} ceiling {c_r:.2f} ({c_r / z_r:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()

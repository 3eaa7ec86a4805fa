"""Compression dictionaries on the swap-like image: what ``algorithm_params dict=PATH`` saves.

A sample of the image's pages (every page with a seeded probability ``--sample``, same-filled
pages left out: zram never compresses them) trains a dictionary with ``zstd --train`` (or
python-zstandard's trainer with ``--trainer python``). Then the whole image is written to one
device per configuration, each set up through the control attributes as an admin would
(``comp_algorithm``, ``algorithm_params level=L [dict=PATH]``, ``disksize``), and mm_stat's
compr_data_size and mem_used_total are read; the pages left out of the training sample are
also written alone to a second device of each configuration, so the gain on pages the
dictionary never saw shows apart. Every device reads the image back intact.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_swap_image import ensure_image  # noqa: E402

from zramd.control import store  # noqa: E402
from zramd.device import ZramDevice  # noqa: E402

PAGE = 4096


def pages_of(image: bytes) -> list[bytes]:
    return [image[i : i + PAGE] for i in range(0, len(image), PAGE)]


def same_filled(page: bytes) -> bool:
    return page[8:] == page[:-8]


def train(samples: list[bytes], size: int, trainer: str, out: Path) -> None:
    if trainer == "python":
        out.write_bytes(zstandard.train_dictionary(size, samples).as_bytes())
        return
    with tempfile.TemporaryDirectory(prefix="zramd-dict-") as tmp:
        files = []
        for k, page in enumerate(samples):
            f = Path(tmp) / f"{k:07d}"
            f.write_bytes(page)
            files.append(str(f))
        subprocess.run(
            ["zstd", "-q", "--train", f"--maxdict={size}", "-o", str(out), *files], check=True
        )


def measure(algo: str, params: str, data: bytes) -> dict[str, float]:
    """Write ``data`` to a fresh device set up with ``params``; its mm_stat and timings."""
    dev = ZramDevice()
    store(dev, "comp_algorithm", algo.encode())
    store(dev, "algorithm_params", params.encode())
    store(dev, "disksize", str(len(data)).encode())
    view = memoryview(data)
    req = 128 << 10
    t0 = time.perf_counter()
    for off in range(0, len(data), req):
        dev.write(off, view[off : off + req])
    t1 = time.perf_counter()
    back = bytearray(len(data))
    out = memoryview(back)
    for off in range(0, len(data), req):
        dev.read_into(off, out[off : off + req])
    t2 = time.perf_counter()
    assert back == data, f"{algo} {params}: the image did not read back intact"
    s = dev.mm_stat()
    dev.reset()
    pages = len(data) // PAGE
    return {
        "orig_data_size": s.orig_data_size,
        "compr_data_size": s.compr_data_size,
        "mem_used_total": s.mem_used_total,
        "write_us_per_page": (t1 - t0) / pages * 1e6,
        "read_us_per_page": (t2 - t1) / pages * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=64 << 20, help="image bytes (default 64 MiB)")
    ap.add_argument("--sample", type=float, default=0.1, help="share of pages trained on")
    ap.add_argument("--dict-size", type=int, default=112640, help="zstd's default, 110 KiB")
    ap.add_argument("--trainer", choices=["zstd", "python"], default="zstd")
    ap.add_argument("--levels", default="3", help="comma-separated zstd levels")
    ap.add_argument("--lz4", action="store_true", help="also lz4 with and without the dict")
    ap.add_argument("--runs", type=int, default=1, help="timings: median of N")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results", help="image and dict")
    args = ap.parse_args()

    path = args.out / f"swap-{args.size >> 20}M-seed1.img"
    manifest = ensure_image(path, args.size, 1)
    image = path.read_bytes()
    pages = pages_of(image)
    rng = random.Random(1)
    picked = [rng.random() < args.sample for _ in pages]
    samples = [p for p, k in zip(pages, picked, strict=True) if k and not same_filled(p)]
    unseen = b"".join(p for p, k in zip(pages, picked, strict=True) if not k)
    dict_path = args.out / f"swap-{args.size >> 20}M-seed1.zdict"
    t = time.perf_counter()
    train(samples, args.dict_size, args.trainer, dict_path)
    train_s = time.perf_counter() - t

    configs = [("zstd", f"level={lvl}") for lvl in args.levels.split(",")]
    if args.lz4:
        configs.append(("lz4", ""))
    rows = []
    for algo, params in configs:
        for with_dict in (False, True):
            p = f"{params} dict={dict_path}" if with_dict else params
            runs = [measure(algo, p, image) for _ in range(args.runs)]
            row: dict[str, object] = {"algorithm": algo, "params": params, "dict": with_dict}
            row |= {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            row["unseen_compr_data_size"] = measure(algo, p, unseen)["compr_data_size"]
            rows.append(row)

    print(
        f"image {len(image) >> 20} MiB ({manifest.get('sha256', '')[:12]}), "
        f"dict {dict_path.stat().st_size} B trained on {len(samples)} pages "
        f"({args.trainer}, {train_s:.1f} s); {len(unseen) // PAGE} pages not trained on"
    )
    print(
        f"{'config':24} {'compr_data_size':>15} {'mem_used_total':>15} {'ratio':>6} "
        f"{'unseen compr':>13} {'write µs/p':>10} {'read µs/p':>9}"
    )
    for r in rows:
        name = f"{r['algorithm']} {r['params']}{' +dict' if r['dict'] else ''}"
        ratio = int(r["orig_data_size"]) / int(r["mem_used_total"])  # type: ignore[call-overload]
        print(
            f"{name:24} {r['compr_data_size']:>15,} {r['mem_used_total']:>15,} {ratio:6.3f} "
            f"{r['unseen_compr_data_size']:>13,} {r['write_us_per_page']:10.2f} "
            f"{r['read_us_per_page']:9.2f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"manifest": manifest, "samples": len(samples), "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()

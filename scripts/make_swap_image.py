"""Make a swap-like image: what a swap device holds after memory pressure on a busy machine.

* 70 % process memory: seeded workloads (Python heaps of text, numbers, dicts and a little
  random data, like long-running services) are started, and the private writable mappings
  (heap, anonymous memory, data segments: ``rw-p`` in /proc/PID/maps) of every process on the
  machine are read from /proc/PID/mem, in a seeded order. Zero and same-filled pages stay in,
  as they do in real swap.
* 30 % system files: seeded picks from /usr/lib, /usr/bin and /usr/share (code, data, text).

The seed fixes the workloads, the order and the file picks; the exact bytes also depend on the
machine, so a manifest with the SHA-256 sits next to the image and ``scripts/bench`` reuses an
image whose manifest matches instead of regenerating it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

PAGE = 4096
WORKLOAD = r"""
import json, random, sys, pathlib
rng = random.Random(int(sys.argv[1]))
texts = []
for p in sorted(pathlib.Path("/usr/share/common-licenses").glob("*"))[:20]:
    try:
        texts.append(p.read_text(errors="replace"))
    except OSError:
        pass
words = " ".join(texts).split() or ["zramd"]
heap = []
for i in range(int(sys.argv[2])):
    kind = rng.random()
    if kind < 0.35:
        heap.append(" ".join(rng.choice(words) for _ in range(rng.randint(5, 80))))
    elif kind < 0.55:
        heap.append({rng.choice(words): rng.random() for _ in range(rng.randint(1, 30))})
    elif kind < 0.75:
        bits = rng.choice((8, 16, 32))
        heap.append([rng.randint(0, 1 << bits) for _ in range(rng.randint(1, 200))])
    elif kind < 0.85:
        heap.append(json.dumps({"id": i, "name": rng.choice(words), "tags": rng.sample(words, 5)}))
    elif kind < 0.93:
        heap.append(bytearray(rng.randint(64, 4096)))
    else:
        heap.append(rng.randbytes(rng.randint(16, 2048)))
print("ready", flush=True)
sys.stdin.read()
"""


def private_writable_pages(pid: int) -> list[bytes]:
    pages: list[bytes] = []
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError:
        return pages
    with mem:
        for line in maps:
            fields = line.split()
            if len(fields) < 2 or fields[1] != "rw-p":
                continue
            name = fields[5] if len(fields) > 5 else ""
            if name in ("[vvar]", "[vsyscall]", "[vdso]"):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            for addr in range(lo, hi, PAGE):
                try:
                    mem.seek(addr)
                    page = mem.read(PAGE)
                except OSError:
                    continue
                if len(page) == PAGE:
                    pages.append(page)
    return pages


def file_pages(rng: random.Random, count: int) -> list[bytes]:
    candidates: list[Path] = []
    for root in ("/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/share/doc", "/usr/share/perl"):
        for dirpath, _, names in os.walk(root):
            candidates.extend(Path(dirpath) / n for n in names)
    candidates = sorted(p for p in candidates if p.is_file() and not p.is_symlink())
    rng.shuffle(candidates)
    pages: list[bytes] = []
    for path in candidates:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for off in range(0, len(data) - PAGE + 1, PAGE):
            pages.append(data[off : off + PAGE])
            if len(pages) >= count:
                return pages
    return pages


def build(size: int, seed: int) -> tuple[bytes, dict[str, object]]:
    rng = random.Random(seed)
    total = size // PAGE
    want_proc = total * 7 // 10
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKLOAD, str(seed * 100 + i), str(60000 + 30000 * i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError("a workload did not start")
        pids = [w.pid for w in workers]
        others = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in pids)
        rng.shuffle(others)
        proc_pages: list[bytes] = []
        for pid in pids + others:
            if pid == os.getpid():
                continue
            proc_pages.extend(private_writable_pages(pid))
            if len(proc_pages) >= want_proc:
                break
    finally:
        for w in workers:
            w.kill()
            w.wait()
    proc_pages = proc_pages[:want_proc]
    files = file_pages(rng, total - len(proc_pages))
    pages = proc_pages + files
    if len(pages) < total:
        raise RuntimeError(f"only {len(pages)} pages found, {total} wanted")
    image = b"".join(pages)
    zero = sum(1 for p in pages if p == bytes(PAGE))
    manifest = {
        "size": size,
        "seed": seed,
        "pages": total,
        "process_pages": len(proc_pages),
        "file_pages": len(files),
        "zero_pages": zero,
        "sha256": hashlib.sha256(image).hexdigest(),
    }
    return image, manifest


def ensure_image(out: Path, size: int, seed: int) -> dict[str, object]:
    """Reuse ``out`` if its manifest matches size and seed (and the bytes still hash right)."""
    manifest_path = out.with_suffix(".json")
    if out.exists() and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("size") == size and manifest.get("seed") == seed:
            digest = hashlib.sha256(out.read_bytes()).hexdigest()
            if digest == manifest.get("sha256"):
                return dict(manifest)
    image, manifest = build(size, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(image)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=256 << 20, help="bytes (multiple of 4096)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench-results/swap.img"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("make-swap-image: reading other processes' memory needs root")
    manifest = ensure_image(args.out, args.size, args.seed)
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()

"""zramd against its peers and the kernel: throughput and memory, medians of several runs.

Every system is driven through the same commands: nbdcopy fills it with the swap-like image
(128 KiB requests, 16 in flight, one connection), fio measures sequential 128 KiB reads and
4 KiB random reads, writes and a 70/30 mix at queue depth 16; then a seeded random half of the
pages is discarded and the pool compacted. 4 KiB random reads (of the image) and writes are
also measured with several clients at once (--connections, default 1,2,4: one fio job, and so
one NBD connection, each, every one at queue depth 16). NBD systems are reached over a Unix
socket (fio's nbd engine); the kernel's zram is reached as /dev/zram0 with direct I/O, and
only when it exists, is unused and we are root (it is configured for the run and reset
afterwards).

Systems: zramd (lz4, zstd) run as `zramd serve` runs them (one nbdkit worker thread per
connection, MALLOC_ARENA_MAX=2); the Python ceiling (scripts/ceiling_plugin.py) with the same
nbdkit settings, and again with nbdkit's defaults (16 threads); nbdkit memory (sparse and
allocator=zstd, C plugins, nbdkit's defaults); kernel zram (lz4).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import platform
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from benchlib import PAGE, ROOT, summarize
from make_swap_image import ensure_image

from zramd.supervise import DEFAULT_THREADS, Nbdkit, plugin_env, plugin_path, start_nbdkit

ZRAM = Path("/sys/block/zram0")
BLKDISCARD = 0x1277
FIO_WRITE_DATA = [  # fio buffers about as compressible as the image (lz4 ~2.2:1)
    "--buffer_compress_percentage=55",
    "--buffer_compress_chunk=4096",
    "--refill_buffers",
]


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class System:
    """A block device under test: started fresh for every run."""

    name: str
    kind: str  # "nbd" or "kernel"
    nbdkit_args: list[str] = field(default_factory=list)
    control: bool = False
    python: bool = False  # run with zramd serve's environment (venv on PYTHONPATH, arena cap)
    work: Path = Path()
    server: Nbdkit | None = None
    pid: int = 0

    @property
    def target(self) -> str:
        if self.kind == "kernel":
            return "/dev/zram0"
        return f"nbd+unix:///?socket={self.work / 's.sock'}"

    def start(self, size: int, work: Path) -> None:
        self.work = work
        if self.kind == "kernel":
            (ZRAM / "reset").write_text("1\n")
            (ZRAM / "comp_algorithm").write_text("lz4\n")
            (ZRAM / "disksize").write_text(f"{size}\n")
            return
        args = ["nbdkit", "-f", "-U", str(work / "s.sock"), "-P", str(work / "pid")]
        args += [a.replace("{size}", str(size)) for a in self.nbdkit_args]
        if self.control:
            args.append(f"control={work / 'ctl'}")
        self.server = start_nbdkit(
            args,
            pidfile=work / "pid",
            log=work / "nbdkit.log",
            control=work / "ctl" if self.control else None,
            env=plugin_env() if self.python else os.environ,
        )
        self.pid = self.server.pid

    def stop(self) -> None:
        if self.kind == "kernel":
            (ZRAM / "reset").write_text("1\n")
            return
        assert self.server is not None
        self.server.stop(120)

    def mm_stat(self) -> list[int] | None:
        if self.kind == "kernel":
            return [int(x) for x in (ZRAM / "mm_stat").read_text().split()]
        if self.control:
            return [int(x) for x in (self.work / "ctl" / "zram0" / "mm_stat").read_text().split()]
        return None

    def rss(self) -> int | None:
        return None if self.kind == "kernel" else rss_of(self.pid)

    def compact(self) -> float | None:
        path = (
            ZRAM / "compact" if self.kind == "kernel" else self.work / "ctl" / "zram0" / "compact"
        )
        if self.kind != "kernel" and not self.control:
            return None
        t = time.perf_counter()
        path.write_text("1\n")
        return time.perf_counter() - t

    def discard(self, pages: list[int]) -> None:
        if self.kind == "kernel":
            fd = os.open("/dev/zram0", os.O_WRONLY)
            try:
                for p in pages:
                    fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", p * PAGE, PAGE))
            finally:
                os.close(fd)
            return
        import nbd  # noqa: PLC0415 - only the NBD systems need libnbd

        h = nbd.NBD()
        h.connect_unix(str(self.work / "s.sock"))
        for i, p in enumerate(pages):
            h.aio_trim(PAGE, p * PAGE)
            if i % 64 == 63:
                while h.aio_in_flight() > 16:
                    h.poll(-1)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        h.shutdown()


def kernel_zram_usable() -> str:
    """'' if /dev/zram0 may be used, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if not (ZRAM / "initstate").exists():
        return "no /dev/zram0"
    if (ZRAM / "initstate").read_text().strip() != "0":
        return "/dev/zram0 is initialised (in use)"
    if (
        "/dev/zram0" in Path("/proc/swaps").read_text()
        or "/dev/zram0" in Path("/proc/mounts").read_text()
    ):
        return "/dev/zram0 is in use"
    if "lz4" not in (ZRAM / "comp_algorithm").read_text():
        return "kernel zram has no lz4"
    return ""


def systems(selected: list[str] | None) -> tuple[list[System], dict[str, str]]:
    threads = f"--threads={DEFAULT_THREADS}"
    zramd = [threads, "python", str(plugin_path()), "size={size}", "auto_compact=0"]
    ceiling = ["python", str(ROOT / "scripts" / "ceiling_plugin.py"), "size={size}", f"page={PAGE}"]
    all_systems = [
        System("zramd-lz4", "nbd", [*zramd, "comp_algorithm=lz4"], control=True, python=True),
        System("zramd-zstd", "nbd", [*zramd, "comp_algorithm=zstd"], control=True, python=True),
        System("ceiling", "nbd", [threads, *ceiling], python=True),
        System("ceiling-16t", "nbd", ceiling, python=True),
        System("memory", "nbd", ["memory", "size={size}"]),
        # the zstd allocator crashes on block status in nbdkit 1.32: hide extents from it
        System(
            "memory-zstd", "nbd", ["--filter=noextents", "memory", "size={size}", "allocator=zstd"]
        ),
        System("kernel-zram", "kernel"),
    ]
    skipped = {}
    why = kernel_zram_usable()
    if why:
        skipped["kernel-zram"] = why
    chosen = [
        s for s in all_systems if s.name not in skipped and (not selected or s.name in selected)
    ]
    return chosen, skipped


def fio(system: System, work: Path, name: str, rw: str, bs: str, runtime: float, size: int,
        extra: list[str] | None = None, jobs: int = 1) -> dict[str, Any]:  # fmt: skip
    """One fio run: ``jobs`` jobs (each its own connection) at queue depth 16, summed."""
    out = work / f"fio-{name}.json"
    args = ["fio", f"--name={name}", f"--rw={rw}", f"--bs={bs}", "--iodepth=16",
            f"--numjobs={jobs}", "--group_reporting", "--time_based", f"--runtime={runtime}",
            f"--size={size}", "--output-format=json", f"--output={out}",
            *(extra or [])]  # fmt: skip
    if system.kind == "kernel":
        args += ["--ioengine=libaio", "--direct=1", "--filename=/dev/zram0"]
    else:
        args += ["--ioengine=nbd", f"--uri={system.target}"]
    subprocess.run(args, check=True, capture_output=True)
    job = json.loads(out.read_text())["jobs"][0]
    return {
        d: {"mib_s": job[d]["bw_bytes"] / 2**20, "iops": job[d]["iops"]} for d in ("read", "write")
    }


def one_run(system: System, image: Path, size: int, runtime: float, seed: int, work: Path,
            step: Any, connections: list[int]) -> dict[str, Any]:  # fmt: skip
    r: dict[str, Any] = {}
    system.start(size, work)
    try:
        time.sleep(0.5)
        r["rss_baseline"] = system.rss()
        step("fill")
        t = time.perf_counter()
        subprocess.run(["nbdcopy", "--flush", "--no-extents", "--connections=1", "--requests=16",
                        "--request-size=131072", str(image), system.target],
                       check=True, capture_output=True)  # fmt: skip
        r["seq_write_mib_s"] = size / (time.perf_counter() - t) / 2**20
        mm = system.mm_stat()
        r["mm_after_fill"] = mm
        r["rss_after_fill"] = system.rss()
        step("seq read")
        r["seq_read_mib_s"] = fio(system, work, "seqread", "read", "128k", runtime, size)["read"][
            "mib_s"
        ]
        step("rand read")
        for n in connections:  # the image's data, read by n clients at once
            r[f"rand_read_iops_c{n}"] = fio(
                system, work, f"randread{n}", "randread", "4k", runtime, size, jobs=n
            )["read"]["iops"]
        r["rand_read_iops"] = r.get("rand_read_iops_c1")
        step("discard half")
        rng = random.Random(seed)
        victims = sorted(rng.sample(range(size // PAGE), size // PAGE // 2))
        system.discard(victims)
        r["mm_after_discard"] = system.mm_stat()
        step("compact")
        r["compact_seconds"] = system.compact()
        r["mm_after_compact"] = system.mm_stat()
        r["rss_after_compact"] = system.rss()
        step("rand write")
        for n in connections:
            job = fio(system, work, f"randwrite{n}", "randwrite", "4k", runtime, size,
                      FIO_WRITE_DATA, jobs=n)  # fmt: skip
            r[f"rand_write_iops_c{n}"] = job["write"]["iops"]
        r["rand_write_iops"] = r.get("rand_write_iops_c1")
        step("mix 70/30")
        mix = fio(
            system, work, "mix", "randrw", "4k", runtime, size, [*FIO_WRITE_DATA, "--rwmixread=70"]
        )
        r["mix_iops"] = mix["read"]["iops"] + mix["write"]["iops"]
    finally:
        system.stop()
    return r


METRICS = [
    ("seq_write_mib_s", "seq write 128K (nbdcopy, image)", "MiB/s"),
    ("seq_read_mib_s", "seq read 128K (fio)", "MiB/s"),
    ("rand_read_iops", "rand read 4K QD16", "IOPS"),
    ("rand_write_iops", "rand write 4K QD16", "IOPS"),
    ("mix_iops", "rand 70/30 4K QD16", "IOPS"),
]
CONNECTIONS = [1, 2, 4]


def scaling_metrics(connections: list[int]) -> list[tuple[str, str, str]]:
    """The multi-client rows: 4 KiB random reads and writes by n connections at once."""
    return [
        (f"rand_{op}_iops_c{n}", f"rand {op} 4K QD16, {n} connection{'s' if n > 1 else ''}", "IOPS")
        for op in ("read", "write")
        for n in connections
    ]


def derived(r: dict[str, Any]) -> dict[str, float | None]:
    """Memory figures of one run (None where the system can't report them)."""
    out: dict[str, float | None] = {}
    fill, comp = r.get("mm_after_fill"), r.get("mm_after_compact")
    out["mem_used_after_fill"] = fill[2] if fill else None
    out["mem_used_after_compact"] = comp[2] if comp else None
    out["rss_after_fill"] = r.get("rss_after_fill")
    out["rss_after_compact"] = r.get("rss_after_compact")
    out["compact_seconds"] = r.get("compact_seconds")
    if fill and r.get("rss_after_fill") is not None and r.get("rss_baseline") is not None:
        stored = fill[0] // PAGE
        beyond = r["rss_after_fill"] - r["rss_baseline"] - fill[2]
        out["rss_beyond_pool_per_page"] = beyond / stored if stored else None
    else:
        out["rss_beyond_pool_per_page"] = None
    return out


def machine() -> dict[str, str]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def ver(cmd: list[str]) -> str:
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, check=False
            ).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "?"

    return {
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
        "memory_gib": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nbdkit": ver(["nbdkit", "--version"]),
        "fio": ver(["fio", "--version"]),
        "libnbd": ver(["nbdcopy", "--version"]),
    }


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "MiB":
        return f"{v / 2**20:,.1f}"
    if unit in ("MiB/s",):
        return f"{v:,.0f}"
    if unit == "IOPS":
        return f"{v / 1000:,.1f} k"
    if unit == "s":
        return f"{v:.2f}"
    return f"{v:,.1f}"


def report(result: dict[str, Any]) -> str:
    s = result["summary"]
    names = list(s)
    m, img = result["machine"], result["image"]
    lines = [
        f"Measured {result['date']} on {m['cpu']} ({m['cpus']} CPUs, {m['memory_gib']} GiB), "
        f"kernel {m['kernel']}, Python {m['python']}, {m['nbdkit']}, {m['fio']}. "
        f"Image: {img['size'] >> 20} MiB, {img['process_pages']} process pages + "
        f"{img['file_pages']} file pages (seed {img['seed']}). "
        f"{result['runs_per_system']} runs per system; median (min–max).",
        "",
    ]
    if result["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in result["skipped"].items()), ""]
    lines += ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    scaling = scaling_metrics(result.get("connections", CONNECTIONS))
    rows = [(k, label, unit) for k, label, unit in [*METRICS, *scaling]] + [
        ("mem_used_after_fill", "mem_used_total after fill", "MiB"),
        ("mem_used_after_compact", "mem_used_total after half discard + compact", "MiB"),
        ("rss_after_fill", "process RSS after fill", "MiB"),
        ("rss_after_compact", "process RSS after discard + compact", "MiB"),
        ("rss_beyond_pool_per_page", "RSS beyond pool per stored page", "B"),
        ("compact_seconds", "compaction time", "s"),
    ]
    for key, label, unit in rows:
        cells = []
        for n in names:
            st = s[n].get(key)
            if st is None:
                cells.append("–")
            else:
                cells.append(
                    f"{fmt(st['median'], unit)} ({fmt(st['min'], unit)}–{fmt(st['max'], unit)})"
                )
        lines.append(f"| {label} ({unit}) | " + " | ".join(cells) + " |")
    conns = result.get("connections", CONNECTIONS)
    if len(conns) > 1:
        lines += [
            "",
            "Scaling with clients (median / median of the same system, 1 connection):",
            "",
        ]
        lines += ["| system | " + " | ".join(
            f"{op} {n}c / 1c" for op in ("read", "write") for n in conns[1:]) + " |"]  # fmt: skip
        lines += ["|---" * (1 + 2 * (len(conns) - 1)) + "|"]
        for n_ in names:
            cells = []
            for op in ("read", "write"):
                base = s[n_].get(f"rand_{op}_iops_c{conns[0]}")
                for n in conns[1:]:
                    v = s[n_].get(f"rand_{op}_iops_c{n}")
                    cells.append(f"{v['median'] / base['median']:.2f}×" if v and base else "–")
            lines.append(f"| {n_} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios (median / median):", ""]
    ours = [n for n in names if n.startswith("zramd")]
    peers = [n for n in names if not n.startswith("zramd")] + ours
    lines += [
        "| figure | " + " | ".join(f"{o} / {p}" for o in ours for p in peers if p != o) + " |"
    ]
    lines += ["|---" * (1 + sum(1 for o in ours for p in peers if p != o)) + "|"]
    memory_rows = [
        ("mem_used_after_fill", "mem_used_total after fill", ""),
        ("mem_used_after_compact", "mem_used_total after compact", ""),
        ("rss_after_fill", "RSS after fill", ""),
    ]
    for key, label, _unit in [*METRICS, *scaling, *memory_rows]:
        cells = []
        for o in ours:
            for p in peers:
                if p == o:
                    continue
                a, b = s[o].get(key), s[p].get(key)
                cells.append(
                    f"{a['median'] / b['median']:.2f}×" if a and b and b["median"] else "–"
                )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def charts(result: dict[str, Any], outdir: Path) -> list[Path]:
    import matplotlib  # noqa: PLC0415 - only for --charts

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    s = result["summary"]
    names = list(s)
    paths = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        paths.append(outdir / name)
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4))
    for ax, (key, label, unit) in zip(axes, METRICS, strict=True):
        med = [s[n][key]["median"] if s[n].get(key) else 0 for n in names]
        err_lo = [
            m - s[n][key]["min"] if s[n].get(key) else 0 for m, n in zip(med, names, strict=True)
        ]
        err_hi = [
            s[n][key]["max"] - m if s[n].get(key) else 0 for m, n in zip(med, names, strict=True)
        ]
        colors = ["tab:blue" if n.startswith("zramd") else "tab:gray" for n in names]
        ax.bar(names, med, yerr=[err_lo, err_hi], color=colors, capsize=3)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.suptitle(f"zramd vs peers — throughput (median, min–max), {result['date']}")
    save(fig, "bench-throughput.png")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    keys = [
        ("mem_used_after_fill", "pool after fill"),
        ("mem_used_after_compact", "pool after ½ discard + compact"),
        ("rss_after_fill", "RSS after fill"),
        ("rss_after_compact", "RSS after ½ discard + compact"),
    ]
    width = 0.2
    for i, (key, label) in enumerate(keys):
        vals = [(s[n][key]["median"] / 2**20) if s[n].get(key) else 0 for n in names]
        ax.bar([x + i * width for x in range(len(names))], vals, width, label=label)
    ax.set_xticks([x + 1.5 * width for x in range(len(names))], names, rotation=20)
    ax.set_ylabel("MiB")
    ax.legend(fontsize=8)
    ax.set_title(f"memory for a {result['image']['size'] >> 20} MiB swap-like image (median)")
    save(fig, "bench-memory.png")
    conns = result.get("connections", CONNECTIONS)
    if len(conns) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
        for ax, op in zip(axes, ("read", "write"), strict=True):
            for n_ in names:
                ys = [s[n_].get(f"rand_{op}_iops_c{n}") for n in conns]
                if all(ys):
                    style = "-o" if n_.startswith("zramd") else "--x"
                    ax.plot(conns, [y["median"] / 1000 for y in ys if y], style, label=n_)
            ax.set_xticks(conns)
            ax.set_xlabel("connections (fio jobs, QD16 each)")
            ax.set_ylabel("k IOPS")
            ax.set_title(f"4 KiB random {op}s")
            ax.legend(fontsize=7)
        fig.suptitle(f"throughput against clients (median), {result['date']}")
        save(fig, "bench-scaling.png")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=256 << 20, help="image/device bytes")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runtime", type=float, default=8.0, help="seconds per fio job")
    ap.add_argument("--systems", help="comma list (default: all available)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results")
    ap.add_argument("--charts", type=Path, help="write PNG charts into this directory")
    ap.add_argument(
        "--connections", default="1,2,4", help="clients at once for the 4 KiB random rows"
    )
    ap.add_argument(
        "--smoke", action="store_true", help="16 MiB, 1 run, 1 s jobs: checks the machinery"
    )
    args = ap.parse_args()
    if args.smoke:
        args.size, args.runs, args.runtime = 16 << 20, 1, 1.0
    connections = [int(n) for n in args.connections.split(",")]
    for tool in ("nbdkit", "nbdcopy", "fio"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed")
    args.out.mkdir(parents=True, exist_ok=True)
    image = args.out / f"swap-{args.size >> 20}M-seed{args.seed}.img"
    manifest = ensure_image(image, args.size, args.seed)
    chosen, skipped = systems(args.systems.split(",") if args.systems else None)
    steps = ["fill", "seq read", "rand read", "discard half", "compact", "rand write", "mix 70/30"]
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in chosen}
    with click.progressbar(length=len(chosen) * args.runs * len(steps), label="bench",
                           file=sys.stderr, show_pos=True) as bar:  # fmt: skip
        for run in range(args.runs):
            for system in chosen:  # interleaved: drift hits every system alike
                with tempfile.TemporaryDirectory(prefix="zramd-bench-") as tmp:

                    def step(name: str, system: System = system, run: int = run) -> None:
                        bar.label = f"{system.name} run {run + 1}/{args.runs}: {name:12s}"
                        bar.update(1)

                    runs[system.name].append(one_run(system, image, args.size, args.runtime,
                                                     args.seed + run, Path(tmp), step,
                                                     connections))  # fmt: skip
    summary: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        d = [derived(r) for r in rs]
        summary[name] = {
            k: summarize([r.get(k) for r in rs])
            for k, _, _ in [*METRICS, *scaling_metrics(connections)]
        }
        for key in d[0]:
            summary[name][key] = summarize([x[key] for x in d])
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "image": manifest,
        "runs_per_system": args.runs,
        "connections": connections,
        "runtime_s": args.runtime,
        "skipped": skipped,
        "runs": runs,
        "summary": summary,
    }
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (args.out / f"bench-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report(result)
    (args.out / f"bench-{stamp}.md").write_text(text)
    print(text)
    if args.charts:
        for p in charts(result, args.charts):
            print(f"chart: {p}")


if __name__ == "__main__":
    main()

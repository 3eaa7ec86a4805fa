"""Load with verification: fio (nbd engine, several connections) writes, reads and trims while
a thread compacts and resets mem_used_max every 100 ms; then mm_stat must agree with what the
client sees.

Layout of the device (R = the profile's region):

    [0, 2R)   two fio jobs, one connection each, random writes of 512 B..64 KiB with crc32c
              verify (verify_backlog: verified while writing, then all again at the end);
              a third connection reads the same range at random (unverified load: the
              verifying jobs own those bytes)
    [2R, 3R)  a writer and a trimmer race over the same pages; when the writer is done a last
              job trims every block, so the region must end as holes reading zero
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import nbd
import pytest

from relkit import Profile, poke_control
from servers import block_status, serve

pytestmark = pytest.mark.e2e
P = 4096


def job_file(region: int, loops: int) -> str:
    return f"""
[global]
ioengine=nbd
uri=${{uri}}
iodepth=16
loops={loops}
buffer_compress_percentage=50
buffer_compress_chunk=4k
refill_buffers=1

[verify]
numjobs=2
offset=0
offset_increment={region}
size={region}
rw=randwrite
bssplit=512/10:4k/50:16k/20:64k/20
verify=crc32c
verify_backlog=256
verify_fatal=1
do_verify=1
verify_state_save=0

[reader]
loops={4 * loops}
offset=0
size={2 * region}
rw=randread
bs=4k

[t-write]
offset={2 * region}
size={region}
rw=randwrite
bs=4k

[t-trim]
loops={4 * loops}
offset={2 * region}
size={region}
rw=randtrim
bssplit=4k/50:64k/50

[t-final]
wait_for=t-write
offset={2 * region}
size={region}
loops=1
rw=trim
bs=1M
"""


def classes_total(text: str) -> dict[str, int]:
    """The Total row of the ``classes`` table, by column name."""
    lines = text.splitlines()
    header = lines[0].split()
    total = next(x for x in lines if x.startswith("Total")).split()
    # the Total row leaves "class size" and "pages_per_zspage" blank
    names = [h for h in header if h not in ("class", "size", "pages_per_zspage")]
    return dict(zip(names, (int(v) for v in total[1:]), strict=True))


@pytest.mark.parametrize("threads", [16, 1], ids=["16-workers", "1-worker"])
def test_fio_verify_under_compaction(tmp_path: Path, profile: Profile, threads: int) -> None:
    """nbdkit's default 16 worker threads per connection (the most concurrency inside the
    device) and the one `zramd serve` runs."""
    region = profile.region
    with serve(tmp_path, f"size={profile.disksize}", nbdkit_args=[f"--threads={threads}"]) as srv:
        assert srv.control is not None
        jobs = tmp_path / "load.fio"
        jobs.write_text(job_file(region, profile.loops))
        out = tmp_path / "fio.json"
        env = dict(os.environ, uri=srv.uri)
        start = time.monotonic()
        with poke_control(srv.control) as poker:
            fio = subprocess.run(
                ["fio", str(jobs), "--output-format=json", f"--output={out}"],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800, check=False,
            )  # fmt: skip
        elapsed = time.monotonic() - start
        assert fio.returncode == 0, fio.stdout + fio.stderr + out.read_text()
        assert "verify" not in fio.stderr, fio.stderr
        report = json.loads(out.read_text())
        assert [j["error"] for j in report["jobs"]] == [0] * len(report["jobs"])
        assert poker.errors == []
        # one round (compact, then reset the peak) every 100 ms plus the time the writes
        # take: at least a quarter of that rate, so the writer really ran all along
        assert poker.compacts >= int(elapsed / 0.1 * 0.25), (poker, elapsed)

        traffic = {
            d: sum(j[d]["io_bytes"] for j in report["jobs"]) for d in ("read", "write", "trim")
        }
        verified = sum(j["read"]["io_bytes"] for j in report["jobs"] if j["jobname"] == "verify")
        written = sum(j["write"]["io_bytes"] for j in report["jobs"] if j["jobname"] == "verify")
        assert verified >= written > 0  # every written block was read back and checked
        if profile.name == "long":
            assert sum(traffic.values()) >= 1 << 30

        h = srv.connect()
        size = h.get_size()
        extents = block_status(h, size)
        # the trimmed region ends as holes that read zero
        t_extents = block_status(h, region, 2 * region)
        assert all(flags & nbd.STATE_HOLE for _, flags in t_extents), t_extents
        chunk = 32 << 20  # NBD requests stop at 64 MiB
        for off in range(2 * region, 3 * region, chunk):
            assert h.pread(chunk, off) == bytes(chunk)
        h.shutdown()

        mm = srv.mm_stat()
        (orig, compr, used, limit, used_max, same, compacted, huge, huge_since) = mm
        allocated = sum(n for n, flags in extents if not flags & nbd.STATE_HOLE)
        zero_extents = sum(n for n, flags in extents if flags == nbd.STATE_ZERO)
        # every page the client can see as allocated is a stored page, and only those
        assert orig == allocated, (mm, allocated)
        assert zero_extents <= same * P
        assert compr <= orig - same * P  # same-filled pages cost nothing, huge ones 4096
        assert huge * P <= compr
        assert huge <= orig // P - same
        assert huge_since >= huge
        assert compr <= used  # objects (and their headers) live in the pool's frames
        assert used <= used_max  # the peak was reset while running, never below current use
        assert limit == 0
        total = classes_total(srv.attr("classes"))
        assert total["obj_used"] == orig // P - same  # one object per stored, not-same page
        assert total["pages_used"] * P == used
        io = srv.attr("io_stat").split()
        assert io[:2] == ["0", "0"]  # no failed reads or writes

        by_name: dict[str, list[dict[str, Any]]] = {}
        for j in report["jobs"]:
            by_name.setdefault(j["jobname"], []).append(j)

        def ios_per_s(name: str, d: str) -> int:
            return round(sum(j[d]["total_ios"] * 1000 / j["job_runtime"] for j in by_name[name]))

        figures = {
            "profile": profile.name,
            "threads": threads,
            "seconds": round(elapsed, 1),
            "traffic_mib": {d: round(v / 2**20) for d, v in traffic.items()},
            "mib_per_s": round(sum(traffic.values()) / 2**20 / elapsed, 1),
            "verified_mib": round(verified / 2**20),
            # each verifying job reads back what it wrote: its read rate is the same
            "verify_write_iops": ios_per_s("verify", "write"),
            "verify_write_mib_s": round(
                sum(j["write"]["io_bytes"] * 1000 / j["job_runtime"] for j in by_name["verify"])
                / 2**20,
                1,
            ),
            "reader_iops": ios_per_s("reader", "read"),
            "t_write_iops": ios_per_s("t-write", "write"),
            "t_trim_iops": ios_per_s("t-trim", "trim"),
            "compacts": poker.compacts,
            "mem_used_max_resets": poker.max_resets,
            "pages_compacted": compacted,
            "mm_stat": mm,
        }
        print("FIGURES", json.dumps(figures))

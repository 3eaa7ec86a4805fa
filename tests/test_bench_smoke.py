"""The benchmark's machinery (image, servers, nbdcopy, fio, discard, compaction, report) works.

A smoke run only: 16 MiB, 1 s jobs, two systems. The figures themselves live in
docs/performance.md, never in assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--connections", "1,2",
         "--systems", "zramd-lz4,ceiling", "--out", str(tmp_path), "--charts", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (result_file,) = tmp_path.glob("bench-*.json")
    result = json.loads(result_file.read_text())
    assert set(result["summary"]) == {"zramd-lz4", "ceiling"}
    ours = result["summary"]["zramd-lz4"]
    for key in ("seq_write_mib_s", "seq_read_mib_s", "rand_read_iops", "rand_write_iops",
                "rand_read_iops_c2", "rand_write_iops_c2"):  # fmt: skip
        assert ours[key]["median"] > 0
    assert ours["mem_used_after_compact"]["median"] < ours["mem_used_after_fill"]["median"]
    assert (tmp_path / "bench-throughput.png").stat().st_size > 1000
    assert (tmp_path / "bench-scaling.png").stat().st_size > 1000
    assert "| zramd-lz4 | " in r.stdout  # the scaling table
    assert "| seq write 128K" in r.stdout


def test_bench_dict_smoke(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_dict.py"), "--size", str(8 << 20),
         "--sample", "0.3", "--levels", "3", "--out", str(tmp_path),
         "--json", str(tmp_path / "dict.json")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "dict.json").read_text())["rows"]
    assert [(row["algorithm"], row["dict"]) for row in rows] == [("zstd", False), ("zstd", True)]
    assert all(0 < row["compr_data_size"] < row["orig_data_size"] for row in rows)
    assert "zstd level=3 +dict" in r.stdout


@pytest.mark.parametrize("mode", [[], ["--threads", "1,2"]], ids=["single", "scaling"])
def test_bench_pool_smoke(tmp_path: Path, mode: list[str]) -> None:
    """scripts/bench_pool.py runs every pool implementation (and, scaling, the C pool alone)."""
    out = tmp_path / "pool.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_pool.py"), "--objects", "300",
         "--runs", "1", "--json", str(out), *mode],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    if mode:
        assert set(results["medians"]) == {"python", "c", "c-alone"}
        for phases in results["medians"].values():
            assert all(v["2"]["wall"] > 0 and v["2"]["cpu"] > 0 for v in phases.values())
    else:
        assert set(results) == {"python", "c"}
        assert all(s["store_ops"]["median"] > 0 for s in results.values())

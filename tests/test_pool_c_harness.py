"""The C pool's own stress harness (tests/c/stress_pool.c, no Python), built and run briefly
so it keeps compiling and passing; ``scripts/c-stress`` runs it longer, under ThreadSanitizer
and AddressSanitizer + UBSan too."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_stress_harness_passes(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(ROOT / "scripts/c-stress"), "--quick", "--out", str(tmp_path), "plain"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "single-thread checks: ok" in run.stdout
    assert "stress_pool: ok" in run.stdout

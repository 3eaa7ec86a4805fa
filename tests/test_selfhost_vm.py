"""zramd as the swap device of the Linux that runs it (tests/vm/selfhost.sh).

The guest (768 MiB, 2 vCPUs, TCG) runs ``zramd serve --swap`` from this checkout, attaches it
with nbd-client, ``swapon --discard``, and a hog writes and then verifies 1.5x its RAM of
compressible pages, as fast as it can. It must finish with every page verified, no OOM kill,
no hung task, no I/O error, the server alive; and once the hog is gone the discards must
have emptied the pool. The kernel's own zram runs the same hog in the same VM first: the
reference, and a check that the VM itself can do it. Both times are printed and recorded
(``record_property``); docs/reliability.md keeps the figures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vm import kernel_tree

pytestmark = [pytest.mark.e2e, pytest.mark.vm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SELFHOST = ROOT / "tests" / "vm" / "selfhost.sh"
#: guest RAM: swap mode costs a fixed ~60 MiB (interpreter, warm heap) plus a reserve that must
#: hold all that is swapped out; at 384 MiB a 1.5x hog cannot fit beside both (docs/reliability.md)
GUEST_MB = 768
#: the swap both modes get (the hog swaps out ~1 GiB at ~2.3:1)
SWAP_SIZE = "1536M"
#: swap mode's pool reserve: the compressed hog beyond what stays resident, with room
RESERVE = "448M"
#: both modes: a quarter of it is what the SCHED_RR serving thread's replies may use when
#: nothing can be reclaimed without its own I/O (swapmode.MIN_FREE_KBYTES)
MIN_FREE_KBYTES = "16384"
TIMEOUT = 1800
MiB = 1 << 20


def selfhost(mode: str, *args: str) -> dict[str, str]:
    """Run selfhost.sh; its verdict line's fields (outcome, write, verify, total, mm_stat,
    mm_stat_settled) and the whole output (out)."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is missing (apt-get install qemu-system-x86)")
    tree, kver = kernel_tree()
    env = dict(os.environ, SELFHOST_TREE=str(tree), SELFHOST_KERNEL=kver)
    # the guest runs scripts/zramd from this checkout: its venv must be current already (a
    # reinstall inside the guest takes minutes and is lost with the guest)
    subprocess.run([str(ROOT / "scripts" / "zramd"), "--help"], check=True, capture_output=True)
    argv = [str(SELFHOST), str(ROOT), mode, str(GUEST_MB), "--swap-size", SWAP_SIZE,
            "--min-free-kbytes", MIN_FREE_KBYTES, "--timeout", str(TIMEOUT), *args]  # fmt: skip
    r = subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT + 60, check=False, env=env
    )
    out = r.stdout + r.stderr
    lines = [x for x in out.splitlines() if x.startswith("selfhost ") and ": " in x]
    assert lines, out[-6000:]
    verdict = lines[-1]
    fields = {"out": out, "verdict": verdict}
    m = re.match(r"selfhost \S+: (\w+) ", verdict)
    assert m, verdict
    fields["outcome"] = m[1]
    for key in ("write", "verify"):
        k = re.search(rf"\b{key}=([0-9.]+)s", verdict)
        fields[key] = k[1] if k else ""
    k = re.search(r", ([0-9.]+)s total", verdict)
    fields["total"] = k[1] if k else ""
    for key in ("mm_stat", "mm_stat_settled"):
        k = re.search(rf"\b{key}=\[([^\]]*)\]", verdict)
        fields[key] = k[1] if k else ""
    return fields


def check_clean(run: dict[str, str]) -> None:
    """Every page verified, and nothing went wrong on the way."""
    verdict = run["verdict"]
    assert run["outcome"] == "ok", run["out"][-8000:]
    assert "bad=0" in verdict, verdict
    assert "oom_kills=0" in verdict, verdict
    assert "hung_task_msgs=0" in verdict, verdict
    assert "io_errors=0" in verdict, verdict


@pytest.fixture(scope="module")
def kernel_zram() -> dict[str, str]:
    run = selfhost("kernel-zram", "--discard")
    check_clean(run)
    return run


def test_zramd_swap_serves_its_own_host(
    kernel_zram: dict[str, str], record_property: pytest.RecordProperty
) -> None:
    run = selfhost(
        "zramd", "--discard", "--server-log", "/dev/console",
        "--serve-arg", "--swap", "--serve-arg", f"--mem-limit={RESERVE}",
    )  # fmt: skip
    summary = (
        f"kernel zram: {kernel_zram['total']} s (write {kernel_zram['write']} s, verify "
        f"{kernel_zram['verify']} s); zramd --swap: {run['total']} s (write {run['write']} s, "
        f"verify {run['verify']} s)"
    )
    print(summary)
    record_property("kernel_zram_s", kernel_zram["total"])
    record_property("zramd_swap_s", run["total"])
    check_clean(run)
    assert "server=alive" in run["verdict"], run["verdict"]
    # discards reached the pool: once the hog is gone it holds next to nothing
    settled = run["mm_stat_settled"].split()
    assert len(settled) > 1, run["verdict"]
    orig = int(settled[1])
    assert orig < 8 * MiB, run["verdict"]
    peak = int(run["mm_stat"].split()[4]) if run["mm_stat"] else 0  # mem_used_max
    assert peak > 64 * MiB, run["verdict"]  # the hog really went through the pool

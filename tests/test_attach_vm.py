"""attach.setup/teardown for real: a VM on this machine's userland runs a zramd server, reads
a zram-generator configuration, swaps to one device, mounts ext4 from the other, uses both,
and takes them down again (tests/guest_attach.py runs in the guest; tests/vmhost.py boots it)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from vmhost import run_host_vm

pytestmark = [pytest.mark.e2e, pytest.mark.vm]

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
# fuse: the control directories; nbd: the kernel's client; ext4 (crc32c for its checksums)
MODULES = ["fuse", "nbd", "ext4", "crc32c_generic"]


@pytest.mark.timeout(1800)  # minutes under TCG: the guest swaps through Python
def test_setup_swap_and_ext4_then_teardown(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.fail(f"{ROOT}/.venv is missing: run scripts/test first")
    payload = (
        "mount -t cgroup2 none /sys/fs/cgroup\n"
        f"{ROOT}/.venv/bin/python {ROOT}/tests/guest_attach.py {tmp_path}\n"
    )
    rc, out = run_host_vm(
        payload, tmp_path, modules=MODULES, paths=[tmp_path], memory="1024M", timeout=1500
    )
    guest = dict(re.findall(r"^GUEST (\S+) ?(.*)$", out, re.MULTILINE))
    assert rc == 0, out[-5000:]
    ram = int(guest["RAM"])
    assert json.loads(guest["DEVICES"]) == [["zram0", 96 * MiB], ["zram1", ram // 8 * MiB]]
    nbd = json.loads(guest["NBD"])
    assert guest["SWAP"].split()[0] == nbd["zram0"]
    assert guest["SWAP"].split()[4] == "42"  # swap-priority
    assert guest["FS-DATA"].startswith("ok")
    assert guest["SWAP-DATA"].startswith("ok")
    assert guest["TEARDOWN"] == "ok"


@pytest.mark.timeout(1800)
def test_serve_config_sets_up_signals_ready_and_takes_down_on_sigterm(tmp_path: Path) -> None:
    """`zramd serve --foreground --config` as the unit runs it (tests/guest_serve.py): READY=1
    once zram0 is swap (a process really swapped to it) and zram2 is mounted (no zram1); on
    SIGTERM, STOPPING=1, and a swapoff refused for lack of memory keeps nbdkit serving the swap
    (STATUS says so) until a retry succeeds; then everything is down and the server gone."""
    if not (ROOT / ".venv" / "bin" / "zramd").exists():
        pytest.fail(f"{ROOT}/.venv is missing: run scripts/test first")
    payload = (
        "mount -t cgroup2 none /sys/fs/cgroup\n"
        f"{ROOT}/.venv/bin/python {ROOT}/tests/guest_serve.py {tmp_path}\n"
    )
    rc, out = run_host_vm(
        payload, tmp_path, modules=MODULES, paths=[tmp_path], memory="1024M", timeout=1500
    )
    guest = dict(re.findall(r"^GUEST (\S+) ?(.*)$", out, re.MULTILINE))
    assert rc == 0, out[-6000:]
    nbd = json.loads(guest["NBD"])
    assert sorted(nbd) == ["zram0", "zram2"]
    assert guest["SWAP"].split()[4] == "42"  # swap-priority
    assert guest["FS-DATA"] == "ok"
    assert int(guest["SWAP-USED-KB"]) > 12 * 1024
    assert "swapoff" in guest["REFUSED"]
    assert "Cannot allocate memory" in guest["REFUSED"]
    assert guest["SERVE-RC"] == "0"
    assert guest["HOG"] == "HOG again True"
    assert guest["STOPPED"] == "ok"


UNIT_PAYLOAD = r"""
Z={root}/.venv/bin/zramd
say() {{ echo "GUEST $*"; }}
$Z install-unit
printf '[zram0]\nzram-size = 64\nswap-priority = 33\n\n[zram3]\nzram-size = ram / 16\n' \
    > /etc/zramd/zramd.conf
printf 'fs-type = ext4\nmount-point = /mnt/zramd-unit\n' >> /etc/zramd/zramd.conf
systemctl daemon-reload
say EXEC "$(systemctl show -p ExecStart --value zramd | tr -s ' ' | cut -c1-200)"
t=$(date +%s)
if ! systemctl start zramd; then
    systemctl status zramd --no-pager || true
    journalctl -u zramd --no-pager | tail -40
    exit 1
fi
say START-SECONDS $(( $(date +%s) - t ))
say ACTIVE "$(systemctl is-active zramd)"
say STATUS "$(systemctl show -p StatusText --value zramd)"
say SWAP "$(grep '^/dev/nbd' /proc/swaps | tr -s ' ')"
say MOUNT "$(grep ' /mnt/zramd-unit ' /proc/mounts)"
say CONTROL "$(ls /run/zramd/control | tr '\n' ' ')"
echo zramd > /mnt/zramd-unit/file
t=$(date +%s)
systemctl stop zramd
say STOP-SECONDS $(( $(date +%s) - t ))
for p in ActiveState Result ExecMainStatus; do
    say "$p" "$(systemctl show -p $p --value zramd)"
done
say SWAPS-AFTER "$(grep -c '^/dev/nbd' /proc/swaps || true)"
say MOUNTS-AFTER "$(grep -c -e ' /mnt/zramd-unit ' -e ' /run/zramd/control ' /proc/mounts || true)"
for d in /sys/block/nbd*; do if [ -e "$d/pid" ]; then say CONNECTED "$d"; fi; done
say RUN "$(ls -A /run/zramd | tr '\n' ' ')"
say PROCESSES "$(pgrep -c nbdkit || true)"
journalctl -u zramd --no-pager -o cat | tail -25
"""


@pytest.mark.timeout(1800)
def test_the_unit_under_systemd(tmp_path: Path) -> None:
    """The shipped unit for real: systemd (the host's, Debian 12's) as the guest's PID 1;
    `zramd install-unit`, a configuration, `systemctl start zramd` returns once READY=1
    came (swap and ext4 set up, STATUS= naming them), `systemctl stop zramd` takes them down
    and leaves the unit inactive with result success."""
    if not (ROOT / ".venv" / "bin" / "zramd").exists():
        pytest.fail(f"{ROOT}/.venv is missing: run scripts/test first")
    rc, out = run_host_vm(
        UNIT_PAYLOAD.format(root=ROOT), tmp_path, modules=MODULES, paths=[tmp_path],
        memory="1024M", timeout=1500, systemd=True,
    )  # fmt: skip
    guest = dict(re.findall(r"^GUEST (\S+) ?(.*)$", out, re.MULTILINE))
    assert rc == 0, out[-6000:]
    assert f"{ROOT}/.venv/bin/zramd" in guest["EXEC"]
    assert guest["ACTIVE"] == "active"
    assert guest["STATUS"].startswith(
        "serving zram0, zram3 on /run/zramd/zramd.sock; zram0: swap on /dev/nbd"
    )
    assert guest["SWAP"].split()[4] == "33"
    assert guest["MOUNT"].split()[2] == "ext4"
    assert guest["CONTROL"].split() == ["zram-control", "zram0", "zram3"]
    assert (guest["ActiveState"], guest["Result"], guest["ExecMainStatus"]) == (
        "inactive", "success", "0"
    )  # fmt: skip
    assert guest["RUN"].split() == ["control"]  # the empty mount point; no record, no socket
    assert guest["SWAPS-AFTER"] == "0"
    assert guest["MOUNTS-AFTER"] == "0"
    assert "CONNECTED" not in guest
    assert guest["PROCESSES"] == "0"

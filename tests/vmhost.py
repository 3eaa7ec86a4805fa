"""Boot Debian's kernel on this machine's own userland, for tests that run zramd inside a VM.

tests/vm.py boots a busybox initramfs with a few static tools; a test that needs Python,
nbdkit, FUSE and util-linux in the guest gets the host's instead (the approach of
/work/shared/vm/selfhost.sh): a small busybox initramfs loads the virtio, 9p and overlay modules
(and the ones the test asks for) from the kernel package tests/vm.py unpacks, mounts the
host's / read-only over virtio-9p, puts a tmpfs overlay on it, fresh tmpfs on /tmp and /run
(the host's hold other runs' sockets and mounts), overlays the given host paths back in
(the checkout, the test's work directory: writes stay in the guest), switch_roots and runs a
bash payload as PID 1. The payload's console output comes back, ended by ``ZRAMD-VM-RESULT
<status>``; the guest then powers off.

Modules load before switch_root (the host has no /lib/modules for this kernel), so the list
given here is all the guest gets. With ``systemd=True`` the host's systemd becomes PID 1
instead, and the payload runs as the one service of the default target (zramd's unit tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from vm import RESULT, _cpio, kernel_tree

BASE_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
fail() { echo "ZRAMD-VM-RESULT 99 (guest init: $*)"; echo o > /proc/sysrq-trigger; sleep 30; }
for m in $(cat /etc/modorder); do insmod /lib/modules/$m.ko || fail "insmod $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower \
    || fail "9p mount"
mount -t tmpfs -o mode=755 rw /rw && mkdir -p /rw/root/u /rw/root/w
mount -t overlay -o lowerdir=/lower,upperdir=/rw/root/u,workdir=/rw/root/w root /newroot \
    || fail overlay
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
mount -t tmpfs -o mode=755 run /newroot/run
i=0
for p in $(cat /etc/paths); do
    i=$((i + 1)); mkdir -p /rw/p$i/u /rw/p$i/w /newroot$p
    mount -t overlay -o lowerdir=/lower$p,upperdir=/rw/p$i/u,workdir=/rw/p$i/w p$i /newroot$p \
        || fail "overlay $p"
done
for d in proc sys dev; do mount --move /$d /newroot/$d; done
exec switch_root /newroot /bin/bash /run/payload.sh
"""

# PID 1 must never exit: the payload runs as a child, its status is printed, the guest
# powers off. The payload itself is copied to /run (a fresh tmpfs) by the init below.
WRAPPER = """#!/bin/bash
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
echo ZRAMD-VM-START
bash -e {payload}
rc=$?
echo "ZRAMD-VM-RESULT $rc"
sync
echo o > /proc/sysrq-trigger
sleep 60
"""


def _load_order(tree: Path, kver: str, names: list[str]) -> list[Path]:
    """Module files to insmod, each after the modules it depends on."""
    moddir = tree / "lib" / "modules" / kver
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.removesuffix(".ko"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps[path]:
            visit(dep)
        order.append(path)

    for name in names:
        visit(by_name[name])
    return [moddir / p for p in order]


# With systemd as PID 1: the payload is a oneshot service of its own target (the default
# target), writing to the console directly; it powers the guest off when done.
SYSTEMD_TEST_TARGET = """[Unit]
Description=zramd VM test
Wants=zramd-vm-test.service
AllowIsolate=yes
"""
SYSTEMD_TEST_SERVICE = """[Unit]
Description=zramd VM test payload
After=basic.target

[Service]
Type=oneshot
Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
ExecStart=/bin/bash -c 'echo ZRAMD-VM-START; bash -e {payload}; rc=$?; \
    echo "ZRAMD-VM-RESULT $rc"; sync; echo o > /proc/sysrq-trigger'
"""


def run_host_vm(
    payload: str,
    work: Path,
    *,
    modules: list[str],
    paths: list[Path],
    memory: str = "1024M",
    timeout: float = 900,
    systemd: bool = False,
) -> tuple[int, str]:
    """Boot, run ``payload`` (bash -e) as the guest's only job, return (its exit status, the
    console output). ``paths`` (absolute, on the host) are overlaid back in at the same place,
    writable in the guest only; ``work`` should be one of them. With ``systemd``, the host's
    systemd is PID 1 and the payload runs as the only service of the default target
    (sysinit.target and what it pulls in start first)."""
    tree, kver = kernel_tree()
    kernel = tree / "boot" / f"vmlinuz-{kver}"
    root = work / "initramfs"
    for d in ("bin", "proc", "sys", "dev", "etc", "lower", "rw", "newroot", "lib/modules"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    names = []
    for ko in _load_order(tree, kver, BASE_MODULES + modules):
        shutil.copy2(ko, root / "lib" / "modules" / ko.name)
        names.append(ko.name.removesuffix(".ko"))
    (root / "etc" / "modorder").write_text(" ".join(names) + "\n")
    (root / "etc" / "paths").write_text(" ".join(str(p) for p in paths) + "\n")
    (work / "payload.sh").write_text(payload)
    if systemd:
        units = root / "units"
        units.mkdir(exist_ok=True)
        (units / "zramd-vm-test.target").write_text(SYSTEMD_TEST_TARGET)
        (units / "zramd-vm-test.service").write_text(
            SYSTEMD_TEST_SERVICE.format(payload=work / "payload.sh")
        )
        etc = "/newroot/etc/systemd/system"
        init = INIT.replace(
            "exec switch_root /newroot /bin/bash /run/payload.sh",
            f"cp /units/* {etc}/ && ln -sf zramd-vm-test.target {etc}/default.target\n"
            "exec switch_root /newroot /lib/systemd/systemd",
        )
    else:
        # the init runs /run/payload.sh: a wrapper that runs the real payload from the work dir
        init = INIT.replace(
            "exec switch_root /newroot /bin/bash /run/payload.sh",
            f"cat > /newroot/run/payload.sh <<'EOF'\n{WRAPPER.format(payload=work / 'payload.sh')}"
            "EOF\nexec switch_root /newroot /bin/bash /run/payload.sh",
        )
    (root / "init").write_text(init)
    (root / "init").chmod(0o755)
    initrd = work / "initrd.cpio"
    _cpio(root, initrd)
    cmd = [
        "qemu-system-x86_64",
        "-accel", os.environ.get("ZRAMD_VM_ACCEL", "tcg"),
        "-m", memory,
        "-smp", "2",
        "-display", "none", "-nodefaults", "-no-reboot", "-monitor", "none",
        "-serial", "stdio",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )
    out = (proc.stdout + proc.stderr).replace("\r", "")
    (work / "console.log").write_text(out)
    results = RESULT.findall(out)
    if not results:
        raise AssertionError(
            f"the VM did not finish its payload (qemu exit {proc.returncode}):\n{out[-4000:]}"
        )
    return int(results[-1]), out

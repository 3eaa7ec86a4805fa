"""Real Linux clients in a qemu VM (Debian's kernel, busybox initramfs; see tests/vm.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from servers import serve
from vm import run_vm

pytestmark = [pytest.mark.e2e, pytest.mark.vm]
MiB = 1 << 20

SWAP_SCRIPT = """
mkswap /dev/vda
swapon /dev/vda
mount -t tmpfs -o size=600M tmpfs /mnt
# 200 MB in tmpfs on a 160 MB guest: the kernel has to swap most of it out to zramd
yes "zramd swap test: the quick brown fox jumps over the lazy dog" | head -c 160000000 \
    | tee /mnt/text | md5sum > /text.md5
head -c 40000000 /dev/urandom | tee /mnt/random | md5sum > /random.md5
total=$(awk '/SwapTotal/ {print $2}' /proc/meminfo)
free=$(awk '/SwapFree/ {print $2}' /proc/meminfo)
echo "SWAP-USED-KB $((total - free))"
[ "$(md5sum < /mnt/text)" = "$(cat /text.md5)" ] && echo TEXT-OK
[ "$(md5sum < /mnt/random)" = "$(cat /random.md5)" ] && echo RANDOM-OK
"""


def test_guest_swaps_into_zramd_over_qemu_nbd(tmp_path: Path) -> None:
    with serve(tmp_path, "size=512M") as srv:
        drive = f"file=nbd:unix:{srv.socket},format=raw,if=virtio,cache=none"
        rc, out = run_vm(SWAP_SCRIPT, tmp_path, memory="160M", qemu_args=["-drive", drive])
        assert rc == 0, out[-3000:]
        assert "TEXT-OK" in out, out[-3000:]
        assert "RANDOM-OK" in out, out[-3000:]
        m = re.search(r"SWAP-USED-KB (\d+)", out)
        assert m, out[-3000:]
        swapped = int(m.group(1)) * 1024
        assert swapped > 50 * MiB  # the guest really was driven into swap
        orig, compr, used = srv.mm_stat()[:3]
        assert orig >= swapped  # every swapped page is stored (freed slots are not discarded)
        assert compr < orig  # and compressed
        assert used < orig


NBD_CLIENT_SCRIPT = """
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
nbd-client -N zramd 10.0.2.100 10809 /dev/nbd0 -b 4096
echo "NBD-SECTORS $(cat /sys/block/nbd0/size)"
mkfs.ext4 -q -F /dev/nbd0
mount -t ext4 /dev/nbd0 /mnt
head -c 20000000 /dev/urandom > /mnt/random
yes "zramd nbd-client test line" | head -c 30000000 > /mnt/text
mkdir /mnt/dir
for i in $(seq 1 200); do echo "file $i" > /mnt/dir/f$i; done
md5sum /mnt/random /mnt/text /mnt/dir/f7 > /sums
umount /mnt
e2fsck -f -n /dev/nbd0 && echo FSCK-CLEAN
mount -t ext4 -o ro /dev/nbd0 /mnt
md5sum -c /sums && echo SUMS-OK
umount /mnt
nbd-client -d /dev/nbd0
"""


def test_nbd_client_in_guest_mkfs_mount_fsck(tmp_path: Path) -> None:
    with serve(tmp_path, "size=256M") as srv:
        fwd = f"guestfwd=tcp:10.0.2.100:10809-cmd:socat STDIO UNIX-CONNECT:{srv.socket}"
        net = ["-netdev", f"user,id=n0,restrict=on,{fwd}", "-device", "virtio-net-pci,netdev=n0"]
        rc, out = run_vm(NBD_CLIENT_SCRIPT, tmp_path, qemu_args=net)
        assert rc == 0, out[-3000:]
        assert f"NBD-SECTORS {256 * MiB // 512}" in out
        assert "FSCK-CLEAN" in out, out[-3000:]
        assert "SUMS-OK" in out, out[-3000:]
        orig, compr = srv.mm_stat()[:2]
        assert orig > 50 * MiB  # files and ext4 metadata landed in the device
        assert compr < orig

"""Real Linux clients in a qemu VM (Debian's kernel, busybox initramfs; see tests/vm.py)."""

from __future__ import annotations

import errno
import os
import re
import threading
from pathlib import Path

import nbd
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


def swap_in_guest(socket: Path, tmp_path: Path) -> int:
    """Run SWAP_SCRIPT in a 160 MB guest whose disk is the export; check the checksums and
    return the bytes the guest swapped out."""
    drive = f"file=nbd:unix:{socket},format=raw,if=virtio,cache=none"
    rc, out = run_vm(SWAP_SCRIPT, tmp_path, memory="160M", qemu_args=["-drive", drive])
    assert rc == 0, out[-3000:]
    assert "TEXT-OK" in out, out[-3000:]
    assert "RANDOM-OK" in out, out[-3000:]
    m = re.search(r"SWAP-USED-KB (\d+)", out)
    assert m, out[-3000:]
    swapped = int(m.group(1)) * 1024
    assert swapped > 50 * MiB  # the guest really was driven into swap
    return swapped


def test_guest_swaps_into_zramd_over_qemu_nbd(tmp_path: Path) -> None:
    with serve(tmp_path, "size=512M") as srv:
        swapped = swap_in_guest(srv.socket, tmp_path)
        orig, compr, used = srv.mm_stat()[:3]
        assert orig >= swapped  # every swapped page is stored (freed slots are not discarded)
        assert compr < orig  # and compressed
        assert used < orig


NBD_CLIENT_SCRIPT = """
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
nbd-client -N zram0 10.0.2.100 10809 /dev/nbd0 -b 4096
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


def test_guest_swap_beyond_mem_limit_with_writeback(tmp_path: Path) -> None:
    """The guest swaps ~200 MB through a pool limited to 24 MiB: a host-side loop does what
    Android's and zram-generator users script (mark idle, write idle pages back to a file),
    so cold pages leave RAM and every byte still comes back."""
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(512 * MiB)
    limit = 24 * MiB
    config = ("size=512M", f"mem_limit={limit}", f"backing_dev={backing}")
    with serve(tmp_path, *config) as srv:
        assert srv.control is not None
        stop = threading.Event()
        loops = [0]

        def store(attr: str, value: bytes) -> None:
            fd = os.open(srv.control / attr, os.O_WRONLY)  # type: ignore[operator]
            try:
                os.write(fd, value)
            except OSError as e:  # EIO/ENOSPC from writeback: try again next round
                if e.errno not in (errno.EIO, errno.ENOSPC):
                    raise
            finally:
                os.close(fd)

        def writeback_loop() -> None:
            while not stop.wait(0.1):
                store("idle", b"all\n")
                store("writeback", b"idle\n")
                loops[0] += 1

        t = threading.Thread(target=writeback_loop)
        t.start()
        try:
            swapped = swap_in_guest(srv.socket, tmp_path)
        finally:
            stop.set()
            t.join()
        mm = srv.mm_stat()
        bd_count, bd_reads, bd_writes = (int(x) for x in srv.attr("bd_stat").split())
        failed_writes = int(srv.attr("io_stat").split()[1])
        print(
            f"swapped {swapped >> 20} MiB, loops {loops[0]}, bd_stat {bd_count} {bd_reads} "
            f"{bd_writes}, mem_used_max {mm[4] >> 20} MiB, failed_writes {failed_writes}"
        )
        assert mm[4] <= limit  # the pool never went over mem_limit
        assert bd_writes * 4096 > swapped - limit  # the rest went to the backing file
        assert bd_reads > 0  # and the guest read some of it back
        assert mm[0] >= swapped


TWO_DEVICES_SCRIPT = """
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
nbd-client -N zram0 10.0.2.100 10809 /dev/nbd0 -b 4096
nbd-client -N zram1 10.0.2.100 10809 /dev/nbd1 -b 4096
echo "NBD0-SECTORS $(cat /sys/block/nbd0/size) NBD1-SECTORS $(cat /sys/block/nbd1/size)"
mkswap /dev/nbd0
swapon /dev/nbd0
mkfs.ext4 -q -F /dev/nbd1
mount -t ext4 /dev/nbd1 /mnt
yes "zramd: the second device holds a filesystem" | head -c 30000000 > /mnt/text
head -c 8000000 /dev/urandom > /mnt/random
md5sum /mnt/text /mnt/random > /sums
mkdir /fill
mount -t tmpfs -o size=400M tmpfs /fill
# 120 MB in tmpfs on a 160 MB guest: most of it goes to the swap on the first device
yes "zramd: the first device is swap" | head -c 120000000 | tee /fill/text | md5sum > /fill.md5
total=$(awk '/SwapTotal/ {print $2}' /proc/meminfo)
free=$(awk '/SwapFree/ {print $2}' /proc/meminfo)
echo "SWAP-USED-KB $((total - free))"
[ "$(md5sum < /fill/text)" = "$(cat /fill.md5)" ] && echo FILL-OK
umount /mnt
e2fsck -f -n /dev/nbd1 && echo FSCK-CLEAN
mount -t ext4 -o ro /dev/nbd1 /mnt
md5sum -c /sums && echo SUMS-OK
umount /mnt
rm /fill/text
swapoff /dev/nbd0
nbd-client -d /dev/nbd0
nbd-client -d /dev/nbd1
"""


def test_nbd_client_in_guest_uses_two_devices(tmp_path: Path) -> None:
    """One server, two exports: the guest swaps onto zram0 and keeps an ext4 filesystem on
    zram1. Each device's data and mm_stat are its own."""
    with serve(tmp_path, "devices=2", "size=256M") as srv:
        assert [srv.mm_stat(0)[0], srv.mm_stat(1)[0]] == [0, 0]
        fwd = f"guestfwd=tcp:10.0.2.100:10809-cmd:socat STDIO UNIX-CONNECT:{srv.socket}"
        net = ["-netdev", f"user,id=n0,restrict=on,{fwd}", "-device", "virtio-net-pci,netdev=n0"]
        rc, out = run_vm(TWO_DEVICES_SCRIPT, tmp_path, memory="160M", qemu_args=net)
        assert rc == 0, out[-3000:]
        sectors = 256 * MiB // 512
        assert f"NBD0-SECTORS {sectors} NBD1-SECTORS {sectors}" in out
        for mark in ("FILL-OK", "FSCK-CLEAN", "SUMS-OK"):
            assert mark in out, out[-3000:]
        m = re.search(r"SWAP-USED-KB (\d+)", out)
        assert m, out[-3000:]
        swapped = int(m.group(1)) * 1024
        assert swapped > 20 * MiB  # the guest really swapped onto zram0
        swap, fs = srv.mm_stat(0), srv.mm_stat(1)
        assert swap[0] >= swapped  # every swapped page went to zram0 ...
        assert fs[0] >= 38_000_000  # ... and the files (with ext4's metadata) to zram1
        for orig, compr in (swap[:2], fs[:2]):
            assert compr < orig
        # what is on each: a swap signature and swapped text on zram0 only, an ext4
        # superblock and the files' text on zram1 only
        h0, h1 = srv.connect("zram0"), srv.connect("zram1")
        assert h0.pread(4096, 0)[4086:] == b"SWAPSPACE2"
        assert h1.pread(4096, 0)[1080:1082] == b"\x53\xef"  # s_magic 0xEF53, little-endian
        # (a few stray copies may reach the other device: the shell's own memory, which holds
        # both lines, can be swapped out too)
        swap_text, fs_text = b"the first device is swap", b"the second device holds"
        on0, on1 = pages_with(h0, swap_text, fs_text), pages_with(h1, swap_text, fs_text)
        assert on0[0] > 1000
        assert on0[1] < 16
        assert on1[0] == 0
        assert on1[1] > 1000
        h0.shutdown()
        h1.shutdown()


def pages_with(h: nbd.NBD, *texts: bytes, chunk: int = 8 * MiB) -> list[int]:
    """For each of ``texts``, how many 4 KiB pages of the export hold it."""
    counts = [0] * len(texts)
    size = h.get_size()
    for off in range(0, size, chunk):
        data = h.pread(min(chunk, size - off), off)
        for p in range(0, len(data), 4096):
            page = data[p : p + 4096]
            for i, text in enumerate(texts):
                counts[i] += text in page
    return counts

"""Boot Debian's kernel with a busybox initramfs in qemu, for tests that need a real Linux client.

Everything comes from Debian packages on this machine: the kernel image (downloaded with
``apt-get download`` and unpacked into ``.cache/vm``, never installed), its modules (nbd,
virtio, ext4: resolved with depmod), busybox-static, and the dynamically linked nbd-client,
mke2fs and e2fsck with their libraries. A test passes a shell script; the initramfs runs it as
PID 1's child and powers off. The script's output comes back on the serial console, followed
by ``ZRAMD-VM-RESULT <exit status>``.

Guests run under TCG (a boot takes ~5 s, the tests' work a little more). /dev/kvm exists on
the reference machines but nested KVM hangs at "Booting from ROM", so KVM is opt-in:
ZRAMD_VM_ACCEL=kvm.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "vm"
# crc32c_generic: ext4 asks the crypto API for "crc32c" when mounting
MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "nbd", "crc32c_generic", "ext4"]
BINARIES = ["/usr/sbin/nbd-client", "/usr/sbin/mke2fs", "/usr/sbin/e2fsck"]
RESULT = re.compile(r"ZRAMD-VM-RESULT (\d+)")

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ln -s mke2fs /sbin/mkfs.ext4
ln -s /bin/busybox /sbin/modprobe  # where the kernel's request_module looks
ln -s /proc/mounts /etc/mtab
for m in $(cat /etc/zramd-modules); do modprobe "$m" || echo "modprobe $m failed"; done
echo ZRAMD-VM-START
sh -e /test.sh
rc=$?
[ $rc = 0 ] || dmesg | tail -20
echo "ZRAMD-VM-RESULT $rc"
sync
poweroff -f
"""


def _run(*cmd: str, cwd: Path | None = None) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd).stdout


def kernel_package() -> str:
    """The kernel image package linux-image-amd64 depends on (e.g. linux-image-6.1.0-56-amd64)."""
    for attempt in range(2):
        query = ["apt-cache", "depends", "linux-image-amd64"]
        out = subprocess.run(query, capture_output=True, text=True, check=False).stdout
        m = re.search(r"Depends: (linux-image-[\w.-]+-amd64)", out)
        if m:
            return m.group(1)
        if attempt == 0:  # packages may be installed while the lists were never fetched
            _run("apt-get", "update", "-qq")
    raise RuntimeError(f"cannot find the kernel package of linux-image-amd64:\n{out}")


def kernel_tree() -> tuple[Path, str]:
    """(unpacked package root, kernel version), downloading and unpacking once."""
    package = kernel_package()
    kver = package.removeprefix("linux-image-")
    tree = CACHE / package
    if not (tree / "lib" / "modules" / kver / "modules.dep").exists():
        tree.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)  # apt's sandbox user must be able to write here
            _run("apt-get", "download", "-q", package, cwd=Path(tmp))
            (deb,) = Path(tmp).glob("*.deb")
            _run("dpkg-deb", "-x", str(deb), str(tree))
        _run("depmod", "-b", str(tree), kver)
    return tree, kver


def _module_closure(tree: Path, kver: str) -> list[str]:
    moddir = tree / "lib" / "modules" / kver
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[Path(path).name.removesuffix(".ko")] = rest.split()
        deps[path] = rest.split()
    needed: set[str] = set()
    for name in MODULES:
        key = next(k for k in deps if Path(k).name == f"{name}.ko" and "/" in k)
        needed.add(key)
        needed.update(deps[key])
    return sorted(needed)


def _libraries(binaries: list[str]) -> set[str]:
    libs: set[str] = set()
    for line in _run("ldd", *binaries).splitlines():
        m = re.search(r"(/\S+\.so[\S]*)", line)
        if m and Path(m.group(1)).exists():
            libs.add(m.group(1))
    return libs


def _cpio(root: Path, out: Path) -> None:
    files = subprocess.run(
        ["find", ".", "-print0"], cwd=root, check=True, capture_output=True
    ).stdout
    with open(out, "wb") as f:
        subprocess.run(
            ["cpio", "--null", "-o", "-H", "newc", "--quiet"],
            cwd=root,
            input=files,
            stdout=f,
            check=True,
        )


def base_initramfs() -> tuple[Path, Path]:
    """(kernel image, base initramfs), built once per kernel version."""
    tree, kver = kernel_tree()
    kernel = tree / "boot" / f"vmlinuz-{kver}"
    recipe = hashlib.sha256(repr((INIT, MODULES, BINARIES)).encode()).hexdigest()[:12]
    image = CACHE / f"base-{kver}-{recipe}.cpio"  # a changed recipe builds a new image
    if image.exists():
        return kernel, image
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "mnt", "tmp", "etc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2("/bin/busybox", root / "bin" / "busybox")
        for binary in BINARIES:
            shutil.copy2(binary, root / "sbin" / Path(binary).name)
        for lib in _libraries(BINARIES):
            dest = root / lib.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, dest)
        moddir = tree / "lib" / "modules" / kver
        for rel in _module_closure(tree, kver):
            dest = root / "lib" / "modules" / kver / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(moddir / rel, dest)
        for meta in ("modules.dep", "modules.alias", "modules.symbols", "modules.order"):
            if (moddir / meta).exists():
                shutil.copy2(moddir / meta, root / "lib" / "modules" / kver / meta)
        (root / "etc" / "zramd-modules").write_text(" ".join(MODULES) + "\n")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        _cpio(root, image)
    return kernel, image


def run_vm(
    script: str,
    work: Path,
    *,
    memory: str = "256M",
    qemu_args: list[str] | None = None,
    timeout: float = 600,
) -> tuple[int, str]:
    """Boot, run ``script`` (sh -e) in the guest, return (its exit status, console output)."""
    kernel, base = base_initramfs()
    extra = work / "test-root"
    extra.mkdir(exist_ok=True)
    (extra / "test.sh").write_text(script)
    (extra / "test.sh").chmod(0o755)
    tail = work / "test.cpio"
    _cpio(extra, tail)
    initrd = work / "initrd.cpio"
    initrd.write_bytes(base.read_bytes() + tail.read_bytes())  # concatenated archives
    cmd = [
        "qemu-system-x86_64",
        "-accel", os.environ.get("ZRAMD_VM_ACCEL", "tcg"),
        "-m", memory,
        "-smp", "2",
        "-nographic",
        "-no-reboot",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
        *(qemu_args or []),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
    )
    out = proc.stdout + proc.stderr
    (work / "console.log").write_text(out)
    results = RESULT.findall(out)
    if not results:
        raise AssertionError(f"the VM did not finish its script (qemu exit {proc.returncode}):\n"
                             f"{out[-4000:]}")  # fmt: skip
    return int(results[-1]), out

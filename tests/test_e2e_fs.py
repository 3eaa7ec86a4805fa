"""A real filesystem on the device: nbdfuse -> loop device -> mkfs.ext4 -> mount -> e2fsck."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from zramd.testing import synthetic_pages

from servers import serve

pytestmark = pytest.mark.e2e


def run(*cmd: str, timeout: float = 120) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout


def test_ext4_on_nbdfuse_loop(tmp_path: Path) -> None:
    with serve(tmp_path, "size=256M") as srv:
        fuse_dir = tmp_path / "fuse"
        mnt = tmp_path / "mnt"
        fuse_dir.mkdir()
        mnt.mkdir()
        pid = tmp_path / "nbdfuse.pid"
        nbdfuse = subprocess.Popen(
            ["nbdfuse", "-P", str(pid), str(fuse_dir / "disk"), "--unix", str(srv.socket)]
        )
        loop = ""
        mounted = False
        try:
            deadline = time.monotonic() + 30
            while not (pid.exists() and pid.read_text().strip()):
                assert nbdfuse.poll() is None, "nbdfuse exited"
                assert time.monotonic() < deadline, "nbdfuse did not start"
                time.sleep(0.05)
            loop = run("losetup", "-f", "--show", str(fuse_dir / "disk")).strip()
            run("mkfs.ext4", "-q", "-F", loop)
            run("mount", loop, str(mnt))
            mounted = True
            files = {}
            pages = synthetic_pages(512, seed=1)
            for i in range(24):
                data = b"".join(pages[(i * 37) % 400 :][: 16 + i * 8])
                (mnt / f"file{i}").write_bytes(data)
                files[f"file{i}"] = hashlib.sha256(data).hexdigest()
            run("sync")
            stat = srv.mm_stat()
            assert stat[0] > 2 << 20  # orig_data_size: the files (and ext4 metadata) are in
            assert stat[2] < stat[0]  # mem_used_total below it: compressed
            run("umount", str(mnt))
            mounted = False
            run("e2fsck", "-f", "-n", loop)  # exits non-zero on any inconsistency
            run("mount", "-o", "ro", loop, str(mnt))
            mounted = True
            for name, digest in files.items():
                assert hashlib.sha256((mnt / name).read_bytes()).hexdigest() == digest
        finally:
            if mounted:
                subprocess.run(["umount", str(mnt)], check=False)
            if loop:
                subprocess.run(["losetup", "-d", loop], check=False)
            subprocess.run(["fusermount3", "-u", str(fuse_dir)], check=False)
            nbdfuse.wait(30)

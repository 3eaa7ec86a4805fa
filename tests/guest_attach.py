"""Runs inside the VM of test_attach_vm.py (as root, on the host's userland): a zramd server
with two devices, a zram-generator configuration, attach.setup, real use of both devices,
attach.teardown.

Every check is an assert (a failure ends the payload with a non-zero status); ``GUEST KEY
VALUE`` lines report what the test on the host asserts again.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from zramd import attach, genconf
from zramd.runstate import mount_state
from zramd.supervise import plugin_env, plugin_path

MiB = 1 << 20
RUN = Path("/run/zramd-test")
MOUNT = "/mnt/zramd-test"
CONFIG = f"""
# as an admin writes it for zram-generator
[zram0]
zram-size = 96
compression-algorithm = zstd lz4hc
swap-priority = 42

[zram1]
zram-size = ram / 8
mount-point = {MOUNT}
fs-type = ext4
options = discard,noatime
"""
# a process that must swap: 40 MiB of pages in a cgroup that may keep 16 MiB in RAM
HOG = r"""
import hashlib, random, sys
rng = random.Random(7)
words = [rng.randbytes(8) for _ in range(64)]
base = [b"".join(rng.choice(words) for _ in range(511)) for _ in range(64)]
pages = 40 * 256
buf = bytearray(pages * 4096)  # filled in place: no second copy
for i in range(pages):
    buf[i * 4096:(i + 1) * 4096] = i.to_bytes(8, "little") + base[i % 64]
first = hashlib.sha256(buf).hexdigest()
used = 0
for line in open("/proc/swaps").read().splitlines()[1:]:
    used += int(line.split()[3])
# orig_data_size now, while the pages are out: at exit they are freed, and swapon's discard
# option hands the freed slots back to the device
stored = open(sys.argv[1]).read().split()[0]
again = hashlib.sha256(buf).hexdigest()
print(f"HOG swap_used_kb={used} orig_data_size={stored} same={first == again}", flush=True)
sys.exit(0 if first == again else 1)
"""


def say(key: str, value: object = "") -> None:
    print(f"GUEST {key} {value}", flush=True)


def start_server(
    names: list[str], servers: list[subprocess.Popen[bytes]]
) -> dict[str, attach.Target]:
    """One nbdkit serving one uninitialised device per name (no size: attach configures
    them), exports zram0, zram1, ... with control directories CONTROL/zramN."""
    RUN.mkdir(parents=True)
    sock, control, pidfile = RUN / "sock", RUN / "control", RUN / "pid"
    pidfile.write_text("")
    argv = ["nbdkit", "-f", "--threads=1", "-U", str(sock), "-P", str(pidfile)]
    argv += ["python", str(plugin_path()), f"devices={len(names)}", f"control={control}"]
    argv += ["auto_compact=0"]
    proc = subprocess.Popen(argv, env=plugin_env())
    servers.append(proc)
    where = {name: attach.Target(sock, name, control / name) for name in names}
    deadline = time.monotonic() + 600
    while not (pidfile.read_text().strip() and mount_state(control) == "live"):
        assert proc.poll() is None, f"nbdkit exited: {proc.returncode}"
        assert time.monotonic() < deadline, "nbdkit not ready"
        time.sleep(0.2)
    for target in where.values():
        assert (target.control / "initstate").read_text() == "0\n"
    return where


def swaps() -> dict[str, list[str]]:
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    return {line.split()[0]: line.split() for line in lines}


def mounted(point: str) -> list[str]:
    return [line for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1] == point]  # fmt: skip


def main() -> None:
    t0 = time.monotonic()
    work = Path(sys.argv[1])
    conf = work / "zramd.conf"
    conf.write_text(CONFIG)
    conf.chmod(0o644)
    config = genconf.read_config(genconf.config_files(conf))
    say("RAM", config.ram_mib)
    say("DEVICES", json.dumps([[d.name, d.disksize] for d in config.devices]))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        where = start_server(["zram0", "zram1"], servers)
        say("SERVER", f"ready after {time.monotonic() - t0:.0f} s")
        state = RUN / "attached.json"
        print(attach.setup_script(config.devices, where), flush=True)
        done = attach.setup(config.devices, where, state=state, log=lambda m: say("LOG", m))
        say("SETUP", f"done after {time.monotonic() - t0:.0f} s")
        nbd = {d.name: d.nbd for d in done}
        say("NBD", json.dumps(nbd))

        c0, c1 = where["zram0"].control, where["zram1"].control
        assert (c0 / "initstate").read_text() == "1\n"
        assert int((c0 / "disksize").read_text()) == 96 * MiB
        assert "[zstd]" in (c0 / "comp_algorithm").read_text()
        assert "lz4hc" in (c0 / "recomp_algorithm").read_text()
        assert int((c1 / "disksize").read_text()) == config.ram_mib // 8 * MiB
        swap = swaps()[nbd["zram0"]]
        say("SWAP", " ".join(swap))
        assert swap[1] == "partition"
        assert swap[4] == "42"
        mount = mounted(MOUNT)
        say("MOUNT", mount)
        assert len(mount) == 1
        assert mount[0].split()[0] == nbd["zram1"]
        assert mount[0].split()[2] == "ext4"
        assert "noatime" in mount[0].split()[3].split(",")

        # the file system: write, drop the page cache, read back
        data = os.urandom(8 * MiB) + b"zramd attach test\n" * (600 * 1024)
        Path(MOUNT, "data").write_bytes(data)
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        assert hashlib.sha256(Path(MOUNT, "data").read_bytes()).digest() == (
            hashlib.sha256(data).digest()
        )
        fs_orig = int((c1 / "mm_stat").read_text().split()[0])
        say("FS-DATA", f"ok orig_data_size={fs_orig}")
        assert fs_orig > 8 * MiB

        # swap: a process whose memory does not fit its cgroup
        cg = Path("/sys/fs/cgroup")
        (cg / "cgroup.subtree_control").write_text("+memory\n")
        (cg / "hog").mkdir()
        (cg / "hog" / "memory.max").write_text(f"{16 * MiB}\n")
        hog = subprocess.run(
            ["sh", "-c", f'echo $$ > {cg}/hog/cgroup.procs && exec "$0" -c "$1" "$2"',
             sys.executable, HOG, str(c0 / "mm_stat")],
            capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        say("HOG", f"rc={hog.returncode} {hog.stdout.strip()} {hog.stderr.strip()[-300:]}")
        say("HOG-DONE", f"after {time.monotonic() - t0:.0f} s")
        assert hog.returncode == 0
        used = int(hog.stdout.split("swap_used_kb=")[1].split()[0])
        swap_orig = int(hog.stdout.split("orig_data_size=")[1].split()[0])
        say("SWAP-DATA", f"ok swap_used_kb={used} orig_data_size={swap_orig}")
        assert used > 12 * 1024
        assert swap_orig > 12 * MiB

        attach.teardown(state=state, log=lambda m: say("LOG", m))
        say("TEARDOWN-DONE", f"after {time.monotonic() - t0:.0f} s")
        assert nbd["zram0"] not in swaps()
        assert mounted(MOUNT) == []
        for dev in nbd.values():
            assert dev is not None
            assert not Path("/sys/block", Path(dev).name, "pid").exists()
        assert (c0 / "initstate").read_text() == "0\n"
        assert (c1 / "initstate").read_text() == "0\n"
        assert not state.exists()
        say("TEARDOWN", "ok")
        say("SECONDS", f"{time.monotonic() - t0:.0f}")
    finally:
        if (RUN / "attached.json").exists():  # a failed check: take the devices down first
            attach.teardown(state=RUN / "attached.json", log=lambda m: say("LOG", m))
        for proc in servers:
            proc.terminate()
        for proc in servers:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()

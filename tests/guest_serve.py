"""Runs inside the VM of test_attach_vm.py (as root, on the host's userland): `zramd serve
--foreground --config` as a service manager runs it, with a fake NOTIFY_SOCKET; a swap that a
process really uses and an ext4 file system; then SIGTERM while swapoff is refused for lack of
memory (strict overcommit), then allowed again.

Every check is an assert (a failure ends the payload with a non-zero status); ``GUEST KEY
VALUE`` lines report what the test on the host asserts again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ZRAMD = str(Path(sys.executable).parent / "zramd")
RUN = Path("/run/zramd")  # serve's defaults for root
MOUNT = "/mnt/zramd-serve"
MiB = 1 << 20
# [zram1] is left out: the server must serve zram0 and zram2 and nothing between
CONFIG = f"""
[zram0]
zram-size = 96
compression-algorithm = zstd lz4hc
swap-priority = 42

[zram2]
zram-size = ram / 8
mount-point = {MOUNT}
fs-type = ext4
options = discard,noatime
"""
# 40 MiB of pages in a cgroup that may keep 16 MiB in RAM: most of it goes to swap. It prints
# its checksum, waits for a line on stdin (after the stop), and checks the pages again.
HOG = r"""
import hashlib, random, sys
rng = random.Random(7)
words = [rng.randbytes(8) for _ in range(64)]
base = [b"".join(rng.choice(words) for _ in range(511)) for _ in range(64)]
pages = 40 * 256
buf = bytearray(pages * 4096)
for i in range(pages):
    buf[i * 4096:(i + 1) * 4096] = i.to_bytes(8, "little") + base[i % 64]
first = hashlib.sha256(buf).hexdigest()
print(f"HOG filled {first}", flush=True)
sys.stdin.readline()
print(f"HOG again {hashlib.sha256(buf).hexdigest() == first}", flush=True)
"""


def say(key: str, value: object = "") -> None:
    print(f"GUEST {key} {value}", flush=True)


class Manager:
    """The fake service manager: what `zramd serve` sends to NOTIFY_SOCKET, in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.heard: list[dict[str, str]] = []

    def until(self, key: str, timeout: float) -> dict[str, str]:
        self.sock.settimeout(timeout)
        while True:
            data = self.sock.recv(4096).decode()
            message = dict(line.split("=", 1) for line in data.splitlines())
            self.heard.append(message)
            say("NOTIFY", json.dumps(message))
            if key in message:
                return message

    def drain(self) -> None:
        """What is still queued (the sender is gone)."""
        self.sock.setblocking(False)
        while True:
            try:
                data = self.sock.recv(4096).decode()
            except BlockingIOError:
                return
            message = dict(line.split("=", 1) for line in data.splitlines())
            self.heard.append(message)
            say("NOTIFY", json.dumps(message))


def swaps() -> dict[str, list[str]]:
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    return {line.split()[0]: line.split() for line in lines}


def mounted(point: str) -> list[str]:
    return [line for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1] == point]  # fmt: skip


def committed_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Committed_AS:"):
            return int(line.split()[1])
    raise AssertionError("no Committed_AS in /proc/meminfo")


def main() -> None:
    t0 = time.monotonic()
    work = Path(sys.argv[1])
    conf = work / "zramd.conf"
    conf.write_text(CONFIG)
    manager = Manager(work / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(work / "notify")}
    serve = subprocess.Popen(
        [ZRAMD, "serve", "--foreground", "--config", str(conf)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    hog = None
    try:
        ready = manager.until("READY", 900)
        say("READY", f"after {time.monotonic() - t0:.0f} s: {ready.get('STATUS')}")
        # at READY=1 the devices are set up already
        record = json.loads((RUN / "zramd.attached.json").read_text())
        nbd = {d["name"]: d["nbd"] for d in record["devices"]}
        say("NBD", json.dumps(nbd))
        assert sorted(p.name for p in (RUN / "control").iterdir()) == [
            "zram-control", "zram0", "zram2"
        ]  # fmt: skip
        swap = swaps()[nbd["zram0"]]
        say("SWAP", " ".join(swap))
        mount = mounted(MOUNT)
        say("MOUNT", mount)
        assert len(mount) == 1
        assert mount[0].split()[0] == nbd["zram2"]
        pid = int((RUN / "zramd.pid").read_text())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith(b"NOTIFY_SOCKET=")]
        plan = subprocess.run([ZRAMD, "teardown", "--dry-run"], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
        say("PLAN", json.dumps(plan.splitlines()))

        data = os.urandom(4 * MiB) + b"zramd serve test\n" * (300 * 1024)
        Path(MOUNT, "data").write_bytes(data)
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        assert Path(MOUNT, "data").read_bytes() == data
        say("FS-DATA", "ok")

        cg = Path("/sys/fs/cgroup")
        (cg / "cgroup.subtree_control").write_text("+memory\n")
        (cg / "hog").mkdir()
        (cg / "hog" / "memory.max").write_text(f"{16 * MiB}\n")
        hog = subprocess.Popen(
            ["sh", "-c", f'echo $$ > {cg}/hog/cgroup.procs && exec "$0" -c "$1"',
             sys.executable, HOG],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert hog.stdout is not None
        assert hog.stdin is not None
        filled = hog.stdout.readline()
        assert filled.startswith("HOG filled"), filled
        used_kb = int(swaps()[nbd["zram0"]][3])
        say("SWAP-USED-KB", used_kb)
        assert used_kb > 12 * 1024

        # strict overcommit with room for what runs, but not for the swap's pages back in RAM:
        # swapoff now fails with ENOMEM (mm/swapfile.c: security_vm_enough_memory_mm)
        vm = Path("/proc/sys/vm")
        (vm / "overcommit_kbytes").write_text(f"{committed_kb() - 16 * 1024}\n")
        (vm / "overcommit_memory").write_text("2\n")
        t_stop = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        manager.until("STOPPING", 120)
        refused = manager.until("STATUS", 300)["STATUS"]
        say("REFUSED", refused)
        assert refused.startswith("stop refused, nbdkit keeps serving"), refused
        assert "zram0" in refused
        assert serve.poll() is None
        assert Path(f"/proc/{pid}").exists()  # nbdkit still serves the swap
        assert nbd["zram0"] in swaps()
        (cg / "hog" / "memory.max").write_text("max\n")  # room for the pages coming back
        (vm / "overcommit_memory").write_text("0\n")  # the next retry's swapoff succeeds
        t_allowed = time.monotonic()
        out, err = serve.communicate(timeout=600)
        say("SERVE-RC", serve.returncode)
        say("STOP-SECONDS", f"{time.monotonic() - t_stop:.1f} "
            f"(after swapoff was allowed: {time.monotonic() - t_allowed:.1f})")  # fmt: skip
        say("SERVE-ERR", json.dumps(err.splitlines()[-12:]))
        assert serve.returncode == 0, err
        hog.stdin.write("\n")
        hog.stdin.flush()
        again = hog.stdout.readline()
        say("HOG", again.strip())
        assert again.strip() == "HOG again True"
        assert hog.wait(60) == 0
        assert nbd["zram0"] not in swaps()
        assert mounted(MOUNT) == []
        for dev in nbd.values():
            assert not Path("/sys/block", Path(dev).name, "pid").exists()
        assert not (RUN / "zramd.attached.json").exists()
        assert not (RUN / "zramd.sock").exists()
        assert not (RUN / "zramd.pid").exists()
        assert not Path(f"/proc/{pid}").exists()
        assert mounted(str(RUN / "control")) == []
        manager.drain()
        heard = [m for m in manager.heard if "EXTEND_TIMEOUT_USEC" in m]
        say("EXTENDS", json.dumps(heard))
        assert heard
        assert heard[-1]["STATUS"] == "stopping nbdkit"
        say("STOPPED", "ok")
        say("SECONDS", f"{time.monotonic() - t0:.0f}")
    finally:
        Path("/proc/sys/vm/overcommit_memory").write_text("0\n")
        if hog is not None and hog.poll() is None:
            hog.kill()
        if serve.poll() is None:  # a failed check: stop it, and show what it said
            serve.send_signal(signal.SIGTERM)
            try:
                out, err = serve.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                serve.kill()
                out, err = serve.communicate()
            print(out, err, sep="\n", flush=True)


if __name__ == "__main__":
    main()

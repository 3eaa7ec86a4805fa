"""An installed wheel serves: sdist -> wheel -> a fresh venv -> ``zramd serve``, no checkout.

The sdist is built from the checkout's files alone (what ``git ls-files`` lists, plus files
not yet added), the wheel from the unpacked sdist (as ``python -m build`` does), both with this
venv's setuptools, offline. The fresh venv comes from /usr/bin/python3 (the interpreter nbdkit
embeds) without system site-packages; pip fetches the dependencies from the configured index
or its cache (pyfuse3 is built once and then cached). The server then runs from a directory
outside the checkout, with PATH and PYTHONPATH naming nothing of it.

About 30 s (the C extensions compile twice: sdist check and wheel), so it runs with the e2e
tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nbd
import pytest

from zramd.testing import synthetic_pages

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600, check=False)  # fmt: skip
    assert r.returncode == 0, f"{args}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def checkout_copy(dest: Path) -> Path:
    """The checkout's files (tracked and not ignored) copied to ``dest``: a build must not
    need anything else, nor leave anything in the checkout."""
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def build_wheel(tmp: Path) -> Path:
    src = checkout_copy(tmp / "src")
    dist = tmp / "dist"
    dist.mkdir()
    build = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    sdist = dist / run(sys.executable, "-c", build, dist, cwd=src).strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "sdist")  # our own sdist (3.11.2 has no filter= yet)
    (unpacked,) = (tmp / "sdist").iterdir()
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "--no-index", "-w", dist, unpacked, cwd=tmp)  # fmt: skip
    (wheel,) = dist.glob("zramd-*.whl")
    return wheel


def test_a_wheel_installed_in_a_fresh_venv_serves(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    run("/usr/bin/python3", "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "pip", "install", "-q", f"{wheel}[serve]", cwd=tmp_path)
    site = Path(run(venv / "bin" / "python", "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=tmp_path).strip())  # fmt: skip
    assert (site / "zramd" / "nbdkit_plugin.py").is_file()
    assert list((site / "zramd").glob("_zram*.so")), "the C extension is not in the wheel"
    # the unit and the example configuration are package data of the wheel
    image = tmp_path / "image"
    run(venv / "bin" / "zramd", "install-unit", "--root", image, cwd=tmp_path)
    unit = (image / "etc/systemd/system/zramd.service").read_text()
    assert f"ExecStart={venv}/bin/zramd serve --foreground --config" in unit
    assert "[zram0]" in (image / "etc/zramd/zramd.conf").read_text()

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = CLEAN_PATH
    work = tmp_path / "run"
    work.mkdir()
    zramd = venv / "bin" / "zramd"
    paths = ["--socket", "s.sock", "--pidfile", "s.pid", "--log", "s.log", "--control", "ctl"]
    out = run(zramd, "serve", "--size", "16M", *paths, cwd=work, env=env)
    assert "data path:   C (zramd._zram)" in out
    pid = int((work / "s.pid").read_text())
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert os.fsencode(site / "zramd" / "nbdkit_plugin.py") in argv
        environ = dict(
            x.split(b"=", 1) for x in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if x
        )
        pythonpath = os.fsdecode(environ[b"PYTHONPATH"]).split(os.pathsep)
        assert pythonpath[0] == str(site)
        assert not any(p == str(ROOT) or p.startswith(str(ROOT) + "/") for p in pythonpath)

        h = nbd.NBD()
        h.connect_unix(str(work / "s.sock"))
        data = b"".join(synthetic_pages(64, seed=21))
        h.pwrite(data, 4096)
        assert h.pread(len(data), 4096) == data
        h.shutdown()
        status = run(zramd, "status", "--control", "ctl", "--raw", "-n", "-o", "DATA",
                     "--bytes", cwd=work, env=env)  # fmt: skip
        assert int(status.split()[-1]) == len(data)
    finally:
        stop = subprocess.run([zramd, "stop", "--pidfile", "s.pid", "--socket", "s.sock"],
                              cwd=work, env=env, capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip
    assert stop.returncode == 0, stop.stderr
    assert "nbdkit exited with status 0" in (work / "s.log").read_text()
    assert not (work / "s.sock").exists()

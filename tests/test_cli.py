"""The zramd CLI: through click's CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from zramd import cli
from zramd.cli import human_size, main
from zramd.testing import synthetic_pages

from servers import ZRAMD, Server, serve, zramd_stop

P = 4096


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serve(tmp_path, "size=64M") as srv:
        yield srv


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0B"), (512, "512B"), (1023, "1023B"), (1024, "1K"), (1536, "1.5K"),
     (8 << 30, "8G"), (947708723, "903.8M"), (1048575, "1024K"), (1 << 60, "1E")],
)  # fmt: skip
def test_human_size_like_util_linux(n: int, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.e2e
def test_status_table(runner: CliRunner, server: Server) -> None:
    h = server.connect()
    # enough data that the first, partly filled zspage of each class stops mattering
    h.pwrite(b"".join(synthetic_pages(4096, seed=1)), 0)
    r = runner.invoke(main, ["status", "--control", str(server.control)])
    assert r.exit_code == 0, r.output
    header, row = r.output.splitlines()
    assert header.split() == cli.DEFAULT_COLUMNS
    cells = row.split()
    assert cells[0] == str(server.control)
    assert cells[1] == "lz4"
    assert cells[2] == "64M"
    assert float(cells[-1]) > 1.0  # COMP-RATIO: data / total
    h.shutdown()


@pytest.mark.e2e
def test_status_raw_bytes_json_columns(runner: CliRunner, server: Server) -> None:
    ctl = ["--control", str(server.control)]
    r = runner.invoke(main, ["status", *ctl, "--raw", "--bytes", "-n", "-o", "DISKSIZE,ZERO-PAGES"])
    assert r.output == f"{64 << 20} 0\n"
    r = runner.invoke(main, ["status", *ctl, "--json", "--bytes", "-o", "+RSS"])
    doc = json.loads(r.output)
    (dev,) = doc["zramd"]
    assert dev["disksize"] == 64 << 20
    assert dev["rss"] > 10 << 20
    assert dev["algorithm"] == "lz4"
    r = runner.invoke(main, ["status", *ctl, "-o", "NOPE"])
    assert r.exit_code == 2
    assert "unknown column 'NOPE'" in r.output


@pytest.mark.e2e
def test_compact_set_reset(runner: CliRunner, server: Server) -> None:
    ctl = ["--control", str(server.control)]
    h = server.connect()
    pages = [p for p in synthetic_pages(2048, seed=3) if p[8:] != p[:-8]]
    h.pwrite(b"".join(pages), 0)
    for i in range(0, len(pages), 2):
        h.trim(P, i * P)
    r = runner.invoke(main, ["compact", *ctl])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("compacted ")
    assert int(r.output.split()[1]) > 0
    r = runner.invoke(main, ["set", *ctl, "mem_limit", "128M"])
    assert r.exit_code == 0, r.output
    assert server.mm_stat()[3] == 128 << 20
    r = runner.invoke(main, ["set", *ctl, "mem_limit", "lots"])
    assert r.exit_code == 1
    assert "Invalid argument (EINVAL)" in r.output
    r = runner.invoke(main, ["set", *ctl, "nonsense", "1"])
    assert "no such attribute" in r.output
    r = runner.invoke(main, ["reset", *ctl])
    assert r.exit_code == 1
    assert "Device or resource busy (EBUSY)" in r.output  # a client is connected
    h.shutdown()


def test_no_control_directory(runner: CliRunner, tmp_path: Path) -> None:
    r = runner.invoke(main, ["status", "--control", str(tmp_path / "none")])
    assert r.exit_code == 1
    assert "no zramd control directory" in r.output


def test_serve_without_nbdkit(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.shutil, "which", lambda *a, **k: None)
    r = runner.invoke(main, ["serve"])
    assert r.exit_code == 1
    assert "nbdkit is not installed (apt-get install nbdkit)" in r.output


def test_serve_without_python_plugin(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = subprocess.run

    def fake_run(args: list[str], **kw: object) -> object:
        if args[1:] == ["--dump-config"]:
            return subprocess.CompletedProcess(args, 0, "plugindir=/nonexistent\n", "")
        return real_run(args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    r = runner.invoke(main, ["serve"])
    assert "apt-get install nbdkit-plugin-python" in r.output


@pytest.mark.parametrize("size", ["lots", "1.5G", "-1", "12Q"])
def test_serve_bad_size(runner: CliRunner, size: str) -> None:
    r = runner.invoke(main, ["serve", "--size", size])
    assert r.exit_code == 2
    assert "is not a size" in r.output


def paths(tmp: Path) -> list[str]:
    return ["--socket", str(tmp / "s.sock"), "--pidfile", str(tmp / "s.pid"),
            "--log", str(tmp / "s.log")]  # fmt: skip


@pytest.mark.e2e
def test_serve_status_stop_as_subprocesses(tmp_path: Path) -> None:
    ctl = tmp_path / "ctl"
    with open(tmp_path / "wb.img", "wb") as f:
        f.truncate(64 << 20)
    r = subprocess.run(
        [*ZRAMD, "serve", "--size", "128M", "--algorithm", "zstd", "--control", str(ctl),
         "--backing-dev", "wb.img", "--recomp-algorithm", "lz4hc,deflate", *paths(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    assert (ctl / "backing_dev").read_text() == f"{tmp_path / 'wb.img'}\n"  # made absolute
    assert (ctl / "recomp_algorithm").read_text().count("#") == 2
    assert "nbd-client -unix" in r.stdout
    assert f"file=nbd:unix:{tmp_path / 's.sock'}" in r.stdout
    assert "data path:   C loops (zramd._zsfast)" in r.stdout
    assert oct((tmp_path / "s.sock").stat().st_mode & 0o777) == "0o600"
    try:
        st = subprocess.run([*ZRAMD, "status", "--control", str(ctl), "--raw", "-n"],
                            capture_output=True, text=True, check=True)  # fmt: skip
        assert st.stdout.split()[1:3] == ["zstd", "128M"]
        again = subprocess.run(
            [*ZRAMD, "serve", "--control", str(tmp_path / "ctl2"), *paths(tmp_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert again.returncode == 1
        assert "is in use by a running server" in again.stderr
    finally:
        stop = zramd_stop(tmp_path / "s.pid", tmp_path / "s.sock")
    assert stop.returncode == 0, stop.stderr
    assert not (tmp_path / "s.sock").exists()
    assert not os.path.ismount(ctl)
    assert "nbdkit exited with status 0" in (tmp_path / "s.log").read_text()


@pytest.mark.e2e
def test_serve_control_not_mountable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run(
        [*ZRAMD, "serve", "--size", "16M", "--control", str(blocker / "ctl"), *paths(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert "nbdkit did not start" in r.stderr
    assert "control directory" in r.stderr
    assert "Not a directory" in r.stderr
    assert not (tmp_path / "s.sock").exists()


def test_data_path_names_the_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    from zramd import cli  # noqa: PLC0415

    monkeypatch.setenv("ZRAMD_NATIVE", "0")
    assert cli.data_path() == "Python loops (ZRAMD_NATIVE=0)"
    monkeypatch.setattr(cli, "native_module", lambda: None)
    assert "not built" in cli.data_path()

"""The shipped systemd units: systemd-analyze verify accepts them without a word, and they keep
the properties the service depends on (zramd/systemd/*.service, zramd/units.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zramd import genconf, units
from zramd.cli import main

ZRAMD = Path(sys.executable).parent / "zramd"  # the console script of this environment
# options that put the service in its own mount namespace, hiding its mounts from the host
NAMESPACING = {
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
    "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
    "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
    "ProcSubset", "RootDirectory", "RootImage", "MountFlags", "PrivateNetwork", "PrivateUsers",
}  # fmt: skip


def verify(unit: Path) -> str:
    """systemd-analyze verify's complaints about ``unit`` ('' when it has none)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    done = subprocess.run(
        [tool, "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    complaints = (done.stdout + done.stderr).strip()
    if done.returncode and not complaints:
        complaints = f"exit status {done.returncode}"
    return complaints


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and line[0] not in "#;[" and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_a_unit_is_shipped() -> None:
    assert units.names() == ["zramd.service"]


@pytest.mark.parametrize("name", units.names())
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, name: str) -> None:
    assert ZRAMD.exists(), ZRAMD
    unit = tmp_path / name
    unit.write_text(units.text(name, exe=str(ZRAMD)))
    assert verify(unit) == ""


def test_verify_is_not_blind(tmp_path: Path) -> None:
    """The check above fails on what systemd rejects or ignores with a warning."""
    unit = tmp_path / "zramd.service"
    text = units.text(exe=str(ZRAMD))
    unit.write_text(text.replace("[Service]\n", "[Service]\nNotAnOption=1\n"))
    assert "Unknown key" in verify(unit)
    unit.write_text(units.text())  # the shipped path does not exist on this machine
    assert "/usr/local/bin/zramd is not executable" in verify(unit)


def test_the_service_is_type_notify_and_stops_through_serve() -> None:
    s = settings(units.text())
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [
        "/usr/local/bin/zramd serve --foreground --config /etc/zramd/zramd.conf"
    ]
    assert s["KillMode"] == ["mixed"]  # SIGTERM to serve alone: it takes devices down first
    assert "ExecStop" not in s
    assert s["RuntimeDirectory"] == ["zramd"]
    assert s["RuntimeDirectoryMode"] == ["0700"]  # what runstate.private_dir requires
    assert s["RuntimeDirectoryPreserve"] == ["yes"]  # a crashed service's attach record stays
    assert s["TimeoutStopSec"] == ["90"]  # zramd stop's 60 s, plus cleanup
    assert s["OOMScoreAdjust"] == ["-1000"]
    assert s["LimitMEMLOCK"] == ["infinity"]


def test_no_option_hides_the_services_mounts_from_the_host() -> None:
    """The control tree and mount-point= file systems must be visible on the host."""
    assert NAMESPACING.isdisjoint(settings(units.text()))


def test_the_devices_it_needs_are_allowed() -> None:
    s = settings(units.text())
    assert s["DevicePolicy"] == ["closed"]
    assert set(s["DeviceAllow"]) == {"/dev/fuse rw", "block-nbd rw"}
    assert "CAP_SYS_ADMIN" in s["CapabilityBoundingSet"][0].split()
    assert "AF_NETLINK" in s["RestrictAddressFamilies"][0].split()  # nbd-client's netlink
    assert set(s["Wants"][0].split()) == {"modprobe@nbd.service", "modprobe@fuse.service"}


def test_text_substitutes_the_executable_in_commands_only() -> None:
    text = units.text(exe="/opt/zramd/bin/zramd")
    assert "ExecStart=/opt/zramd/bin/zramd serve --foreground" in text
    assert "/usr/local/bin/zramd" in text  # the install comment still says where it goes
    for bad in ("zramd", "/opt/my venv/bin/zramd"):
        with pytest.raises(ValueError, match="absolute path without spaces"):
            units.text(exe=bad)
    with pytest.raises(ValueError, match=r"zramd ships zramd\.service"):
        units.text("nope.service")


def test_install_unit_writes_the_unit_for_this_zramd_and_an_example_config(
    tmp_path: Path,
) -> None:
    """`zramd install-unit`: ExecStart= names this installation's zramd (the console script of
    this environment), the unit verifies, and the example configuration reads as one swap
    device with zram-generator's defaults; an existing configuration is never touched."""
    r = CliRunner().invoke(main, ["install-unit", "--root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    unit = tmp_path / "etc/systemd/system/zramd.service"
    conf = tmp_path / "etc/zramd/zramd.conf"
    assert settings(unit.read_text())["ExecStart"] == [
        f"{ZRAMD} serve --foreground --config /etc/zramd/zramd.conf"
    ]
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    assert verify(unit) == ""
    config = genconf.read_config([conf], ram_mib=2048)
    (dev,) = config.devices
    assert (dev.name, dev.disksize, dev.fs_type, dev.swap_priority) == ("zram0", 1024 << 20,
                                                                        "swap", 100)  # fmt: skip
    assert [a.name for a in dev.algorithms] == ["zstd"]
    assert config.messages == ()

    conf.write_text("[zram0]\nzram-size = 64\n")
    r = CliRunner().invoke(main, ["install-unit", "--root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert f"{unit} is up to date" in r.output
    assert f"{conf} exists: left as it is" in r.output
    assert conf.read_text() == "[zram0]\nzram-size = 64\n"

    unit.write_text(unit.read_text() + "# edited\n")
    r = CliRunner().invoke(main, ["install-unit", "--root", str(tmp_path)])
    assert r.exit_code == 1
    assert f"{unit} exists and differs (it was edited?); --force replaces it" in r.output
    r = CliRunner().invoke(
        main, ["install-unit", "--root", str(tmp_path), "--force", "--exe", "/opt/z/bin/zramd"]
    )
    assert r.exit_code == 0, r.output
    assert "ExecStart=/opt/z/bin/zramd serve --foreground" in unit.read_text()
    assert "# edited" not in unit.read_text()
    r = CliRunner().invoke(main, ["install-unit", "--root", str(tmp_path), "--exe", "zramd"])
    assert r.exit_code == 1
    assert "absolute path without spaces" in r.output

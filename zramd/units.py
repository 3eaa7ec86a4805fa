"""The systemd units zramd ships as package data (``zramd/systemd/*.service``).

``zramd.service`` runs one server for every device of ``/etc/zramd/zramd.conf``; its comments
explain each option. The shipped text names ``/usr/local/bin/zramd`` (where ``pip install`` as
root and ``pipx install --global`` put it); text() substitutes another path, e.g. the zramd of
a virtual environment, for installing the unit; install() (``zramd install-unit``) writes it
with this installation's zramd, and an example configuration if there is none.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path

INSTALLED_EXE = "/usr/local/bin/zramd"
#: where install() puts the unit and the example configuration, under its root
UNIT_PATH = Path("etc/systemd/system/zramd.service")
CONFIG_PATH = Path("etc/zramd/zramd.conf")


def names() -> list[str]:
    """The unit files shipped, sorted."""
    folder = resources.files("zramd").joinpath("systemd")
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".service"))


def text(name: str = "zramd.service", *, exe: str | None = None) -> str:
    """The unit's text, with ``exe`` (an absolute path) for INSTALLED_EXE in its commands.
    ValueError for a unit zramd does not ship or a relative ``exe``."""
    if name not in names():
        raise ValueError(f"{name}: zramd ships {', '.join(names())}")
    unit = resources.files("zramd").joinpath("systemd", name).read_text()
    if exe is None:
        return unit
    if not exe.startswith("/") or any(c.isspace() for c in exe):
        raise ValueError(f"{exe!r}: ExecStart= needs an absolute path without spaces")
    return "\n".join(
        line.replace(INSTALLED_EXE, exe, 1) if line.startswith("Exec") else line
        for line in unit.split("\n")
    )


def example_config() -> str:
    """The example /etc/zramd/zramd.conf: one swap device with zram-generator's defaults."""
    return resources.files("zramd").joinpath("systemd", "zramd.conf").read_text()


def this_exe() -> str:
    """The ``zramd`` command of this installation: the console script beside this
    interpreter (a virtual environment's bin/), else the one on PATH. ValueError if neither
    exists."""
    beside = Path(sys.executable).parent / "zramd"
    if os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("zramd")
    if found is None:
        raise ValueError("cannot find the zramd command of this installation: give --exe")
    return os.path.abspath(found)


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0644) through a new file renamed over it, so a reader
    never sees half a file and a symlink at ``path`` is replaced, not followed."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def install(root: Path, *, exe: str | None = None, force: bool = False) -> list[str]:
    """Write ``root/etc/systemd/system/zramd.service`` with ``exe`` (default: this_exe()) in
    its ExecStart=, and ``root/etc/zramd/zramd.conf`` (example_config()) if no such file
    exists. A unit file that differs is replaced only with ``force``. What was done, one line
    each; ValueError (with the reason) when nothing could be done."""
    text = text_for(exe)
    done = []
    unit = root / UNIT_PATH
    try:
        current = unit.read_text()
    except FileNotFoundError:
        current = None
    if current == text:
        done.append(f"{unit} is up to date")
    elif current is not None and not force:
        raise ValueError(f"{unit} exists and differs (it was edited?); --force replaces it")
    else:
        _write(unit, text)
        done.append(f"wrote {unit} (ExecStart: {exe_of(text)})")
    config = root / CONFIG_PATH
    if os.path.lexists(config):
        done.append(f"{config} exists: left as it is")
    else:
        _write(config, example_config())
        done.append(f"wrote {config} (an example: one swap device; edit it before starting)")
    return done


def text_for(exe: str | None) -> str:
    """The shipped unit with ``exe`` (default: this_exe()) in its commands."""
    return text(exe=exe or this_exe())


def exe_of(unit: str) -> str:
    """The program of a unit text's ExecStart=."""
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    return line.removeprefix("ExecStart=").split()[0]

"""The systemd units zramd ships as package data (``zramd/systemd/*.service``).

``zramd.service`` runs one server for every device of ``/etc/zramd/zramd.conf``; its comments
explain each option. The shipped text names ``/usr/local/bin/zramd`` (where ``pip install`` as
root and ``pipx install --global`` put it); text() substitutes another path, e.g. the zramd of
a virtual environment, for installing the unit.
"""

from __future__ import annotations

from importlib import resources

INSTALLED_EXE = "/usr/local/bin/zramd"


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

"""Device configuration in zram-generator's syntax (zram-generator.conf(5)), read as it reads it.

zram users describe their devices in ``/etc/systemd/zram-generator.conf``::

    [zram0]
    zram-size = min(ram / 2, 4096)
    compression-algorithm = zstd(level=3) lz4 (type=idle)
    swap-priority = 100

    [zram1]
    mount-point = /var/compressed
    fs-type = ext4

This module reads such files into one DeviceConfig per ``[zramN]`` section, with the sizes
evaluated against this machine's MemTotal and zram-generator's defaults filled in; it sets up
nothing (attach.py does, from the result).

Files (config_files): with no explicit file, zram-generator's own search. The main file is the
first of ``/run``, ``/etc``, ``/usr/local/lib``, ``/usr/lib`` + ``/systemd/zram-generator.conf``
that exists; then the drop-ins ``*.conf`` in ``systemd/zram-generator.conf.d/`` under the same
four directories, in the lexical order of their file names wherever they live, a name in a
later directory of ``/usr/lib, /usr/local/lib, /etc, /run`` replacing the same name in an
earlier one, a symlink to /dev/null masking it. An explicit file (zramd's own
``/etc/zramd/zramd.conf``) is read with the drop-ins ``FILE.d/*.conf``. Later files override
earlier ones key by key; a section may appear more than once.

Syntax, as zram-generator's ini parser (rust-ini) reads it: ``[section]`` lines, ``key = value``
(or ``key: value``) lines, comments on lines of their own starting with ``#`` or ``;``, values
trimmed, one pair of enclosing quotes removed, backslash escapes (``\\\\ \\n \\t \\" \\# \\;
\\= \\:`` ...) decoded and a trailing backslash continuing the line. Sections other than
``[zramN]`` and unknown keys are skipped with a warning, as zram-generator does (its config may
hold keys of a newer version); everything else that does not parse is a ConfigError naming the
file, line, section and key.

Keys and defaults (zram-generator's): ``zram-size`` (MiB expression, default
``min(ram / 2, 4096)``), ``zram-resident-limit`` (MiB expression -> mem_limit, default 0),
``compression-algorithm`` (``alg(k=v,...)`` words: the first is the primary algorithm, the rest
recompression algorithms of priority 1, 2, ...; a bare ``(k=v,...)`` is the global recompress
parameter), ``writeback-device`` (-> backing_dev), ``swap-priority`` (-1..32767, default 100),
``mount-point``, ``fs-type`` (default ext2 with a mount point, else swap), ``options``
(default ``discard``), ``host-memory-limit`` (MiB or ``none``: above it the device is skipped),
and the obsolete ``memory-limit`` (= host-memory-limit), ``zram-fraction`` and
``max-zram-size``: setting either of the last two replaces zram-size with
``min(int(fraction * ram), max)`` MiB, fraction 0.5 and no maximum by default (zram-generator's
code; its man page still says 4096). A device whose size comes out as 0 is skipped.

zramd's own settings for the server go in a ``[zramd]`` section (zram-generator skips it with
a warning): ``swap = yes`` serves the devices as this host's own swap (``zramd serve --swap``,
``swapmode.py``); its values are yes/no, true/false, on/off, 1/0.

``set!NAME = PROGRAM`` outside any section runs ``/bin/sh -c PROGRAM`` when the file is read,
as zram-generator does, and evaluates its output as an expression that later sizes may use as
``NAME``. zramd runs it only from a file owned by root (or by the reading user) that nobody
else may write, within SET_TIMEOUT seconds; ``run_programs=False`` refuses every ``set!``.
zramd refuses what zram-generator would pass on to the kernel to fail there: an infinite size,
an algorithm word that is not ``name`` or ``name(k=v,...)``, more than four algorithms (zram's
limit), a non-canonical section number (``[zram05]``). The kernel command line's
``systemd.zram=`` switches zram-generator's kernel devices and is not read here.
"""

from __future__ import annotations

import math
import os
import re
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zramd import sizeexpr

MiB = 1 << 20
DEFAULT_ZRAM_SIZE = "min(ram / 2, 4096)"
DEFAULT_RESIDENT_LIMIT = "0"
DEFAULT_SWAP_PRIORITY = 100
DEFAULT_OPTIONS = "discard"
#: zram: one primary and up to three recompression algorithms (ZRAM_MAX_COMPS)
MAX_ALGORITHMS = 4
#: seconds a ``set!`` program may run
SET_TIMEOUT = 30.0
#: where zram-generator looks, lowest precedence first
BASE_DIRS = ("usr/lib", "usr/local/lib", "etc", "run")
GENERATOR_CONF = "systemd/zram-generator.conf"

_SECTION = re.compile(r"zram(0|[1-9][0-9]*)\Z")
#: the section of zramd's own server settings
SERVER_SECTION = "zramd"
_TRUE = ("yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")
_ALGORITHM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_PARAM = re.compile(r"[^\s,()]+\Z")
_FS_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ESCAPES = {
    "\\": "\\", "0": "\0", "a": "\a", "b": "\b", "t": "\t", "r": "\r", "n": "\n",
    '"': '"', "'": "'", ";": ";", "#": "#", "=": "=", ":": ":",
}  # fmt: skip


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file, line, section, key."""


# -- what the caller gets ---------------------------------------------------------------------


@dataclass(frozen=True)
class Algorithm:
    """One word of ``compression-algorithm``: ``zstd(level=3,dict=/x)`` is
    ``Algorithm("zstd", ("level=3", "dict=/x"))``. zram-generator passes the parameters on
    without looking at them (the kernel judges them), and so does zramd."""

    name: str
    params: tuple[str, ...] = ()

    @property
    def params_text(self) -> str:
        """``k=v k=v``, as the sysfs attributes take parameters."""
        return " ".join(self.params)


@dataclass(frozen=True)
class DeviceConfig:
    """What zramd needs to set one device up, zram-generator's defaults applied.

    Sizes are bytes (``disksize`` is ``int(MiB value * 2**20)``, as zram-generator computes it;
    the device rounds it up to whole pages). ``algorithms`` is empty for the device's default
    algorithm; ``algorithms[0]`` is the primary one (comp_algorithm, its params to
    algorithm_params), ``algorithms[i]`` the recompression algorithm of priority ``i``.
    ``recompress`` is the global recompress parameter text (``type=idle``) or None. The device
    is either swap (``fs_type == "swap"``, with ``swap_priority``) or a file system of
    ``fs_type`` mounted at ``mount_point`` (None: formatted, not mounted); ``options`` are the
    swapon or mount options.
    """

    name: str
    id: int
    disksize: int
    mem_limit: int = 0
    algorithms: tuple[Algorithm, ...] = ()
    recompress: str | None = None
    backing_dev: str | None = None
    fs_type: str = "swap"
    mount_point: str | None = None
    swap_priority: int = DEFAULT_SWAP_PRIORITY
    options: str = DEFAULT_OPTIONS

    @property
    def is_swap(self) -> bool:
        return self.fs_type == "swap"


@dataclass(frozen=True)
class Config:
    """The devices to set up (in id order), the files read, the MemTotal used, and the
    warnings and notes zram-generator would log (skipped sections, unknown keys, devices
    skipped by host-memory-limit or a size of 0)."""

    devices: tuple[DeviceConfig, ...]
    files: tuple[Path, ...]
    ram_mib: int
    messages: tuple[str, ...] = ()
    swap: bool = False  #: ``[zramd] swap``: serve as this host's own swap

    def device(self, name: str) -> DeviceConfig | None:
        return next((d for d in self.devices if d.name == name), None)


# -- which files ------------------------------------------------------------------------------


def _masked(path: Path) -> bool:
    return path.is_symlink() and os.path.realpath(path) == "/dev/null"


def _dropins(dirs: Sequence[Path]) -> list[Path]:
    by_name: dict[str, Path] = {}
    for d in dirs:
        try:
            entries = sorted(d.iterdir())
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ConfigError(f"{d}: cannot list drop-ins: {e.strerror}") from None
        for entry in entries:
            if entry.name.endswith(".conf") and (entry.is_file() or _masked(entry)):
                by_name[entry.name] = entry
    return [by_name[name] for name in sorted(by_name) if not _masked(by_name[name])]


def config_files(main: Path | None = None, *, root: Path = Path("/")) -> list[Path]:
    """The files to read, lowest precedence first.

    ``main=None``: zram-generator's search under ``root`` (module docstring); an empty list when
    there is no configuration. An explicit ``main`` must exist (ConfigError otherwise) and
    brings its ``main.d/*.conf`` drop-ins."""
    if main is not None:
        if not main.is_file():
            why = "is not a regular file" if main.exists() else "does not exist"
            raise ConfigError(f"{main}: the configuration file {why}")
        return [main, *_dropins([Path(f"{main}.d")])]
    bases = [root / b for b in BASE_DIRS]
    found = [b / GENERATOR_CONF for b in reversed(bases) if (b / GENERATOR_CONF).exists()]
    mains = found[:1]
    return mains + _dropins([b / f"{GENERATOR_CONF}.d" for b in bases])


def meminfo_ram_mib(path: Path = Path("/proc/meminfo")) -> int:
    """MemTotal in MiB, rounded down (what zram-generator calls ``ram``)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read MemTotal: {e.strerror}") from None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "MemTotal:" and fields[1].isdigit():
            return int(fields[1]) // 1024
    raise ConfigError(f"{path}: no MemTotal line")


# -- the ini layer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    file: Path
    number: int
    section: str | None
    key: str
    value: str

    def where(self) -> str:
        section = f" [{self.section}]" if self.section is not None else ""
        key = f" {self.key} = {self.value}" if self.key else ""
        return f"{self.file}:{self.number}:{section}{key}"


def _unescape(text: str, file: Path, number: int) -> str:
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[i + 2 : i + 6]):
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        else:
            raise ConfigError(
                f"{file}:{number}: unknown escape {text[i : i + 2]!r} (write \\\\ for a backslash)"
            )
    return "".join(out)


def _read_lines(path: Path) -> list[_Line]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode().removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.start})") from None
    out: list[_Line] = []
    section: str | None = None
    physical = text.splitlines()
    n = 0
    while n < len(physical):
        number = n + 1
        line = physical[n].strip()
        n += 1
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                raise ConfigError(f"{path}:{number}: {line!r}: a section line is [name]")
            section = line[1:-1].strip()
            out.append(_Line(path, number, section, "", ""))  # a section exists once named
            continue
        seps = [p for p in (line.find("="), line.find(":")) if p > 0]
        if not seps:
            raise ConfigError(f"{path}:{number}: {line!r}: expected KEY = VALUE")
        key, value = line[: min(seps)].strip(), line[min(seps) + 1 :].strip()
        while value.endswith("\\") and not value.endswith("\\\\") and n < len(physical):
            value = value[:-1] + physical[n].strip()  # a trailing backslash continues the line
            n += 1
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out.append(_Line(path, number, section, key, _unescape(value, path, number)))
    return out


# -- keys -------------------------------------------------------------------------------------


def _mib_or_none(line: _Line) -> int | None:
    if line.value == "none":
        return None
    if not line.value.isascii() or not line.value.isdigit():
        raise ConfigError(f"{line.where()}: expected a whole number of MiB or 'none'")
    return int(line.value)


def _expression(line: _Line) -> sizeexpr.Expression:
    try:
        return sizeexpr.parse(line.value)
    except sizeexpr.ExprError as e:
        raise ConfigError(f"{line.where()}: {e}") from None


def _path(line: _Line) -> str:
    value = line.value
    if not value.startswith("/"):
        raise ConfigError(f"{line.where()}: not an absolute path")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ConfigError(f"{line.where()}: '..' is not allowed in the path")
    return "/" + "/".join(parts)


def _algorithms(line: _Line) -> tuple[tuple[Algorithm, ...], str | None]:
    algorithms: list[Algorithm] = []
    recompress = None
    for word in line.value.split():
        name, paren, rest = word.partition("(")
        params_text = rest.removesuffix(")") if paren else ""
        if paren and not rest.endswith(")"):
            raise ConfigError(
                f"{line.where()}: {word!r}: missing ')' (parameters are separated by commas "
                "without spaces, e.g. zstd(level=3,dict=/etc/zstd.dict))"
            )
        params = tuple(filter(None, params_text.split(",")))
        bad = [p for p in params if not _PARAM.match(p)]
        if bad:
            raise ConfigError(f"{line.where()}: {word!r}: bad parameter {bad[0]!r}")
        if not name:
            recompress = " ".join(params) or None
            continue
        if not _ALGORITHM.match(name):
            raise ConfigError(
                f"{line.where()}: {word!r} is not an algorithm name (words are NAME or "
                "NAME(key=value,...), separated by spaces)"
            )
        algorithms.append(Algorithm(name, params))
    if len(algorithms) > MAX_ALGORITHMS:
        raise ConfigError(
            f"{line.where()}: {len(algorithms)} algorithms: zram takes one primary and at most "
            f"{MAX_ALGORITHMS - 1} recompression algorithms"
        )
    return tuple(algorithms), recompress


@dataclass
class _Section:
    """One device's keys, as the files set them (the line of each, for messages)."""

    name: str
    host_memory_limit: int | None = None
    zram_size: tuple[_Line, sizeexpr.Expression] | None = None
    resident_limit: tuple[_Line, sizeexpr.Expression] | None = None
    algorithms: tuple[Algorithm, ...] = ()
    recompress: str | None = None
    backing_dev: str | None = None
    swap_priority: int = DEFAULT_SWAP_PRIORITY
    mount_point: str | None = None
    fs_type: str | None = None
    options: str = DEFAULT_OPTIONS
    zram_fraction: float | None = None
    max_zram_size: int | None = None
    max_zram_size_set: bool = False
    lines: dict[str, _Line] = field(default_factory=dict)

    def set(self, line: _Line, messages: list[str]) -> None:
        key, value = line.key, line.value
        if key in ("host-memory-limit", "memory-limit"):
            self.host_memory_limit = _mib_or_none(line)
        elif key == "zram-size":
            self.zram_size = (line, _expression(line))
        elif key == "zram-resident-limit":
            self.resident_limit = (line, _expression(line))
        elif key == "compression-algorithm":
            self.algorithms, self.recompress = _algorithms(line)
        elif key == "writeback-device":
            self.backing_dev = _path(line)
        elif key == "swap-priority":
            if not re.fullmatch(r"[+-]?[0-9]+", value) or not -1 <= int(value) <= 32767:
                raise ConfigError(f"{line.where()}: expected a swap priority from -1 to 32767")
            self.swap_priority = int(value)
        elif key == "mount-point":
            self.mount_point = _path(line)
        elif key == "fs-type":
            if not _FS_TYPE.match(value):
                raise ConfigError(f"{line.where()}: not a file system type (swap, ext4, ...)")
            self.fs_type = value
        elif key == "options":
            self.options = value
        elif key == "zram-fraction":
            try:
                fraction = float(value)
            except ValueError:
                fraction = math.nan
            if not (math.isfinite(fraction) and fraction >= 0):
                raise ConfigError(f"{line.where()}: expected a fraction >= 0 (e.g. 0.5)")
            self.zram_fraction = fraction
        elif key == "max-zram-size":
            self.max_zram_size = _mib_or_none(line)
            self.max_zram_size_set = True
        else:
            messages.append(f"{line.where()}: unknown key, ignored")
            return
        self.lines[key] = line


def _size(section: _Section, key: str, variables: Mapping[str, float]) -> int:
    """Bytes of a MiB expression (zram-size or zram-resident-limit), zram-generator's way:
    ``int(value * 2**20)``; negative, NaN, infinite or 2**64 and more is an error."""
    entry = section.zram_size if key == "zram-size" else section.resident_limit
    if entry is None:
        default = DEFAULT_ZRAM_SIZE if key == "zram-size" else DEFAULT_RESIDENT_LIMIT
        where = f"[{section.name}] {key} = {default} (default)"
        expr = sizeexpr.parse(default)
    else:
        line, expr = entry
        where = line.where()
    try:
        mib = expr.evaluate(variables)
    except sizeexpr.ExprError as e:
        raise ConfigError(f"{where}: {e}") from None
    if math.isnan(mib):
        raise ConfigError(f"{where}: the result is not a number")
    if mib < 0:
        raise ConfigError(f"{where}: the result is {mib:g} MiB, below 0")
    if math.isinf(mib) or mib * MiB >= 2**64:
        raise ConfigError(f"{where}: the result is {mib:g} MiB, too large for a device")
    return int(mib * MiB)


# -- set! -------------------------------------------------------------------------------------


def _check_program_file(line: _Line) -> None:
    st = os.stat(line.file)
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{line.where()}: refusing to run a program from a file that is not owned by root "
            f"(or by you) or that others may write (owner uid {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):04o})"
        )


def _run_set(
    line: _Line, variables: dict[str, float], messages: list[str], run_programs: bool
) -> None:
    name = line.key.removeprefix("set!")
    if not _VAR.match(name) or name == "ram":
        raise ConfigError(f"{line.where()}: set!NAME needs a variable name other than ram")
    if not run_programs:
        raise ConfigError(f"{line.where()}: running set! programs is disabled")
    _check_program_file(line)
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", "--", line.value],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            timeout=SET_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{line.where()}: still running after {SET_TIMEOUT:g} s") from None
    except OSError as e:
        raise ConfigError(f"{line.where()}: cannot run /bin/sh: {e.strerror}") from None
    if done.returncode:
        code = done.returncode if done.returncode > 0 else 128 - done.returncode
        messages.append(f"{line.where()}: exited {code}; using its output anyway")
    output = done.stdout.decode(errors="replace").strip()
    try:
        variables[name] = sizeexpr.parse(output).evaluate(variables)
    except sizeexpr.ExprError as e:
        raise ConfigError(f"{line.where()}: its output {output!r}: {e}") from None


# -- reading ----------------------------------------------------------------------------------


def read_config(
    files: Sequence[Path] | None = None,
    *,
    root: Path = Path("/"),
    ram_mib: int | None = None,
    run_programs: bool = True,
) -> Config:
    """Read ``files`` (default: ``config_files(root=root)``) in order into devices.

    ``ram_mib`` (default: ``root/proc/meminfo``'s MemTotal) is ``ram`` in the expressions and
    what ``host-memory-limit`` is compared with. ConfigError names the file, line, section and
    key of the first problem; nothing is set up either way."""
    paths = config_files(root=root) if files is None else list(files)
    if ram_mib is None:
        ram_mib = meminfo_ram_mib(root / "proc" / "meminfo")
    messages: list[str] = []
    variables: dict[str, float] = {"ram": float(ram_mib)}
    sections: dict[str, _Section] = {}
    swap = False
    for path in paths:
        for line in _read_lines(path):
            if line.section is None:
                if line.key.startswith("set!"):
                    _run_set(line, variables, messages, run_programs)
                elif "!" in line.key:
                    op = line.key[: line.key.index("!") + 1]
                    messages.append(f"{line.where()}: unknown operation {op}, ignored")
                else:
                    messages.append(f"{line.where()}: a key outside any section, ignored")
                continue
            if line.section == SERVER_SECTION:
                if line.key:
                    swap = _server_key(line, messages, swap)
                continue
            if not _SECTION.match(line.section):
                if re.fullmatch(r"zram[0-9]+", line.section):
                    raise ConfigError(
                        f"{line.where()}: write the section as [zram{int(line.section[4:])}]"
                    )
                if not line.key:
                    messages.append(f"{line.where()}: section ignored (not zramN)")
                continue
            section = sections.setdefault(line.section, _Section(line.section))
            if line.key:
                section.set(line, messages)
    devices = []
    for section in sorted(sections.values(), key=lambda s: int(s.name[4:])):
        device = _device(section, variables, ram_mib, messages)
        if device is not None:
            devices.append(device)
    return Config(tuple(devices), tuple(paths), ram_mib, tuple(messages), swap)


def _server_key(line: _Line, messages: list[str], swap: bool) -> bool:
    """One key of the ``[zramd]`` section: the new ``swap`` setting (others: a warning)."""
    if line.key != "swap":
        messages.append(f"{line.where()}: unknown key, ignored")
        return swap
    value = line.value.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{line.where()}: expected yes or no")


def _device(
    section: _Section, variables: Mapping[str, float], ram_mib: int, messages: list[str]
) -> DeviceConfig | None:
    limit = section.host_memory_limit
    if limit is not None and limit < ram_mib:
        messages.append(
            f"[{section.name}]: this host has {ram_mib} MiB, above host-memory-limit = "
            f"{limit}: skipped"
        )
        return None
    if section.zram_fraction is not None or section.max_zram_size_set:
        fraction = 0.5 if section.zram_fraction is None else section.zram_fraction
        mib = int(fraction * ram_mib)
        if section.max_zram_size is not None:
            mib = min(mib, section.max_zram_size)
        disksize = mib * MiB
    else:
        disksize = _size(section, "zram-size", variables)
    if disksize == 0:
        messages.append(f"[{section.name}]: the size is 0: skipped")
        return None
    fs_type = section.fs_type or ("ext2" if section.mount_point is not None else "swap")
    if fs_type == "swap" and section.mount_point is not None:
        raise ConfigError(
            f"{section.lines['mount-point'].where()}: fs-type = swap cannot be mounted"
        )
    return DeviceConfig(
        name=section.name,
        id=int(section.name[4:]),
        disksize=disksize,
        mem_limit=_size(section, "zram-resident-limit", variables),
        algorithms=section.algorithms,
        recompress=section.recompress,
        backing_dev=section.backing_dev,
        fs_type=fs_type,
        mount_point=section.mount_point,
        swap_priority=section.swap_priority,
        options=section.options,
    )

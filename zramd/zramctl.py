"""The control-file client: what util-linux's zramctl does, against zramd's control tree.

Everything here reads and writes attribute files exactly as a script would with ``cat`` and
``echo``: ``ControlTree`` is the mount (``zram-control/`` and one ``zramN/`` per device),
``ControlFiles`` one device's directory. Their values become zramctl's columns (``COLUMNS``,
named and described as zramctl names them, plus zramd's own) in its table, raw and JSON
outputs (``format_status``). Errors are ControlFileError with one line naming the attribute
or device and the errno.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zramd.devices import device_name, parse_device_name
from zramd.errors import ControlFileError
from zramd.page import PAGE_SIZE
from zramd.runstate import default_control, private_dir, runtime_dir

CLASS_DIR = "zram-control"


def control_root(control: Path | None) -> Path:
    """``--control``, or the default one once its runtime directory has passed the ownership
    checks (a directory another user planted could redirect writes through symlinks).
    RunStateError if it is not safe."""
    if control is not None:
        return control
    private_dir(runtime_dir(), create=False)
    return default_control()


# -- human sizes like util-linux's size_to_human_string ---------------------------------------


def human_size(n: int) -> str:
    """1024-based, one decimal, a trailing .0 dropped: ``8G``, ``903.8M``, ``512B``."""
    exp = 0
    for shift in range(10, 70, 10):
        if n < (1 << shift):
            exp = shift - 10
            break
    else:
        exp = 60
    letter = "BKMGTPE"[exp // 10]
    dec = n >> exp if exp else n
    frac = n % (1 << exp) if exp else 0
    if frac:
        frac = frac * 1000 // (1 << exp)
        frac = (frac + 50) // 100 * 10  # one decimal, rounded
        if frac == 100:
            dec += 1
            frac = 0
    if frac:
        return f"{dec}.{frac // 10}{letter}"
    return f"{dec}{letter}"


# -- control directory access -----------------------------------------------------------------


class ControlFiles:
    """Reads and writes attributes of one control directory, with one-line errors."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def check(self) -> None:
        if not (self.path / "mm_stat").exists():
            raise ControlFileError(
                f"no zramd control directory at {self.path} (is `zramd serve` running?)"
            )

    def read(self, attr: str) -> str:
        try:
            return (self.path / attr).read_text()
        except OSError as e:
            raise ControlFileError(f"reading {attr}: {os.strerror(e.errno or 0)}") from None

    def write(self, attr: str, value: str) -> None:
        target = self.path / attr
        if not target.exists():
            raise ControlFileError(f"{attr}: no such attribute in {self.path}")
        try:
            fd = os.open(target, os.O_WRONLY)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            raise ControlFileError(
                f"writing {value.strip()!r} to {attr}: {os.strerror(e.errno or 0)} ({name})"
            ) from None

    def numbers(self, attr: str) -> list[int]:
        return [int(x) for x in self.read(attr).split()]

    def mm_stat(self) -> list[int]:
        return self.numbers("mm_stat")


def parse_device(value: str) -> int:
    """``--device``: ``N`` or ``zramN``. ValueError otherwise."""
    dev_id = parse_device_name(value if value.startswith("zram") else "zram" + value)
    if dev_id is None:
        raise ValueError(f"{value!r} is not a device (give N or zramN, e.g. 1 or zram1)")
    return dev_id


class ControlTree:
    """A server's control tree: ``zram-control/`` and the device directories."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self) -> None:
        if not (self.root / CLASS_DIR / "hot_add").exists():
            raise ControlFileError(
                f"no zramd control tree at {self.root} (is `zramd serve` running?)"
            )

    def device_ids(self) -> list[int]:
        """The devices there are, by id."""
        self.check()
        ids = (parse_device_name(p.name) for p in self.root.iterdir())
        return sorted(i for i in ids if i is not None)

    def device(self, dev_id: int) -> ControlFiles:
        """Device ``dev_id``'s attributes; ControlFileError if there is no such device."""
        self.check()
        path = self.root / device_name(dev_id)
        if not path.is_dir():
            raise ControlFileError(f"there is no {device_name(dev_id)} in {self.root}")
        return ControlFiles(path)

    def hot_add(self) -> int:
        """``cat zram-control/hot_add``: a new device's id."""
        self.check()
        return int(ControlFiles(self.root / CLASS_DIR).read("hot_add"))

    def hot_remove(self, dev_id: int) -> None:
        """``echo ID > zram-control/hot_remove``."""
        self.check()
        ControlFiles(self.root / CLASS_DIR).write("hot_remove", f"{dev_id}\n")


# -- status columns ---------------------------------------------------------------------------

Values = dict[str, int | str]


@dataclass(frozen=True)
class Column:
    name: str
    help: str
    value: Callable[[Values], int | str | float]
    size: bool = False  # shown human-readable unless --bytes
    right: bool = True


def _ratio(d: Values) -> float:
    total = int(d["total"])
    return int(d["data"]) / total if total else 0.0


COLUMNS = {
    c.name: c
    for c in (
        Column("NAME", "zram device name", lambda d: d["name"], right=False),
        Column(
            "DISKSIZE", "limit on the uncompressed amount of data", lambda d: d["disksize"], True
        ),
        Column("DATA", "uncompressed size of stored data", lambda d: d["data"], True),
        Column("COMPR", "compressed size of stored data", lambda d: d["compr"], True),
        Column(
            "ALGORITHM", "the selected compression algorithm", lambda d: d["algorithm"], right=False
        ),
        Column(
            "STREAMS", "number of concurrent compress operations (not applicable)", lambda d: ""
        ),
        Column("ZERO-PAGES", "number of same-filled pages", lambda d: d["same"]),
        Column("TOTAL", "all memory including allocator fragmentation", lambda d: d["total"], True),
        Column(
            "MEM-LIMIT", "memory limit used to store compressed data", lambda d: d["limit"], True
        ),
        Column("MEM-USED", "memory zram has consumed at most (peak)", lambda d: d["max"], True),
        Column("MIGRATED", "number of objects migrated by compaction", lambda d: d["compacted"]),
        Column("COMP-RATIO", "compression ratio: DATA/TOTAL", _ratio),
        Column("HUGE-PAGES", "pages stored uncompressed", lambda d: d["huge"]),
        Column("RSS", "resident memory of the serving process", lambda d: d["rss"], True),
    )
}
DEFAULT_COLUMNS = [
    "NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL",
    "MEM-LIMIT", "MEM-USED", "MIGRATED", "COMP-RATIO",
]  # fmt: skip


def device_values(files: ControlFiles) -> Values:
    """One device's columns' raw values, read from its control directory."""
    files.check()
    mm = files.mm_stat()
    algo = files.read("comp_algorithm")
    selected = algo[algo.rfind("[") + 1 : algo.rfind("]")] if "[" in algo else ""
    mem = files.read("mem_stat").split()
    return {
        "name": files.path.name,
        "disksize": int(files.read("disksize")),
        "algorithm": selected,
        "data": mm[0],
        "compr": mm[1],
        "total": mm[2],
        "limit": mm[3],
        "max": mm[4],
        "same": mm[5],
        "compacted": mm[6],
        "huge": mm[7],
        "rss": int(mem[0]),
    }


def status_rows(tree: ControlTree, ids: list[int] | None, *, every: bool = False) -> list[Values]:
    """zramctl's listing: the devices ``ids`` (all if None), those with a disksize only
    unless ``every`` or named."""
    rows = []
    for dev_id in tree.device_ids() if ids is None else ids:
        values = device_values(tree.device(dev_id))
        if every or ids is not None or int(values["disksize"]):
            rows.append(values)
    return rows


def parse_columns(spec: str | None) -> list[str]:
    """zramctl's ``--output``: a comma list, or ``+LIST`` to add to the defaults. ValueError
    names an unknown column."""
    if not spec:
        return list(DEFAULT_COLUMNS)
    base = list(DEFAULT_COLUMNS) if spec.startswith("+") else []
    for name in spec.lstrip("+").split(","):
        col = name.strip().upper()
        if col not in COLUMNS:
            raise ValueError(f"unknown column {name!r}; available: {', '.join(COLUMNS)}")
        base.append(col)
    return base


def render(value: int | str | float, column: Column, *, raw_bytes: bool) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if column.size and isinstance(value, int) and not raw_bytes:
        return human_size(value)
    return str(value)


def format_status(
    rows: Sequence[Values],
    names: Sequence[str],
    *,
    raw: bool = False,
    raw_bytes: bool = False,
    as_json: bool = False,
    noheadings: bool = False,
) -> str:
    """zramctl's output of ``rows`` in the columns ``names``: an aligned table (sizes human
    unless ``raw_bytes``), ``raw`` (space-separated, empty cells as ``""``) or JSON (one
    object per device under ``"zramd"``)."""
    columns = [COLUMNS[n] for n in names]
    if as_json:
        devices = []
        for values in rows:
            row: dict[str, int | str | float] = {}
            for c in columns:
                v = c.value(values)
                if isinstance(v, float):
                    row[c.name.lower()] = round(v, 4)
                elif c.size and not raw_bytes:
                    row[c.name.lower()] = render(v, c, raw_bytes=raw_bytes)
                else:
                    row[c.name.lower()] = v
            devices.append(row)
        return json.dumps({"zramd": devices}, indent=2) + "\n"
    if not rows:
        return ""  # zramctl prints nothing at all when no device is listed
    header = [c.name for c in columns]
    cells = [[render(c.value(v), c, raw_bytes=raw_bytes) for c in columns] for v in rows]
    lines = [] if noheadings else [header]
    lines += cells
    if raw:
        return "".join(" ".join(x or '""' for x in line) + "\n" for line in lines)
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(columns))]
    out = []
    for line in lines:
        items = [
            (item.rjust(w) if c.right else item.ljust(w))
            for item, w, c in zip(line, widths, columns, strict=True)
        ]
        out.append(" ".join(items).rstrip() + "\n")
    return "".join(out)


# -- actions that report what they did ------------------------------------------------------


def compact(files: ControlFiles) -> str:
    """``echo 1 > compact``; what it freed."""
    before = files.mm_stat()
    files.write("compact", "1\n")
    after = files.mm_stat()
    pages = after[6] - before[6]
    return (
        f"compacted {pages} pages ({human_size(pages * PAGE_SIZE)}); "
        f"pool {human_size(before[2])} -> {human_size(after[2])}"
    )


def writeback(files: ControlFiles, what: Sequence[str], mark: str | None) -> str:
    """``echo WHAT > writeback`` (after ``echo MARK > idle`` when given); what it wrote."""
    if mark is not None:
        files.write("idle", mark + "\n")
    before = files.numbers("bd_stat")
    files.write("writeback", " ".join(what) + "\n")
    after = files.numbers("bd_stat")
    pages = after[2] - before[2]
    return (
        f"wrote back {pages} pages ({human_size(pages * PAGE_SIZE)}); "
        f"{after[0]} blocks in use on the backing device"
    )


def recompress(files: ControlFiles, params: dict[str, object]) -> str:
    """``echo key=value... > recompress`` with the params that are not None; what changed."""
    before = files.mm_stat()
    files.write(
        "recompress", " ".join(f"{k}={v}" for k, v in params.items() if v is not None) + "\n"
    )
    after = files.mm_stat()
    return (
        f"compressed data {human_size(before[1])} -> {human_size(after[1])}; "
        f"huge pages {before[7]} -> {after[7]}"
    )

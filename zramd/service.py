"""What the nbdkit plugin serves: configuration, the device, its control directory and
background compaction, independent of nbdkit itself (the plugin only delegates here).

Configuration keys (``nbdkit python plugin/zramd_plugin.py KEY=VALUE ...``) are listed with
their help in ``CONFIG_KEYS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from zramd.compress import DEFAULT, available
from zramd.device import ZramDevice
from zramd.errors import ConfigError, ZramdError
from zramd.parse import parse_size
from zramd.shrinker import Shrinker
from zramd.size_class import DEFAULT_CHAIN_SIZE, MAX_CHAIN_SIZE, MIN_CHAIN_SIZE

if TYPE_CHECKING:
    from zramd.fusefs import ControlDir

#: key -> help text (also printed by ``--dump-plugin``)
CONFIG_KEYS: dict[str, str] = {
    "size": "disksize (e.g. 1G); without it the device starts uninitialised, like a fresh zram",
    "comp_algorithm": f"compression algorithm: {' '.join(available())} (default {DEFAULT})",
    "level": "compression level of the algorithm (backend-specific; default: the kernel's)",
    "mem_limit": "pool memory limit (e.g. 512M; 0 = none); writes beyond it fail with ENOSPC",
    "control": "directory to mount the live control directory on (like /sys/block/zramN)",
    "allow_other": "true to let other users into the control directory (needs fuse.conf)",
    "chain": f"zsmalloc chain size {MIN_CHAIN_SIZE}..{MAX_CHAIN_SIZE} "
    f"(default {DEFAULT_CHAIN_SIZE})",
    "auto_compact": "seconds between background compaction checks (0 = off; default 30)",
    "auto_compact_min": "background compaction frees at least this much (default 1M) ...",
    "auto_compact_percent": "... and at least this % of the pool (default 3)",
    "backing_dev": "file or NBD URI that writeback sends cold pages to (like zram's backing_dev)",
    "recomp_algorithm": "secondary algorithms for recompress, priority 1 first (e.g. zstd,deflate)",
}


def _bool(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}={value!r}: expected true or false")


def _int(key: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value, 10)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected an integer") from None
    if not lo <= n <= hi:
        raise ConfigError(f"{key}={value}: outside {lo}..{hi}")
    return n


@dataclass
class Settings:
    size: int | None = None
    comp_algorithm: str = DEFAULT
    level: int | None = None
    mem_limit: int = 0
    control: Path | None = None
    allow_other: bool = False
    chain: int = DEFAULT_CHAIN_SIZE
    auto_compact: float = 30.0
    auto_compact_min: int | None = None
    auto_compact_percent: int | None = None
    backing_dev: str | None = None
    recomp_algorithm: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


class Service:
    """Lifecycle: ``config``* -> ``config_complete`` -> ``prepare`` (before nbdkit forks)
    -> ``start`` (in the serving process) -> ``stop``."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.device: ZramDevice | None = None
        self.control: ControlDir | None = None
        self.shrinker: Shrinker | None = None

    def config(self, key: str, value: str) -> None:
        s = self.settings
        if key not in CONFIG_KEYS:
            raise ConfigError(f"unknown key {key!r}; known keys: {', '.join(CONFIG_KEYS)}")
        if key in s.seen:
            raise ConfigError(f"{key} given twice")
        s.seen.add(key)
        try:
            if key == "size":
                s.size = parse_size(value, what="size")
                if s.size <= 0:
                    raise ConfigError("size=0: the device needs at least one page")
            elif key == "comp_algorithm":
                if value not in available():
                    choices = " ".join(available())
                    raise ConfigError(f"comp_algorithm={value!r}: not available; choose {choices}")
                s.comp_algorithm = value
            elif key == "level":
                s.level = _int(key, value, -(1 << 17), 22)
            elif key == "mem_limit":
                s.mem_limit = parse_size(value, what="mem_limit")
            elif key == "control":
                if not value:
                    raise ConfigError("control=: empty path")
                s.control = Path(os.path.abspath(value))  # nbdkit chdirs to / when it forks
            elif key == "allow_other":
                s.allow_other = _bool(key, value)
            elif key == "chain":
                s.chain = _int(key, value, MIN_CHAIN_SIZE, MAX_CHAIN_SIZE)
            elif key == "auto_compact":
                s.auto_compact = float(_int(key, value, 0, 86400))
            elif key == "auto_compact_min":
                s.auto_compact_min = parse_size(value, what=key)
            elif key == "auto_compact_percent":
                s.auto_compact_percent = _int(key, value, 0, 100)
            elif key == "backing_dev":
                if not value:
                    raise ConfigError("backing_dev=: empty path")
                s.backing_dev = value if "://" in value else os.path.abspath(value)
            elif key == "recomp_algorithm":
                names = value.split(",")
                if not 1 <= len(names) <= 3:
                    raise ConfigError(f"{key}={value!r}: one to three names, comma-separated")
                for name in names:
                    if name not in available():
                        choices = " ".join(available())
                        raise ConfigError(f"{key}: {name!r} is not available; choose {choices}")
                s.recomp_algorithm = names
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def config_complete(self) -> None:
        """Build the device (and initialise it when ``size`` was given)."""
        s = self.settings
        dev = ZramDevice(s.comp_algorithm, chain=s.chain)
        if s.level is not None:
            try:
                dev.set_algorithm_params(level=s.level)
            except ZramdError as e:
                raise ConfigError(f"level={s.level}: {e}") from None
        try:
            dev.set_mem_limit(s.mem_limit)
        except ZramdError as e:
            raise ConfigError(f"mem_limit={s.mem_limit}: {e}") from None
        for prio, name in enumerate(s.recomp_algorithm, 1):
            dev.set_recomp_algorithm(name, prio)
        dev.set_auto_compact(
            interval=s.auto_compact,
            min_bytes=s.auto_compact_min,
            min_percent=s.auto_compact_percent,
        )
        if s.backing_dev is not None:
            try:
                dev.set_backing_dev(s.backing_dev)
            except ZramdError as e:
                raise ConfigError(str(e)) from None
        if s.size is not None:
            dev.set_disksize(s.size)
        self.device = dev

    def prepare(self) -> None:
        """Checks, while errors can still reach the user's terminal (before nbdkit forks)."""
        assert self.device is not None
        if self.settings.control is not None:
            from zramd.fusefs import ControlDir  # noqa: PLC0415 - FUSE only when asked for

            self.control = ControlDir(
                self.device, self.settings.control, allow_other=self.settings.allow_other
            )
            self.control.check()

    def start(self) -> None:
        """Start the threads (the process that serves: after nbdkit's fork)."""
        assert self.device is not None
        if self.control is not None:
            self.control.start()
        self.shrinker = Shrinker(self.device)
        self.shrinker.start()

    def stop(self) -> None:
        if self.shrinker is not None:
            self.shrinker.stop()
        if self.control is not None:
            self.control.stop()
            self.control = None

"""zramd: Linux's zram block device and zsmalloc allocator in userspace Python."""

__version__ = "0.1.0"

from zramd.errors import (
    CompressionError,
    CorruptionError,
    DeviceBusyError,
    InvalidHandleError,
    InvalidValueError,
    MemLimitError,
    PoolExhaustedError,
    ZramdError,
)
from zramd.page import PAGE_SIZE
from zramd.pool import ZsPool
from zramd.size_class import ClassSpec, ClassTable, build_class_table
from zramd.stats import ClassStat, PoolStats

__all__ = [
    "PAGE_SIZE",
    "ClassSpec",
    "ClassStat",
    "ClassTable",
    "CompressionError",
    "CorruptionError",
    "DeviceBusyError",
    "InvalidHandleError",
    "InvalidValueError",
    "MemLimitError",
    "PoolExhaustedError",
    "PoolStats",
    "ZramdError",
    "ZsPool",
    "build_class_table",
]

"""Compression backends (the kernel's zcomp + backend_*.c)."""

from zramd.compress.base import Backend, Compressor
from zramd.compress.registry import BACKENDS, DEFAULT, available, create, lookup

__all__ = ["BACKENDS", "DEFAULT", "Backend", "Compressor", "available", "create", "lookup"]

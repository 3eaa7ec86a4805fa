"""Shared type aliases."""

from __future__ import annotations

from typing import TypeAlias

#: A 1-D byte buffer: what the pool stores and the device reads and writes.
BytesLike: TypeAlias = bytes | bytearray | memoryview

"""What the benchmark scripts share: the checkout on sys.path, the page size and class table
from zramd, the swap-like image, and one summary of repeated runs.

Servers are started with ``zramd.supervise.start_nbdkit`` (a timeout, the log on failure), as
the CLI and the tests start theirs.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # zramd from this checkout, even without an install

from make_swap_image import ensure_image  # noqa: E402

from zramd import PAGE_SIZE, build_class_table  # noqa: E402

PAGE = PAGE_SIZE
#: compressed pages this large or larger are stored raw (zsmalloc's huge class)
HUGE_CLASS_SIZE = build_class_table().huge_class_size
RESULTS = ROOT / "bench-results"


def swap_image(size: int, seed: int = 1) -> memoryview:
    """The swap-like image of ``size`` bytes (built once into bench-results/)."""
    path = RESULTS / f"swap-{size >> 20}M-seed{seed}.img"
    ensure_image(path, size, seed)
    return memoryview(path.read_bytes())


def summarize(values: Iterable[float | None]) -> dict[str, float] | None:
    """Median, min and max of the values that are not None (None if there are none)."""
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs)}

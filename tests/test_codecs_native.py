"""zramd._zram.Codec (the C codecs, zramd/csrc/) against the Python backends (zramd/compress/).

Objects must move freely between the two paths (writeback, recompression, the Python twins),
so every test here crosses them: C output decodes in Python and Python output in C, for
every algorithm and several levels, and both take the parameters algorithm_params stores
the same way (the kernel's rules: what each backend ignores, what a level outside the
library's range acts as, what is refused). Where both paths run the same library (lz4,
lz4hc, lzo, deflate) the bytes must be the same, dictionaries included, so the two data
paths store the same objects and report the same mm_stat; zstd's two libraries differ in
version, so there the sizes are compared. Timings live in scripts/bench_codecs.py, never in
assertions.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from types import ModuleType

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zramd
from zramd import CompressionError, InvalidValueError
from zramd.compress import BACKENDS, create
from zramd.compress.base import Compressor
from zramd.control import store
from zramd.device import ZramDevice
from zramd.testing import synthetic_pages

P = 4096
ROOT = Path(__file__).resolve().parent.parent
NAMES = ["lzo", "lz4", "lz4hc", "zstd", "deflate"]
#: the algorithms whose C and Python paths run the same library build: the same bytes
SAME_BYTES = ["lzo", "lz4", "lz4hc", "deflate"]
S32_MIN, S32_MAX = -(1 << 31), (1 << 31) - 1
#: (name, level) pairs crossed between the paths: defaults, both ends, and a middle
LEVELS = [
    ("lzo", None),
    ("lz4", None), ("lz4", 2), ("lz4", 8), ("lz4", 65537),
    ("lz4hc", None), ("lz4hc", 1), ("lz4hc", 4), ("lz4hc", 12),
    ("zstd", None), ("zstd", -5), ("zstd", 0), ("zstd", 1), ("zstd", 7), ("zstd", 19),
    ("deflate", None), ("deflate", 0), ("deflate", 1), ("deflate", 9),
]  # fmt: skip


@pytest.fixture(scope="module")
def zram() -> ModuleType:
    try:
        from zramd import _zram  # noqa: PLC0415
    except ImportError as e:
        pytest.fail(f"zramd._zram is not built ({e}): run scripts/test (pip install -e .)")
    return _zram


def pages_mix(seed: int = 11) -> list[bytes]:
    """Realistic pages, plus the edge cases a codec meets: zero, same-filled, incompressible,
    a run that ends one byte early."""
    rng = random.Random(seed)
    out = synthetic_pages(200, seed)
    out += [bytes(P), b"\xff" * P, rng.randbytes(8) * (P // 8), bytes(P - 1) + b"\x01"]
    out += [rng.randbytes(P) for _ in range(8)]
    return out


def file_pages(count: int = 300) -> list[bytes]:
    """Pages of real files on this machine, as swap holds them beside heaps: machine code and
    data (the Python binary, the extension modules), text (zramd's sources)."""
    roots = [Path(sys.executable).resolve(), Path(zramd.__file__).parent]
    files: list[Path] = []
    for root in roots:
        files += [root] if root.is_file() else sorted(root.rglob("*.[ps][yo]"))
    pages: list[bytes] = []
    for f in files:
        data = f.read_bytes()
        pages += [data[i : i + P] for i in range(0, len(data) - P + 1, P)]
    rng = random.Random(7)
    return rng.sample(pages, min(count, len(pages)))


def test_registry_is_the_kernels_and_the_python_ones(zram: ModuleType) -> None:
    assert [name for name, _ in zram.CODECS] == [b.name for b in BACKENDS]
    available = [name for name, why in zram.CODECS if why is None]
    assert available == NAMES
    why = dict(zram.CODECS)
    assert why["lzo-rle"]
    assert why["842"]


@pytest.mark.parametrize(("name", "level"), LEVELS)
def test_objects_cross_between_c_and_python(zram: ModuleType, name: str, level: int | None) -> None:
    """C output decodes with the Python backend and Python output with the C codec; the
    bytes are the same where both paths run the same library, and zstd's sizes agree within
    1 %."""
    c = zram.Codec(name, level)
    py = create(name, level)
    assert c.name == name
    assert c.level == py.level
    sizes_c, sizes_py, same = [], [], 0
    pages = pages_mix() + file_pages(100)
    for page in pages:
        obj_c, obj_py = c.compress(page), py.compress(page)
        assert py.decompress(obj_c, P) == page
        assert c.decompress(obj_py, P) == page
        assert c.decompress(obj_c, P) == page
        sizes_c.append(len(obj_c))
        sizes_py.append(len(obj_py))
        same += obj_c == obj_py
        if name == "zstd":  # the frame header the kernel and python-zstandard write
            params = zstandard.get_frame_parameters(obj_c)
            assert (params.content_size, params.dict_id, params.has_checksum) == (P, 0, False)
    mean_c, mean_py = statistics.mean(sizes_c), statistics.mean(sizes_py)
    assert abs(mean_c - mean_py) <= 0.01 * mean_py, (mean_c, mean_py)
    if name in SAME_BYTES and (name, level) != ("deflate", 0):
        # deflate level 0 (stored blocks): Python's compress + flush splits them differently
        assert same == len(pages)


@pytest.mark.parametrize("name", ["lz4", "lz4hc"])
def test_lz4_bytes_are_python_lz4s(zram: ModuleType, name: str) -> None:
    """The C lz4 makes python-lz4's bytes (LZ4_initStream + LZ4_compress_fast_continue, not
    the kernel's LZ4_compress_fast_extState, whose bytes differ on most pages), so the two
    data paths store the same objects; lz4hc likewise."""
    c, py = zram.Codec(name), create(name)
    pages = synthetic_pages(600, seed=13) + file_pages(600)
    differ = [i for i, page in enumerate(pages) if c.compress(page) != py.compress(page)]
    assert not differ, f"{len(differ)} of {len(pages)} pages differ, first {differ[:5]}"


@pytest.mark.parametrize(
    ("name", "params"),
    [("lz4", b""), ("lz4", b"level=7"), ("lz4hc", b""), ("lz4hc", b"level=3"),
     ("lz4", b"dict"), ("lz4hc", b"dict"), ("deflate", b"deflate.winbits=13"), ("lzo", b"")],
)  # fmt: skip
def test_both_data_paths_store_the_same(
    zram: ModuleType, name: str, params: bytes, tmp_path: Path
) -> None:
    """The same pages written through the C and the Python data path give the same mm_stat
    and the same slot sizes: what the differential tests compare."""
    if name == "lzo" and "lzo" not in [b.name for b in BACKENDS if b.available]:
        pytest.skip("python-lzo is not installed")
    if params == b"dict":
        path = tmp_path / "pages.dict"
        path.write_bytes(b"".join(synthetic_pages(24, seed=61)))
        params = f"dict={path}".encode()
    pages = synthetic_pages(120, seed=60) + file_pages(60)
    stats = []
    for native in (True, False):
        d = ZramDevice(name, native=native)
        store(d, "algorithm_params", params)
        store(d, "disksize", b"4M")
        d.write(0, b"".join(pages))
        assert d.read(0, len(pages) * P) == b"".join(pages)
        stats.append((d.mm_stat(), [d.slot_flags(i) for i in range(len(pages))]))
        d.reset()
    assert stats[0] == stats[1]


def test_levels_reach_the_library(zram: ModuleType) -> None:
    """Catches a level that is validated but never passed on."""
    pages = synthetic_pages(100, seed=4)

    def mean(name: str, level: int) -> float:
        c = zram.Codec(name, level)
        return statistics.mean(len(c.compress(p)) for p in pages)

    assert mean("zstd", 19) < mean("zstd", 1) < mean("zstd", -50)
    assert mean("lz4hc", 12) < mean("lz4hc", 1)
    assert mean("deflate", 9) < mean("deflate", 1) < mean("deflate", 0)
    assert mean("lz4", 1) < mean("lz4", 50)
    # repeats 1 KiB apart: out of reach of a 512-byte window, within a 2 KiB one
    page = random.Random(5).randbytes(1024) * 4
    small, default = zram.Codec("deflate", winbits=-9), zram.Codec("deflate")
    assert len(small.compress(page)) > 3 * P // 4
    assert len(default.compress(page)) < P // 3
    assert create("deflate", winbits=-9).decompress(small.compress(page), P) == page


@pytest.mark.parametrize("name", NAMES)
def test_zero_and_incompressible_pages(zram: ModuleType, name: str) -> None:
    c = zram.Codec(name)
    assert len(c.compress(bytes(P))) < 100
    noise = os.urandom(P)
    obj = c.compress(noise)
    assert len(obj) >= P - 16  # may exceed P: the device then stores the page raw
    assert c.decompress(obj, P) == noise
    assert create(name).decompress(obj, P) == noise


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("length", [0, 1, 100, P - 1, P + 1, 65536])
def test_other_lengths_cross_too(zram: ModuleType, name: str, length: int) -> None:
    data = b"".join(synthetic_pages(17, seed=length))[:length]
    c, py = zram.Codec(name), create(name)
    assert c.decompress(c.compress(data), length) == data
    assert py.decompress(c.compress(data), length) == data
    assert c.decompress(py.compress(data), length) == data


@pytest.mark.parametrize("name", NAMES)
def test_buffer_inputs(zram: ModuleType, name: str) -> None:
    c = zram.Codec(name)
    page = synthetic_pages(1, seed=9)[0]
    obj = c.compress(memoryview(bytearray(page)))
    assert c.decompress(bytearray(obj), P) == page
    assert c.decompress(memoryview(obj), P) == page
    with pytest.raises(TypeError):
        c.compress("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_batches_match_single_calls(zram: ModuleType, name: str) -> None:
    c, py = zram.Codec(name), create(name)
    pages = pages_mix(seed=12)
    objs = c.compress_many([*pages[:5], memoryview(pages[5]), *pages[6:]])
    assert objs == [c.compress(p) for p in pages]
    assert c.decompress_many(objs, P) == pages
    assert c.decompress_many([py.compress(p) for p in pages], P) == pages
    assert c.compress_many([]) == []
    assert c.decompress_many((), P) == []
    bad = [*objs[:7], objs[7][:-1], *objs[8:]]
    with pytest.raises(CompressionError, match=rf"^{name}: corrupt object 7: "):
        c.decompress_many(bad, P)
    with pytest.raises(CompressionError, match=r"object 0: .* exactly 4095 bytes"):
        c.decompress_many(objs, P - 1)
    with pytest.raises(TypeError, match="a bytes-like object is required"):
        c.compress_many([pages[0], "text"])
    with pytest.raises(TypeError, match="takes a sequence of buffers"):
        c.compress_many(5)
    assert c.streams[0] == c.streams[1]  # every stream back after the failures


# -- zstd dictionaries -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_dict() -> bytes:
    return zstandard.train_dictionary(8192, synthetic_pages(1000, seed=21)).as_bytes()


def _py_zstd(
    level: int, data: bytes, write_dict_id: bool = False
) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    d = zstandard.ZstdCompressionDict(data)
    cctx = zstandard.ZstdCompressor(
        level=level, dict_data=d, write_checksum=False, write_dict_id=write_dict_id
    )
    return cctx, zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(data))


@pytest.mark.parametrize("kind", ["trained", "raw"])
@pytest.mark.parametrize("level", [None, 1, 9, 19, -3])
def test_zstd_dictionary_both_ways(
    zram: ModuleType, trained_dict: bytes, kind: str, level: int | None
) -> None:
    """A frame made with the same dictionary bytes on either side decodes on the other: a
    trained (zstd-format) dictionary and raw content both, neither side writing the ID."""
    data = trained_dict if kind == "trained" else b"".join(synthetic_pages(4, seed=22))
    c = zram.Codec("zstd", level, dict=data)
    cctx, dctx = _py_zstd(3 if level is None else level, data)
    plain = zram.Codec("zstd", level)
    sizes_c, sizes_py, sizes_plain = [], [], []
    for page in synthetic_pages(150, seed=23):
        obj = c.compress(page)
        params = zstandard.get_frame_parameters(obj)
        assert (params.dict_id, params.has_checksum, params.content_size) == (0, False, P)
        assert dctx.decompress(obj, max_output_size=P) == page
        obj_py = cctx.compress(page)
        assert c.decompress(obj_py, P) == page
        sizes_c.append(len(obj))
        sizes_py.append(len(obj_py))
        sizes_plain.append(len(plain.compress(page)))
    assert abs(statistics.mean(sizes_c) - statistics.mean(sizes_py)) <= 0.01 * statistics.mean(
        sizes_py
    )
    assert statistics.mean(sizes_c) < statistics.mean(sizes_plain)  # the dictionary is used


def test_zstd_frames_with_a_dictionary_id_decode(zram: ModuleType, trained_dict: bytes) -> None:
    """The kernel writes the dictionary ID: such frames decode with the same dictionary."""
    cctx, _ = _py_zstd(3, trained_dict, write_dict_id=True)
    c = zram.Codec("zstd", dict=trained_dict)
    for page in synthetic_pages(30, seed=24):
        obj = cctx.compress(page)
        assert zstandard.get_frame_parameters(obj).dict_id != 0
        assert c.decompress(obj, P) == page


def test_zstd_dictionary_frames_need_the_dictionary(zram: ModuleType, trained_dict: bytes) -> None:
    with_dict = zram.Codec("zstd", dict=trained_dict)
    without = zram.Codec("zstd")
    failures = 0
    for page in synthetic_pages(40, seed=25):
        obj = with_dict.compress(page)
        try:
            failures += without.decompress(obj, P) != page
        except CompressionError:
            failures += 1
    assert failures > 30


def test_dictionary_parameters(zram: ModuleType, trained_dict: bytes) -> None:
    page = synthetic_pages(1, seed=26)[0]
    for name in NAMES:  # empty is none, as for the Python backends
        assert zram.Codec(name, dict=b"").compress(page) == zram.Codec(name).compress(page)
    broken = trained_dict[:8] + bytes(200)  # the zstd magic and ID, then no valid tables
    with pytest.raises(ValueError, match=r"^zstd: the dictionary is not usable \(208 bytes\)"):
        zram.Codec("zstd", dict=broken)
    with pytest.raises(InvalidValueError, match=r"^zstd: the dictionary is not usable"):
        create("zstd", dictionary=broken)
    # the Codec keeps its own copy
    for name in ("zstd", "lz4", "lz4hc"):
        buf = bytearray(trained_dict)
        c = zram.Codec(name, dict=buf)
        obj = c.compress(page)
        buf[:] = bytes(len(buf))
        assert c.decompress(obj, P) == page
        assert c.compress(page) == obj


# -- lz4 and lz4hc dictionaries -----------------------------------------------------------------

LZ4_WINDOW = 64 << 10


@pytest.fixture(scope="module")
def dictionaries(trained_dict: bytes) -> dict[str, bytes]:
    """A zstd-trained dictionary (to lz4, content like any other), raw content, one longer
    than LZ4's 64 KiB window, and ones too short to index (LZ4_loadDict hashes 8 bytes)."""
    raw = b"".join(synthetic_pages(6, seed=22))
    return {
        "trained": trained_dict,
        "raw": raw,
        "long": os.urandom(LZ4_WINDOW) + b"".join(synthetic_pages(20, seed=27)),
        "tiny": raw[:5],
        "one": b"x",
    }


@pytest.mark.parametrize("kind", ["trained", "raw", "long", "tiny", "one"])
@pytest.mark.parametrize(
    ("name", "level"),
    [("lz4", None), ("lz4", 0), ("lz4", 9), ("lz4hc", None), ("lz4hc", 0), ("lz4hc", 3),
     ("lz4hc", 12), ("lz4hc", 13)],
)  # fmt: skip
def test_lz4_dictionary_both_ways(
    zram: ModuleType, dictionaries: dict[str, bytes], kind: str, name: str, level: int | None
) -> None:
    """A block made with the same dictionary on either side is the same bytes and decodes on
    the other; the dictionary is used (smaller blocks, undecodable without it)."""
    data = dictionaries[kind]
    c, py = zram.Codec(name, level, dict=data), create(name, level, dictionary=data)
    plain = zram.Codec(name, level)
    assert c.level == py.level
    sizes, sizes_plain, differ, need_dict = 0, 0, 0, 0
    pages = synthetic_pages(120, seed=23) + file_pages(40)
    for page in pages:
        obj_c, obj_py = c.compress(page), py.compress(page)
        differ += obj_c != obj_py
        assert py.decompress(obj_c, P) == page
        assert c.decompress(obj_py, P) == page
        assert c.decompress_many([obj_c], P) == [page]
        sizes += len(obj_c)
        sizes_plain += len(plain.compress(page))
        try:
            need_dict += plain.decompress(obj_c, P) != page
        except CompressionError:
            need_dict += 1
    assert differ == 0
    if kind in ("tiny", "one"):  # too short to help (one byte: too short to index at all)
        assert need_dict == 0 or kind == "tiny"
        assert abs(sizes - sizes_plain) < 0.005 * sizes_plain
    else:
        assert sizes < 0.95 * sizes_plain
        assert need_dict > len(pages) // 2


@pytest.mark.parametrize("name", ["lz4", "lz4hc"])
def test_lz4_dictionary_last_64k(
    zram: ModuleType, dictionaries: dict[str, bytes], name: str
) -> None:
    """Only a dictionary's last 64 KiB is used (LZ4's window): what comes before makes no
    difference to the bytes, and a decoder given just the last 64 KiB decodes them."""
    long = dictionaries["long"]
    tail = long[-LZ4_WINDOW:]
    other_head = bytes(5000) + tail
    c = zram.Codec(name, dict=long)
    for page in synthetic_pages(60, seed=28):
        obj = c.compress(page)
        assert obj == zram.Codec(name, dict=tail).compress(page)
        assert obj == zram.Codec(name, dict=other_head).compress(page)
        assert zram.Codec(name, dict=tail).decompress(obj, P) == page
        assert create(name, dictionary=tail).decompress(obj, P) == page


@pytest.mark.parametrize("name", ["deflate", "lzo"])
def test_dictionaries_kept_unused(
    zram: ModuleType, dictionaries: dict[str, bytes], name: str
) -> None:
    """deflate and lzo take a dictionary and ignore it, as the kernel's backends do."""
    with_dict, plain = zram.Codec(name, dict=dictionaries["raw"]), zram.Codec(name)
    py = create(name, dictionary=dictionaries["raw"])
    for page in synthetic_pages(40, seed=29):
        obj = with_dict.compress(page)
        assert obj == plain.compress(page) == py.compress(page)
        assert plain.decompress(obj, P) == page


# -- parameters: as the kernel's backends and the Python twins take them ------------------------

#: (name, level given, the level it acts as) at every boundary of the kernel's rules; None:
#: the backend has no level (lzo ignores any, even one beyond 32 bits)
LEVEL_RULES: list[tuple[str, int, int | None]] = [
    ("lzo", S32_MIN + 1, None), ("lzo", -1, None), ("lzo", 0, None), ("lzo", 1, None),
    ("lzo", S32_MAX, None), ("lzo", 1 << 40, None),
    # the acceleration: below 1 acts as 1, above liblz4's LZ4_ACCELERATION_MAX as that
    ("lz4", S32_MIN + 1, 1), ("lz4", -1, 1), ("lz4", 0, 1), ("lz4", 1, 1), ("lz4", 2, 2),
    ("lz4", 65537, 65537), ("lz4", 65538, 65537), ("lz4", S32_MAX, 65537),
    # below 1 acts as the default 9, above 12 as 12
    ("lz4hc", S32_MIN + 1, 9), ("lz4hc", -1, 9), ("lz4hc", 0, 9), ("lz4hc", 1, 1),
    ("lz4hc", 2, 2), ("lz4hc", 11, 11), ("lz4hc", 12, 12), ("lz4hc", 13, 12),
    ("lz4hc", S32_MAX, 12),
    # 0 is the default 3, above 22 is 22, negative down to ZSTD_minCLevel()
    ("zstd", S32_MIN + 1, -(1 << 17)), ("zstd", -(1 << 17) - 1, -(1 << 17)),
    ("zstd", -(1 << 17), -(1 << 17)), ("zstd", -1, -1), ("zstd", 0, 3), ("zstd", 1, 1),
    ("zstd", 22, 22), ("zstd", 23, 22), ("zstd", S32_MAX, 22),
    # deflate takes -1..9 as they are
    ("deflate", -1, -1), ("deflate", 0, 0), ("deflate", 1, 1), ("deflate", 9, 9),
]  # fmt: skip


@pytest.mark.parametrize(("name", "level", "acts_as"), LEVEL_RULES)
def test_levels_act_as_in_the_kernel(
    zram: ModuleType, name: str, level: int, acts_as: int | None
) -> None:
    """Both paths keep the level as given and compress as with the level it acts as: the
    same bytes within each path (and across, where the library is the same)."""
    c, py = zram.Codec(name, level), create(name, level)
    c_ref, py_ref = zram.Codec(name, acts_as), create(name, acts_as)
    expected = None if name == "lzo" else level
    assert c.level == py.level == expected
    for page in synthetic_pages(30, seed=51) + file_pages(10):
        obj_c, obj_py = c.compress(page), py.compress(page)
        assert obj_c == c_ref.compress(page)
        assert obj_py == py_ref.compress(page)
        if name in SAME_BYTES and (name, level) != ("deflate", 0):  # see above
            assert obj_c == obj_py
        assert py.decompress(obj_c, P) == page
        assert c.decompress(obj_py, P) == page


def test_levels_that_act_differently_do(zram: ModuleType) -> None:
    """Catches a rule applied too widely (every level acting as one): the neighbours of each
    boundary inside the range compress differently."""
    pages = synthetic_pages(40, seed=52)

    def out(name: str, level: int) -> list[bytes]:
        c = zram.Codec(name, level)
        return [c.compress(p) for p in pages]

    for name, a, b in [("lz4", 1, 2), ("lz4", 2, 65537), ("lz4hc", 2, 3),
                       ("lz4hc", 11, 12), ("lz4hc", 8, 9), ("zstd", -1, 1), ("zstd", 3, 4),
                       ("zstd", 21, 22), ("zstd", -(1 << 17), -1000)]:  # fmt: skip
        assert out(name, a) != out(name, b), (name, a, b)


@pytest.mark.parametrize("name", NAMES)
def test_int_min_is_the_kernels_not_set(zram: ModuleType, name: str) -> None:
    """level=-2147483648 is the kernel's ZCOMP_PARAM_NOT_SET: the default (control's parser
    stores it as unset before either path sees it)."""
    c, default = zram.Codec(name, S32_MIN, S32_MIN), zram.Codec(name)
    assert (c.level, c.winbits) == (default.level, default.winbits)
    page = synthetic_pages(1, seed=53)[0]
    assert c.compress(page) == default.compress(page)


@pytest.mark.parametrize("name", ["lzo", "lz4", "lz4hc", "zstd"])
@pytest.mark.parametrize("winbits", [S32_MIN + 1, -16, -11, 0, 8, 11, 99, S32_MAX, 1 << 40])
def test_winbits_ignored_but_by_deflate(zram: ModuleType, name: str, winbits: int) -> None:
    c, plain = zram.Codec(name, winbits=winbits), zram.Codec(name)
    py = create(name, winbits=winbits)
    assert c.winbits is None
    for page in synthetic_pages(10, seed=54):
        assert c.compress(page) == plain.compress(page)
        assert py.decompress(c.compress(page), P) == page


@pytest.mark.parametrize("winbits", [None, -15, -11, -9, 9, 11, 15])
def test_deflate_winbits_go_to_zlib(zram: ModuleType, winbits: int | None) -> None:
    """Negative: a raw stream with a window of 2^-winbits (the default, -11); positive: the
    same stream wrapped (zlib's 2-byte header and Adler-32: 6 bytes more)."""
    c, py = zram.Codec("deflate", winbits=winbits), create("deflate", winbits=winbits)
    w = -11 if winbits is None else winbits
    assert c.winbits == py.winbits == w  # type: ignore[attr-defined]
    other = zram.Codec("deflate", winbits=-w)
    for page in [*synthetic_pages(30, seed=55), os.urandom(P)]:
        obj = c.compress(page)
        assert obj == py.compress(page)
        assert zlib.decompress(obj, w) == page  # what zlib makes of these window bits
        assert py.decompress(obj, P) == c.decompress(obj, P) == page
        assert len(obj) == len(other.compress(page)) + (6 if w > 0 else -6)
        with pytest.raises(CompressionError):
            other.decompress(obj, P)  # raw is not wrapped and the other way round


Refusal = tuple[tuple[object, ...], dict[str, object], str]


def _winbits_refused(w: int) -> Refusal:
    return (
        ("deflate",),
        {"winbits": w},
        rf"deflate\.winbits {w} outside -15\.\.-9 \(raw\) and 9\.\.15 \(zlib stream\)",
    )


#: values both paths refuse, and the message both give
REFUSED: list[Refusal] = [
    (("deflate", -2), {}, r"deflate level -2 outside -1\.\.9"),
    (("deflate", 10), {}, r"deflate level 10 outside -1\.\.9"),
    (("deflate", S32_MIN + 1), {}, r"deflate level -2147483647 outside -1\.\.9"),
    (("deflate", S32_MAX), {}, r"deflate level 2147483647 outside -1\.\.9"),
    *[_winbits_refused(w) for w in (-16, -8, -1, 0, 1, 8, 16, S32_MAX)],
    (("deflate",), {"winbits": 1 << 40}, r"deflate\.winbits 1099511627776 "),
    (("zstd", 1 << 40), {}, "zstd level 1099511627776 does not fit a 32-bit signed integer"),
    (("lz4", S32_MIN - 1), {}, "lz4 level -2147483649 does not fit a 32-bit signed integer"),
    (("lz4hc", S32_MAX + 1), {}, "lz4hc level 2147483648 does not fit a 32-bit signed integer"),
    (("snappy", 1 << 40), {},
     "unknown comp_algorithm 'snappy'; available: lzo lz4 lz4hc zstd deflate"),
    (("lzo-rle",), {}, "comp_algorithm 'lzo-rle' is unavailable: "),
    (("842",), {}, "comp_algorithm '842' is unavailable: "),
]  # fmt: skip


@pytest.mark.parametrize(("args", "kwargs", "message"), REFUSED)
def test_refused_by_both_naming_the_problem(
    zram: ModuleType, args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        zram.Codec(*args, **kwargs)
    py_kwargs = {"winbits": kwargs.get("winbits")}
    with pytest.raises(InvalidValueError, match=f"^{message}"):
        create(*args, **py_kwargs)  # type: ignore[arg-type]


def test_parameter_types_and_defaults(zram: ModuleType) -> None:
    with pytest.raises(TypeError, match="zstd level must be an int or None, not str"):
        zram.Codec("zstd", "3")
    with pytest.raises(TypeError, match=r"deflate\.winbits must be an int or None"):
        zram.Codec("deflate", winbits=1.5)
    assert repr(zram.Codec("deflate")) == "Codec('deflate', level=-1, winbits=-11)"
    assert repr(zram.Codec("lzo", 5)) == "Codec('lzo')"
    assert repr(zram.Codec("lz4hc", 0)) == "Codec('lz4hc', level=0)"
    assert zram.Codec("zstd", winbits=12).winbits is None
    assert [zram.Codec(n).level for n in NAMES] == [create(n).level for n in NAMES]
    assert [zram.Codec(n).level for n in NAMES] == [None, 1, 9, 3, -1]


# -- corrupt input ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_corrupt_truncated_and_wrong_size_raise(zram: ModuleType, name: str) -> None:
    c = zram.Codec(name)
    page = b"abc" * 1000 + bytes(P - 3000)
    good = c.compress(page)
    for cut in (0, 1, len(good) // 2, len(good) - 1):
        with pytest.raises(CompressionError, match=rf"^{name}: corrupt object"):
            c.decompress(good[:cut], P)
    for size in (0, 1, P - 1, P + 1, 2 * P):
        with pytest.raises(CompressionError, match=f"exactly {size} bytes"):
            c.decompress(good, size)
    with pytest.raises(ValueError, match="size -1"):
        c.decompress(good, -1)
    with pytest.raises(TypeError, match="takes 2 arguments"):
        c.decompress(good)  # type: ignore[call-arg]
    # a flipped bit decodes to a page or raises; nothing else
    rng = random.Random(name)
    for _ in range(300):
        bad = bytearray(good)
        bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        with contextlib.suppress(CompressionError):
            assert len(c.decompress(bytes(bad), P)) == P
    assert c.decompress(good, P) == page  # the streams survive the failures


def _mutations() -> st.SearchStrategy[tuple[str, bytes]]:
    """Random bytes, and valid objects cut, extended or overwritten at random places (random
    bytes alone rarely get past a zstd or deflate header)."""
    seeds = st.sampled_from(synthetic_pages(8, seed=31))
    return st.tuples(
        st.sampled_from(NAMES),
        st.one_of(
            st.binary(max_size=5000),
            st.tuples(seeds, st.integers(0, 5000), st.binary(max_size=64), st.booleans()),
        ),
    ).map(lambda t: (t[0], t[1] if isinstance(t[1], bytes) else _mutate(t[0], *t[1])))


_REFERENCE: dict[str, Compressor] = {}


def _mutate(name: str, page: bytes, at: int, junk: bytes, cut: bool) -> bytes:
    ref = _REFERENCE.setdefault(name, create(name))
    obj = ref.compress(page)
    at %= len(obj) + 1
    return obj[:at] + junk + (b"" if cut else obj[at + len(junk) :])


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=_mutations())
def test_fuzzed_objects_decode_or_raise(zram: ModuleType, case: tuple[str, bytes]) -> None:
    name, obj = case
    try:
        out = zram.Codec(name).decompress(obj, P)
    except CompressionError:
        return
    assert len(out) == P


# -- threads and streams ------------------------------------------------------------------------


def test_streams_are_reused(zram: ModuleType) -> None:
    c = zram.Codec("zstd")
    assert c.streams == (0, 0)
    for page in synthetic_pages(50, seed=41):
        assert c.decompress(c.compress(page), P) == page
    assert c.streams == (1, 1)


@pytest.mark.parametrize("name", NAMES)
def test_threads_share_one_codec(zram: ModuleType, name: str) -> None:
    """Six threads compress, decompress and cross-check at once with one Codec; every round
    trip holds, and afterwards every stream is back in the pool (no more than the threads)."""
    c = zram.Codec(name)
    py = create(name)
    threads_n = 6
    pages = pages_mix(seed=42)
    start = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            rng = random.Random(seed)
            start.wait()
            for _ in range(400):
                page = rng.choice(pages)
                obj = c.compress(page)
                assert c.decompress(obj, P) == page
                if rng.random() < 0.05:
                    batch = rng.sample(pages, 8)
                    assert c.decompress_many(c.compress_many(batch), P) == batch
                if rng.random() < 0.1:
                    assert py.decompress(obj, P) == page
                if rng.random() < 0.1:
                    with pytest.raises(CompressionError):
                        c.decompress(obj[: len(obj) // 2], P)
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors
    total, idle = c.streams
    assert 1 <= total <= threads_n
    assert idle == total


def test_c_accessor_gives_the_zcomp(zram: ModuleType) -> None:
    """zram_codec_get (codec_object.h), called as the device's C code calls it."""
    lib = ctypes.PyDLL(zram.__file__)
    lib.zram_codec_get.argtypes = [ctypes.py_object]
    lib.zram_codec_get.restype = ctypes.c_void_p
    lib.zcomp_name.argtypes = [ctypes.c_void_p]
    lib.zcomp_name.restype = ctypes.c_char_p
    lib.zcomp_level.argtypes = [ctypes.c_void_p]
    lib.zcomp_level.restype = ctypes.c_int
    codec = zram.Codec("zstd", 7)
    comp = lib.zram_codec_get(codec)
    assert lib.zcomp_name(comp) == b"zstd"
    assert lib.zcomp_level(comp) == 7
    with pytest.raises(TypeError, match=r"expected a zramd\._zram\.Codec, not str"):
        lib.zram_codec_get("zstd")


# -- the C harness ------------------------------------------------------------------------------


def test_c_stress_harness(tmp_path: Path) -> None:
    """tests/c/stress_zcomp.c, plain build, a short run (scripts/c-stress runs it longer and
    under ThreadSanitizer and AddressSanitizer + UBSan)."""
    r = subprocess.run(
        [str(ROOT / "scripts" / "c-stress"), "--quick", "--out", str(tmp_path), "plain"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "stress_zcomp: ok" in r.stdout


def test_bench_codecs_runs(tmp_path: Path) -> None:
    """scripts/bench_codecs.py works (a few pages; its figures go to docs/performance.md)."""
    out = tmp_path / "codecs.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_codecs.py"), "--codecs", "lz4,zstd",
         "--pages", "64", "--runs", "1", "--threads", "1,2", "--quiet", "99",
         "--run-seconds", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"lz4", "zstd"}
    assert set(results["lz4"]) == {"C", "C batch 32", "Python"}
    assert "compress_scaling" in results["zstd"]["C"]

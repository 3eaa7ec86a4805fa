"""zramd._zram.Codec (the C codecs, zramd/csrc/) against the Python backends (zramd/compress/).

Objects must move freely between the two paths (writeback, recompression, the Python twins),
so every test here crosses them: C output decodes in Python and Python output in C, for
every algorithm and several levels, and both accept the same parameters. The compressed
sizes are compared too: zramd's memory parity with the kernel depends on them. Timings live
in scripts/bench_codecs.py, never in assertions.
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
from pathlib import Path
from types import ModuleType

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zramd import CompressionError, InvalidValueError
from zramd.compress import BACKENDS, create
from zramd.compress.base import Compressor
from zramd.testing import synthetic_pages

P = 4096
ROOT = Path(__file__).resolve().parent.parent
NAMES = ["lzo", "lz4", "lz4hc", "zstd", "deflate"]
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


def test_registry_is_the_kernels_and_the_python_ones(zram: ModuleType) -> None:
    assert [name for name, _ in zram.CODECS] == [b.name for b in BACKENDS]
    available = [name for name, why in zram.CODECS if why is None]
    assert available == NAMES
    why = dict(zram.CODECS)
    assert why["lzo-rle"]
    assert why["842"]


@pytest.mark.parametrize(("name", "level"), LEVELS)
def test_objects_cross_between_c_and_python(zram: ModuleType, name: str, level: int | None) -> None:
    """C output decodes with the Python backend and Python output with the C codec; and the
    sizes agree within a tolerance (lz4's two entry points use different match tables, see
    backend_lz4.c; the other libraries run the same algorithm on both paths)."""
    c = zram.Codec(name, level)
    py = create(name, level)
    assert c.name == name
    assert c.level == py.level
    sizes_c, sizes_py, same = [], [], 0
    for page in pages_mix():
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
    tolerance = 0.05 if name == "lz4" else 0.01
    assert abs(mean_c - mean_py) <= tolerance * mean_py, (mean_c, mean_py)
    if name in ("lzo", "deflate") and level != 0:
        # the same system library on both paths (python-lzo, the stdlib's zlib): same bytes
        assert same == len(sizes_c)


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
    small, default = zram.Codec("deflate", winbits=9), zram.Codec("deflate")
    assert len(small.compress(page)) > 3 * P // 4
    assert len(default.compress(page)) < P // 3
    assert create("deflate", winbits=9).decompress(small.compress(page), P) == page


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
    with pytest.raises(ValueError, match="lz4 does not take a dictionary"):
        zram.Codec("lz4", dict=b"abc")
    with pytest.raises(ValueError, match="zstd dictionary is empty"):
        zram.Codec("zstd", dict=b"")
    broken = trained_dict[:8] + bytes(200)  # the zstd magic and ID, then no valid tables
    with pytest.raises(ValueError, match="zstd rejects the dictionary"):
        zram.Codec("zstd", dict=broken)
    # the Codec keeps its own copy
    buf = bytearray(trained_dict)
    c = zram.Codec("zstd", dict=buf)
    page = synthetic_pages(1, seed=26)[0]
    obj = c.compress(page)
    buf[:] = bytes(len(buf))
    assert c.decompress(obj, P) == page


# -- parameters: the same ranges as the Python backends ------------------------------------------

BOUNDARY_LEVELS = [
    -(1 << 17) - 1, -(1 << 17), -50, -2, -1, 0, 1, 2, 3, 9, 10, 12, 13, 22, 23, 65537, 1 << 30,
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_levels_accepted_as_the_python_backends_accept_them(zram: ModuleType, name: str) -> None:
    for level in [None, *BOUNDARY_LEVELS]:
        try:
            py_level = create(name, level).level
        except InvalidValueError:
            py_level = "rejected"
        try:
            c_level = zram.Codec(name, level).level
        except ValueError as e:
            c_level = "rejected" if name in str(e) else str(e)
        assert c_level == py_level, (name, level)


@pytest.mark.parametrize("winbits", [7, 8, 9, 11, 15, 16])
def test_deflate_winbits_accepted_as_in_python(zram: ModuleType, winbits: int) -> None:
    try:
        create("deflate", winbits=winbits)
        py_ok = True
    except InvalidValueError:
        py_ok = False
    if py_ok:
        assert zram.Codec("deflate", winbits=winbits).winbits == winbits
    else:
        with pytest.raises(ValueError, match=f"deflate.winbits {winbits} outside 9..15"):
            zram.Codec("deflate", winbits=winbits)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("lz4", 0), {}, "lz4 acceleration 0 must be >= 1"),
        (("lz4hc", 13), {}, "lz4hc level 13 outside 1..12"),
        (("zstd", 23), {}, r"zstd level 23 outside -131072\.\.22"),
        (("deflate", 10), {}, r"deflate level 10 outside -1\.\.9"),
        (("lzo", 1), {}, "lzo takes no level"),
        (("lz4",), {"winbits": 11}, "lz4 does not take winbits"),
        (("zstd", 1 << 40), {}, "zstd level 1099511627776 is out of range"),
        (("snappy",), {}, "unknown comp_algorithm 'snappy'; available: lzo lz4 lz4hc zstd deflate"),
        (("lzo-rle",), {}, "comp_algorithm 'lzo-rle' is unavailable"),
        (("842",), {}, "comp_algorithm '842' is unavailable"),
    ],
)
def test_bad_parameters_name_the_problem(
    zram: ModuleType, args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        zram.Codec(*args, **kwargs)


def test_parameter_types_and_defaults(zram: ModuleType) -> None:
    with pytest.raises(TypeError, match="level must be an int or None"):
        zram.Codec("zstd", "3")
    assert repr(zram.Codec("deflate")) == "Codec('deflate', level=-1, winbits=11)"
    assert repr(zram.Codec("lzo")) == "Codec('lzo')"
    assert zram.Codec("lzo").level is None
    assert zram.Codec("zstd").winbits is None
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

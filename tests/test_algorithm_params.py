"""algorithm_params as the kernel parses and applies it, and compression dictionaries.

The table's expectations were read on a real kernel's ``/sys/block/zram0/algorithm_params``
(6.18, comp_algorithm selected, nothing initialised; its parser is 7.0's) and from 7.0's
``algorithm_params_store``, ``next_arg`` (lib/cmdline.c) and ``kstrtoint`` (lib/kstrtox.c).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from zramd import control
from zramd.control import parse_algorithm_params, store
from zramd.device import ZramDevice
from zramd.errors import ZramdError
from zramd.slots import ZRAM_SIZE_MASK
from zramd.testing import synthetic_pages
from zramd.zcomp import AlgorithmConfig

from servers import serve

P = 4096
MiB = 1 << 20
UNSET = (None, None)  # (level, winbits) of a write that sets neither

# (write, errno or the (level, deflate.winbits) stored for comp_algorithm lz4)
KERNEL_TABLE: list[tuple[bytes, int | tuple[int | None, int | None]]] = [
    # levels: stored as written, whatever the backend makes of them
    (b"level=0", (0, None)),
    (b"level=-1", (-1, None)),
    (b"level=-5", (-5, None)),
    (b"level=5", (5, None)),
    (b"level=-2147483648", UNSET),  # INT_MIN is ZCOMP_PARAM_NOT_SET: the default
    (b"level=2147483648", errno.ERANGE),
    (b"level=-2147483649", errno.ERANGE),
    (b"level=010", (10, None)),  # decimal only
    (b"level=0x10", errno.EINVAL),
    (b"level= 5", errno.EINVAL),
    (b"level=5\n", (5, None)),
    (b"level=5\n\n", (5, None)),
    (b"deflate.winbits=9", (None, 9)),  # stored for lz4 too; lz4 ignores it
    (b"deflate.winbits=0", (None, 0)),
    # priority: kstrtoint, then 0 or a configured recomp_algorithm
    (b"priority=0", UNSET),
    (b"priority=+0", UNSET),
    (b"priority=-0", UNSET),
    (b"priority=-+0", errno.EINVAL),  # kstrtoll takes one sign
    (b"priority=-1", errno.EINVAL),
    (b"priority=1", errno.EINVAL),  # nothing configured at 1 (see docs/control-abi.md)
    (b"priority=2 level=7", (None, None)),  # zstd's, not lz4's
    # algo: looked up among the configured algorithms; it wins over priority
    (b"algo=lz4 level=3", (3, None)),
    (b"priority=5 algo=lz4 level=3", (3, None)),
    (b"algo=lz4 priority=5 level=3", (3, None)),
    (b"algo=deflate", errno.EINVAL),
    # words: next_arg
    (b"=5", errno.EINVAL),  # a parameter named "=5" with no value
    (b"=", errno.EINVAL),
    (b"a=b=c", UNSET),  # unknown keys are ignored
    (b"foo=bar level=2", (2, None)),
    (b"foo", errno.EINVAL),
    (b"level", errno.EINVAL),
    (b"level=", errno.EINVAL),
    (b"level=1 level=x", errno.EINVAL),
    (b"level=x level=1", errno.EINVAL),
    (b"level=1 level=2", (2, None)),
    (b"\n", UNSET),  # no words: every parameter back to its default
    (b" ", UNSET),
    (b"\tlevel=3\t", (3, None)),
    (b"level=3\x0b", (3, None)),
    (b"level=5\xa0priority=0", (5, None)),  # 0xA0 is a space in the kernel's ctype
    (b"level=5\x1c", errno.EINVAL),  # 0x1C is not (Python's isspace says it is)
    (b"level=5\x85", errno.EINVAL),
    (b"level=5 foo=\xff", (5, None)),
    # quotes: one pair around the word or the value
    (b'level="5"', (5, None)),
    (b'"level=5"', (5, None)),
    (b'"level=5', (5, None)),
    (b'level=5"', errno.EINVAL),
    (b'level=""', errno.EINVAL),
    (b'le"vel=5"', UNSET),  # a parameter named le"vel
    (b'"level=5 priority=1"', errno.EINVAL),  # one word: level is '5 priority=1'
    # a C string: the write ends at its first NUL
    (b"level=5\x00junk", (5, None)),
    (b"level=5\x00=", (5, None)),
    (b"level=\x00", errno.EINVAL),
    (b"\x00level=x", UNSET),
    # dict: a file read at once; anything unreadable is EINVAL
    (b"dict=/nonexistent/zramd.dict", errno.EINVAL),
    (b"dict=/dev/null", errno.EINVAL),  # not a regular file
    (b"dict=/", errno.EINVAL),
    (b"dict=relative.dict", errno.EINVAL),  # (the kernel: relative to the writer's cwd)
    (b"dict=", errno.EINVAL),
]


@pytest.fixture
def dev() -> Iterator[ZramDevice]:
    d = ZramDevice("lz4")
    d.set_recomp_algorithm("zstd", 2)
    yield d
    d.reset()


@pytest.mark.parametrize(("data", "expected"), KERNEL_TABLE, ids=repr)
def test_parse_and_store_as_the_kernel(
    dev: ZramDevice, data: bytes, expected: int | tuple[int | None, int | None]
) -> None:
    dev.set_algorithm_params(level=-7, winbits=13)  # something a refused write must keep
    before = [dev.algorithm_params(p) for p in range(4)]
    if isinstance(expected, int):
        with pytest.raises(ZramdError) as info:
            store(dev, "algorithm_params", data)
        assert info.value.errno == expected
        assert str(info.value).startswith("algorithm_params")
        assert [dev.algorithm_params(p) for p in range(4)] == before  # nothing changed
        return
    store(dev, "algorithm_params", data)
    p = dev.algorithm_params()
    assert p is not None
    if b"priority=2" in data:
        assert p == before[0]  # zstd's parameters were written, not lz4's
        assert dev.algorithm_params(2) == AlgorithmConfig("zstd", 7)
    else:
        assert (p.name, p.level, p.winbits) == ("lz4", *expected)


def test_a_write_replaces_every_parameter(dev: ZramDevice, tmp_path: Path) -> None:
    (tmp_path / "d").write_bytes(b"abc" * 100)
    store(dev, "algorithm_params", f"level=3 deflate.winbits=10 dict={tmp_path}/d".encode())
    assert dev.algorithm_params() == AlgorithmConfig("lz4", 3, 10, b"abc" * 100)
    store(dev, "algorithm_params", b"level=4")
    assert dev.algorithm_params() == AlgorithmConfig("lz4", 4)


def test_after_init_ebusy_comes_after_the_parse_errors(dev: ZramDevice) -> None:
    """7.0.y checks init after its parse loop and before looking anything up."""
    dev.set_disksize(MiB)
    for data, err in [
        (b"level=x", errno.EINVAL),
        (b"level=2147483648", errno.ERANGE),
        (b"=5", errno.EINVAL),
        (b"level=1", errno.EBUSY),
        (b"algo=deflate", errno.EBUSY),
        (b"priority=3", errno.EBUSY),
        (b"dict=/nonexistent", errno.EBUSY),
    ]:
        with pytest.raises(ZramdError) as info:
            store(dev, "algorithm_params", data)
        assert info.value.errno == err, data


def test_parser_alone() -> None:
    p = parse_algorithm_params(b'priority=3 algo="zstd" dict="/a b/c\xe9" level=-2\n')
    assert p == control.AlgorithmParams(3, "zstd", -2, None, b"/a b/c\xe9")


# -- what the stored values do at disksize --------------------------------------------------------


def stored(dev: ZramDevice, pages: list[bytes]) -> tuple[int, list[int]]:
    """compr_data_size after writing ``pages`` (read back intact), and each slot's size."""
    dev.write(0, b"".join(pages))
    assert dev.read(0, len(pages) * P) == b"".join(pages)
    sizes = [dev.slot_flags(i) & ZRAM_SIZE_MASK for i in range(len(pages))]
    return dev.mm_stat().compr_data_size, sizes


def device_with(algo: str, params: bytes) -> ZramDevice:
    d = ZramDevice(algo)
    store(d, "algorithm_params", params)
    store(d, "disksize", b"1M")
    return d


TEXT = [(f"record {i} of the swap image, mostly text " * 110).encode()[:P] for i in range(16)]


@pytest.mark.parametrize(
    ("algo", "params", "same_as"),
    [
        ("lzo", b"level=5", b""),  # lzo has no level: stored, no effect
        ("lzo", b"level=-9 deflate.winbits=3", b""),
        ("lz4", b"level=0", b"level=1"),
        ("lz4", b"level=-5", b"level=1"),
        ("lz4", b"deflate.winbits=99", b""),
        ("lz4hc", b"level=0", b"level=9"),
        ("lz4hc", b"level=100", b"level=12"),
        ("zstd", b"level=0", b"level=3"),
        ("zstd", b"level=23", b"level=22"),
        ("zstd", b"deflate.winbits=12", b""),
    ],
)
def test_stored_values_act_as_in_the_kernel(algo: str, params: bytes, same_as: bytes) -> None:
    if algo == "lzo" and "lzo" not in control.format_comp_algorithm("lz4"):
        pytest.skip("python-lzo is not installed")
    pages = [p for p in synthetic_pages(40, seed=9) if p[8:] != p[:-8]][:16]
    a, b = device_with(algo, params), device_with(algo, same_as)
    assert stored(a, pages) == stored(b, pages)
    a.reset()
    b.reset()


def test_a_value_the_backend_cannot_use_fails_disksize() -> None:
    d = ZramDevice("deflate")
    store(d, "algorithm_params", b"level=10")  # accepted, as the kernel accepts it
    with pytest.raises(ZramdError, match="deflate level 10") as info:
        store(d, "disksize", b"1M")
    assert info.value.errno == errno.EINVAL
    assert not d.initstate
    store(d, "algorithm_params", b"deflate.winbits=8")
    with pytest.raises(ZramdError, match=r"deflate\.winbits 8"):
        store(d, "disksize", b"1M")
    store(d, "algorithm_params", b"level=1 deflate.winbits=-15")
    store(d, "disksize", b"1M")
    d.write(0, TEXT[0])
    assert d.read(0, P) == TEXT[0]
    d.reset()


def test_a_secondary_uses_its_own_parameters(tmp_path: Path) -> None:
    d = ZramDevice("lz4")
    store(d, "recomp_algorithm", b"algo=deflate priority=1")
    store(d, "algorithm_params", b"algo=deflate level=10")
    with pytest.raises(ZramdError, match="cannot set up deflate"):
        store(d, "disksize", b"1M")
    store(d, "algorithm_params", b"priority=1 level=1")
    store(d, "disksize", b"1M")
    d.reset()


# -- dictionaries ---------------------------------------------------------------------------------


def swap_like(count: int, seed: int) -> list[bytes]:
    return [p for p in synthetic_pages(count, seed=seed) if p[8:] != p[:-8]]


@pytest.fixture(scope="module")
def trained_dict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zstd dictionary trained on pages like the ones the tests store (another seed)."""
    path = tmp_path_factory.mktemp("dict") / "pages.zdict"
    path.write_bytes(zstandard.train_dictionary(16 << 10, swap_like(600, seed=21)).as_bytes())
    return path


@pytest.mark.parametrize("algo", ["zstd", "lz4", "lz4hc"])
def test_a_dictionary_shrinks_what_is_stored(algo: str, trained_dict: Path) -> None:
    pages = swap_like(200, seed=5)[:64]
    plain = device_with(algo, b"")
    primed = device_with(algo, f"dict={trained_dict}".encode())
    size_plain, _ = stored(plain, pages)
    size_primed, _ = stored(primed, pages)
    assert size_primed < size_plain * 0.9
    primed.compact()
    assert primed.read(0, len(pages) * P) == b"".join(pages)
    plain.reset()
    primed.reset()


def test_zstd_takes_raw_content_as_a_dictionary(tmp_path: Path) -> None:
    """Without the dictionary magic the bytes are content to refer back to (ZSTD_dct_auto)."""
    raw = tmp_path / "text.dict"
    raw.write_bytes(b"".join(TEXT[:4]))
    plain = device_with("zstd", b"")
    primed = device_with("zstd", f"dict={raw}".encode())
    size_plain, _ = stored(plain, TEXT[4:])
    size_primed, _ = stored(primed, TEXT[4:])
    assert size_primed < size_plain // 2
    plain.reset()
    primed.reset()


def test_a_damaged_zstd_dictionary_fails_disksize(trained_dict: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.zdict"
    bad.write_bytes(trained_dict.read_bytes()[:8] + bytes(200))  # the magic, then nothing valid
    d = ZramDevice("zstd")
    store(d, "algorithm_params", f"dict={bad}".encode())  # the kernel reads bytes only here
    with pytest.raises(ZramdError, match="dictionary is not usable") as info:
        store(d, "disksize", b"1M")
    assert info.value.errno == errno.EINVAL
    assert not d.initstate


def test_the_file_is_read_when_algorithm_params_is_written(
    trained_dict: Path, tmp_path: Path
) -> None:
    path = tmp_path / "d.zdict"
    path.write_bytes(trained_dict.read_bytes())
    d = ZramDevice("zstd")
    store(d, "algorithm_params", f"dict={path}".encode())
    path.write_bytes(b"something else")  # too late: the device holds the bytes it read
    p = d.algorithm_params()
    assert p is not None
    assert p.dictionary == trained_dict.read_bytes()
    os.unlink(path)
    store(d, "disksize", b"1M")
    pages = swap_like(40, seed=6)
    d.write(0, b"".join(pages))
    assert d.read(0, len(pages) * P) == b"".join(pages)
    d.reset()


@pytest.mark.parametrize("algo", ["deflate", "lzo"])
def test_algorithms_without_dictionaries_keep_it_unused(algo: str, trained_dict: Path) -> None:
    if algo == "lzo" and "lzo" not in control.format_comp_algorithm("lz4"):
        pytest.skip("python-lzo is not installed")
    pages = swap_like(40, seed=7)
    a, b = device_with(algo, f"dict={trained_dict}".encode()), device_with(algo, b"")
    assert stored(a, pages) == stored(b, pages)
    a.reset()
    b.reset()


def test_secondary_algorithms_take_dictionaries(trained_dict: Path) -> None:
    """recompress with a dictionary-primed zstd; reads decompress with the same dictionary."""
    d = ZramDevice("lz4")
    store(d, "recomp_algorithm", b"algo=zstd priority=1")
    store(d, "recomp_algorithm", b"algo=lz4hc priority=2")
    store(d, "algorithm_params", f"priority=1 level=5 dict={trained_dict}".encode())
    store(d, "algorithm_params", f"algo=lz4hc dict={trained_dict}".encode())
    store(d, "disksize", b"1M")
    pages = swap_like(80, seed=8)[:64]
    d.write(0, b"".join(pages))
    before = d.mm_stat().compr_data_size
    store(d, "recompress", b"type=idle")  # nothing idle yet: nothing moves
    store(d, "idle", b"all")
    store(d, "recompress", b"type=idle")
    assert d.mm_stat().compr_data_size < before * 0.8
    assert d.read(0, len(pages) * P) == b"".join(pages)
    d.reset()


# -- through the control directory ----------------------------------------------------------------


def write_attr(path: Path, data: bytes) -> int:
    """One write() of ``data``; 0 or the errno it failed with."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    except OSError as e:
        return e.errno or -1
    finally:
        os.close(fd)
    return 0


@pytest.mark.e2e
def test_through_the_control_directory(tmp_path: Path, trained_dict: Path) -> None:
    with serve(tmp_path, "size=8M") as srv:
        assert srv.control is not None
        attr = srv.control / "algorithm_params"
        assert write_attr(srv.control / "reset", b"1") == 0
        assert write_attr(srv.control / "comp_algorithm", b"zstd") == 0
        for data, err in [
            (b"level=-5", 0),
            (b"=5", errno.EINVAL),
            (b"priority=-+0", errno.EINVAL),
            (b"level=2147483648", errno.ERANGE),
            (b"level=7\x00junk", 0),
            (b"dict=/nonexistent", errno.EINVAL),
            (f"level=19 dict={trained_dict}".encode(), 0),
        ]:
            assert write_attr(attr, data) == err, data
        assert write_attr(srv.control / "disksize", b"8M") == 0
        h = srv.connect()
        pages = swap_like(300, seed=5)[:256]
        h.pwrite(b"".join(pages), 0)
        assert h.pread(len(pages) * P, 0) == b"".join(pages)
        h.shutdown()
        compr_primed = srv.mm_stat()[1]
        assert write_attr(attr, b"level=1") == errno.EBUSY
    # the same pages without the dictionary
    d = device_with("zstd", b"level=19")
    compr_plain, _ = stored(d, pages)
    d.reset()
    assert compr_primed < compr_plain * 0.95

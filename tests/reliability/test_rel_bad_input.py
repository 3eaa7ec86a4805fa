"""Bad input: every control attribute written with garbage, out-of-range, overflowing, empty
and oversized values gets the kernel's errno and changes nothing; requests beyond the end of the
export are refused by the server, which keeps serving.

Bad plugin configuration: tests/test_e2e_nbd.py::test_bad_config_is_refused_with_a_clear_message.
The kernel's parse rules themselves: tests/test_parse.py and tests/test_control.py.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import nbd
import pytest

from zramd import control
from zramd.device import ZramDevice
from zramd.errors import ZramdError

from relkit import NBD_CMD_READ, NBD_CMD_WRITE, raw_connect, raw_reply, raw_request, snapshot
from servers import serve

P = 4096
MiB = 1 << 20
BIG = b"9" * 40  # overflows u64 many times over
HUGE = b"1" * 8192  # more than a page: the store sees its first 4096 bytes, as in sysfs
NOT_ASCII = "héllo".encode() + b"\xff\xfe"
NUL = b"\0"  # an empty C string: the store runs and sees nothing (an empty write runs none)
EINVAL, ERANGE, EBUSY, E2BIG, EACCES = (
    errno.EINVAL, errno.ERANGE, errno.EBUSY, errno.E2BIG, errno.EACCES
)  # fmt: skip

#: (state, attribute, bytes written, errno). state "fresh": uninitialised; "live": 1 MiB of
#: data stored, mem_limit and lz4hc level 4 set before init; "open": live with a client
MATRIX = [
    # disksize
    ("fresh", "disksize", NUL, EINVAL),
    ("fresh", "disksize", b"\n", EINVAL),
    ("fresh", "disksize", b"junk", EINVAL),
    ("fresh", "disksize", b"0", EINVAL),
    ("fresh", "disksize", b"0x0\n", EINVAL),
    ("fresh", "disksize", b"-1", EINVAL),
    ("fresh", "disksize", BIG, EINVAL),  # wraps to a size beyond the arena
    ("fresh", "disksize", b"1E", EINVAL),  # 2**60 bytes
    ("fresh", "disksize", HUGE, EINVAL),
    ("fresh", "disksize", NOT_ASCII, EINVAL),
    ("live", "disksize", b"1G", EBUSY),
    # reset
    ("fresh", "reset", NUL, EINVAL),
    ("fresh", "reset", b"0", EINVAL),
    ("fresh", "reset", b"junk", EINVAL),
    ("fresh", "reset", b"-1", EINVAL),
    ("fresh", "reset", b"1 ", EINVAL),
    ("fresh", "reset", b"1\n\n", EINVAL),
    ("fresh", "reset", b"65536", ERANGE),
    ("fresh", "reset", BIG, ERANGE),
    ("live", "reset", NOT_ASCII, EINVAL),
    ("open", "reset", b"1", EBUSY),
    # mem_limit
    ("live", "mem_limit", NUL, EINVAL),
    ("live", "mem_limit", b"\n", EINVAL),
    ("live", "mem_limit", b"lots", EINVAL),
    ("live", "mem_limit", b"-5M", EINVAL),
    ("live", "mem_limit", b"M", EINVAL),
    ("live", "mem_limit", NOT_ASCII, EINVAL),
    # mem_used_max: only 0
    ("live", "mem_used_max", NUL, EINVAL),
    ("live", "mem_used_max", b"1", EINVAL),
    ("live", "mem_used_max", b"-0", EINVAL),
    ("live", "mem_used_max", b"0x", EINVAL),
    ("live", "mem_used_max", BIG, EINVAL),
    ("live", "mem_used_max", HUGE, EINVAL),
    # compact / idle before init
    ("fresh", "compact", b"1", EINVAL),
    ("fresh", "idle", b"all", EINVAL),
    ("live", "idle", NUL, EINVAL),
    ("live", "idle", b"al", EINVAL),
    ("live", "idle", b"all all", EINVAL),
    ("live", "idle", b"0x100000000", EINVAL),  # beyond u32
    ("live", "idle", BIG, EINVAL),
    ("live", "idle", NOT_ASCII, EINVAL),
    # comp_algorithm
    ("fresh", "comp_algorithm", NUL, EINVAL),
    ("fresh", "comp_algorithm", b"snappy", EINVAL),
    ("fresh", "comp_algorithm", b"LZ4", EINVAL),
    ("fresh", "comp_algorithm", b"lz4\n\n\n", EINVAL),  # the kernel forgives two, not three
    ("fresh", "comp_algorithm", b"z" * 127, EINVAL),
    ("fresh", "comp_algorithm", b"z" * 128, E2BIG),
    ("fresh", "comp_algorithm", HUGE, E2BIG),
    ("fresh", "comp_algorithm", NOT_ASCII, EINVAL),
    ("live", "comp_algorithm", b"zstd", EBUSY),
    # algorithm_params
    ("fresh", "algorithm_params", b"level", EINVAL),
    ("fresh", "algorithm_params", b"level=", EINVAL),
    ("fresh", "algorithm_params", b"level=abc", EINVAL),
    ("fresh", "algorithm_params", b"level=99999999999", ERANGE),
    ("fresh", "algorithm_params", b"level=-99999999999", ERANGE),
    ("fresh", "algorithm_params", b"=5", EINVAL),  # no value: next_arg names it "=5"
    ("fresh", "algorithm_params", b"priority=-+0", EINVAL),
    ("fresh", "algorithm_params", b"priority=1 level=3", EINVAL),
    ("fresh", "algorithm_params", b"algo=zstd level=3", EINVAL),
    ("fresh", "algorithm_params", b"dict=/nonexistent/zramd.dict", EINVAL),
    ("fresh", "algorithm_params", b"dict=/dev/null", EINVAL),  # not a regular file
    ("fresh", "algorithm_params", b"level=3x", EINVAL),
    ("fresh", "algorithm_params", NOT_ASCII, EINVAL),
    ("live", "algorithm_params", b"level=3", EBUSY),
    # backing_dev (never opened for real here: only paths that cannot be opened)
    ("fresh", "backing_dev", NUL, EINVAL),
    ("fresh", "backing_dev", b"\n", EINVAL),
    ("fresh", "backing_dev", b"/nonexistent/zramd-backing", errno.ENOENT),
    ("fresh", "backing_dev", b"/", errno.EISDIR),
    ("fresh", "backing_dev", b"/dev/null", errno.ENOTBLK),
    ("fresh", "backing_dev", b"/nonexistent\x00/dev/null", errno.ENOENT),  # ends at the NUL
    ("fresh", "backing_dev", b"nbd+unix:///?socket=/nonexistent/s", errno.ENOENT),
    ("fresh", "backing_dev", b"/nonexistent/" + NOT_ASCII, errno.ENOENT),  # bytes, opened as such
    ("fresh", "backing_dev", b"nbd+unix:///?socket=/" + NOT_ASCII, EINVAL),  # a URI is text
    ("live", "backing_dev", b"none", EBUSY),
    # writeback
    ("fresh", "writeback", b"idle", EINVAL),
    ("live", "writeback", b"idle", errno.ENODEV),
    ("fresh", "writeback_limit", NUL, EINVAL),
    ("fresh", "writeback_limit", b"lots", EINVAL),
    ("fresh", "writeback_limit", BIG, ERANGE),
    ("live", "writeback_limit_enable", b"yes", EINVAL),
    ("live", "writeback_limit_enable", NUL, EINVAL),
    ("live", "writeback_batch_size", b"0", EINVAL),
    ("live", "writeback_batch_size", b"4294967296", ERANGE),
    ("live", "writeback_batch_size", b"x", EINVAL),
    # recompression
    ("fresh", "recomp_algorithm", NUL, EINVAL),
    ("fresh", "recomp_algorithm", b"priority=1", EINVAL),
    ("fresh", "recomp_algorithm", b"algo", EINVAL),
    ("fresh", "recomp_algorithm", b"algo=snappy", EINVAL),
    ("fresh", "recomp_algorithm", b"algo=zstd priority=4", EINVAL),
    ("fresh", "recomp_algorithm", b"algo=" + b"z" * 130, E2BIG),
    ("live", "recomp_algorithm", b"algo=zstd", EBUSY),
    ("fresh", "recompress", b"type=idle", EINVAL),
    ("live", "recompress", b"type=idle", EINVAL),  # no recomp_algorithm configured
    ("live", "recompress", b"threshold=abc", EINVAL),
    # auto_compact
    ("live", "auto_compact", NUL, EINVAL),
    ("live", "auto_compact", b"interval", EINVAL),
    ("live", "auto_compact", b"bogus=1", EINVAL),
    ("live", "auto_compact", b"interval=99999999", ERANGE),
    ("live", "auto_compact", b"min_percent=101", ERANGE),
    ("live", "auto_compact", HUGE, EINVAL),
    # read-only attributes
    *[("live", name, b"0", EACCES) for name in
      ("initstate", "mm_stat", "io_stat", "debug_stat", "mem_stat", "classes", "bd_stat",
       "compact_stat")],
]  # fmt: skip


def make_device(state: str) -> ZramDevice:
    dev = ZramDevice("lz4hc")
    dev.set_algorithm_params(level=4)
    dev.set_mem_limit(64 * MiB)
    if state == "fresh":
        return dev
    dev.set_disksize(4 * MiB)
    pages = [os.urandom(64) * 64 for _ in range(256)]
    dev.write(0, b"".join(pages))
    dev.write(2 * MiB, bytes(P))
    dev.compact()
    if state == "open":
        dev.open()
    return dev


@pytest.mark.parametrize(
    ("state", "name", "value", "err"),
    MATRIX,
    ids=[f"{s}-{n}-{v[:12]!r}" for s, n, v, _ in MATRIX],
)
def test_store_refuses_and_changes_nothing(state: str, name: str, value: bytes, err: int) -> None:
    dev = make_device(state)
    before = snapshot(dev)
    with pytest.raises(ZramdError) as info:
        control.store(dev, name, value)
    assert info.value.errno == err, info.value
    assert str(info.value)  # a message, naming the problem
    assert snapshot(dev) == before


@pytest.mark.parametrize("name", [a.name for a in control.ATTRIBUTES if a.store])
def test_an_empty_write_stores_nothing(name: str) -> None:
    """sysfs reports 0 for an empty write without calling the store, whatever it is."""
    dev = make_device("live")
    before = snapshot(dev)
    assert control.store(dev, name, b"") == 0
    assert snapshot(dev) == before


def test_matrix_covers_every_attribute() -> None:
    assert {name for _, name, _, _ in MATRIX} == {a.name for a in control.ATTRIBUTES}
    assert len(MATRIX) >= 30


# -- the same through the real FUSE mount ------------------------------------------------------

FUSE_CASES = [
    ("disksize", b"1G\n", EBUSY),
    ("reset", b"65536\n", ERANGE),
    ("reset", b"0\n", EINVAL),
    ("mem_limit", b"lots\n", EINVAL),
    ("mem_used_max", b"1\n", EINVAL),
    ("idle", b"sometimes\n", EINVAL),
    ("comp_algorithm", b"z" * 200, E2BIG),
    ("comp_algorithm", b"snappy\n", EINVAL),
    ("algorithm_params", b"level=abc\n", EINVAL),  # the value is parsed first
    ("algorithm_params", b"level=3\n", EBUSY),  # then refused: the device is initialised
    ("algorithm_params", b"level\n", EINVAL),
    ("mem_used_max", HUGE, EINVAL),
    ("disksize", b"", None),  # an empty write() is no store at all: 0 bytes written
    # once took the whole control directory down; initialised, EBUSY comes first (as in the
    # kernel), the store matrix above checks the EINVAL of a fresh device
    ("backing_dev", b"x\x00y\n", EBUSY),
    ("writeback", b"idle\n", errno.ENODEV),
    ("auto_compact", b"interval=-1\n", EINVAL),
]


def read_all(ctl: Path) -> dict[str, str]:
    out = {}
    for attr in control.ATTRIBUTES:
        if attr.show is not None:
            text = (ctl / attr.name).read_text()
            out[attr.name] = " ".join(text.split()[1:]) if attr.name == "mem_stat" else text
    return out


@pytest.mark.e2e
def test_bad_writes_through_the_mount(tmp_path: Path) -> None:
    with serve(tmp_path, "size=16M") as srv:
        ctl = srv.control
        assert ctl is not None
        h = srv.connect()
        data = os.urandom(MiB)
        h.pwrite(data, 0)
        assert srv.echo("64M", "mem_limit").returncode == 0
        for name, value, err in FUSE_CASES:
            before = read_all(ctl)
            fd = os.open(ctl / name, os.O_WRONLY)
            try:
                if err is None:
                    assert os.write(fd, value) == 0
                else:
                    with pytest.raises(OSError, match=os.strerror(err)) as info:
                        os.write(fd, value)
                    assert info.value.errno == err, (name, value, info.value)
            finally:
                os.close(fd)
            assert read_all(ctl) == before, (name, value)
        # writing a read-only file fails at open, as in sysfs
        with pytest.raises(PermissionError):
            os.open(ctl / "mm_stat", os.O_WRONLY)
        # and a name that is no attribute does not exist
        with pytest.raises(FileNotFoundError):
            os.open(ctl / "max_comp_streams", os.O_WRONLY)
        assert h.pread(len(data), 0) == data
        h.shutdown()


# -- requests beyond the end of the export -----------------------------------------------------


@pytest.mark.e2e
def test_out_of_range_requests_reach_the_server_and_are_refused(tmp_path: Path) -> None:
    size = 4 * MiB
    with serve(tmp_path, f"size={size}", control=False, nbdkit_args=["--threads=1"]) as srv:
        h = srv.connect()
        h.set_strict_mode(0)  # let libnbd send what it would refuse itself
        data = os.urandom(P)
        h.pwrite(data, size - P)
        # nbdkit answers writes and write-zeroes beyond the end with ENOSPC, the rest EINVAL
        bad = [
            ("EINVAL", lambda: h.pread(P, size)),
            ("EINVAL", lambda: h.pread(2 * P, size - P)),
            ("ENOSPC", lambda: h.pwrite(b"x" * P, size)),
            ("ENOSPC", lambda: h.pwrite(b"x" * (2 * P), size - P)),
            ("EINVAL", lambda: h.trim(P, size)),
            ("ENOSPC", lambda: h.zero(2 * P, size - P)),
            ("EINVAL", lambda: h.cache(P, size)),
            ("EINVAL", lambda: h.pread(P, (1 << 63) - 1)),
            ("EINVAL", lambda: h.pread(P, (1 << 64) - P)),  # offset + count wraps past 2**64
        ]
        for expected, request in bad:
            with pytest.raises(nbd.Error) as info:
                request()
            assert info.value.errno == expected, info.value
        # nothing beyond the end changed what is inside it
        assert h.pread(P, size - P) == data
        h.shutdown()
        # the same from a raw client: an out-of-range write's payload is consumed, and the
        # connection goes on
        s, export = raw_connect(srv.socket)
        assert export == size
        raw_request(s, NBD_CMD_WRITE, size, P, handle=1)
        s.sendall(b"y" * P)
        assert raw_reply(s) == (errno.ENOSPC, 1)
        raw_request(s, NBD_CMD_READ, size - P, P, handle=2)
        assert raw_reply(s) == (0, 2)
        s.close()
        h = srv.connect()
        assert h.pread(P, size - P) == data  # the server is still up
        h.shutdown()


def test_a_store_bug_is_eio_not_the_end_of_the_mount() -> None:
    """The control directory answers an unexpected exception in a store with EIO instead of
    letting it end pyfuse3's main loop (and with it the mount)."""
    import trio  # noqa: PLC0415 - the FUSE edge only

    from zramd.devices import Devices  # noqa: PLC0415
    from zramd.fusefs import _Ops  # noqa: PLC0415

    ops = _Ops(Devices(ZramDevice), os.getuid(), os.getgid())

    def broken(dev: ZramDevice, name: str, data: bytes) -> None:
        raise ValueError("a bug")

    import pyfuse3  # noqa: PLC0415

    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(ops._call, broken, ZramDevice(), "backing_dev", b"x")
    assert info.value.errno == errno.EIO

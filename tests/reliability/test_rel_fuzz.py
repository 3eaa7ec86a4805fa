"""Fuzzing the control-file parsers with Hypothesis: arbitrary bytes into every attribute's
store either succeed or raise a ZramdError carrying an errno, never another exception, and a
refused store changes nothing. The parse primitives keep their contracts on arbitrary text.

The long profile also runs the device state machine (tests/test_device_stateful.py) for
>= 500 counted examples here.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from test_device_stateful import DeviceMachine

from zramd import control
from zramd.device import ZramDevice
from zramd.errors import ZramdError
from zramd.parse import kstrtoint, kstrtoull, memparse, next_args, parse_size

from relkit import LONG, snapshot

P = 4096
MiB = 1 << 20
# backing_dev opens what it is given read-write: it is fuzzed on its own, with names that can
# only point into an empty directory
STORABLE = [a.name for a in control.ATTRIBUTES if a.store is not None and a.name != "backing_dev"]
READ_ONLY = [a.name for a in control.ATTRIBUTES if a.store is None]
ERRNOS = {errno.EINVAL, errno.ERANGE, errno.EBUSY, errno.E2BIG, errno.EACCES, errno.ENODEV}

# values near what the parsers look for, mixed with arbitrary bytes
TOKENS = [b"0", b"1", b"0x", b"0X1f", b"07", b"+", b"-", b"K", b"m", b"G", b"e", b"all", b"\n",
          b" ", b"\t", b'"', b"=", b"level", b"priority", b"algo", b"dict", b"deflate.winbits",
          b"lz4", b"lz4hc", b"zstd", b"deflate", b"lzo", b"\x00", b"\xff", b"9" * 25]  # fmt: skip
VALUES = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(TOKENS), max_size=12).map(b"".join),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=4)), max_size=8).map(b"".join),
)


def device(initialised: bool, opened: bool) -> ZramDevice:
    dev = ZramDevice("zstd")
    if initialised:
        dev.set_disksize(MiB)
        dev.write(0, b"".join(bytes([i]) * 64 + bytes(range(256)) * 15 for i in range(16)))
        dev.write(20 * P, b"\x07" * P)
    if opened:
        dev.open()
    return dev


# 400 examples by default, 4000 in the long profile (HYPOTHESIS_PROFILE=slow)
@settings(
    max_examples=max(400, 4 * settings.default.max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(STORABLE + READ_ONLY),
    value=VALUES,
    initialised=st.booleans(),
    opened=st.booleans(),
)
def test_store_succeeds_or_fails_cleanly(
    name: str, value: bytes, initialised: bool, opened: bool
) -> None:
    dev = device(initialised, opened)
    before = snapshot(dev)
    error: ZramdError | None = None
    try:
        control.store(dev, name, value)
    except ZramdError as e:  # anything else fails the test
        error = e
    if error is not None:
        assert error.errno in ERRNOS, (name, value, error)
        assert str(error)
        assert snapshot(dev) == before, (name, value, error)
        return
    # accepted: the device still works, and only reset may change what it holds
    if dev.initstate:
        dev.compact()
        if name != "reset" and "data" in before:
            assert dev.read(0, dev.disksize) == before["data"], (name, value)


TIER_STORES = ["writeback", "recompress", "idle", "writeback_limit", "writeback_limit_enable",
               "writeback_batch_size", "compact", "mem_limit", "auto_compact"]  # fmt: skip
TIER_TOKENS = [b"idle", b"huge", b"huge_idle", b"incompressible", b"type=", b"page_index=",
               b"page_indexes=", b"-", b"threshold=", b"max_pages=", b"algo=", b"priority=",
               b"zstd", b"deflate", b"1", b"0", b"255", b"256", b"3000", b" ", b"\n", b"all",
               b"interval=", b"min_bytes=", b"min_percent="]  # fmt: skip


def tier_device(tmp: Path) -> ZramDevice:
    """1 MiB device, lz4 with zstd and deflate for recompression, a 4 MiB backing file;
    compressible, incompressible (huge) and same-filled pages."""
    backing = tmp / "disk"
    backing.write_bytes(bytes(4 * MiB))
    dev = ZramDevice("lz4")
    control.store(dev, "backing_dev", str(backing).encode())
    control.store(dev, "recomp_algorithm", b"algo=zstd")
    control.store(dev, "recomp_algorithm", b"algo=deflate priority=2")
    dev.set_disksize(MiB)
    rng = random.Random(7)
    pages = [bytes([i]) * 64 + bytes(range(256)) * 15 for i in range(64)]
    pages += [rng.randbytes(P) for _ in range(8)] + [b"\x05" * P]
    dev.write(0, b"".join(pages))
    return dev


def test_the_tier_fuzz_device_really_writes_back_and_recompresses(tmp_path: Path) -> None:
    dev = tier_device(tmp_path)
    data = dev.read(0, MiB)
    control.store(dev, "writeback", b"huge")
    assert int(control.show(dev, "bd_stat").split()[2]) == 8  # the 8 random pages
    control.store(dev, "recompress", b"type=all")
    assert dev.read(0, MiB) == data
    dev.reset()


@settings(
    max_examples=max(300, 2 * settings.default.max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(TIER_STORES),
            st.one_of(
                st.lists(st.sampled_from(TIER_TOKENS), max_size=8).map(b"".join),
                st.binary(max_size=40),
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_tier_stores_never_change_the_data(
    steps: list[tuple[str, bytes]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A device with a backing file and a recompression algorithm: arbitrary writeback,
    recompress, idle and limit writes succeed or fail with an errno, and the device's bytes
    never change (writeback and recompression move pages, never alter them)."""
    dev = tier_device(tmp_path_factory.mktemp("backing"))
    data = dev.read(0, MiB)
    try:
        for name, value in steps:
            code = 0
            try:
                control.store(dev, name, value)
            except ZramdError as e:
                code = e.errno
            assert code in {0, errno.EIO, errno.ENOSPC, errno.EAGAIN} | ERRNOS, (name, value)
            assert dev.read(0, MiB) == data, (name, value)
        dev.compact()
        assert dev.read(0, MiB) == data
    finally:
        dev.reset()


@settings(max_examples=max(300, 4 * settings.default.max_examples), deadline=None)
@given(
    name=st.binary(max_size=60).map(lambda b: b.replace(b"/", b"")),
    uri=st.booleans(),
)
def test_backing_dev_fuzz(name: bytes, uri: bool, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Arbitrary names, each inside an empty directory (or as the socket of an NBD URI):
    refused with an errno, never another exception, and nothing attached."""
    empty = tmp_path_factory.mktemp("empty")
    value = (b"nbd+unix:///?socket=" if uri else b"") + str(empty).encode() + b"/x" + name
    dev = ZramDevice()
    error: ZramdError | None = None
    try:
        control.store(dev, "backing_dev", value)
    except ZramdError as e:
        error = e
    assert error is not None
    assert error.errno in {errno.EINVAL, errno.ENOENT, errno.EIO}, error
    assert control.show(dev, "backing_dev") == b"none\n"


@settings(max_examples=max(300, 4 * settings.default.max_examples), deadline=None)
@given(st.text(max_size=80))
def test_parse_primitives_keep_their_contracts(text: str) -> None:
    value, consumed = memparse(text)
    assert 0 <= value < 1 << 64
    assert 0 <= consumed <= len(text)
    for fn in (kstrtoull, kstrtoint):
        error: ZramdError | None = None
        try:
            fn(text)
        except ZramdError as e:
            error = e
        assert error is None or error.errno in (errno.EINVAL, errno.ERANGE)
    for key, val in next_args(text):
        assert '"' not in key
        assert val is None or '"' not in val
    message = ""
    try:
        assert parse_size(text) >= 0
    except ValueError as e:
        message = str(e)
    assert not message or repr(text) in message


@pytest.mark.slow
def test_long_profile_runs_the_device_state_machine_long() -> None:
    """The long profile runs the device state machine for at least
    ``LONG.state_machine_examples`` examples, counted here, whatever profile the session
    loaded (tests/test_device_stateful.py runs its own count alongside)."""
    want = LONG.state_machine_examples
    machines = 0

    class Counted(DeviceMachine):
        def __init__(self) -> None:
            super().__init__()
            nonlocal machines
            machines += 1

    run_state_machine_as_test(
        Counted,
        settings=settings(
            max_examples=want, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )
    assert machines >= want

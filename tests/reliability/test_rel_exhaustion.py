"""Memory exhaustion: with ``mem_limit`` set, incompressible writes run into ENOSPC; everything
acknowledged before reads back intact, the server keeps serving, and trim + compact make room
again.

(tests/test_e2e_nbd.py::test_enospc_at_mem_limit_keeps_old_data checks the single refused
write; this fills the device to the limit over several connections.)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbd
import pytest

from zramd.fusefs import mount_state

from servers import serve

pytestmark = pytest.mark.e2e
P = 4096
MiB = 1 << 20
CHUNK = 64 * 1024


def test_fill_to_mem_limit_then_recover(tmp_path: Path) -> None:
    limit = 8 * MiB
    # check_exit=False: nbdkit's Python plugin logs the traceback of every refused request,
    # so the usual "no traceback" exit check is done below, allowing the expected ones
    with serve(
        tmp_path, "size=64M", f"mem_limit={limit}", nbdkit_args=["--threads=1"], check_exit=False
    ) as srv:
        assert srv.control is not None
        handles = [srv.connect() for _ in range(3)]
        written: dict[int, bytes] = {}
        off = 0
        refused = None
        start = time.monotonic()
        while off < 64 * MiB:
            data = os.urandom(CHUNK)
            h = handles[(off // CHUNK) % len(handles)]
            try:
                h.pwrite(data, off)
            except nbd.Error as e:
                refused = e
                break
            written[off] = data
            off += CHUNK
        fill_s = time.monotonic() - start
        assert refused is not None, "64 MiB of random data fitted under an 8 MiB limit"
        assert refused.errno == "ENOSPC", refused
        mm = srv.mm_stat()
        assert mm[3] == limit
        assert mm[2] <= limit  # the refused write was rolled back
        stored_at_limit = len(written) * CHUNK
        assert stored_at_limit >= limit // 2  # random pages are stored raw: ~1 frame each
        # every connection still works, and everything acknowledged is there
        for i, h in enumerate(handles):
            for o in list(written)[i :: len(handles)]:
                assert h.pread(CHUNK, o) == written[o]
        # each further write keeps failing cleanly, on any connection, and changes nothing
        for h in handles:
            with pytest.raises(nbd.Error) as info:
                h.pwrite(os.urandom(CHUNK), off)
            assert info.value.errno == "ENOSPC"
        assert h.pread(CHUNK, off) == bytes(CHUNK)
        io = srv.attr("io_stat").split()
        assert int(io[1]) >= 1 + len(handles)  # failed_writes counts them
        # a new connection is served too
        fresh = srv.connect()
        first = next(iter(written))
        assert fresh.pread(CHUNK, first) == written[first]
        # trim half of what is stored, compact: writes fit again
        start = time.monotonic()
        freed = [o for i, o in enumerate(written) if i % 2 == 0]
        for o in freed:
            fresh.trim(CHUNK, o)
            del written[o]
        r = srv.echo("1", "compact")
        assert r.returncode == 0, r.stderr
        for o in freed[: len(freed) // 2]:
            data = os.urandom(CHUNK)
            fresh.pwrite(data, o)
            written[o] = data
        recover_s = time.monotonic() - start
        assert srv.mm_stat()[2] <= limit
        for o, data in written.items():
            assert fresh.pread(CHUNK, o) == data
        for h in [*handles, fresh]:
            h.shutdown()
        final = srv.mm_stat()
        assert srv.stop() == 0
    log = srv.log.read_text()
    errors = [x for x in log.splitlines() if x.startswith("nbdkit:") and "error" in x]
    assert len(errors) == 1 + len(handles)  # one per refused write, nothing else
    tracebacks = log.split("Traceback (most recent call last):")[1:]
    assert all("zramd.errors.MemLimitError: write refused" in t for t in tracebacks), log
    assert mount_state(tmp_path / "control") == "none"
    print(
            "FIGURES",
            json.dumps(
                {"mem_limit": limit, "stored_at_limit": stored_at_limit,
                 "fill_s": round(fill_s, 2), "trim_compact_rewrite_s": round(recover_s, 2),
                 "log_lines_per_refusal": round(len(log.splitlines()) / len(errors)),
                 "mm_stat": final}
            ),
        )  # fmt: skip

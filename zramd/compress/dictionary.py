"""Compression dictionaries: ``algorithm_params dict=PATH`` (the kernel's 6.12+ feature).

The kernel reads the file once, when ``algorithm_params`` is written
(``kernel_read_file_from_path``), and keeps the bytes with the algorithm's parameters; the
backend builds its dictionary from them when the device is initialised. zstd, lz4 and lz4hc
use it (a zstd dictionary from ``zstd --train``, or any bytes as raw content); deflate and lzo
keep it unused. zramd does the same: the parameters hold the file's bytes, nothing else.
"""

from __future__ import annotations

import os
import stat

from zramd.errors import InvalidValueError

#: the largest file kernel_read_file_from_path reads for zram (its INT_MAX buffer bound)
MAX_DICT_BYTES = (1 << 31) - 1


def read_dictionary(path: bytes) -> bytes:
    """The bytes of the dictionary file at ``path``, read as the kernel reads it: a non-empty
    regular file of at most MAX_DICT_BYTES, symlinks followed.

    Every failure is InvalidValueError (zram answers EINVAL for all of them) naming the path
    and the reason. The path must be absolute: the kernel resolves a relative one against the
    writer's working directory, which a userspace server does not know.
    """
    shown = os.fsdecode(path)
    if not path.startswith(b"/"):
        raise InvalidValueError(f"algorithm_params: dict={shown}: the path must be absolute")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise InvalidValueError(f"algorithm_params: dict={shown}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidValueError(f"algorithm_params: dict={shown}: not a regular file")
        if st.st_size <= 0:
            raise InvalidValueError(f"algorithm_params: dict={shown}: the file is empty")
        if st.st_size > MAX_DICT_BYTES:
            raise InvalidValueError(
                f"algorithm_params: dict={shown}: {st.st_size} bytes, over {MAX_DICT_BYTES}"
            )
        chunks = []
        left = st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break  # the file shrank meanwhile: what is there is the dictionary
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as e:
        raise InvalidValueError(f"algorithm_params: dict={shown}: {e.strerror}") from None
    finally:
        os.close(fd)
    if not data:
        raise InvalidValueError(f"algorithm_params: dict={shown}: the file is empty")
    return data

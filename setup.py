"""Only the optional C extension lives here; everything else is in pyproject.toml.

``zramd._zram`` (zramd/csrc/) is the data path in C: the zsmalloc pool (zsmalloc.c), the
compression codecs (zcomp.c, backend_*.c, linked against Debian's liblz4, libzstd, zlib and
liblzo2: scripts/_env.sh installs their -dev packages) and the per-request loops (zram.c), all
run with the GIL released. It is optional: without a compiler or the libraries the build goes
on and zramd runs the pure-Python reference code (pool.py, compress/, core.py).
"""

from glob import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "zramd._zram",
            sorted(glob("zramd/csrc/*.c")),
            depends=sorted(glob("zramd/csrc/*.h")),
            libraries=["lz4", "zstd", "z", "lzo2"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
    ]
)

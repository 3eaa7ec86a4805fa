"""Only the optional C extensions live here; everything else is in pyproject.toml.

``zramd._zsfast`` (zramd/_zsfast.c) runs the pool's per-object loops. ``zramd._zram``
(zramd/csrc/) is the C data path: the compression codecs (zcomp.c, backend_*.c) linked against
Debian's liblz4, libzstd, zlib and liblzo2 (scripts/_env.sh installs their -dev packages).
Both are optional: without a compiler or the libraries the build goes on and zramd runs the
pure-Python reference code.
"""

from glob import glob

from setuptools import Extension, setup

CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(
            "zramd._zsfast",
            ["zramd/_zsfast.c"],
            extra_compile_args=CFLAGS,
            optional=True,
        ),
        Extension(
            "zramd._zram",
            sorted(glob("zramd/csrc/*.c")),
            depends=sorted(glob("zramd/csrc/*.h")),
            libraries=["lz4", "zstd", "z", "lzo2"],
            extra_compile_args=[*CFLAGS, "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
    ]
)

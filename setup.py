"""Only the optional C extensions live here; everything else is in pyproject.toml.

``zramd._zsfast`` (zramd/_zsfast.c) runs the pool's per-object loops on the Python pool's
buffers. ``zramd._zram`` (zramd/csrc/) is the self-contained C pool that runs with the GIL
released. Both are optional: without a compiler the build goes on and zramd runs the
pure-Python reference (pool.py).
"""

from glob import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "zramd._zsfast",
            ["zramd/_zsfast.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "zramd._zram",
            sorted(glob("zramd/csrc/*.c")),
            depends=sorted(glob("zramd/csrc/*.h")),
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
    ]
)

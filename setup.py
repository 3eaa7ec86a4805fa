"""Only the optional C accelerator lives here; everything else is in pyproject.toml.

``zramd._zsfast`` (zramd/_zsfast.c) runs the pool's per-object loops. It is optional: without a
compiler the build goes on and zramd runs the pure-Python reference loops (pool.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "zramd._zsfast",
            ["zramd/_zsfast.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)

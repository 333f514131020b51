"""Build the one compiled extension, rtmpq._speedups, from ext/ with Cython.

The generated C file is a build product and is never committed. Setting RTMPQ_NO_COMPILE=1 installs
the pure-Python reference only (every compiled function has a twin in rtmpq/codec/).
"""
import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("RTMPQ_NO_COMPILE") != "1":
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("rtmpq._speedups", ["ext/_speedups.pyx"], extra_compile_args=["-O3"])],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        include_path=["ext"],
    )

setup(ext_modules=ext_modules)

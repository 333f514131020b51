"""Build the one compiled extension, rtmpq._speedups, from ext/ with Cython, and bundle hls.js.

The generated C file is a build product and is never committed. Setting RTMPQ_NO_COMPILE=1 installs
the pure-Python reference only (every compiled function has a twin in rtmpq/codec/).

hls.js (the player page's library, from npm, not committed) is package data at
rtmpq/edge/static/hls.min.js: taken from the tree when `make hlsjs` put it there, else fetched
by scripts/hlsjs.py (pinned version and SHA-512) into the build. If that fails the wheel is built
without it, and a node says so at start.
"""
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class build_py_with_hlsjs(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "rtmpq" / "edge" / "static" / "hls.min.js"
        if target.exists():
            return
        sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
        try:
            import hlsjs

            hlsjs.fetch(target)
        except Exception as exc:  # no network, no cache: a node without its player library still runs
            self.warn(f"hls.js not bundled ({exc}); run `make hlsjs` before building")


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

setup(ext_modules=ext_modules, cmdclass={"build_py": build_py_with_hlsjs})

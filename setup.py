"""Declares the native kernels; everything else lives in pyproject.toml.

The extension is optional so `pip install` works without a compiler (the pure
Python/NumPy references take over); CI sets LMFAST_REQUIRE_NATIVE=1 so a broken
build cannot hide behind the fallback.
"""

import os

import numpy
from setuptools import Extension, setup

REQUIRE_NATIVE = os.environ.get("LMFAST_REQUIRE_NATIVE") == "1"

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - cython is in build-system.requires
    if REQUIRE_NATIVE:
        raise
    extensions = []
else:
    extensions = cythonize(
        [
            Extension(
                "lmfast.data._chunking",
                ["csrc/_chunking.pyx"],
                include_dirs=[numpy.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3"],
                optional=not REQUIRE_NATIVE,
            ),
            Extension(
                "lmfast.data._spbpe",
                ["csrc/_spbpe.pyx"],
                depends=["csrc/spbpe.h"],  # rebuilt when it changes, and shipped in the sdist
                include_dirs=[numpy.get_include(), "csrc"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3", "-std=c++17", "-pthread"],
                extra_link_args=["-pthread"],
                language="c++",
                optional=not REQUIRE_NATIVE,
            ),
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=extensions)

"""Declares the native kernels; everything else lives in pyproject.toml.

The extension is optional so `pip install` works without a compiler (the pure
Python/NumPy references take over); CI sets LMFAST_REQUIRE_NATIVE=1 so a broken
build cannot hide behind the fallback.
"""

import glob
import os
import subprocess

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
                "lmfast.export._blockquant",
                ["csrc/_blockquant.pyx"],
                include_dirs=[numpy.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                # no fused multiply-add: the kernel must round as NumPy's reference does
                extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
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


def ort_headers() -> str | None:
    """ONNX Runtime's C/C++ API headers for csrc/ortops (scripts/ort_headers.sh finds or fetches
    them, cached); None where none can be had, and lmfast then runs ONNX Runtime's own ops."""
    try:
        found = subprocess.run(
            ["bash", "scripts/ort_headers.sh"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as error:
        message = getattr(error, "stderr", "") or str(error)
        if REQUIRE_NATIVE:
            raise SystemExit(f"setup.py: LMFAST_REQUIRE_NATIVE=1 but {message.strip()}") from error
        print(f"setup.py: building without lmfast's ONNX Runtime ops: {message.strip()}")
        return None
    return found


ORT_INCLUDE = ort_headers()
if ORT_INCLUDE:
    # a plain shared library (no Python module inside) that SessionOptions.register_custom_ops_library
    # loads: lmfast.generation.native_ops finds it next to itself
    extensions.append(
        Extension(
            "lmfast.generation._ortops",
            sorted(glob.glob("csrc/ortops/*.cc")),
            depends=sorted(glob.glob("csrc/ortops/*.h")),
            include_dirs=[ORT_INCLUDE, "csrc/ortops"],
            extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden", "-pthread"],
            extra_link_args=["-pthread"],
            language="c++",
            optional=not REQUIRE_NATIVE,
        )
    )

setup(ext_modules=extensions)

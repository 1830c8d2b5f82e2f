"""lmfast/data/_chunking.pyi states the kernels of csrc/_chunking.pyx: same functions, same parameters.

The stub is hand-kept (Cython writes none), so this test is its `--check`: the public `def`s of the
.pyx source, the built module's signatures (where it is built) and the stub must agree, and every
kernel must have its dispatching reference of the same name and parameters in lmfast.data.chunking.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from lmfast.data import chunking

ROOT = Path(__file__).resolve().parents[2]
PYX = ROOT / "csrc" / "_chunking.pyx"
PYI = ROOT / "lmfast" / "data" / "_chunking.pyi"


def pyx_signatures() -> dict[str, list[str]]:
    """`def name(typed args):` of the .pyx -> parameter names (the last word of each argument)."""
    source = PYX.read_text(encoding="utf-8")
    signatures = {}
    for name, arguments in re.findall(r"^def (\w+)\((.*?)\)\s*:", source, flags=re.DOTALL | re.MULTILINE):
        parts = [part.split("=")[0].split() for part in arguments.split(",") if part.strip()]
        signatures[name] = [words[-1] for words in parts]
    return signatures


def pyi_signatures() -> dict[str, list[str]]:
    tree = ast.parse(PYI.read_text(encoding="utf-8"))
    return {
        node.name: [arg.arg for arg in node.args.args]
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
    }


def test_stub_matches_the_cython_source():
    assert pyx_signatures() and pyi_signatures() == pyx_signatures()


def test_stub_matches_the_built_module():
    try:
        module = importlib.import_module("lmfast.data._chunking")
    except ImportError:
        pytest.skip("Cython kernels not built (python setup.py build_ext --inplace)")
    built = {
        name: list(inspect.signature(getattr(module, name)).parameters)
        for name in dir(module)
        if not name.startswith("_") and inspect.isroutine(getattr(module, name))
    }
    assert built == pyi_signatures()


def test_every_kernel_has_a_reference_with_the_same_parameters():
    for name, parameters in pyi_signatures().items():
        reference = getattr(chunking, name, None)
        assert callable(reference), f"lmfast.data.chunking has no reference {name}()"
        # the reference takes the kernel's parameters, then `backend` (which implementation runs)
        assert list(inspect.signature(reference).parameters) == [*parameters, "backend"], name

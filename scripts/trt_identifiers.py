#!/usr/bin/env python3
"""Print the identifier list of a TensorRT Python binding (``tensorrt_bindings/tensorrt.so``).

The list is what ``tests/data/tensorrt<MAJOR>_identifiers.txt`` holds: every name the real binding
could expose, found without importing it (TensorRT needs a GPU driver to import). Standard library only.

    pip install --no-deps --target /tmp/trt11 tensorrt_cu13_bindings==11.4.0.106
    python scripts/trt_identifiers.py /tmp/trt11/tensorrt_bindings/tensorrt.so \\
        --wheel tensorrt_cu13_bindings-11.4.0.106-cp311-none-manylinux_2_28_x86_64.whl \\
        > tests/data/tensorrt11_identifiers.txt

Method (also written into the output's header):
  * split the ELF ``.rodata`` section of ``tensorrt.so`` at NUL bytes (pybind11 names, docstrings,
    type names);
  * a string that is an identifier (``^[A-Za-z_][A-Za-z0-9_]*$``, length >= 2) is kept together with
    its word-boundary suffixes (after '_' or at a camel-case hump), because the linker merges string
    tails: 'Builder' is stored only as the tail of 'IExprBuilder';
  * of every other string, the suffixes of its trailing identifier run (the last word before an
    optional final newline) are kept the same way, and the whole run when it ends a TensorRT-qualified
    C++ name (``nvinfer1::DataType``: pybind11's ``"DataType"`` is merged into that string's tail);
  * mangled C++ symbols (``_Z...``) are dropped;
  * the public top-level names of the sibling ``__init__.py`` (``__version__``, ``nptype``, ...) are added;
  * one identifier per line, sorted by code point, deduplicated.
"""

from __future__ import annotations

import argparse
import ast
import re
import struct
import sys
from pathlib import Path

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The run of identifier characters that ends a string, or ends it before one final newline (docstrings
# such as "\n    Indicates a phase of operation of TensorRT\n" end that way).
TRAILING_RUN = re.compile(r"[A-Za-z0-9_]+(?=\n?\Z)")
# A C++ name in TensorRT's namespaces whose tail is a Python name bound by pybind11.
QUALIFIED = re.compile(r"(?:nvinfer1|nvonnxparser)::(?:[A-Za-z0-9_]+::)*([A-Za-z_][A-Za-z0-9_]*)\n?\Z")

HEADER = """\
# TensorRT {major} Python API identifiers from {dist} {version} (PyPI wheel
# {wheel}, tensorrt_bindings/tensorrt.so).
# Method: the NUL-separated strings of the .rodata section (pybind11 names and docstrings); kept are strings
# that are identifiers (^[A-Za-z_][A-Za-z0-9_]*$, length >= 2) plus their word-boundary suffixes (after '_'
# or at a camel-case hump), because the linker stores e.g. 'Builder' as the tail of 'IExprBuilder'
# (string tail merging); the trailing identifier of every other .rodata string is expanded the same way,
# and kept whole after 'nvinfer1::' / 'nvonnxparser::' ('DataType' is stored only as 'nvinfer1::DataType').
# Added: the top-level names of tensorrt_bindings/__init__.py (__version__, nptype, volume, ...).
# Mangled C++ symbols (_Z...) are dropped. One identifier per line, sorted, deduplicated.
"""


def elf_section(path: Path, wanted: str = ".rodata") -> bytes:
    """Return the bytes of one section of a little-endian ELF64 file."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    # Section header: name, type, flags, addr, offset, size, ...
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]
    for name, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", names_offset + name)
        if data[names_offset + name : end].decode("ascii") == wanted:
            return data[offset : offset + size]
    raise ValueError(f"{path}: no {wanted} section")


def _is_upper(c: str) -> bool:
    return "A" <= c <= "Z"


def _is_lower(c: str) -> bool:
    return "a" <= c <= "z"


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def word_suffixes(word: str):
    """Yield the proper suffixes of ``word`` that start at a word boundary.

    A boundary is a non-'_' character after '_' (``__bool__`` -> ``bool__``), or a camel-case hump:
    an upper-case letter after a lower-case letter or digit (``ExprBuilder`` -> ``Builder``,
    ``v_1_09IPluginV3`` -> ``IPluginV3``), or the last capital of an acronym before a lower-case letter
    (``IExprBuilder`` -> ``ExprBuilder``).
    """
    for i in range(1, len(word)):
        prev, cur = word[i - 1], word[i]
        after_underscore = prev == "_" and cur != "_"
        hump = _is_upper(cur) and (
            _is_lower(prev)
            or _is_digit(prev)
            or (_is_upper(prev) and i + 1 < len(word) and _is_lower(word[i + 1]))
        )
        if after_underscore or hump:
            yield word[i:]


def _keep(name: str) -> bool:
    return len(name) >= 2 and IDENTIFIER.fullmatch(name) is not None and not name.startswith("_Z")


def rodata_identifiers(so_path: Path) -> set[str]:
    found: set[str] = set()
    for raw in elf_section(so_path).split(b"\0"):
        text = raw.decode("latin-1")
        if text.startswith("_Z"):  # mangled C++ symbol
            continue
        if IDENTIFIER.fullmatch(text):
            if _keep(text):
                found.add(text)
            word = text
        else:
            match = TRAILING_RUN.search(text)
            if not match:
                continue
            word = match.group(0)
            qualified = QUALIFIED.search(text)
            if qualified and _keep(qualified.group(1)):
                found.add(qualified.group(1))
        found.update(s for s in word_suffixes(word) if _keep(s))
    return found


def init_names(init_path: Path) -> set[str]:
    """Public names defined at the top level of ``__init__.py`` (defs, classes, plain assignments)."""
    names: set[str] = set()
    for node in ast.parse(init_path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            candidates = [node.name]
        elif isinstance(node, ast.Assign):
            candidates = [t.id for t in node.targets if isinstance(t, ast.Name)]
        else:
            continue
        for name in candidates:
            if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
                names.add(name)
    return names


def header(wheel: str) -> str:
    """Header comment naming the wheel, e.g. tensorrt_cu13_bindings-11.4.0.106-cp311-...whl."""
    parts = wheel.split("-")
    if len(parts) < 5 or not wheel.endswith(".whl"):
        raise ValueError(f"not a wheel file name: {wheel}")
    dist, version = parts[0], parts[1]
    return HEADER.format(major=version.split(".")[0], dist=dist, version=version, wheel=wheel)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("so", type=Path, help="path to tensorrt_bindings/tensorrt.so")
    parser.add_argument("--wheel", required=True, help="file name of the wheel the binding came from")
    args = parser.parse_args(argv)

    names = rodata_identifiers(args.so)
    init = args.so.parent / "__init__.py"
    if init.is_file():
        names |= init_names(init)
    sys.stdout.write(header(args.wheel))
    sys.stdout.write("".join(f"{name}\n" for name in sorted(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

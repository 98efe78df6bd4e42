#!/usr/bin/env python3
"""Derive the TensorRT Python API surface from the real bindings wheels.

TensorRT itself cannot be installed on the course's CPU machines or in CI, but the
`tensorrt-cu12-bindings` / `tensorrt-cu13-bindings` wheels can be downloaded. Each holds the
compiled module `tensorrt_bindings/tensorrt.so`, which we cannot import without the TensorRT
libraries, but pybind11 registers every class, method, property, argument and enum-member name as
a NUL-terminated C string, so the binary's string data names the whole Python API. The linker
merges string tails ("name" may be stored only as the end of "get_tensor_name"), so for each
C string we keep its trailing identifier, and the test asks "does some kept string END WITH the
name", never exact equality. Names that the package's pure-Python `__init__.py` adds
(`__version__`, `nptype`, `volume`, `DataType.itemsize`, ...) are read from it with `ast`.

The result is one sorted list per version in tests/trt_api/tensorrt-<version>.txt, which
tests/test_trt_api_surface.py checks the course's code against, offline.

Supported versions: the oldest 10.x we support is 10.1.0, the first release whose bindings name
everything the course uses (diffing this script's lists for 10.0.1 ... 10.16.1.11 and 11.0 ...
11.4: only 10.0.1 lacks `device_memory_size_v2`, `set_device_memory` and
`get_device_memory_size_for_profile_v2`); the defaults add the newest 10.x and 11.x of its time.

Usage (uses pip's ordinary configuration; only the bindings wheels are fetched, no dependencies):
    python3 tools/trt_api_surface.py                       # the supported versions
    python3 tools/trt_api_surface.py 10.8.0.43 11.0.0.114   # any others, e.g. to compare
"""

import argparse
import ast
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OLDEST_SUPPORTED_10X = "10.1.0"
NEWEST_10X = "10.16.1.11"
NEWEST_11X = "11.4.0.106"
DEFAULT_VERSIONS = (OLDEST_SUPPORTED_10X, NEWEST_10X, NEWEST_11X)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "tests" / "trt_api"

# The wheels are built for CPython 3.12 on x86-64 Linux; asking for that platform explicitly lets
# pip download them from any machine. Older releases are tagged manylinux_2_17, newer 2_28.
PIP_DOWNLOAD = [
    sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
    "--python-version", "3.12",
    "--platform", "manylinux_2_28_x86_64",
    "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64",
]

# An identifier that ends a C string: the tail that a pybind11 name may share with a longer string.
# Leftmost-longest matching gives each C string's whole trailing identifier.
IDENTIFIER_BEFORE_NUL = re.compile(rb"([A-Za-z_][A-Za-z0-9_]+)\x00")


def bindings_package(version):
    """TensorRT 10 ships CUDA 12 bindings; 11 is taken from the CUDA 13 ones (the course's CUDA)."""
    major = int(version.split(".")[0])
    return "tensorrt-cu13-bindings" if major >= 11 else "tensorrt-cu12-bindings"


def download_wheel(version, wheel_dir):
    """Download one bindings wheel into its own folder and return its path."""
    target = Path(wheel_dir) / version
    target.mkdir(parents=True, exist_ok=True)
    requirement = f"{bindings_package(version)}=={version}"
    subprocess.run([*PIP_DOWNLOAD, "--dest", str(target), requirement], check=True)
    wheels = sorted(target.glob("*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected one wheel for {requirement} in {target}, found {wheels}")
    return wheels[0]


def names_in_shared_object(binary):
    """Trailing identifiers of the binary's C strings, less C++ mangled symbols (`_Z...`)."""
    names = {match.decode() for match in IDENTIFIER_BEFORE_NUL.findall(binary)}
    return {name for name in names if not name.startswith("_Z")}


def names_defined_in_python(source):
    """Public module-level names a package `__init__.py` defines, incl. `Class.attr = ...`."""
    names = set()
    statements = list(ast.parse(source).body)
    while statements:
        statement = statements.pop()
        if isinstance(statement, (ast.If, ast.Try)):
            # Module-level code inside if/try blocks still defines module attributes.
            statements.extend(statement.body + statement.orelse)
        elif isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
            names.add(statement.name)
        elif isinstance(statement, ast.Assign):
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif isinstance(target, ast.Attribute):
                    names.add(target.attr)
    return {name for name in names if not name.startswith("_") or name.startswith("__")}


def surface_of_wheel(wheel_path):
    """All names the wheel's `tensorrt` module offers, as found in its .so and __init__.py."""
    names = set()
    with zipfile.ZipFile(wheel_path) as wheel:
        for member in wheel.namelist():
            top_level_file = member.count("/") == 1
            if top_level_file and member.endswith(".so"):
                names |= names_in_shared_object(wheel.read(member))
            elif top_level_file and member.endswith("/__init__.py"):
                names |= names_defined_in_python(wheel.read(member).decode())
    if not names:
        sys.exit(f"{wheel_path.name}: no top-level .so or __init__.py found; has the layout changed?")
    return names


def write_surface(names, version, wheel_path, out_dir):
    """Write the sorted names under a one-line header that says where they came from."""
    sha256 = hashlib.sha256(wheel_path.read_bytes()).hexdigest()
    header = (
        f"# {bindings_package(version)}=={version} ({wheel_path.name}, sha256 {sha256}): "
        "trailing identifiers of the .so's C strings plus names its __init__.py defines; "
        "made by tools/trt_api_surface.py. Match a name with str.endswith, not equality."
    )
    out_path = Path(out_dir) / f"tensorrt-{version}.txt"
    out_path.write_text("\n".join([header, *sorted(names)]) + "\n")
    return out_path


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", default=list(DEFAULT_VERSIONS),
                        help=f"TensorRT versions (default: {' '.join(DEFAULT_VERSIONS)})")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help="where the lists go (default: tests/trt_api)")
    parser.add_argument("--wheel-dir", type=Path,
                        help="keep the downloaded wheels here (default: a temporary folder)")
    return parser.parse_args()


def main():
    args = parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        wheel_dir = args.wheel_dir or Path(scratch)
        for version in args.versions:
            wheel_path = download_wheel(version, wheel_dir)
            names = surface_of_wheel(wheel_path)
            out_path = write_surface(names, version, wheel_path, args.out_dir)
            print(f"{out_path}: {len(names)} names, {out_path.stat().st_size} bytes")


if __name__ == "__main__":
    main()

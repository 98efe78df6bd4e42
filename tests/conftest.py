"""Shared test helpers: where the repo is, whether a GPU is here, and how to run a course script."""
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@functools.cache
def gpu_reason():
    """None where a CUDA GPU is usable, else why not (the reason GPU tests are skipped)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as error:
        return f"cuda-python is not importable ({error})"
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess or count == 0:
        return f"no CUDA GPU on this machine ({cudart.cudaGetErrorName(error)[1].decode()})"
    return None


requires_gpu = pytest.mark.skipif(gpu_reason() is not None, reason=f"GPU test: {gpu_reason()}")


def run_script(script, *args, cwd=REPO, env=None, timeout=600):
    """Run a course script with this interpreter; returns the CompletedProcess (stdout and stderr as text)."""
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


def build_engines(path, builds):
    """Run 0_build.py in `path` once per list of its options in `builds` (the stand-in). Where COURSE_TEST_ENGINES
    names a directory of engines (`COURSE_TEST_ENGINES=engines` after `make build BACKEND=torch`), they are copied
    in first, so a build made for the same options only checks that it is up to date: the GPU tests then cost no
    compiling beyond what differs from make's."""
    made = os.environ.get("COURSE_TEST_ENGINES")
    if made:
        shutil.copytree(REPO / made, path / "engines", dirs_exist_ok=True)
    for options in builds:
        result = run_script("0_build.py", "--backend", "torch", *options, cwd=path)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


# The engines `make build BACKEND=torch` makes: name -> (precision, optimization profiles).
STAND_IN_ENGINES = {
    "resnet18_fp32": ("fp32", [(1, 128, 128)]),
    "resnet18_fp16": ("fp16", [(1, 128, 128)]),
    "resnet18_fp16_2profiles": ("fp16", [(1, 16, 32), (33, 128, 128)]),
    "resnet18_fp16_wide": ("fp16", [(1, 256, 1024)]),
    "resnet18_fp16_uint8": ("fp16", [(1, 128, 128)], "uint8"),
}


def make_course(directory):
    """A scratch course as `make build BACKEND=torch` and a run leave it, for runs that stop before the GPU:
    every engine file with its metadata, and a step's earlier result in reports/. A few bytes stand in for the
    weights (and so for the stand-in's engine files, which are a copy of them): the checks made before the GPU
    compare digests and never load them. Returns `directory`."""
    from common import build, data
    weights = directory / build.WEIGHTS_PATH
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"a stand-in for the weights, never loaded by a run that stops before the GPU\n")
    for name, (precision, profiles, *input_dtype) in STAND_IN_ENGINES.items():
        target = directory / build.engine_path(name, "torch")
        shutil.copyfile(weights, target)
        build.write_metadata(target, "torch", precision, profiles, weights, build.ENGINE_DIR / f"{name}.onnx",
                             image_input=data.IMAGE_INPUTS[input_dtype[0] if input_dtype else "float32"])
    (directory / "reports").mkdir(exist_ok=True)
    shutil.copy(REPO / "tests/fixtures/h100-eager/1_baseline.json", directory / "reports")
    return directory


def snapshot(directory):
    """Every path under `directory`, to compare before and after a run: a link's target, a directory's mtime,
    a file's mtime and bytes (None where it cannot be read)."""
    state = {".": ("dir", directory.stat().st_mtime_ns)}
    for root, directories, files in os.walk(directory):
        for name in directories + files:
            path = Path(root, name)
            key, info = str(path.relative_to(directory)), path.lstat()
            if path.is_symlink():
                state[key] = ("link", os.readlink(path))
            elif path.is_dir():
                state[key] = ("dir", info.st_mtime_ns)
            else:
                state[key] = ("file", info.st_mtime_ns, path.read_bytes() if os.access(path, os.R_OK) else None)
    return state


def assert_refused(status, stderr, expect, usage=False):
    """A run refused in one line, without a traceback: argparse's usage error (status 2) where `usage`, else the
    course's `error: <what is wrong>: <what to do>` (status 1) and nothing else; `expect` is in that last line."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert lines and expect in lines[-1], stderr
    if usage:
        assert status == 2 and lines[0].startswith("usage: ") and ": error: " in lines[-1], stderr
    else:
        assert status == 1 and len(lines) == 1, stderr
        assert lines[0].startswith("error: ") and lines[0].count(": ") >= 2, stderr

"""Shared test helpers: where the repo is, whether a GPU is here, and how to run a course script."""
import functools
import os
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

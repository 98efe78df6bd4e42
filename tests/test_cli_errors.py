"""CPU tier: a wrong environment or bad input ends with one line that says what to do, never a traceback."""
import subprocess
import sys

import pytest

from common import cli
from conftest import REPO, gpu_reason, make_course, run_script


def assert_one_line_error(result, expected):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert expected in lines[-1], result.stderr


@pytest.mark.skipif(gpu_reason() is None, reason="checks the message given where there is no GPU")
def test_no_gpu_is_one_line(tmp_path):
    result = run_script("1_baseline.py", "--backend", "torch", cwd=make_course(tmp_path))  # an engine to reach the GPU
    assert_one_line_error(result, "error: no usable NVIDIA driver")


def test_tensorrt_backend_without_tensorrt_is_one_line(tmp_path):
    pytest.importorskip("cuda.bindings")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    result = run_script("1_baseline.py", "--backend", "tensorrt", cwd=tmp_path)
    assert_one_line_error(result, "error: TensorRT cannot be imported")


def test_auto_backend_says_it_uses_the_stand_in(tmp_path):
    result = run_script("0_build.py", "--backend", "auto", "--help", cwd=tmp_path)
    assert result.returncode == 0  # --help works without a GPU or TensorRT
    result = run_script("4_use_fp16.py", "--backend", "auto", cwd=tmp_path)
    assert "using the PyTorch stand-in engine" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--batches", "3"], "must be at least 4"),
    (["--batch-size", "x"], "is not a whole number"),
    (["--backend", "onnx"], "invalid choice"),
])
def test_bad_options_are_one_line(tmp_path, args, message):
    result = run_script("5_multi_streams.py", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, message)


def make(*args, env=None):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, text=True, capture_output=True,
                          env=env)


def test_profile_all_uses_the_source_tutorials_nsys_options():
    dry_run = make("-n", "profile-all", "PYTHON=python3", "BACKEND=torch").stdout
    for option in ("-t cuda,nvtx,osrt,cudnn,cublas", "--cuda-memory-usage=true", "--cudabacktrace=all",
                   "--cuda-graph-trace=node", "--gpu-metrics-devices=all", "-o reports/$step", "1_baseline",
                   "9_multi_profiles", "--sample=none"):
        assert option in dry_run, option
    assert "9_multi_profiles 12_gpu_preprocessing 13_int8;" in dry_run  # beyond the ladder, after it
    overridden = make("-n", "profile-all", "PYTHON=python3", "NSYS_FLAGS=-t cuda,nvtx -f true").stdout
    assert "-t cuda,nvtx -f true -o reports/$step" in overridden and "--cudabacktrace" not in overridden


def test_build_makes_step12s_engine_and_run_all_runs_step12():
    dry_run = make("-n", "run-all", "PYTHON=python3", "BACKEND=torch").stdout
    assert "0_build.py --precision fp16 --input uint8 --name resnet18_fp16_uint8" in dry_run
    assert "9_multi_profiles 12_gpu_preprocessing 13_int8;" in dry_run


def test_profile_all_without_nsys_stops_before_the_build():
    """PYTHON=false: a build that started would fail on its own, with another message."""
    result = make("profile-all", "PYTHON=false", "NSYS=nsys-missing")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "error: nsys not found" in output
    assert "0_build.py" not in output and "pip" not in output


def test_checking_a_directory_that_can_be_created_leaves_no_trace(tmp_path):
    cli.check_writable_directory(tmp_path / "a/b/c", "--reports")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["run-all", "batching", "reproduce", "profile-all"])
def test_without_a_gpu_make_stops_before_the_build(target):
    """On a machine without a GPU, every target that runs steps says so in the course's one line before it builds
    anything (the build of five engines would cost a minute first)."""
    if gpu_reason() is None:
        pytest.skip("this machine has a GPU: the check passes here")
    result = make(target, f"PYTHON={sys.executable}", "BACKEND=torch", "NSYS=true")
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and len(errors) == 1, output
    assert "these scripts need an NVIDIA GPU" in errors[0] or "no CUDA GPU is visible" in errors[0], output
    assert "0_build.py" not in output and "exporting" not in output

"""GPU tier: steps 10 (batch-size sweep) and 11 (dynamic batching) end to end on the PyTorch stand-in.

Skipped, with the reason, where there is no CUDA GPU (CI). Small settings: a wide engine of batch 1..64
instead of 1..1024, short runs of few requests. The logic under them is tested on the CPU in
test_batching.py; here, that the steps run, check their outputs, and write the results they claim.
"""
import importlib.util
import json
import math
import sys

import pytest

from common.report import ladder
from common.errors import CourseError
from conftest import REPO, build_engines, requires_gpu, run_script

pytestmark = requires_gpu
TORCH = ["--backend", "torch"]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("batching")
    build_engines(path, [["--precision", "fp16"],
                         ["--precision", "fp16", "--profile", "1:16:64", "--name", "resnet18_fp16_wide"]])
    return path


def saved(workdir, stem):
    return json.loads((workdir / "reports" / f"{stem}.json").read_text())


def load_step(stem, monkeypatch, workdir, *args):
    """Import a step as a module with sys.argv pointing at it, so a test can wrap its functions and call main()."""
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", [f"{stem}.py", *args])
    spec = importlib.util.spec_from_file_location(stem, REPO / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_runs_and_checks_every_batch_size(workdir):
    result = run_script("10_batch_size_sweep.py", *TORCH, "--batch-size", "16", "--batches", "3",
                        "--latency-budget-ms", "1000", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = saved(workdir, "10_batch_size_sweep")
    assert sweep["kind"] == "sweep" and "last3_ms" not in sweep and not ladder.has_timed_window(sweep)
    assert sweep["check"]["passed"] and "not TensorRT" in sweep["backend_label"]
    assert [summary["name"] for summary in sweep["sweeps"]] == ["engine", "pytorch"]
    for summary in sweep["sweeps"]:
        rows = summary["rows"]
        assert [row["batch_size"] for row in rows] == [1, 2, 4, 8, 16]
        assert all(row["failure"] is None and row["check"]["passed"] for row in rows)
        assert all(row["latency_ms"] > 0 and row["images_per_s"] > 0 for row in rows)
        assert all(len(row["throughput_runs"]) == 5 and row["spread_pct"] >= 0 for row in rows)
        candidates = summary["knee_candidates"]  # one where the noise allows naming the knee, else several
        assert candidates and set(candidates) <= {1, 2, 4, 8, 16} and summary["peak"] in summary["trade_offs"]
        assert summary["knee"] == (candidates[0] if len(candidates) == 1 else None)
        assert max(candidates) <= summary["peak"] and summary["within_budget"]["1000"] is not None
        activations = [row["activations_mib"] for row in rows]
        assert activations == sorted(activations) and activations[-1] > activations[0] > 0  # grows with the batch
        assert all(row["peak_in_use_mib"] >= row["activations_mib"] for row in rows)
        assert (summary["largest_that_fits"], summary["fits_until"]) == (16, "the largest batch swept")
    assert (workdir / "reports" / "10_batch_size_sweep.png").stat().st_size > 10_000
    assert "knee: batch" in result.stdout or "knee: one of batches" in result.stdout


def test_sweep_reports_out_of_memory_and_goes_on(workdir, monkeypatch):
    """A batch size that runs out of memory (injected above 4) is a row of its own; the others are measured."""
    step = load_step("10_batch_size_sweep", monkeypatch, workdir, *TORCH, "--batch-size", "16", "--batches", "3")
    original = step.measure
    tried = []

    def measure_with_a_memory_limit(pipeline, images, reference, batch_size, runs, repeats):
        tried.append((pipeline.name, batch_size))
        if batch_size > 4:
            raise CourseError(f"out of GPU memory running a batch of {batch_size}: use a smaller --batch-size")
        return original(pipeline, images, reference, batch_size, runs, repeats)
    monkeypatch.setattr(step, "measure", measure_with_a_memory_limit)
    step.main()
    assert [size for name, size in tried if name == "engine"] == [1, 2, 4, 8, 16]
    for summary in saved(workdir, "10_batch_size_sweep")["sweeps"]:
        assert summary["out_of_memory"] == [8, 16]
        assert [row["failure"] for row in summary["rows"]] == [None] * 3 + ["out of memory"] * 2
        assert summary["peak"] <= 4


def test_sweep_refuses_a_batch_size_outside_the_profile(workdir):
    result = run_script("10_batch_size_sweep.py", *TORCH, "--batch-size", "100", cwd=workdir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--batch-size 100 is outside the first profile" in result.stderr


def test_dynamic_batching_serves_every_request_once_with_its_own_result(workdir):
    rates, duration = [200, 3000], 0.3
    result = run_script("11_dynamic_batching.py", *TORCH, "--batch-size", "8", "--rates", ",".join(map(str, rates)),
                        "--max-wait-ms", "0,2", "--duration-s", str(duration), cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    served = saved(workdir, "11_dynamic_batching")
    assert served["kind"] == "dynamic_batching" and served["check"]["passed"] and not ladder.has_timed_window(served)
    runs = served["runs"]
    assert [(run["max_batch_size"], run["max_wait_ms"], run["offered_per_s"]) for run in runs] == [
        (1, 0, 200), (1, 0, 3000), (8, 0, 200), (8, 0, 3000), (8, 2, 200), (8, 2, 3000)]
    for run in runs:
        assert run["check"]["passed"] and run["lost"] == run["duplicated"] == 0
        assert run["requests"] == math.ceil(run["offered_per_s"] * duration)
        assert 0 < run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"] <= run["max_ms"]
        assert 1 <= run["largest_batch"] <= run["max_batch_size"]
    one_at_a_time = [run for run in runs if run["max_batch_size"] == 1]
    assert all(run["mean_batch"] == 1 for run in one_at_a_time)
    waiting = next(run for run in runs if run["max_wait_ms"] == 2 and run["offered_per_s"] == 3000)
    assert waiting["mean_batch"] > 1.5  # 3000 requests/s fill several per 2 ms: batches do form
    assert (workdir / "reports" / "11_dynamic_batching.png").stat().st_size > 10_000


def test_shutdown_flushes_what_is_pending_without_waiting_it_out(workdir):
    """A max wait far longer than the run: the requests left at shutdown are served at once, none lost."""
    result = run_script("11_dynamic_batching.py", *TORCH, "--batch-size", "8", "--rates", "200", "--max-wait-ms",
                        "5000", "--duration-s", "0.05", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    waiting = next(run for run in saved(workdir, "11_dynamic_batching")["runs"] if run["max_wait_ms"] == 5000)
    assert waiting["requests"] == 10 and waiting["lost"] == waiting["duplicated"] == 0 and waiting["check"]["passed"]
    assert waiting["max_ms"] < 2000  # nobody waited the 5 s out: the shutdown flushed them


def test_dynamic_batching_refuses_a_batch_size_outside_the_profile(workdir):
    result = run_script("11_dynamic_batching.py", *TORCH, "--batch-size", "200", cwd=workdir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "batch size 200 is outside every profile" in result.stderr

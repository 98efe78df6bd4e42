"""GPU tier: every step end to end on the PyTorch stand-in, and the property each step claims.

Skipped, with the reason, where there is no CUDA GPU (CI). The engines are built once per session in
a scratch directory by 0_build.py, exactly as `make build BACKEND=torch` builds them.
"""
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, build_engines, requires_gpu, run_script

pytestmark = requires_gpu
SMALL = ["--backend", "torch", "--batches", "4", "--batch-size", "32", "--repeats", "2"]
STEPS = ["1_baseline", "2_reuse_buffers", "3_use_pin_memory", "4_use_fp16", "5_multi_streams",
         "6_multi_threads", "7_cuda_graph", "8_multi_context", "9_multi_profiles"]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpu")
    build_engines(path, [["--precision", "fp32"], ["--precision", "fp16"],
                         ["--precision", "fp16", "--profile", "1:16:32", "--profile", "33:128:128",
                          "--name", "resnet18_fp16_2profiles"], ["--precision", "fp16", "--input", "uint8"]])
    return path


@pytest.mark.parametrize("step", STEPS)
def test_step_runs_and_matches_the_reference(workdir, step):
    args = SMALL + (["--batch-size", "64", "--small-batch-size", "8"] if step == "9_multi_profiles" else [])
    result = run_script(f"{step}.py", *args, cwd=workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    saved = json.loads((workdir / "reports" / f"{step}.json").read_text())
    assert saved["check"]["passed"] and saved["backend"] == "torch" and "not TensorRT" in saved["backend_label"]
    assert saved["stand_in"] == "compiled" and saved["backend_label"].startswith("compiled PyTorch stand-in (Inductor")
    assert saved["startup_s"] > 0 and "recompiling" not in result.stdout  # the build's compile cache was used
    assert saved["last3_ms"] > 0 and saved["total_ms"] >= saved["last3_ms"]
    windows = saved["windows_ms_per_batch"]
    assert len(windows) == 2 and min(windows) <= saved["median_ms_per_batch"] <= max(windows)
    assert saved["spread_pct"] == pytest.approx((max(windows) - min(windows)) / saved["median_ms_per_batch"] * 100)
    assert 0 < saved["latency_p50_ms"] <= saved["latency_p99_ms"]
    assert saved["floor"]["h2d_ms"] > 0 and saved["floor"]["inference_ms"] > 0 and saved["output_ms_per_batch"] > 0
    assert len(saved["results_done_ms"]) == 8  # 2 windows of 4 batches
    held = saved["memory"]
    contexts = 2 if step in ("8_multi_context", "9_multi_profiles") else 1
    assert len(held["activations_mib"]) == contexts and all(size > 0 for size in held["activations_mib"])
    # Step 1 frees its device buffers after every batch; pinned host memory comes with step 3.
    assert held["weights_mib"] > 0 and (held["buffers_mib"] > 0) == (step != "1_baseline")
    assert (held["pinned_host_mib"] > 0) == (step >= "3")
    assert held["peak_in_use_mib"] >= held["weights_mib"] + sum(held["activations_mib"]) + held["buffers_mib"]
    assert "GPU memory: weights" in result.stdout
    assert "windows of 4 batches" in result.stdout and "floor (each on its own" in result.stdout
    check_lesson_figures(step, saved)


def check_lesson_figures(step, saved):
    """What steps 3, 8 and 9 measure beside their timed run, to show their lesson's cost or where it pays."""
    if step == "3_use_pin_memory":
        staging = saved["staging"]
        assert len(staging["windows_ms"]) == 2 and staging["ms_per_batch"] > 0
        assert staging["per_image_us"] == pytest.approx(staging["ms_per_batch"] * 1e3 / 32)
    if step == "8_multi_context":
        rows = saved["contexts_compared"]["rows"]
        assert [row["batch_size"] for row in rows] == [32, 16]
        for row in rows:
            one, two = row["one_context"], row["two_contexts"]
            assert one["check"]["passed"] and two["check"]["passed"] and len(two["windows_ms_per_batch"]) == 2
            assert row["speedup"] == pytest.approx(one["median_ms_per_batch"] / two["median_ms_per_batch"])
    if step == "9_multi_profiles":
        one_profile = saved["one_profile"]
        assert one_profile["check"]["passed"] and one_profile["profiles"] == [[1, 128, 128]]
        assert one_profile["engine"].endswith("resnet18_fp16.torch.pt") and one_profile["median_ms_per_batch"] > 0


def test_fp16_holds_less_than_fp32_and_a_second_context_adds_a_pool(workdir):
    """Read off the results of the runs above (steps 3, 4, 7, 8), as the source tutorial reads its timelines."""
    fp32, fp16, one, two = (json.loads((workdir / "reports" / f"{step}.json").read_text())["memory"] for step in
                            ("3_use_pin_memory", "4_use_fp16", "7_cuda_graph", "8_multi_context"))
    assert fp16["weights_mib"] < 0.6 * fp32["weights_mib"]
    assert fp16["activations_mib"][0] < fp32["activations_mib"][0]
    assert len(two["activations_mib"]) == 2 * len(one["activations_mib"])


def load_step(step, monkeypatch, workdir, *args):
    """Import a step as a module and point sys.argv at it, so tests can wrap its functions and call main()."""
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", [f"{step}.py", *SMALL, *args])
    spec = importlib.util.spec_from_file_location(step, REPO / f"{step}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count_calls(monkeypatch, module, owner, name):
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("step, per_batch", [("1_baseline", True), ("2_reuse_buffers", False)])
def test_device_allocations_per_batch(workdir, monkeypatch, step, per_batch):
    """Step 1 calls cudaMalloc for every batch; step 2 allocates the same number whatever the batch count."""
    counts = []
    for batches in ("4", "6"):
        module = load_step(step, monkeypatch, workdir, "--batches", batches)
        mallocs = count_calls(monkeypatch, module, module.cuda, "malloc")
        module.main()
        counts.append(len(mallocs))
    assert (counts[1] > counts[0]) == per_batch, counts


@pytest.mark.parametrize("name, input_dtype", [("resnet18_fp16", "float32"), ("resnet18_fp16_uint8", "uint8")])
def test_standin_allocates_nothing_after_first_enqueue_of_a_shape(workdir, monkeypatch, name, input_dtype):
    import torch
    from common import cuda, engine
    monkeypatch.chdir(workdir)
    loaded = engine.load("torch", f"engines/{name}.torch.pt", "fp16", cuda.require_gpu(), input_dtype=input_dtype)
    context, stream = loaded.engine.create_execution_context(), cuda.create_stream()
    images, logits = cuda.malloc(loaded.input.nbytes(32)), cuda.malloc(loaded.output.nbytes(32))
    context.set_input_shape("input", loaded.input.shape_for(32))
    context.set_tensor_address("input", images)
    context.set_tensor_address("logits", logits)
    assert context.execute_async_v3(stream)
    cuda.synchronize(stream)
    segments = torch.cuda.memory_stats()["segment.all.allocated"]
    for _ in range(5):
        assert context.execute_async_v3(stream)
    cuda.synchronize(stream)
    assert torch.cuda.memory_stats()["segment.all.allocated"] == segments
    assert not context.set_input_shape("input", loaded.input.shape_for(200))  # outside the profile, as TensorRT refuses


@pytest.mark.parametrize("step, pinned", [("2_reuse_buffers", False), ("3_use_pin_memory", True)])
def test_host_buffers_are_page_locked_from_step_3(workdir, monkeypatch, step, pinned):
    module = load_step(step, monkeypatch, workdir)
    copy = "memcpy_htod_async" if pinned else "memcpy_htod"
    original, pinned_at_copy = getattr(module.cuda, copy), []

    def checked(device_address, host, *rest):
        pinned_at_copy.append(module.cuda.is_pinned(host))  # at the copy: the floor frees its own buffer when done
        return original(device_address, host, *rest)
    monkeypatch.setattr(module.cuda, copy, checked)
    module.main()
    assert pinned_at_copy and all(is_pinned == pinned for is_pinned in pinned_at_copy)


def test_step5_next_h2d_starts_before_the_current_inference_ends(workdir, monkeypatch):
    """Timing events around each H2D and inference: batch i+1's copy starts before batch i's inference ends."""
    from cuda.bindings import runtime as cudart
    from common import cuda
    module = load_step("5_multi_streams", monkeypatch, workdir, "--batch-size", "128")
    starts, ends = [], []

    def timing_event(stream):
        event = cuda.check(cudart.cudaEventCreate())
        cuda.record(event, stream)
        return event
    original_copy, original_infer = module.copy_in, module.infer
    monkeypatch.setattr(module, "copy_in", lambda stream, slot, images: (
        starts.append(timing_event(stream)), original_copy(stream, slot, images)))

    def timed_infer(context, stream, *args):
        logits = original_infer(context, stream, *args)
        ends.append(timing_event(stream))
        return logits
    monkeypatch.setattr(module, "infer", timed_infer)
    module.main()
    # after the warm-up (2 copies, 2 inferences): copy k+1 of the timed loop vs inference k
    starts, ends = starts[2:], ends[2:]
    overlaps = [cuda.check(cudart.cudaEventElapsedTime(starts[index + 1], ends[index])) > 0
                for index in range(len(ends) - 1)]
    assert all(overlaps), overlaps


@pytest.mark.parametrize("step, waits", [("5_multi_streams", True), ("6_multi_threads", False)])
def test_main_loop_waits_on_output_processing_only_before_step_6(workdir, monkeypatch, step, waits):
    """With a slow output stage, step 6 queues batch i+1 before batch i's output is processed; step 5 cannot."""
    module = load_step(step, monkeypatch, workdir, "--batches", "6")
    events = []
    original_output, original_infer = module.process_output, module.infer

    def slow_output(index, logits):
        time.sleep(0.05)
        original_output(index, logits)
        events.append(("processed", index))

    def recorded_infer(*args):
        events.append(("queued", sum(event[0] == "queued" for event in events) - 2))  # 2 warm-up calls
        return original_infer(*args)
    monkeypatch.setattr(module, "process_output", slow_output)
    monkeypatch.setattr(module, "infer", recorded_infer)
    module.main()
    ran_ahead = [events.index(("queued", index + 1)) < events.index(("processed", index)) for index in range(5)]
    assert any(ran_ahead) != waits, events


def graph_fixture(workdir, monkeypatch):
    module = load_step("7_cuda_graph", monkeypatch, workdir)
    from common import cuda, engine
    loaded = engine.load("torch", "engines/resnet18_fp16.torch.pt", "fp16", cuda.require_gpu())
    context, stream = loaded.engine.create_execution_context(), cuda.create_stream()
    run = type("Run", (), {"input": loaded.input, "output": loaded.output})
    output = cuda.malloc(loaded.output.nbytes(64))
    context.set_tensor_address(loaded.output.name, output)
    slot = module.InputSlot(cuda.malloc(loaded.input.nbytes(64)), cuda.create_event(), cuda.create_event())
    return module, cuda, context, stream, run, slot, output


def logits_of(cuda, graphs_or_context, stream, slot, output, images, launch):
    cuda.memcpy_htod(slot.address, images, stream)
    launch(slot, len(images))
    host = np.empty((len(images), 1000), np.float32)
    cuda.memcpy_dtoh(host, output, stream)
    return host


def test_graph_replay_equals_eager_and_recaptures_on_a_new_shape(workdir, monkeypatch):
    module, cuda, context, stream, run, slot, output = graph_fixture(workdir, monkeypatch)
    from common import data
    graphs = module.InferenceGraphs(context, stream, run)
    eager = module.InferenceGraphs(context, stream, run)
    eager.capturable = False
    for batch_size in (32, 64, 32):
        images = data.make_batches(1, batch_size, seed=batch_size)[0]
        replayed = logits_of(cuda, graphs, stream, slot, output, images, graphs.launch)
        direct = logits_of(cuda, eager, stream, slot, output, images, eager.enqueue)
        np.testing.assert_array_equal(replayed, direct)
    assert graphs.capturable and sorted(size for _, size in graphs.graphs) == [32, 64]  # one capture per shape


def test_each_replay_sets_the_contexts_shape_and_address_back_to_its_graphs(workdir, monkeypatch):
    """TensorRT ties a graph to the context's state at its capture: a replay after another capture changed the
    context's input shape or address must first set them back (issue 19, hazard a)."""
    module, cuda, context, stream, run, slot, output = graph_fixture(workdir, monkeypatch)
    from common import data
    other = module.InputSlot(cuda.malloc(run.input.nbytes(64)), cuda.create_event(), cuda.create_event())
    graphs = module.InferenceGraphs(context, stream, run)
    replays, launch_graph = [], cuda.launch_graph

    def recorded(graph, on_stream):
        replays.append((context._addresses[run.input.name], context.get_tensor_shape(run.input.name)[0]))
        launch_graph(graph, on_stream)
    monkeypatch.setattr(module.cuda, "launch_graph", recorded)
    for used, size in ((slot, 32), (other, 64), (slot, 32), (other, 32)):
        cuda.memcpy_htod(used.address, data.make_batches(1, size, seed=size)[0], stream)
        graphs.launch(used, size)
    cuda.synchronize(stream)
    assert replays == [(slot.address, 32), (other.address, 64), (slot.address, 32), (other.address, 32)]


def test_uncapturable_engine_falls_back_with_a_note(workdir, monkeypatch, capsys):
    module, cuda, context, stream, run, slot, output = graph_fixture(workdir, monkeypatch)
    graphs = module.InferenceGraphs(context, stream, run)
    def refuse(stream):
        raise module.CourseError("capture refused")
    monkeypatch.setattr(module.cuda, "begin_capture", refuse)
    from common import data
    images = data.make_batches(1, 32, seed=3)[0]
    logits_of(cuda, graphs, stream, slot, output, images, graphs.launch)
    assert not graphs.capturable and "cannot be captured into a CUDA graph (capture refused)" in capsys.readouterr().out


def test_two_threads_capturing_new_shapes_at_once_both_capture(workdir, monkeypatch):
    """Two contexts, each in its own thread, meet batch sizes they have not run yet at the same moment: each size's
    first enqueue and capture take cuda.capture_lock, so neither invalidates the other's capture (without it, on an
    H200, both captures failed with cudaErrorStreamCaptureInvalidated), and every replay equals a direct run."""
    import threading
    from common import data
    fixtures = [graph_fixture(workdir, monkeypatch) for _ in range(2)]
    start = threading.Barrier(2)
    sizes, replayed, errors = (8, 24, 40, 64), {}, []

    def capture_all(index):
        module, cuda, context, stream, run, slot, output = fixtures[index]
        graphs = module.InferenceGraphs(context, stream, run)
        start.wait()
        try:
            for size in sizes:
                images = data.make_batches(1, size, seed=size)[0]
                replayed[index, size] = logits_of(cuda, graphs, stream, slot, output, images, graphs.launch)
            assert graphs.capturable and sorted(size for _, size in graphs.graphs) == list(sizes)
        except Exception as error:  # noqa: BLE001 (reported below, from the main thread)
            errors.append(error)
    threads = [threading.Thread(target=capture_all, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    mismatches = []  # all of them, each named, so that one failure says what differs and by how much
    for size in sizes:
        images = data.make_batches(1, size, seed=size)[0]
        wants = [direct_logits(fixture, images) for fixture in fixtures]
        for index in range(2):
            for reference in dict.fromkeys((index, 0)):  # its own context's direct run, and context 0's
                got, want = replayed[index, size], wants[reference]
                if not np.array_equal(got, want):  # a NaN too
                    difference = np.abs(got - want)
                    rows = np.nonzero(~(got == want).all(axis=1))[0].tolist()
                    mismatches.append(f"thread {index}, batch of {size}, against a direct run on context {reference}: "
                                      f"max abs difference {difference.max():.3g} in rows {rows}")
    assert not mismatches, "\n".join(mismatches)


def direct_logits(fixture, images):
    module, cuda, context, stream, run, slot, output = fixture
    direct = module.InferenceGraphs(context, stream, run)
    direct.capturable = False
    return logits_of(cuda, direct, stream, slot, output, images, direct.enqueue)


def test_step8_contexts_run_concurrently_and_share_the_batches(workdir, monkeypatch):
    import threading
    module = load_step("8_multi_context", monkeypatch, workdir, "--batches", "8")
    threads = set()
    original = module.infer

    def recorded(*args):
        threads.add(threading.current_thread().name)
        return original(*args)
    monkeypatch.setattr(module, "infer", recorded)
    module.main()
    assert len({name for name in threads if name.startswith("context")}) == 2, threads


def test_step9_routes_batches_to_their_profiles_and_refuses_others(workdir):
    result = run_script("9_multi_profiles.py", *SMALL, "--batch-size", "64", "--small-batch-size", "8", cwd=workdir)
    assert result.returncode == 0, result.stderr
    refused = run_script("9_multi_profiles.py", *SMALL, "--batch-size", "200", cwd=workdir)
    assert refused.returncode == 1 and "batch size 200 is outside every profile" in refused.stderr
    assert "Traceback" not in refused.stderr


GRAPHS_PER_PROFILE = """
import json, sys
from torch._dynamo.utils import counters
from common import cuda, engine
loaded = engine.load("torch", sys.argv[1], "fp16", cuda.require_gpu())
after_load = counters["stats"]["unique_graphs"]
stream = cuda.create_stream()
for profile, sizes in enumerate(json.loads(sys.argv[2])):
    context = loaded.engine.create_execution_context()
    context.set_optimization_profile_async(profile, stream)
    for size in sizes:
        context.set_input_shape("input", loaded.input.shape_for(size))
        context.set_tensor_address("input", cuda.malloc(loaded.input.nbytes(size)))
        context.set_tensor_address("logits", cuda.malloc(loaded.output.nbytes(size)))
        assert context.execute_async_v3(stream)
cuda.synchronize(stream)
print(json.dumps({"after_load": after_load, "after_runs": counters["stats"]["unique_graphs"]}))
"""


@pytest.mark.parametrize("name, sizes, graphs", [
    ("resnet18_fp16_2profiles", [[2, 16, 32], [33, 100, 128]], 2),  # a graph per profile, compiled at its opt
    ("resnet18_fp16", [[2, 16, 33, 128]], 1),
])
def test_the_stand_in_loads_a_graph_per_profile_and_runs_each_profiles_batches_without_compiling(workdir, name,
                                                                                                 sizes, graphs):
    """As TensorRT has kernels per profile: each profile's batches of 2 and more run the graph compiled for it at
    the build (found in the cache at the load); none of them compiles another one."""
    result = subprocess.run([sys.executable, "-c", GRAPHS_PER_PROFILE, f"engines/{name}.torch.pt", json.dumps(sizes)],
                            cwd=workdir, text=True, capture_output=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    counted = json.loads(result.stdout.splitlines()[-1])
    assert counted == {"after_load": graphs, "after_runs": graphs}, counted
    assert "recompiling" not in result.stdout


LADDER_FIELDS = {"step", "stem", "title", "lesson", "backend", "backend_label", "engine", "precision", "device",
                 "batches", "batch_size", "last3_ms", "total_ms", "batch_starts_ms", "results_done_ms",
                 "images_per_s", "check", "under_nsys", "command", "date", "versions"}


def test_step12_runs_step8s_pipeline_on_uint8_batches(workdir, monkeypatch):
    """Step 12 end to end: uint8 copies through step 8's two contexts, outputs checked, the ladder's JSON
    fields, and the latency side for both engines with the uint8 copy the shorter."""
    import threading
    module = load_step("12_gpu_preprocessing", monkeypatch, workdir, "--batches", "6")
    copies, threads = [], set()
    original_copy, original_infer = module.step8.copy_in, module.step8.infer

    def recorded_copy(stream, slot, images):
        copies.append((images.dtype, images.shape))
        return original_copy(stream, slot, images)

    def recorded_infer(*args):
        threads.add(threading.current_thread().name)
        return original_infer(*args)
    monkeypatch.setattr(module.step8, "copy_in", recorded_copy)
    monkeypatch.setattr(module.step8, "infer", recorded_infer)
    module.main()
    timed = copies[:2 * 2 + 6]  # the two pipelines' warm-ups (2 copies each), then the 6 batches
    assert all(dtype == np.uint8 and shape == (32, 224, 224, 3) for dtype, shape in timed), timed
    assert len({name for name in threads if name.startswith("context")}) == 2, threads

    saved = json.loads((workdir / "reports" / "12_gpu_preprocessing.json").read_text())
    assert LADDER_FIELDS <= saved.keys() and saved["step"] == 12 and saved["builds_on"] == "8_multi_context"
    assert saved["check"]["passed"] and saved["check"]["tolerance"]["max_rel_err"] == 2e-2  # FP16's
    assert saved["engine"] == "engines/resnet18_fp16_uint8.torch.pt" and "not TensorRT" in saved["backend_label"]
    rows = saved["latency_alone"]["rows"]
    assert [(row["batch_size"], row["input"]) for row in rows] == [
        (size, dtype) for size in (1, 8, 32) for dtype in ("float32", "uint8")]
    assert all(row["check"]["passed"] and 0 < row["h2d_ms"] < row["latency_ms"] for row in rows), rows
    h2d_at_32 = {row["input"]: row["h2d_ms"] for row in rows if row["batch_size"] == 32}
    assert h2d_at_32["uint8"] < h2d_at_32["float32"], h2d_at_32


@pytest.mark.parametrize("step, args, message", [
    ("12_gpu_preprocessing", ["--engine", "engines/resnet18_fp16.torch.pt"],
     "resnet18_fp16.torch.pt takes float32 NCHW images but this step sends uint8 NHWC"),
    ("12_gpu_preprocessing", ["--fp32-input-engine", "engines/resnet18_fp16_uint8.torch.pt"],
     "resnet18_fp16_uint8.torch.pt takes uint8 NHWC images but this step sends float32 NCHW"),
    ("8_multi_context", ["--engine", "engines/resnet18_fp16_uint8.torch.pt"],
     "resnet18_fp16_uint8.torch.pt takes uint8 NHWC images but this step sends float32 NCHW"),
])
def test_engine_with_the_wrong_input_type_is_refused_in_one_line(workdir, step, args, message):
    result = run_script(f"{step}.py", *SMALL, *args, cwd=workdir)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr.strip().splitlines()[-1], result.stderr


def test_step13_runs_the_int8_engine_on_step8s_pipeline_and_reports_its_accuracy(workdir):
    """Step 13 end to end on the stand-in's INT8 engine (calibrated at build time on 2 batches of 32 images): the
    ladder's fields, INT8's accuracy against fp32 within its own limits, and a time that does not claim to be
    INT8's. Then each side refuses the other's engine in one line."""
    built = run_script("0_build.py", "--backend", "torch", "--precision", "int8", "--calibration-batches", "2",
                       cwd=workdir)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    result = run_script("13_int8.py", *SMALL, cwd=workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    saved = json.loads((workdir / "reports" / "13_int8.json").read_text())
    assert LADDER_FIELDS <= saved.keys() and saved["step"] == 13 and saved["builds_on"] == "8_multi_context"
    assert saved["precision"] == "int8" and saved["check"]["passed"] and "not TensorRT" in saved["backend_label"]
    accuracy = saved["accuracy"]
    assert accuracy["passed"] and accuracy["tolerance"] == {"max_rel_err": 1e-1, "min_top1": 0.95, "min_top5": 0.99}
    assert 0 < accuracy["rel_err"] <= 1e-1 and 0.95 <= accuracy["top1_agreement"] <= accuracy["top5_agreement"] <= 1
    int8 = saved["int8"]
    assert (int8["calibration_batches"], int8["calibration_seed"], int8["speed_is_int8"]) == (2, 0, False)
    assert int8["quantizer"] and "not INT8's" in int8["note"] and "not INT8's" in result.stdout
    for step, engine in (("13_int8", "resnet18_fp16"), ("4_use_fp16", "resnet18_int8")):
        refused = run_script(f"{step}.py", *SMALL, "--engine", f"engines/{engine}.torch.pt", cwd=workdir)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert "this step needs an" in refused.stderr.strip().splitlines()[-1], refused.stderr

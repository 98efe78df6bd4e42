"""CPU tests of the steps' own logic that needs no GPU: TensorRT's refusals stop a step, step 8's and step 9's
comparisons cut and route batches as they say, steps 1 and 2 copy on the inference's stream, and a side
measurement's timer leaves the trace's ranges alone."""
import numpy as np
import pytest

from common import cuda, engine, nvtx, results, steps
from common.errors import CourseError


class RefusingContext:
    """An execution context whose setters return False, as TensorRT's do for a shape outside the profile or a
    misaligned address."""

    def __init__(self, refuse):
        self.refuse = refuse

    def set_input_shape(self, name, shape):
        return self.refuse != "shape"

    def set_tensor_address(self, name, memory):
        return self.refuse != "address"

    def execute_async_v3(self, stream_handle):
        raise AssertionError("must not enqueue after a refusal")


@pytest.mark.parametrize("refuse, message", [("shape", "TensorRT refused the input shape (8, 3, 224, 224)"),
                                             ("address", "TensorRT refused the input's address")])
def test_a_refused_shape_or_address_stops_the_enqueue(refuse, message):
    step7 = steps.load("7_cuda_graph")
    spec = engine.TensorSpec("input", (-1, 3, 224, 224), np.dtype(np.float32))
    run = type("Run", (), {"input": spec})
    graphs = step7.InferenceGraphs(RefusingContext(refuse), stream=1, run=run)
    with pytest.raises(CourseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        graphs.enqueue(step7.InputSlot(address=4096, copied=None, consumed=None), 8)


def test_accepted_passes_true_and_refuses_false():
    engine.accepted(True, "anything")
    with pytest.raises(CourseError, match="TensorRT refused the input shape: see its log above"):
        engine.accepted(False, "the input shape")


class RecordedCudart:
    """The cudart calls step 1's batch makes, recorded in order with the stream each is queued on."""

    def __init__(self, monkeypatch):
        self.calls, success = [], cuda.cudart.cudaError_t.cudaSuccess
        kinds = {cuda.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice: "H2D",
                 cuda.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost: "D2H"}
        addresses = iter(range(0x10000, 0x1000000, 0x10000))
        recorders = {
            "cudaMalloc": lambda nbytes: self.record(("cudaMalloc",), (success, next(addresses))),
            "cudaFree": lambda address: self.record(("cudaFree",), (success,)),
            "cudaMemcpy": lambda *args: self.record(("cudaMemcpy", kinds[args[3]]), (success,)),
            "cudaMemcpyAsync": lambda *args: self.record(("cudaMemcpyAsync", kinds[args[3]], args[4]), (success,)),
            "cudaStreamSynchronize": lambda stream: self.record(("cudaStreamSynchronize", stream), (success,)),
        }
        for name, recorder in recorders.items():
            monkeypatch.setattr(cuda.cudart, name, recorder)

    def record(self, call, returned):
        self.calls.append(call)
        return returned


class RecordedContext(RefusingContext):
    """An execution context that accepts every shape and address and records its enqueues."""

    def __init__(self, calls):
        super().__init__(refuse=None)
        self.calls = calls

    def execute_async_v3(self, stream_handle):
        self.calls.append(("execute_async_v3", stream_handle))
        return True


def test_step1s_synchronous_copies_are_queued_on_the_inference_stream_and_waited_for(monkeypatch):
    """cudaMemcpy runs on the legacy default stream, which the course's non-blocking streams do not wait for, and
    from pageable memory it can return before the data has landed: the inference could read a half-copied batch."""
    step1, cudart = steps.load("1_baseline"), RecordedCudart(monkeypatch)
    run = type("Run", (), {"input": engine.TensorSpec("input", (-1, 3, 4, 4), np.dtype("float32")),
                           "output": engine.TensorSpec("logits", (-1, 10), np.dtype("float32"))})
    stream = 7
    logits = step1.infer(RecordedContext(cudart.calls), stream, run, np.zeros((2, 3, 4, 4), np.float32))
    assert logits.shape == (2, 10)
    assert cudart.calls == [("cudaMalloc",), ("cudaMalloc",),
                            ("cudaMemcpyAsync", "H2D", stream), ("cudaStreamSynchronize", stream),
                            ("execute_async_v3", stream), ("cudaStreamSynchronize", stream),
                            ("cudaMemcpyAsync", "D2H", stream), ("cudaStreamSynchronize", stream),
                            ("cudaFree",), ("cudaFree",)]


def test_step8_rebatches_the_same_images_and_drops_a_remainder():
    step8 = steps.load("8_multi_context")
    images = [np.arange(10 * 2).reshape(10, 2), np.arange(20, 40).reshape(10, 2)]
    batches = step8.rebatched(images, 6)
    assert [len(batch) for batch in batches] == [6, 6, 6]
    np.testing.assert_array_equal(np.concatenate(batches), np.concatenate(images)[:18])


def test_step9_routes_each_batch_to_the_profile_that_holds_it():
    step9 = steps.load("9_multi_profiles")
    loaded = type("Loaded", (engine.ProfileChecks,), {"metadata": {"profiles": [[1, 16, 32], [33, 128, 128]]},
                                                      "path": "engines/x"})()
    batches = [np.zeros(size) for size in (128, 16, 128, 16, 100)]
    assert step9.routes(loaded, batches) == [(0, [1, 3]), (1, [0, 2, 4])]


def test_versus_says_within_noise_when_the_windows_overlap():
    def figures(*windows):
        return {"windows_ms_per_batch": list(windows), "median_ms_per_batch": float(np.median(windows))}
    assert results.versus(figures(1.0, 1.1), figures(2.0, 2.2)) == {"speedup": pytest.approx(2.0),
                                                                     "within_noise": False}
    assert results.versus(figures(1.0, 1.5), figures(1.4, 1.6))["within_noise"]


def test_a_side_timer_marks_no_trace_range(monkeypatch):
    started = []
    monkeypatch.setattr(nvtx, "start", lambda message, **_: started.append(message))
    monkeypatch.setattr(nvtx, "end", lambda _: None)
    for traced in (False, True):
        timer = results.Timer(batches=4, windows=1, traced=traced)
        for index in range(4):
            timer.start_batch(index)
            timer.batch_done(index)
        assert len(timer.windows_ms_per_batch) == 1
    assert started == ["all batches", "last 3 batches"]  # the traced timer's only

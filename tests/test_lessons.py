"""CPU tests of the steps' own logic that needs no GPU: TensorRT's refusals stop a step, step 8's and step 9's
comparisons cut and route batches as they say, and a side measurement's timer leaves the trace's ranges alone."""
import numpy as np
import pytest

from common import engine, nvtx, results, steps
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

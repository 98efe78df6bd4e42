"""Steady-state timing: the timer's windows, the statistics, noise, and the output processing (CPU only)."""
import numpy as np
import pytest

from common import results, stats
from common.report import ladder


class FakeClock:
    """time.perf_counter for the timer: each call returns the next scripted instant (seconds)."""

    def __init__(self, instants):
        self.instants = iter(instants)

    def __call__(self):
        return next(self.instants)


def run_timer(monkeypatch, batches, windows, starts, ends, order=None):
    """Drive a Timer through batches started and finished at the given instants (results in `order`)."""
    order = order or range(batches * windows)
    clock = iter(list(starts) + list(ends))
    monkeypatch.setattr(results.time, "perf_counter", lambda: next(clock))
    timer = results.Timer(batches, windows)
    for index in range(batches * windows):
        timer.start_batch(index)
    for index in order:
        timer.batch_done(index)
    return timer


def test_each_window_is_the_time_between_its_first_and_last_result(monkeypatch):
    # 2 windows of 4 batches; results every 10 ms in the first window, every 20 ms in the second
    ends = [1.00, 1.01, 1.02, 1.03, 1.05, 1.07, 1.09, 1.11]
    timer = run_timer(monkeypatch, 4, 2, starts=[0.9] * 8, ends=ends)
    assert timer.windows_ms_per_batch == pytest.approx([10.0, 20.0])
    assert timer.last3_ms == pytest.approx(60.0)  # the tutorial's figure: the last three results
    assert timer.total_ms == pytest.approx(210.0)


def test_pipeline_filling_stays_out_of_the_windows(monkeypatch):
    """A first result that comes late (the pipeline filling) does not slow the steady-state figure."""
    ends = [1.50, 1.51, 1.52, 1.53]
    timer = run_timer(monkeypatch, 4, 1, starts=[1.0, 1.0, 1.0, 1.0], ends=ends)
    assert timer.windows_ms_per_batch == pytest.approx([10.0])
    assert timer.total_ms == pytest.approx(530.0)


def test_latency_runs_from_a_batch_start_to_its_result_whatever_the_order(monkeypatch):
    starts = [0.0, 0.1, 0.2, 0.3]
    ends = [0.25, 0.40, 0.70, 0.90]  # the results of batches 1, 0, 3, 2, at these instants
    timer = run_timer(monkeypatch, 4, 1, starts, ends, order=[1, 0, 3, 2])
    assert sorted(timer.latencies_ms()) == pytest.approx([150.0, 400.0, 400.0, 700.0])


def test_timer_freezes_the_start_up_objects():
    import gc
    gc.unfreeze()
    results.Timer(4, 1)
    assert gc.get_freeze_count() > 0
    gc.unfreeze()


def test_median_spread_and_percentiles():
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.spread_pct([9.0, 10.0, 11.0]) == pytest.approx(20.0)
    assert stats.spread_pct([5.0]) == 0
    assert stats.percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_a_large_spread_warns_and_a_small_one_does_not():
    assert stats.spread_warning("the windows", [10.0, 10.2, 10.4]) is None
    warning = stats.spread_warning("the windows", [10.0, 10.5, 12.0])
    assert warning.startswith("warning: the spread of the windows is 19.0% (above 10%)")


@pytest.mark.parametrize("a, b, within", [
    ([10.0, 10.5, 11.0], [10.8, 11.5, 12.0], True),  # ranges overlap at 10.8..11.0
    ([10.0, 10.5, 10.7], [10.8, 11.5, 12.0], False),
    ([5.0], [5.0], True),
])
def test_within_noise_means_the_windows_overlap(a, b, within):
    assert stats.within_noise(a, b) is within
    assert stats.within_noise(b, a) is within


def result(step, windows, batch_size=128):
    median = stats.median(windows)
    return {"step": step, "stem": f"{step}_x", "last3_ms": 3 * median, "batch_size": batch_size,
            "windows_ms_per_batch": windows, "images_per_s": batch_size / median * 1e3}


def test_a_gain_inside_the_noise_is_called_within_noise():
    slow, barely = result(1, [20.0, 21.0, 24.0]), result(2, [19.0, 20.5, 22.0])
    verdict, factor = ladder.compare(barely, slow)
    assert verdict == "within noise" and factor == pytest.approx(21.0 / 20.5)
    faster = result(3, [9.8, 10.0, 10.3])
    assert ladder.compare(faster, barely)[0] == "faster"
    assert ladder.compare(barely, faster)[0] == "slower"


def test_another_workload_is_not_compared_as_a_gain():
    mixed = result(9, [3.0, 3.1], batch_size=72)
    assert ladder.compare(mixed, result(8, [2.0, 2.1]))[0] == "other workload"


def test_speedups_name_within_noise_steps():
    steps = [result(1, [20.0, 22.0]), result(2, [21.0, 23.0]), result(3, [10.0, 10.5])]
    pairs = ladder.speedups(steps)
    assert pairs[0] == (("within noise", 1.0), None)
    assert pairs[1][1][0] == "within noise"
    assert pairs[2][1][0] == "faster" and pairs[2][0][1] == pytest.approx(21.0 / 10.25)


def test_results_from_before_windows_count_as_one_window():
    old = {"step": 1, "stem": "1_x", "last3_ms": 30.0, "batch_size": 128}
    assert ladder.windows(old) == [10.0]
    assert ladder.ms_per_batch(old) == 10.0
    assert ladder.images_per_second(old) == pytest.approx(12800.0)


def test_top5_by_partial_sort_equals_a_full_sort():
    rng = np.random.default_rng(1)
    probabilities = rng.random((128, 1000)).astype(np.float32)
    expected = np.argsort(-probabilities, axis=1, kind="stable")[:, :5]
    assert (results.top_classes(probabilities, 5) == expected).all()


def test_output_processing_cost_is_measured_in_ms():
    logits = np.zeros((128, 1000), dtype=np.float32)
    assert 0 < results.output_cost_ms(logits) < 1000


class FakeGpu:
    """The cuda calls floor.measure makes, on no GPU: handles are numbers, time advances 2 ms per event."""

    def __init__(self, capturable=True):
        self.live, self.capturable, self.clock, self.next_handle = set(), capturable, 0.0, 1

    def make(self, kind):
        handle = (kind, self.next_handle)
        self.next_handle += 1
        self.live.add(handle)
        return handle

    def release(self, handle):
        self.live.remove(handle)

    def install(self, monkeypatch):
        from common import cuda, floor
        made = {"create_stream": "stream", "create_timing_event": "event", "malloc": "device"}
        for name, kind in made.items():
            monkeypatch.setattr(cuda, name, lambda *args, kind=kind: self.make(kind))
        for name in ("destroy_stream", "destroy_event", "free", "destroy_graph"):
            monkeypatch.setattr(cuda, name, self.release)
        pinned = {}

        def pinned_empty(shape, dtype):
            array = np.zeros(shape, dtype)
            pinned[id(array)] = self.make("pinned")
            return array
        monkeypatch.setattr(cuda, "pinned_empty", pinned_empty)
        monkeypatch.setattr(cuda, "free_host", lambda array: self.release(pinned.pop(id(array))))
        for name in ("synchronize", "event_synchronize", "memcpy_htod_async", "launch_graph", "begin_capture"):
            monkeypatch.setattr(cuda, name, lambda *args: None)
        monkeypatch.setattr(cuda, "record", lambda *args: None)
        monkeypatch.setattr(cuda, "elapsed_ms", lambda start, end: 10.0)

        def end_capture(stream):
            if not self.capturable:
                raise floor.CourseError("operation not permitted when stream is capturing")
            return self.make("graph")
        monkeypatch.setattr(cuda, "end_capture", end_capture)


def fake_run():
    from common.engine import TensorSpec

    class Context:
        def set_input_shape(self, *args):
            return True

        def set_tensor_address(self, *args):
            return True

        def execute_async_v3(self, stream):
            return True

    class Loaded:
        def profile_for(self, batch_size):
            return 0

    engine = type("Engine", (), {"create_execution_context": lambda self: Context()})()
    return type("Run", (), {"engine": engine, "loaded": Loaded(),
                            "input": TensorSpec("input", (-1, 3, 4, 4), np.dtype(np.float32)),
                            "output": TensorSpec("logits", (-1, 10), np.dtype(np.float32))})()


@pytest.mark.parametrize("capturable", [True, False])
def test_the_floor_releases_what_it_makes_and_says_how_it_timed(monkeypatch, capsys, capturable):
    from common import floor
    gpu = FakeGpu(capturable)
    gpu.install(monkeypatch)
    figures, method = floor.measure(fake_run(), batch_size=8)
    assert figures == {"h2d_ms": 2.0, "inference_ms": 2.0}  # 10 ms per round of 5 batches
    assert method == (floor.METHOD if capturable else floor.UNCAPTURED)
    assert gpu.live == set(), gpu.live  # streams, events, buffers, pinned memory and graph all released
    assert ("note: the floor's inference is timed without a CUDA graph" in capsys.readouterr().out) != capturable


def test_a_step_beyond_the_ladder_is_compared_with_the_rung_it_names():
    beyond = {**result(12, [2.8, 2.9]), "builds_on": "8_multi_context"}
    assert not ladder.is_ladder_step(beyond) and ladder.has_timed_window(beyond)
    assert ladder.rung_of(beyond) == 8 and ladder.is_ladder_step(result(8, [3.1, 3.2]))

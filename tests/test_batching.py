"""CPU tier: the batching logic of steps 10 and 11 on synthetic timings, a fake clock and many threads.

The knee finder and the trade-offs, the sweep going on past a batch that runs out of memory, the arrival
process, and the batcher: its policy (max size, max wait from the oldest request, order), no request
lost or served twice under a burst of submitting threads or at shutdown. Also the steps' plots and
option errors, which need no GPU.
"""
import inspect
import itertools
import threading
import time

import numpy as np
import pytest

from common import batching, plots, steps, torch_engine
from common.batching import SweepRow
from common.errors import CourseError
from conftest import run_script


def rows_from(throughputs):
    """Rows for batch sizes 1, 2, 4, ... with the given throughputs, and a latency that grows with the batch
    (1 ms plus 0.1 ms per image), as a batch run alone does."""
    return [SweepRow(2 ** exponent, 1.0 + 0.1 * 2 ** exponent, float(images_per_s))
            for exponent, images_per_s in enumerate(throughputs)]


def saturating(sizes, peak=10_000.0, half=16):
    """Throughput that climbs like b / (b + half): the shape a GPU filling up gives."""
    return [peak * size / (size + half) for size in sizes]


# ---------------------------------------------------------------------------------------------------
# The sweep's figures

def test_batch_sizes_are_powers_of_two_and_the_ends():
    assert batching.sweep_batch_sizes(1, 1024) == [2 ** e for e in range(11)]
    assert batching.sweep_batch_sizes(1, 100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert batching.sweep_batch_sizes(3, 20) == [3, 4, 8, 16, 20]
    assert batching.sweep_batch_sizes(5, 5) == [5]
    with pytest.raises(ValueError):
        batching.sweep_batch_sizes(8, 4)


def test_knee_is_the_smallest_batch_within_the_tolerance_of_the_peak():
    sizes = [2 ** e for e in range(11)]
    rows = rows_from(saturating(sizes))
    best = batching.peak(rows)
    assert best.batch_size == 1024
    knee = batching.find_knee(rows, within=0.05)
    assert knee.images_per_s >= 0.95 * best.images_per_s
    smaller = [row for row in rows if row.batch_size < knee.batch_size]
    assert all(row.images_per_s < 0.95 * best.images_per_s for row in smaller)
    # peak 10000 * 1024/1040 = 9846; 95% of it is 9354: batch 256 gives 9412, batch 128 only 8889
    assert knee.batch_size == 256
    assert batching.find_knee(rows, within=0.10).batch_size == 128  # a looser tolerance: a smaller knee
    assert batching.find_knee(rows, within=0.0).batch_size == best.batch_size


def test_flat_curve_has_its_knee_at_the_smallest_batch():
    rows = rows_from([5000.0] * 6)
    assert batching.find_knee(rows).batch_size == 1
    assert batching.peak(rows).batch_size == 1  # ties go to the smaller batch


def test_single_point_is_knee_peak_and_trade_off():
    rows = [SweepRow(64, 4.0, 16_000.0)]
    assert batching.find_knee(rows) == batching.peak(rows) == rows[0]
    assert batching.trade_offs(rows) == rows
    assert batching.marks(rows) == {64: ["knee", "peak", "trade-off"]}


def test_throughput_that_falls_after_the_peak():
    rows = rows_from([1000, 3000, 6000, 9000, 9800, 10_000, 8000, 6000])  # peak at 32, then down
    assert batching.peak(rows).batch_size == 32
    assert batching.find_knee(rows).batch_size == 16  # 9800 >= 9500: at or before the peak, never after
    frontier = [row.batch_size for row in batching.trade_offs(rows)]
    assert frontier == [1, 2, 4, 8, 16, 32]  # past the peak: slower and less work than the peak itself
    notes = batching.marks(rows)
    assert notes[64] == notes[128] == ["dominated"]
    assert notes[16] == ["knee", "trade-off"] and notes[32] == ["peak", "trade-off"]


def test_rows_that_ran_out_of_memory_are_left_out():
    rows = rows_from([1000, 2000, 4000, 7000]) + [SweepRow(16, failure=batching.OUT_OF_MEMORY),
                                                  SweepRow(32, failure=batching.OUT_OF_MEMORY)]
    assert batching.peak(rows).batch_size == 8
    assert batching.find_knee(rows).batch_size == 8
    assert [row.batch_size for row in batching.trade_offs(rows)] == [1, 2, 4, 8]
    assert batching.marks(rows)[32] == [batching.OUT_OF_MEMORY]
    nothing = [SweepRow(1, failure=batching.OUT_OF_MEMORY)]
    assert batching.find_knee(nothing) is batching.peak(nothing) is None
    assert batching.trade_offs(nothing) == [] and batching.best_within_latency(nothing, 10) is None


def test_trade_offs_leave_out_rows_beaten_on_both_counts():
    rows = [SweepRow(1, 1.0, 1000.0), SweepRow(2, 1.0, 2000.0),  # 2 beats 1: same latency, more images/s
            SweepRow(4, 2.0, 2000.0), SweepRow(8, 3.0, 2600.0)]  # 4 is beaten by 2
    assert [row.batch_size for row in batching.trade_offs(rows)] == [2, 8]


def test_best_batch_within_a_latency_budget():
    rows = rows_from([1000, 1900, 3600, 6400, 9000, 9500])  # latencies 1.1, 1.2, 1.4, 1.8, 2.6, 4.2 ms
    assert batching.best_within_latency(rows, 2.0).batch_size == 8
    assert batching.best_within_latency(rows, 100).batch_size == 32
    assert batching.best_within_latency(rows, 0.5) is None


def test_knee_tolerance_must_be_a_fraction():
    with pytest.raises(ValueError):
        batching.find_knee(rows_from([1.0]), within=5)


# ---------------------------------------------------------------------------------------------------
# Out of memory: recorded, and the sweep goes on

def out_of_memory_above(limit, calls):
    def measure(batch_size):
        calls.append(batch_size)
        if batch_size > limit:
            raise CourseError(f"out of GPU memory running a batch of {batch_size}: use a smaller --batch-size")
        return SweepRow(batch_size, batch_size * 0.1 + 1.0, batch_size / (batch_size * 0.1 + 1.0) * 1e3)
    return measure


def test_sweep_records_out_of_memory_and_goes_on():
    calls, seen = [], []
    rows = batching.run_sweep([1, 2, 4, 8, 16, 32], out_of_memory_above(8, calls), on_row=seen.append)
    assert calls == [1, 2, 4, 8, 16, 32]  # every size was tried: an OOM does not stop the sweep
    assert seen == rows
    assert [row.failure for row in rows] == [None] * 4 + [batching.OUT_OF_MEMORY] * 2
    assert batching.peak(rows).batch_size == 8


def test_sweep_goes_on_after_an_out_of_memory_in_the_middle():
    def measure(batch_size):
        if batch_size == 4:
            raise CourseError("out of GPU memory: use a smaller --batch-size or free the GPU [cudaErrorMemory…]")
        return SweepRow(batch_size, 1.0, 1000.0 * batch_size)
    rows = batching.run_sweep([2, 4, 8], measure)
    assert [row.measured for row in rows] == [True, False, True]


def test_other_errors_stop_the_sweep():
    def measure(batch_size):
        raise CourseError("execute_async_v3 failed: see the engine's log above")
    with pytest.raises(CourseError, match="execute_async_v3 failed"):
        batching.run_sweep([1, 2], measure)


def test_the_course_out_of_memory_messages_are_recognised():
    """The two places a sweep's OOM comes from say it the way run_sweep looks for it."""
    from common import cuda
    with pytest.raises(CourseError) as failed_malloc:
        cuda.check((cuda.cudart.cudaError_t.cudaErrorMemoryAllocation,))
    assert batching.is_out_of_memory(failed_malloc.value)
    assert batching.OUT_OF_MEMORY_MESSAGE in inspect.getsource(torch_engine.TorchExecutionContext.execute_async_v3)
    assert not batching.is_out_of_memory(CourseError("no CUDA GPU is visible"))


# ---------------------------------------------------------------------------------------------------
# The arrival process

def test_poisson_arrivals_are_reproducible_and_have_the_rate():
    first = batching.poisson_arrivals(1000.0, 20_000, seed=7)
    assert np.array_equal(first, batching.poisson_arrivals(1000.0, 20_000, seed=7))
    assert not np.array_equal(first, batching.poisson_arrivals(1000.0, 20_000, seed=8))
    gaps = np.diff(first)
    assert len(first) == 20_000 and (gaps > 0).all()
    assert abs(gaps.mean() - 1e-3) < 0.03e-3  # mean gap 1/rate
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # exponential gaps: standard deviation = mean
    np.testing.assert_allclose(batching.poisson_arrivals(2000.0, 100, seed=7), first[:100] / 2)  # same gaps, rescaled
    assert len(batching.poisson_arrivals(5.0, 0, seed=1)) == 0
    with pytest.raises(ValueError):
        batching.poisson_arrivals(0.0, 10, seed=1)


# ---------------------------------------------------------------------------------------------------
# The batcher's policy, on a fake clock

class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_flushes_when_the_batch_is_full():
    clock = FakeClock()
    batcher = batching.Batcher(max_batch_size=4, max_wait_s=0.010, clock=clock)
    for request in range(3):
        batcher.submit(request)
        assert batcher.poll() is None  # neither full nor waited long enough
    batcher.submit(3)
    assert batcher.poll() == [0, 1, 2, 3]
    assert batcher.poll() is None and len(batcher) == 0


def test_flushes_when_the_oldest_has_waited_long_enough():
    clock = FakeClock()
    batcher = batching.Batcher(max_batch_size=8, max_wait_s=0.010, clock=clock)
    batcher.submit("a")
    clock.now += 0.006
    batcher.submit("b")  # a newer request does not restart the oldest one's wait
    clock.now += 0.0039
    assert batcher.poll() is None
    clock.now += 0.0002  # the oldest has now waited 10.1 ms
    assert batcher.poll() == ["a", "b"]


def test_order_is_kept_and_batches_never_exceed_the_maximum():
    clock = FakeClock()
    batcher = batching.Batcher(max_batch_size=3, max_wait_s=0.005, clock=clock)
    for request in range(7):
        batcher.submit(request)
    assert batcher.poll() == [0, 1, 2]
    assert batcher.poll() == [3, 4, 5]
    assert batcher.poll() is None  # one left: not full, not waited
    clock.now += 0.0051
    assert batcher.poll() == [6]


def test_zero_wait_flushes_whatever_is_queued_and_one_at_a_time_is_max_batch_one():
    clock = FakeClock()
    greedy = batching.Batcher(max_batch_size=8, max_wait_s=0.0, clock=clock)
    for request in range(3):
        greedy.submit(request)
    assert greedy.poll() == [0, 1, 2]
    single = batching.Batcher(max_batch_size=1, max_wait_s=0.0, clock=clock)
    single.submit("x"), single.submit("y")
    assert single.poll() == ["x"] and single.poll() == ["y"]


def test_close_flushes_everything_pending_and_refuses_new_requests():
    clock = FakeClock()
    batcher = batching.Batcher(max_batch_size=4, max_wait_s=1.0, clock=clock)
    for request in range(6):
        batcher.submit(request)
    assert batcher.next_batch() == [0, 1, 2, 3]
    batcher.close()
    with pytest.raises(batching.BatcherClosed):
        batcher.submit(99)
    assert batcher.next_batch() == [4, 5]  # due at once, without waiting the full second
    assert batcher.next_batch() is None and batcher.next_batch() is None


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        batching.Batcher(0, 0.001)
    with pytest.raises(ValueError):
        batching.Batcher(4, -1)


# ---------------------------------------------------------------------------------------------------
# The batcher under threads, on the real clock

def drain(batcher, batches):
    """A consumer: takes batches until the batcher is closed and empty."""
    while (batch := batcher.next_batch()) is not None:
        batches.append(batch)


def test_next_batch_waits_for_the_oldest_requests_deadline():
    batcher = batching.Batcher(max_batch_size=8, max_wait_s=0.05)
    batcher.submit("only")
    started = time.perf_counter()
    assert batcher.next_batch() == ["only"]
    assert 0.045 <= time.perf_counter() - started < 1.0


def test_a_burst_from_many_threads_loses_and_duplicates_nothing():
    batcher = batching.Batcher(max_batch_size=16, max_wait_s=0.001)
    batches, producers, per_producer = [], 8, 500
    consumers = [threading.Thread(target=drain, args=(batcher, batches)) for _ in range(2)]
    for consumer in consumers:
        consumer.start()

    def produce(producer):
        for index in range(per_producer):
            batcher.submit((producer, index))
    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    for consumer in consumers:
        consumer.join(timeout=10)
        assert not consumer.is_alive()
    delivered = [request for batch in batches for request in batch]
    submitted = [(p, i) for p in range(producers) for i in range(per_producer)]
    assert batching.delivery_problems(submitted, delivered) == ([], [])
    assert all(1 <= len(batch) <= 16 for batch in batches)
    assert max(len(batch) for batch in batches) > 1  # a burst does form batches
    # FIFO: within each batch, and across batches taken by one consumer, a producer's requests stay in order
    for batch in batches:
        for producer in range(producers):
            indices = [i for p, i in batch if p == producer]
            assert indices == sorted(indices)


def test_shutdown_while_threads_submit_serves_exactly_what_was_accepted():
    batcher = batching.Batcher(max_batch_size=8, max_wait_s=0.002)
    batches, accepted, refused = [], [], []
    lock = threading.Lock()
    consumer = threading.Thread(target=drain, args=(batcher, batches))
    consumer.start()

    def produce(producer):
        for index in itertools.count():  # until refused: every producer is cut off by the shutdown
            try:
                batcher.submit((producer, index))
            except batching.BatcherClosed:
                with lock:
                    refused.append((producer, index))
                return
            with lock:
                accepted.append((producer, index))
    threads = [threading.Thread(target=produce, args=(p,)) for p in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.02)
    batcher.close()  # mid-stream: some submissions are refused from here on
    for thread in threads:
        thread.join()
    consumer.join(timeout=10)
    assert not consumer.is_alive()
    delivered = [request for batch in batches for request in batch]
    assert batching.delivery_problems(accepted, delivered) == ([], [])
    assert len(refused) == 4 and len(accepted) > 0  # each producer stopped at its first refusal, not served
    assert not set(refused) & set(delivered)


# ---------------------------------------------------------------------------------------------------
# The serving run's bookkeeping

def test_delivery_problems_finds_lost_and_duplicated_requests():
    assert batching.delivery_problems([1, 2, 3], [3, 1, 2]) == ([], [])
    assert batching.delivery_problems([1, 2, 3], [1, 3, 3, 9]) == ([2], [3, 9])


def test_latency_summary():
    arrivals = np.arange(100) * 0.01  # 100 requests/s for 1 s
    completions = arrivals + np.linspace(0.001, 0.010, 100)  # latency 1..10 ms
    figures = batching.latency_summary(arrivals, completions, [1] * 50 + [2] * 25, offered_rate=100)
    assert figures["requests"] == 100 and figures["batches"] == 75
    assert figures["p50_ms"] == pytest.approx(5.5, abs=0.05) and figures["p99_ms"] == pytest.approx(9.91, abs=0.05)
    assert figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert figures["arrived_per_s"] == pytest.approx(100, rel=0.001)  # 99 gaps of 10 ms
    assert figures["served_per_s"] == pytest.approx(100 / 1.0, rel=0.001)  # first arrival 0, last result 1.0 s
    assert figures["mean_batch"] == pytest.approx(100 / 75) and figures["largest_batch"] == 2


def test_latency_summary_of_an_overloaded_run():
    arrivals = np.arange(100) * 0.001  # 1000 requests/s for 0.1 s
    completions = 0.002 + np.arange(100) * 0.004  # served at 250/s: the queue grows
    figures = batching.latency_summary(arrivals, completions, [1] * 100, offered_rate=1000)
    assert figures["served_per_s"] < 0.3 * figures["arrived_per_s"]
    assert figures["max_ms"] == pytest.approx(299)  # latency 2 ms + 3 ms more per request: the last waited longest
    assert figures["p99_ms"] > 1.9 * figures["p50_ms"]
    with pytest.raises(ValueError):
        batching.latency_summary([], [], [], offered_rate=1)


def test_rows_not_their_own_finds_mixed_up_results():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(10, 1000)).astype(np.float32)
    outputs = reference + rng.normal(scale=1e-3, size=reference.shape).astype(np.float32)  # fp16-like noise
    assert batching.rows_not_their_own(outputs, reference) == []
    outputs[[3, 7]] = outputs[[7, 3]]
    outputs[5] = np.nan
    assert batching.rows_not_their_own(outputs, reference) == [3, 5, 7]


# ---------------------------------------------------------------------------------------------------
# The steps' plots and options, which need no GPU

def noisy_rows(runs_by_size):
    """Rows with repeated throughput runs (latency grows with the batch)."""
    return [SweepRow(size, 1.0 + 0.1 * size, float(np.median(runs)), throughput_runs=tuple(runs))
            for size, runs in runs_by_size.items()]


def test_a_knee_outside_the_noise_is_named():
    rows = noisy_rows({32: [6000, 6100, 6200], 64: [9000, 9100, 9200], 128: [9700, 9800, 9900],
                       256: [9950, 10000, 10050]})
    assert batching.knee_candidates(rows, 0.05) == [128]  # 9,500 threshold: 64's best run is far below it
    assert batching.knee_within_noise(rows, 0.05).batch_size == 128
    assert batching.marks(rows, 0.05)[128] == ["knee", "trade-off"]


def test_a_knee_the_noise_cannot_place_is_not_named():
    """128's median is below the threshold but its fastest run reaches it: 128 or 256, the runs cannot tell."""
    rows = noisy_rows({64: [9000, 9100, 9200], 128: [9300, 9450, 9600], 256: [9700, 10000, 10100],
                       512: [9950, 10000, 10050]})
    assert batching.find_knee(rows, 0.05).batch_size == 256  # by the medians alone
    assert batching.knee_candidates(rows, 0.05) == [128, 256]
    assert batching.knee_within_noise(rows, 0.05) is None
    notes = batching.marks(rows, 0.05)
    assert notes[128][0] == notes[256][0] == "knee?"
    assert "within noise of 256" in notes[512] and "within noise of 64" not in notes[128]


def test_sweep_plot_and_table_on_synthetic_timings(tmp_path, capsys):
    sweep = steps.load("10_batch_size_sweep")
    sizes = [2 ** e for e in range(11)]
    engine_rows = rows_from(saturating(sizes[:-1], peak=30_000, half=24)) + [SweepRow(1024, failure="out of memory")]
    eager_rows = rows_from(saturating(sizes, peak=20_000, half=64))
    summaries = [sweep.summarize("engine", "PyTorch stand-in, not TensorRT", engine_rows, 0.05, [5.0]),
                 sweep.summarize("pytorch", "eager PyTorch, fp16", eager_rows, 0.05, [5.0])]
    assert summaries[0]["out_of_memory"] == [1024]
    assert summaries[0]["knee"] == batching.find_knee(engine_rows).batch_size
    path = tmp_path / "sweep.png"
    plots.plot_sweep(path, summaries, 0.05, "Batch-size sweep (synthetic timings)")
    assert path.stat().st_size > 10_000
    for summary in summaries:
        sweep.print_table(summary, 0.05)
    sweep.print_comparison(*summaries)
    printed = capsys.readouterr().out
    assert "knee: batch" in printed and "out of memory" in printed and "latency budget 5 ms" in printed
    assert "largest batch that fits on this GPU: 512 (batch 1024 ran out of memory)" in printed


def test_dynamic_batching_plot_on_synthetic_runs(tmp_path):
    runs = []
    for setting, capacity, base_ms in (("one request at a time", 1500, 0.8), ("batches of up to 32, wait up to 2 ms",
                                                                                20_000, 2.0)):
        for rate in (500, 1000, 2000, 4000, 8000):
            served = min(rate, capacity)
            load = rate / capacity
            p50 = base_ms / max(1 - load, 0.02) if load < 1 else base_ms * 100 * load
            runs.append({"setting": setting, "max_batch_size": 1 if "one" in setting else 32, "offered_per_s": rate,
                         "served_per_s": served, "p50_ms": p50, "p99_ms": p50 * 3})
    path = tmp_path / "dynamic.png"
    plots.plot_dynamic_batching(path, runs, "Dynamic batching (synthetic runs)")
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize("script, args, message", [
    ("10_batch_size_sweep.py", ["--knee-within", "100"], "must be at least 0 and below 100"),
    ("10_batch_size_sweep.py", ["--latency-budget-ms", "0"], "must be above 0"),
    ("11_dynamic_batching.py", ["--rates", "100,-5"], "each must be above 0"),
    ("11_dynamic_batching.py", ["--max-wait-ms", "x"], "not a comma-separated list of numbers"),
])
def test_bad_options_are_one_line(tmp_path, script, args, message):
    result = run_script(script, *args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_step11_server_loop_serves_every_request_once_on_a_fake_gpu(monkeypatch):
    """Step 11's real server loop, output thread and load generator, with the CUDA calls replaced by a fake
    GPU that computes a distinct row per image: every request gets its own image's row, none lost, none twice,
    also for the requests a long max wait leaves pending at shutdown."""
    step = steps.load("11_dynamic_batching")
    pool = np.stack([np.full((3, 4, 4), index, np.float32) for index in range(16)])

    def fake_model(images):
        return np.arange(1000, dtype=np.float32)[None, :] * (images.reshape(len(images), -1)[:, :1] + 1)
    device = {}
    monkeypatch.setattr(step.cuda, "memcpy_htod_async", lambda address, host, stream: device.update(images=host.copy()))
    monkeypatch.setattr(step.cuda, "memcpy_dtoh_async",
                        lambda host, address, stream: host.__setitem__(Ellipsis, fake_model(device["images"])))
    for name in ("event_synchronize", "wait", "record"):
        monkeypatch.setattr(step.cuda, name, lambda *args: None)
    server = object.__new__(step.Server)  # its buffers by hand: no GPU to allocate them on
    server.pool, server.copy_stream, server.compute_stream, server.output_address = pool, 0, 0, 0
    server.slots = [step.InputSlot(0, np.zeros((8, 3, 4, 4), np.float32), None, None) for _ in range(2)]
    server.host_outputs = [step.step7.HostOutput(np.zeros((8, 1000), np.float32), None) for _ in range(2)]
    server.graphs = type("NoGraphs", (), {"launch": lambda self, slot, batch_size: None})()
    for setting in (step.Setting(1, 0.0), step.Setting(8, 0.0), step.Setting(8, 5000.0)):
        run = step.serve_run(server, setting, rate=2000.0, duration_s=0.05, seed=3, reference=fake_model(pool))
        assert run["requests"] == 100 and run["lost"] == run["duplicated"] == 0, run
        assert run["check"]["passed"], run["check"]["summary"]
        assert run["largest_batch"] <= setting.max_batch_size
        assert run["max_ms"] < 2000  # the 5 s wait is never waited out: the shutdown flushes what is pending


def test_sweep_table_and_plot_when_the_noise_hides_the_knee(tmp_path, capsys):
    sweep = steps.load("10_batch_size_sweep")
    rows = noisy_rows({64: [9000, 9100, 9200], 128: [9300, 9450, 9600], 256: [9700, 10000, 10100]})
    summary = sweep.summarize("engine", "PyTorch stand-in, not TensorRT", rows, 0.05, [])
    assert summary["knee"] is None and summary["knee_candidates"] == [128, 256]
    sweep.print_table(summary, 0.05)
    assert "knee: one of batches [128, 256]: within the noise" in capsys.readouterr().out
    plots.plot_sweep(tmp_path / "sweep.png", [summary], 0.05, "noisy")
    assert (tmp_path / "sweep.png").stat().st_size > 10_000

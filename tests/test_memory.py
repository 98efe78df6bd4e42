"""CPU tier: the GPU memory bookkeeping (common/memory.py) on fakes: the driver's samples, what a step holds, and
the figures it must not claim."""
import sys
import types
from pathlib import Path

import pytest
import torch

from common import batching, cuda, memory, torch_engine

MIB = memory.MIB


class FakeDriver:
    """cudaMemGetInfo's total - free, in MiB, from a list: each read takes the next value."""

    def __init__(self, *values_mib):
        self.values = [value * MIB for value in values_mib]

    def __call__(self):
        return self.values.pop(0)


def samples(*values_mib):
    driver = memory.DriverSamples(FakeDriver(*values_mib))
    driver.begin()
    return driver


def test_the_peak_is_the_highest_sample_over_the_start():
    driver = samples(500, 1700, 1900)  # at the start, as the timed run starts, as it ends
    driver.sample()
    driver.sample()
    assert driver.peak_in_use(held_bytes=1000 * MIB) == (1400 * MIB, None)


def test_a_driver_figure_below_its_start_is_not_claimed():
    """Another process freed memory meanwhile: the difference would be negative, or too small to mean anything."""
    driver = samples(3000, 2500, 2600)
    driver.sample()
    driver.sample()
    peak, note = driver.peak_in_use(held_bytes=100 * MIB)
    assert peak is None and "fell below its value at the start" in note


def test_a_driver_figure_below_what_the_step_holds_is_not_claimed():
    """The driver rose less than the weights, activations and buffers the step is known to hold: it measured
    something else (another process freed as much meanwhile)."""
    driver = samples(3000, 3100)
    driver.sample()
    peak, note = driver.peak_in_use(held_bytes=500 * MIB)
    assert peak is None and "rose 100.0 MiB, less than the 500.0 MiB the step holds" in note


def test_without_a_gpu_nothing_is_sampled_or_claimed():
    driver = memory.DriverSamples(lambda: pytest.fail("the driver must not be read before begin()"))
    driver.sample()  # the timer samples on every machine: a no-op where the step never began on a GPU
    assert driver.peak_in_use(0) == (None, "not sampled: the timed run did not start on a GPU")
    assert driver.over_start() is None


def test_memory_now_over_the_start_is_none_below_it():
    assert samples(1000, 1250).over_start() == 250 * MIB
    assert samples(1000, 900).over_start() is None


def test_begin_keeps_the_first_start():
    """A step that begins twice (a second engine loaded, say) measures from the first."""
    driver = samples(1000, 5000, 1200)
    driver.begin()
    driver.sample()
    assert driver.start == 1000 * MIB and driver.samples == [5000 * MIB]


@pytest.fixture
def fake_cuda(monkeypatch):
    """cudaMalloc/cudaFree/cudaMallocHost/cudaFreeHost that hand out addresses, for the held-bytes counters."""
    addresses = iter(range(0x10000, 0x10000000, 0x10000))
    host = {}
    success = cuda.cudart.cudaError_t.cudaSuccess

    def malloc_host(nbytes):
        buffer = (torch.zeros(nbytes, dtype=torch.uint8)).numpy()
        host[buffer.ctypes.data] = buffer  # kept alive while "pinned"
        return success, buffer.ctypes.data

    monkeypatch.setattr(cuda, "_device_held", {})
    monkeypatch.setattr(cuda, "_pinned_held", {})
    monkeypatch.setattr(cuda.cudart, "cudaMalloc", lambda nbytes: (success, next(addresses)))
    monkeypatch.setattr(cuda.cudart, "cudaFree", lambda address: (success,))
    monkeypatch.setattr(cuda.cudart, "cudaMallocHost", malloc_host)
    monkeypatch.setattr(cuda.cudart, "cudaFreeHost", lambda address: (success,))
    return cuda


def test_buffers_and_pinned_memory_are_what_is_allocated_and_not_freed(fake_cuda):
    first, second = fake_cuda.malloc(3 * MIB), fake_cuda.malloc(5 * MIB)
    pinned = fake_cuda.pinned_empty((MIB,), "uint8")
    assert fake_cuda.device_bytes_held() == 8 * MIB and fake_cuda.pinned_bytes_held() == MIB
    fake_cuda.free(first)
    fake_cuda.free_host(pinned)
    assert fake_cuda.device_bytes_held() == 5 * MIB and fake_cuda.pinned_bytes_held() == 0
    fake_cuda.free(second)
    assert fake_cuda.device_bytes_held() == 0


class FakeContext:
    def __init__(self, reserved):
        self.reserved = reserved


def stand_in(monkeypatch, *activation_mib):
    """A loaded stand-in engine with a small module and contexts whose pools hold `activation_mib`."""
    engine = torch_engine.TorchEngine(torch.nn.Linear(256, 1024), [(1, 128, 128)], None)
    engine.kept = [engine._contexts.add(FakeContext(size * MIB)) for size in activation_mib]  # as a step holds them
    monkeypatch.setattr(torch_engine, "activation_bytes", lambda context: context.reserved)
    return types.SimpleNamespace(backend="torch", engine=engine, path=Path("engines/x.torch.pt"))


def test_what_a_stand_in_step_holds(fake_cuda, monkeypatch):
    loaded = stand_in(monkeypatch, 38.5, 38.5)
    fake_cuda.malloc(77 * MIB)
    fake_cuda.pinned_empty((2 * MIB,), "uint8")
    driver = samples(600, 900)
    driver.sample()
    held = memory.held(loaded, driver)
    weights = (256 * 1024 + 1024) * 4  # the Linear's weight and bias, fp32
    assert held["weights_mib"] == weights / MIB and held["activations_mib"] == [38.5, 38.5]
    assert held["buffers_mib"] == 77 and held["pinned_host_mib"] == 2
    assert held["peak_in_use_mib"] == 300 and held["peak_note"] is None
    assert set(held["how"]) == {"weights", "activations", "buffers", "pinned_host", "peak_in_use"}
    assert memory.line(held) == ("GPU memory: weights 1.0 MiB, activations 2 x 38.5 MiB, buffers 77.0 MiB, peak in "
                                 "use 300.0 MiB (driver); pinned host 2.0 MiB")


def test_a_peak_smaller_than_the_parts_is_a_note_not_a_figure(fake_cuda, monkeypatch):
    loaded = stand_in(monkeypatch, 200)
    driver = samples(600, 700)
    driver.sample()
    held = memory.held(loaded, driver)
    assert held["peak_in_use_mib"] is None and "less than the" in held["peak_note"]
    assert "not measured" in memory.line(held)


@pytest.mark.parametrize("version, weights", [("10.16.1.11", 12345), ("11.4.0.106", 12345), ("10.13.3.9", 4096)])
def test_tensorrt_weights_come_from_the_engine_where_it_says_else_from_the_plan(fake_cuda, monkeypatch, tmp_path,
                                                                                 version, weights):
    """get_engine_stat(TOTAL_WEIGHTS_SIZE) from TensorRT 10.16 on; before, the plan's size (docs/tensorrt-notes.md
    section 12). Activations: device_memory_size_v2 for every context the engine made."""
    from common import engine as engines
    fake_trt = types.SimpleNamespace(__version__=version, EngineStat=types.SimpleNamespace(TOTAL_WEIGHTS_SIZE="w"))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)

    class Engine:
        device_memory_size_v2 = 40 * MIB

        def get_engine_stat(self, stat):
            assert stat == "w"
            return 12345

        def create_execution_context(self):
            return FakeContext(0)
    plan = tmp_path / "resnet18_fp16.plan"
    plan.write_bytes(b"\0" * 4096)
    wrapped = engines._TensorRTEngine(Engine(), plan)
    held = [wrapped.create_execution_context() for _ in range(3)]
    loaded = types.SimpleNamespace(backend="tensorrt", engine=wrapped, path=plan)
    assert memory.weights_bytes(loaded) == weights
    assert memory.activation_bytes(loaded) == [40 * MIB] * 3
    del held[1]  # a context the step let go of holds no memory, and the count must not keep it alive
    assert memory.activation_bytes(loaded) == [40 * MIB] * 2


def test_the_largest_batch_that_fits_is_named_with_why_the_sweep_stopped():
    rows = [batching.SweepRow(size, 1.0, 100.0 * size) for size in (1, 2, 4)]
    assert batching.largest_that_fits(rows) == (4, "the largest batch swept")
    rows += [batching.SweepRow(size, failure=batching.OUT_OF_MEMORY) for size in (8, 16)]
    assert batching.largest_that_fits(rows) == (4, "batch 8 ran out of memory")
    assert batching.largest_that_fits([batching.SweepRow(1, failure=batching.OUT_OF_MEMORY)]) == (
        None, "no batch size ran")

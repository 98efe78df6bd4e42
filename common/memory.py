"""The GPU memory a step holds, as the source tutorial reads it off its timelines: FP16 halves it, a second
execution context adds a pool of activations, a larger batch holds more.

Every figure is measured, in MiB (docs/tensorrt-notes.md section 12 has the TensorRT calls and their sources):
- weights: TensorRT's own total (`get_engine_stat(EngineStat.TOTAL_WEIGHTS_SIZE)`, TensorRT 10.16 and 11), or,
  before that call existed, the plan's size, which NVIDIA's guide calls almost all weights; on the stand-in,
  the bytes of its module's parameters and buffers.
- activations, per execution context: TensorRT's `device_memory_size_v2`, what a context allocates when it is
  created (the default, static strategy: the largest any profile needs); on the stand-in, the segments its
  context's private pool has reserved from the device.
- buffers: the device memory the step allocated with common/cuda.py and still holds (inputs, outputs).
- pinned host: the page-locked host memory the step allocated with common/cuda.py and still holds.
- peak in use: the driver's figure (cudaMemGetInfo: total less free, what nvidia-smi shows) at its highest
  sample, less its value just after the step's CUDA context was made, so other processes' memory and the
  context's own are left out. It is sampled when the timed run starts (everything allocated and warmed up)
  and when it ends; nothing is freed in between. It also holds what no other column names (CUDA's and the
  libraries' code and workspaces, PyTorch's own cache). The driver's figure is the whole GPU's: another
  process can move it. Where it fell below its starting value, or below what the columns above add up to,
  it measured something else, and the peak is left out with a note instead.
"""
from common import cuda

MIB = 2**20
TENSORRT_WEIGHTS_STAT = (10, 16)  # the first version whose bindings are known to have get_engine_stat
HOW = {
    "weights": "TensorRT: get_engine_stat(TOTAL_WEIGHTS_SIZE), or the plan's size before TensorRT 10.16; the "
               "stand-in: its module's parameters and buffers",
    "activations": "TensorRT: device_memory_size_v2 per context (allocated at its creation); the stand-in: the "
                   "segments each context's private pool reserved",
    "buffers": "device memory the step allocated (cudaMalloc) and holds",
    "pinned_host": "page-locked host memory the step allocated (cudaMallocHost) and holds",
    "peak_in_use": "cudaMemGetInfo (total - free) at its highest, sampled as the timed run starts and ends, less "
                   "its value once the step's CUDA context was made",
}


class DriverSamples:
    """The driver's device memory in use, sampled: its value at the start and each later sample, in bytes."""

    def __init__(self, read_in_use=None):
        self.read_in_use = read_in_use or cuda.device_memory_in_use
        self.start, self.samples = None, []

    def begin(self):
        """Once the CUDA context exists: what is in use before the step allocated anything."""
        if self.start is None:
            self.start = self.read_in_use()

    def sample(self):
        """A no-op before begin(): on a machine without a GPU (the CPU tests), or before the step touched the GPU."""
        if self.start is not None:
            self.samples.append(self.read_in_use())

    def over_start(self):
        """What is in use now beyond the start, in bytes; None where it cannot be said (not begun, or below the
        start: another process freed memory)."""
        if self.start is None:
            return None
        now = self.read_in_use()
        return now - self.start if now >= self.start else None

    def peak_in_use(self, held_bytes):
        """(peak in use over the start, in bytes, or None; a note or None). `held_bytes`: what the step is known to
        hold (weights, activations, buffers), which the driver's figure must include."""
        if self.start is None or not self.samples:
            return None, "not sampled: the timed run did not start on a GPU"
        if min(self.samples) < self.start:
            return None, ("not measured: the driver's figure fell below its value at the start (another process "
                          "freed memory meanwhile)")
        peak = max(self.samples) - self.start
        if peak < held_bytes:
            return None, (f"not measured: the driver's figure rose {peak / MIB:.1f} MiB, less than the "
                          f"{held_bytes / MIB:.1f} MiB the step holds (another process freed memory meanwhile)")
        return peak, None


driver = DriverSamples()  # the process's; common/cuda.require_gpu begins it, the timer samples it


def weights_bytes(loaded):
    """The engine's weights on the device (see the module docstring)."""
    if loaded.backend == "torch":
        from common import torch_engine
        return torch_engine.weights_bytes(loaded.engine)
    import tensorrt as trt
    if tuple(int(part) for part in trt.__version__.split(".")[:2]) >= TENSORRT_WEIGHTS_STAT:
        return loaded.engine.get_engine_stat(trt.EngineStat.TOTAL_WEIGHTS_SIZE)
    return loaded.path.stat().st_size


def activation_bytes(loaded):
    """The activation memory of each execution context made from the engine, in the order they were made."""
    if loaded.backend == "torch":
        from common import torch_engine
        return [torch_engine.activation_bytes(each) for each in torch_engine.contexts_of(loaded.engine)]
    from common import engine as engines
    return [loaded.engine.device_memory_size_v2 for _ in engines.tensorrt_contexts(loaded.engine)]


def context_activation_bytes(loaded, context):
    """One context's activation memory for the input shapes set on it: the stand-in's pool, or what TensorRT says
    these shapes need (`update_device_memory_size_for_shapes`; a context it made with the static strategy holds
    the largest profile's all the same)."""
    if loaded.backend == "torch":
        from common import torch_engine
        return torch_engine.activation_bytes(context)
    return context.update_device_memory_size_for_shapes()


def held(loaded, samples=driver):
    """The step's "memory" record: what it holds now (call it once the timed run is over), in MiB."""
    weights, activations = weights_bytes(loaded), activation_bytes(loaded)
    buffers, pinned = cuda.device_bytes_held(), cuda.pinned_bytes_held()
    peak, note = samples.peak_in_use(weights + sum(activations) + buffers)
    return {
        "weights_mib": weights / MIB, "activations_mib": [each / MIB for each in activations],
        "buffers_mib": buffers / MIB, "pinned_host_mib": pinned / MIB,
        "peak_in_use_mib": None if peak is None else peak / MIB, "peak_note": note, "how": HOW,
    }


def line(memory):
    """The one line a step prints: 'GPU memory: weights 22.4 MiB, activations 2 x 38.5 MiB, ...'."""
    activations = memory["activations_mib"]
    contexts = f"{len(activations)} x {activations[0]:.1f}" if len(set(activations)) == 1 else \
        " + ".join(f"{each:.1f}" for each in activations) or "none"
    peak = (f"{memory['peak_in_use_mib']:,.1f} MiB" if memory["peak_in_use_mib"] is not None
            else memory["peak_note"])
    return (f"GPU memory: weights {memory['weights_mib']:.1f} MiB, activations {contexts} MiB, buffers "
            f"{memory['buffers_mib']:.1f} MiB, peak in use {peak} (driver); pinned host "
            f"{memory['pinned_host_mib']:.1f} MiB")

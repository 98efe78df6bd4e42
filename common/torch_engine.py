"""The PyTorch stand-in engine: ResNet-18 in PyTorch behind the part of TensorRT's interface the course uses.

It exists so the course runs, is tested and is measured on GPUs without TensorRT. Every figure it
produces is a PyTorch figure, never a TensorRT one, and the course labels it so.

It is built as a TensorRT engine is: once, ahead of the runs. `0_build.py --backend torch` folds each
BatchNorm into its convolution (as TensorRT's builder does), compiles the network with PyTorch's
Inductor into one graph per optimization profile (a dynamic batch dimension bounded by the profile,
compiled at its opt shape, as TensorRT tunes a profile's kernels for its opt; batch 1 apart), and
saves PyTorch's portable compile caches beside the engine file (`<engine>.compiled`), keyed like a
TensorRT plan by GPU, torch version, precision, input and weights. A step that loads the engine loads
that cache and compiles from it in seconds; where it is missing or stale it says "recompiling: ..."
and compiles again (slower, the same result).
Eager PyTorch is the fallback where compilation cannot run (no GPU, no Triton, no C compiler, a
compile error) or where the build asked for it (`--stand-in eager`); every label says which ran.

Its contract is TensorRT's:
- `execute_async_v3(stream)` only enqueues work on the given stream; it never synchronizes.
- It reads only the bound input address and writes only the bound output address.
- Each execution context owns a private memory pool (TensorRT's activation memory): after the first
  enqueue of a shape, later enqueues of that shape allocate nothing, which also makes them capturable
  into a CUDA graph.
- Optimization profiles are validated shape ranges: a shape outside the active profile is refused.
The engine's weights are shared by all its contexts, as a TensorRT engine's are.
A first enqueue of a shape holds `cuda.capture_lock`, which the steps' captures hold too: on an H200,
two threads capturing at once, or one thread's first run while another captured, invalidated the
capture (cudaErrorStreamCaptureInvalidated; "operation not permitted when stream is capturing").
"""
import enum
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.fx.experimental.optimization import fuse

from common import cuda, data, engine as engines
from common.errors import CourseError

MODES = ("compiled", "eager")
_SETTLING_PASSES = 3


def label(mode):
    """What produced a figure: never TensorRT."""
    if mode == "compiled":
        return f"compiled PyTorch stand-in (Inductor, torch {torch.__version__}), not TensorRT"
    return f"eager PyTorch stand-in (torch {torch.__version__}), not TensorRT"


# ---------------------------------------------------------------------------------------------------
# TensorRT's interface

class TensorIOMode(enum.Enum):
    """Mirrors `tensorrt.TensorIOMode`."""
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    """Mirrors the members of `tensorrt.DataType` that the course uses."""
    FLOAT = np.float32
    HALF = np.float16
    UINT8 = np.uint8


def nptype(trt_type):
    """Mirrors `tensorrt.nptype`: the numpy type of a tensor's DataType."""
    return trt_type.value


class _CudaArray:
    """Presents raw device memory to PyTorch through the CUDA Array Interface, without a copy."""

    def __init__(self, address, shape, dtype):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape), "typestr": np.dtype(dtype).str, "data": (address, False),
            "version": 3, "strides": None, "stream": None,  # None: the caller orders the streams
        }


class TorchEngine:
    """Mirrors `tensorrt.ICudaEngine`: I/O description, profiles, and a factory for execution contexts."""

    def __init__(self, model, profiles, image_input, input_name="input", output_name="logits", mode="eager"):
        self._model = model
        self._profiles = [tuple(profile) for profile in profiles]
        self._image_input = image_input  # the ladder's normalized fp32 NCHW, or step 12's uint8 NHWC
        self._names = (input_name, output_name)
        self._mode = mode  # "compiled" or "eager": how `_model` runs
        self._contexts = engines.LiveObjects()

    @property
    def num_io_tensors(self):
        return len(self._names)

    def get_tensor_name(self, index):
        return self._names[index]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == self._names[0] else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return (-1, *self._image_input.shape) if name == self._names[0] else (-1, data.NUM_CLASSES)

    def get_tensor_dtype(self, name):
        return DataType(np.dtype(self._image_input.dtype).type) if name == self._names[0] else DataType.FLOAT

    @property
    def num_optimization_profiles(self):
        return len(self._profiles)

    def get_tensor_profile_shape(self, name, profile_index):
        """[min, opt, max] shapes of the input for one profile, as TensorRT returns them."""
        sample = self.get_tensor_shape(name)[1:]
        return [(batch, *sample) for batch in self._profiles[profile_index]]

    def create_execution_context(self):
        return self._contexts.add(TorchExecutionContext(self))


def mode_of(stand_in):
    """"compiled" or "eager": how a TorchEngine runs."""
    return stand_in._mode


def weights_bytes(stand_in):
    """The device memory of a TorchEngine's weights: its module's parameters and buffers (shared by its contexts)."""
    tensors = [*stand_in._model.parameters(), *stand_in._model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def contexts_of(stand_in):
    """The execution contexts made from a TorchEngine and still in use, in the order they were made."""
    return stand_in._contexts.alive()


def activation_bytes(stand_in_context):
    """A context's activation memory: what its private pool has reserved from the device (PyTorch's segments)."""
    return sum(segment["total_size"] for segment in stand_in_context._pool.snapshot())


class TorchExecutionContext:
    """Mirrors `tensorrt.IExecutionContext` for one input and one output tensor."""

    def __init__(self, engine):
        self._engine = engine
        self._profile = 0
        self._shapes = {}
        self._addresses = {}
        self._pool = torch.cuda.MemPool()  # this context's private activation memory
        self._views = {}
        self._settled_shapes = set()

    @property
    def active_optimization_profile(self):
        return self._profile

    def set_optimization_profile_async(self, profile_index, stream_handle):
        if not 0 <= profile_index < self._engine.num_optimization_profiles:
            raise RuntimeError(f"optimization profile {profile_index} does not exist")  # as TensorRT's binding
        self._profile = profile_index
        self._shapes.clear()  # as in TensorRT, input shapes must be set again after a profile switch
        return True

    def set_input_shape(self, name, shape):
        low, _, high = self._engine.get_tensor_profile_shape(name, self._profile)
        if len(shape) != len(low) or not all(lo <= dim <= hi for lo, dim, hi in zip(low, shape, high)):
            return False
        self._shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        batch = self._shapes.get(self._engine.get_tensor_name(0), (-1,))[0]
        return (batch, *self._engine.get_tensor_shape(name)[1:])

    def set_tensor_address(self, name, memory):
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle):
        """Enqueue the forward pass on `stream_handle`; False (as TensorRT) if shapes or addresses are unset."""
        input_name, output_name = self._engine._names
        if input_name not in self._shapes or not {input_name, output_name} <= self._addresses.keys():
            return False
        images = self._view(input_name)
        logits = self._view(output_name)
        try:
            if images.shape in self._settled_shapes:
                self._forward(images, logits, stream_handle, passes=1)
            else:
                # The first enqueue of a shape is the stand-in's lazy set-up (TensorRT has one too): PyTorch's caching
                # allocator can need a few passes before its pool holds the shape's whole allocation pattern (seen on
                # an H100: one more segment on the second pass), and later enqueues must allocate nothing. No other
                # thread may capture meanwhile (the module docstring says why).
                with cuda.capture_lock:
                    self._forward(images, logits, stream_handle, passes=_SETTLING_PASSES)
                self._settled_shapes.add(images.shape)
        except torch.cuda.OutOfMemoryError:
            raise CourseError(f"out of GPU memory running a batch of {len(images)}: use a smaller --batch-size "
                              "or fewer contexts") from None
        return True

    def _forward(self, images, logits, stream_handle, passes):
        with torch.cuda.stream(torch.cuda.ExternalStream(stream_handle)), \
                torch.cuda.use_mem_pool(self._pool), torch.inference_mode():
            for _ in range(passes):
                logits.copy_(self._engine._model(images))

    def _view(self, name):
        """A tensor over the bound address, cached so that each enqueue reuses the same view."""
        key = (name, self._addresses[name], self.get_tensor_shape(name))
        if key not in self._views:
            dtype = nptype(self._engine.get_tensor_dtype(name))
            self._views[key] = torch.as_tensor(_CudaArray(key[1], key[2], dtype), device="cuda")
        return self._views[key]


# ---------------------------------------------------------------------------------------------------
# Building: the module, compiled once for the engine's batch range, and its compile cache

def inference_module(weights_path, precision, image_input):
    """The module the ONNX export runs (data.inference_model), with every BatchNorm folded into its convolution
    (in fp32, before any cast), on the GPU. An int8 engine file holds that module's folded weights and the
    calibration's scales, from which common/int8.py rebuilds it fake-quantized: INT8's numbers in fp32 kernels."""
    from common import int8
    try:
        folded = int8.load(weights_path) if precision == "int8" else fuse(data.load_model(weights_path))
        model = data.inference_model(folded, precision, image_input.dtype).cuda()
        if precision == "fp16":
            # channels-last lets cuDNN pick tensor-core kernels without layout transposes, as TensorRT would.
            model = model.to(memory_format=torch.channels_last)
    except torch.cuda.OutOfMemoryError:
        raise CourseError(f"out of GPU memory loading {weights_path}: free the GPU") from None
    return model


def why_not_compiled():
    """None where PyTorch can compile the stand-in on this machine, else why not (a phrase)."""
    from torch.utils._triton import has_triton
    if not torch.cuda.is_available():
        return "no CUDA GPU to compile for"
    if not has_triton():
        return "Triton cannot generate kernels for this GPU"
    if not any(shutil.which(compiler) for compiler in (os.environ.get("CC"), "cc", "gcc", "clang") if compiler):
        return "no C compiler (Triton builds its kernel launchers with one)"
    return None


def profile_graphs(profiles):
    """The graphs a compile makes, as (the batch size it is compiled at, the (min, max) of its dynamic batch
    dimension, or None for a graph of that one size): one per profile for the profile's batches of 2 and more,
    compiled at its opt shape (its largest batch where the opt is 1), as TensorRT tunes each profile's kernels for
    its opt shape; then one for batch 1 where a profile takes it (PyTorch compiles a size of 1 on its own: a
    dynamic dimension starts at 2). PyTorch picks the graph whose range holds a batch; where two profiles' ranges
    overlap, a batch in both may run either profile's graph (TensorRT would run the active profile's)."""
    graphs = []
    for low, opt, high in profiles:
        if high >= 2:
            lowest = max(2, low)
            graphs.append((opt if opt >= 2 else high, (lowest, high) if lowest < high else None))
    if min(low for low, _, _ in profiles) == 1:
        graphs.append((1, None))
    return list(dict.fromkeys(graphs))


def load_graphs(profiles):
    """The graphs a load compiles from the cache: the build's, but batch 1 (it compiles at its first enqueue, from
    the same cache: no ladder step runs it), unless that is all there is."""
    graphs = profile_graphs(profiles)
    return [graph for graph in graphs if graph[0] >= 2] or graphs


def describe_graphs(graphs):
    """"2..32 at 16, 33..128 at 128, 1": what a compile makes, for its log line."""
    return ", ".join(f"{span[0]}..{span[1]} at {size}" if span else str(size) for size, span in graphs)


def with_own_forward(model):
    """`model` as an FX GraphModule, whose forward is code generated for this module alone (fuse's output already is).

    torch.compile keeps a code object's compiled graphs with that code, and after `recompile_limit` (8) of them it
    runs the code as eager PyTorch with only a warning. The fp16 and uint8 wrappers (data.Fp16Compute,
    Uint8Preprocessing) share their class's forward, so every load of such an engine added its graph to the same
    code: in a process that loads many (the GPU tests), the ninth ran eager while labelled compiled."""
    return model if isinstance(model, torch.fx.GraphModule) else torch.fx.symbolic_trace(model)


def compile_module(model, image_input, graphs):
    """The module compiled by Inductor (default mode), with `graphs` compiled (profile_graphs at build, load_graphs
    at load): each by a first call at its size, with its dynamic range marked. Returns it and the seconds it took.
    The same calls at build and at load, in the same order, so that a load finds the build's graphs in the cache."""
    # A limit hit would run the rest eager PyTorch under a compiled label: make it an error (with_own_forward says why).
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    compiled = torch.compile(with_own_forward(model))
    started = time.perf_counter()
    for size, span in graphs:
        images = torch.zeros((size, *image_input.shape), dtype=getattr(torch, image_input.dtype), device="cuda")
        if span:
            torch._dynamo.mark_dynamic(images, 0, min=span[0], max=span[1])
        with torch.inference_mode():
            compiled(images)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # the warm-up's activations: each context has a pool of its own
    return compiled, time.perf_counter() - started


def cache_path(engine_file):
    return Path(f"{engine_file}.compiled")


def cache_key(precision, image_input, weights_digest, profiles):
    """What a compiled stand-in is valid for, as a TensorRT plan is for one GPU and one TensorRT version."""
    major, minor = torch.cuda.get_device_capability()
    return {"compute_capability": f"{major}.{minor}", "torch": torch.__version__, "precision": precision,
            "input": str(image_input), "weights": weights_digest, "profiles": [list(p) for p in profiles],
            "graphs": describe_graphs(profile_graphs(profiles))}  # a cache of other graphs would be compiled again


def build(engine_file, precision, profiles, image_input, weights_digest, requested):
    """Compile the stand-in for engine_file (the weights, already written) and save its cache beside it; returns
    what the metadata records of it (`stand_in`). Falls back to eager, saying why in one line."""
    cache_path(engine_file).unlink(missing_ok=True)  # an earlier build's cache must not outlive it
    why_eager = "asked for (--stand-in eager)" if requested == "eager" else why_not_compiled()
    if why_eager is None:
        print(f"compiling the stand-in with PyTorch Inductor, a graph per profile (batches at the opt shape): "
              f"{describe_graphs(profile_graphs(profiles))} ...")
        torch.compiler.reset()  # a fresh compiler state: what is saved is this compile's
        try:
            _, seconds = compile_module(inference_module(engine_file, precision, image_input), image_input,
                                        profile_graphs(profiles))
            artifacts = torch.compiler.save_cache_artifacts()
        except CourseError:
            raise
        except Exception as error:  # noqa: BLE001 (any compile failure leaves eager PyTorch, which runs everywhere)
            why_eager = f"compilation failed ({first_line(error)})"
        else:
            if artifacts is None:
                why_eager = "PyTorch saved no compile cache"
    if why_eager is not None:
        print(f"the stand-in runs eager PyTorch: {why_eager}")
        return {"requested": requested, "mode": "eager", "why_eager": why_eager}
    cache = cache_path(engine_file)
    cache.write_bytes(artifacts[0])
    print(f"compiled in {seconds:.1f} s; its cache: {cache} ({cache.stat().st_size / 2**20:.1f} MiB)")
    return {"requested": requested, "mode": "compiled", "why_eager": None, "compile_s": round(seconds, 1),
            "cache": cache.name, "cache_digest": data.file_digest(cache),
            "cache_key": cache_key(precision, image_input, weights_digest, profiles)}


def cache_problem_here(engine_file, metadata, image_input):
    """cache_problem of an engine against this machine, from its metadata: what a load and 0_build.py both ask."""
    key = cache_key(metadata["precision"], image_input, metadata["weights_digest"], profiles_of(metadata))
    return cache_problem(engine_file, metadata["stand_in"], key)


def profiles_of(metadata):
    return [tuple(profile) for profile in metadata["profiles"]]


def first_line(error):
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}".rstrip(": ")


def cache_problem(engine_file, stand_in, key):
    """None where the engine's compile cache is there, unchanged and made for `key`; else what is wrong with it."""
    cache = cache_path(engine_file)
    if not cache.exists():
        return f"{cache} is missing"
    if data.file_digest(cache) != stand_in.get("cache_digest"):
        return f"{cache} has changed since it was built"
    recorded = stand_in.get("cache_key") or {}
    differ = [f"{name} {recorded.get(name)} (this machine: {value})" for name, value in key.items()
              if recorded.get(name) != value]
    return f"{cache} was made for {', '.join(differ)}" if differ else None


# ---------------------------------------------------------------------------------------------------
# Loading

def load_torch_engine(engine_file, metadata, image_input):
    """The stand-in's "deserialization": the module, compiled from its cache where it was built compiled."""
    model = inference_module(engine_file, metadata["precision"], image_input)
    mode = metadata["stand_in"]["mode"]
    if mode == "compiled":
        model, mode = compiled_from_cache(model, engine_file, metadata, image_input)
    return TorchEngine(model, profiles_of(metadata), image_input, mode=mode)


def compiled_from_cache(model, engine_file, metadata, image_input):
    """(module, mode): compiled with the build's cache where it is valid, recompiled where not, eager where
    compilation cannot run here; each departure from the build said in one line."""
    profiles = profiles_of(metadata)
    why_eager = why_not_compiled()
    if why_eager is None:
        problem = cache_problem_here(engine_file, metadata, image_input)
        if problem:
            print(f"recompiling: {problem}; a slower start, the same results (`0_build.py --force` saves a new cache)")
        else:
            torch.compiler.load_cache_artifacts(cache_path(engine_file).read_bytes())
            # The cache holds the compiled kernels: a step needs no pool of compile worker processes, whose start
            # and shutdown would only lengthen its own.
            torch._inductor.config.compile_threads = 1
        try:
            return compile_module(model, image_input, load_graphs(profiles))[0], "compiled"
        except torch.cuda.OutOfMemoryError:
            raise CourseError(f"out of GPU memory compiling {engine_file}: free the GPU") from None
        except Exception as error:  # noqa: BLE001 (as at build time: eager PyTorch runs everywhere)
            why_eager = f"compilation failed ({first_line(error)})"
    print(f"notice: {engine_file} runs as the eager PyTorch stand-in: {why_eager}")
    return model, "eager"

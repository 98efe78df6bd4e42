"""The PyTorch stand-in engine: ResNet-18 in PyTorch behind the part of TensorRT's interface the course uses.

It exists so the course runs, is tested and is measured on GPUs without TensorRT. Every figure it
produces is a PyTorch figure, never a TensorRT one, and the course labels it so.

Its contract is TensorRT's:
- `execute_async_v3(stream)` only enqueues work on the given stream; it never synchronizes.
- It reads only the bound input address and writes only the bound output address.
- Each execution context owns a private memory pool (TensorRT's activation memory): after the first
  enqueue of a shape, later enqueues of that shape allocate nothing, which also makes them capturable
  into a CUDA graph.
- Optimization profiles are validated shape ranges: a shape outside the active profile is refused.
The engine's weights are shared by all its contexts, as a TensorRT engine's are.
"""
import enum

import numpy as np
import torch

from common import data
from common.errors import CourseError


_SETTLING_PASSES = 3


class TensorIOMode(enum.Enum):
    """Mirrors `tensorrt.TensorIOMode`."""
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    """Mirrors the members of `tensorrt.DataType` that the course uses."""
    FLOAT = np.float32
    HALF = np.float16
    UINT8 = np.uint8


def nptype(dtype):
    """Mirrors `tensorrt.nptype`: the numpy type of a tensor's DataType."""
    return dtype.value


class _CudaArray:
    """Presents raw device memory to PyTorch through the CUDA Array Interface, without a copy."""

    def __init__(self, address, shape, dtype):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape), "typestr": np.dtype(dtype).str, "data": (address, False),
            "version": 3, "strides": None, "stream": None,  # None: the caller orders the streams
        }


class TorchEngine:
    """Mirrors `tensorrt.ICudaEngine`: I/O description, profiles, and a factory for execution contexts."""

    def __init__(self, model, profiles, image_input, input_name="input", output_name="logits"):
        self._model = model
        self._profiles = [tuple(profile) for profile in profiles]
        self._image_input = image_input  # the ladder's normalized fp32 NCHW, or step 12's uint8 NHWC
        self._names = (input_name, output_name)

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
        return TorchExecutionContext(self)


def load_torch_engine(weights_path, precision, profiles, image_input):
    """The stand-in's "deserialization": the module the ONNX export runs (data.inference_model), on the GPU."""
    try:
        model = data.inference_model(data.load_model(weights_path), precision, image_input.dtype).cuda()
        if precision == "fp16":
            # channels-last lets cuDNN pick tensor-core kernels without layout transposes, as TensorRT would.
            model = model.to(memory_format=torch.channels_last)
    except torch.cuda.OutOfMemoryError:
        raise CourseError(f"out of GPU memory loading {weights_path}: free the GPU") from None
    return TorchEngine(model, profiles, image_input)


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

    def set_optimization_profile_async(self, profile_index, stream):
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

    def set_tensor_address(self, name, address):
        self._addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle):
        """Enqueue the forward pass on `stream_handle`; False (as TensorRT) if shapes or addresses are unset."""
        input_name, output_name = self._engine._names
        if input_name not in self._shapes or not {input_name, output_name} <= self._addresses.keys():
            return False
        images = self._view(input_name)
        logits = self._view(output_name)
        # The first enqueue of a shape is the stand-in's lazy set-up (TensorRT has one too): PyTorch's caching
        # allocator can need a few passes before its pool holds the shape's whole allocation pattern (seen
        # on an H100: one more segment on the second pass), and later enqueues must allocate nothing.
        passes = 1 if images.shape in self._settled_shapes else _SETTLING_PASSES
        self._settled_shapes.add(images.shape)
        try:
            with torch.cuda.stream(torch.cuda.ExternalStream(stream_handle)), \
                    torch.cuda.use_mem_pool(self._pool), torch.inference_mode():
                for _ in range(passes):
                    logits.copy_(self._engine._model(images))
        except torch.cuda.OutOfMemoryError:
            raise CourseError(f"out of GPU memory running a batch of {len(images)}: use a smaller --batch-size "
                              "or fewer contexts") from None
        return True

    def _view(self, name):
        """A tensor over the bound address, cached so that each enqueue reuses the same view."""
        key = (name, self._addresses[name], self.get_tensor_shape(name))
        if key not in self._views:
            dtype = nptype(self._engine.get_tensor_dtype(name))
            self._views[key] = torch.as_tensor(_CudaArray(key[1], key[2], dtype), device="cuda")
        return self._views[key]

"""Thin helpers over cuda-python's runtime API (`cuda.bindings.runtime`), with every call checked.

cuda-python returns `(error, *values)` from each call instead of raising; `check` turns a failure into
a CourseError whose message says what to do.
"""
import ctypes
import sys
import threading

import numpy as np

from common.errors import CourseError

try:
    from cuda.bindings import runtime as cudart
    from cuda.bindings import utils as cuda_utils
except ImportError as error:  # at import time, before cli.run can turn a CourseError into one line
    sys.exit(f"error: cuda-python is missing ({error}): run `make setup`")

_ADVICE = {
    cudart.cudaError_t.cudaErrorInsufficientDriver: "no usable NVIDIA driver: these scripts need an NVIDIA GPU "
    "with a driver for CUDA 13 (check `nvidia-smi`)",
    cudart.cudaError_t.cudaErrorNoDevice: "no CUDA GPU is visible (check `nvidia-smi` and CUDA_VISIBLE_DEVICES)",
    cudart.cudaError_t.cudaErrorMemoryAllocation: "out of GPU memory: use a smaller --batch-size or free the GPU",
}


def check(result):
    """Unpack a cuda-python result, raising CourseError on any error; return the value(s)."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(error)
        advice = _ADVICE.get(error, "a CUDA runtime call failed")
        raise CourseError(f"{advice} [{name.decode()}]")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def require_gpu():
    """Fail early, with one line, where there is no GPU; return the device's name."""
    count = check(cudart.cudaGetDeviceCount())
    if count == 0:
        raise CourseError(_ADVICE[cudart.cudaError_t.cudaErrorNoDevice])
    properties = check(cudart.cudaGetDeviceProperties(0))
    return properties.name.decode().rstrip("\x00"), f"{properties.major}.{properties.minor}"


# What this process allocated through the functions below and still holds, by address: bytes (common/memory.py).
_device_held, _pinned_held = {}, {}


def malloc(nbytes):
    """Device memory: returns the address as an int."""
    address = check(cudart.cudaMalloc(nbytes))
    _device_held[address] = nbytes
    return address


def free(address):
    check(cudart.cudaFree(address))
    _device_held.pop(address, None)


def device_bytes_held():
    """Device memory allocated with malloc and not freed."""
    return sum(_device_held.values())


def pinned_bytes_held():
    """Page-locked host memory allocated with pinned_empty and not freed."""
    return sum(_pinned_held.values())


def device_memory_in_use():
    """The driver's figure for the whole GPU: total less free memory (what nvidia-smi shows), in bytes. The first
    call makes the process's CUDA context."""
    free_bytes, total_bytes = check(cudart.cudaMemGetInfo())
    return total_bytes - free_bytes


def pinned_empty(shape, dtype):
    """A numpy array in page-locked (pinned) host memory, which the GPU's copy engines read directly.

    The memory is freed when the process exits, or by free_host; the steps allocate theirs once per run.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    address = check(cudart.cudaMallocHost(nbytes))
    _pinned_held[address] = nbytes
    buffer = (ctypes.c_byte * nbytes).from_address(address)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def free_host(array):
    """Free the pinned memory of an array made by pinned_empty (the array must not be used afterwards)."""
    check(cudart.cudaFreeHost(array.ctypes.data))
    _pinned_held.pop(array.ctypes.data, None)


def is_pinned(array):
    """True when the array's memory is page-locked host memory registered with CUDA."""
    attributes = check(cudart.cudaPointerGetAttributes(array.ctypes.data))
    return attributes.type == cudart.cudaMemoryType.cudaMemoryTypeHost


# The synchronous copies of steps 1 and 2 go on the inference's stream and wait for it. cudaMemcpy would run on
# the legacy default stream, which the course's non-blocking streams never wait for, and from pageable memory it
# returns once the data is staged, before it may have landed (CUDA's "API synchronization behavior"): an
# inference queued right after it could read a half-copied batch.
def memcpy_htod(device_address, host_array, stream):
    """Copy into device memory on `stream` and wait until the data is there."""
    memcpy_htod_async(device_address, host_array, stream)
    synchronize(stream)


def memcpy_dtoh(host_array, device_address, stream):
    """Copy out of device memory on `stream` (after what is queued there) and wait until the data is here."""
    memcpy_dtoh_async(host_array, device_address, stream)
    synchronize(stream)


def memcpy_htod_async(device_address, host_array, stream):
    check(cudart.cudaMemcpyAsync(device_address, host_array.ctypes.data, host_array.nbytes,
                                 cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))


def memcpy_dtoh_async(host_array, device_address, stream):
    check(cudart.cudaMemcpyAsync(host_array.ctypes.data, device_address, host_array.nbytes,
                                 cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))


# cuda-bindings 13 deprecates int() of its handle objects for utils.get_cuda_native_handle; earlier releases
# (the H200 machine's 13.3.1, maybe) have only int().
native_handle = getattr(cuda_utils, "get_cuda_native_handle", int)


def create_stream():
    """A non-blocking stream (no implicit sync with the legacy default stream), as the int handle that
    TensorRT's execute_async_v3 and cuda-python's calls both take."""
    return native_handle(check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)))


def destroy_stream(stream):
    check(cudart.cudaStreamDestroy(stream))


def synchronize(stream):
    check(cudart.cudaStreamSynchronize(stream))


def create_event():
    """An event used only for ordering, not timing: disabling timing makes record/wait cheaper."""
    return check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))


def create_timing_event():
    """An event that records a GPU timestamp, for elapsed_ms."""
    return check(cudart.cudaEventCreate())


def elapsed_ms(start, end):
    """GPU time between two recorded timing events, in ms (both must have completed)."""
    return check(cudart.cudaEventElapsedTime(start, end))


def destroy_event(event):
    check(cudart.cudaEventDestroy(event))


def record(event, stream):
    check(cudart.cudaEventRecord(event, stream))


def wait(stream, event):
    """Make `stream` wait (on the GPU, not the host) until `event` has happened."""
    check(cudart.cudaStreamWaitEvent(stream, event, 0))


def event_synchronize(event):
    check(cudart.cudaEventSynchronize(event))


def pinned_copy(array):
    """A page-locked copy of a host array."""
    pinned = pinned_empty(array.shape, array.dtype)
    pinned[...] = array
    return pinned


def pinned_copies(arrays):
    """Page-locked copies of host arrays; an array listed several times (the timed run repeats its batches)
    is copied once."""
    copies = {}
    for array in arrays:
        if id(array) not in copies:
            copies[id(array)] = pinned_copy(array)
    return [copies[id(array)] for array in arrays]


# Held by a first enqueue of a shape and by a stream capture, so that no two run at once in one process: on an
# H200, the stand-in's first runs (PyTorch's allocator settling, Inductor's lazy set-up) in one thread while
# another thread captured, or two threads capturing at once, invalidated the capture. Replays need no lock.
# Reentrant: a capture's own first enqueue takes it again.
capture_lock = threading.RLock()


def begin_capture(stream):
    """Start recording the stream's work into a graph instead of running it.

    Thread-local mode: only this thread's unsafe calls (a cudaMalloc, say) invalidate the capture;
    other threads, such as an output thread waiting on an event, cannot break it by accident.
    """
    check(cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))


def end_capture(stream):
    """Stop recording; returns the executable graph (raises CourseError if the capture was invalidated)."""
    graph = check(cudart.cudaStreamEndCapture(stream))
    try:
        return check(cudart.cudaGraphInstantiate(graph, 0))
    finally:
        check(cudart.cudaGraphDestroy(graph))  # the executable graph is independent of its template


def destroy_graph(graph_exec):
    """Free an executable graph (from end_capture); nothing queued may still use it."""
    check(cudart.cudaGraphExecDestroy(graph_exec))


def launch_graph(graph_exec, stream):
    check(cudart.cudaGraphLaunch(graph_exec, stream))

"""Load an engine file, TensorRT or the PyTorch stand-in, check it against what it was built from, and
describe its I/O tensors.
"""
import dataclasses
import json
import sys
import time
import weakref
from pathlib import Path

import numpy as np

from common import build, data
from common.errors import CourseError

SUPPORTED_TENSORRT = (10, 11)


def resolve_backend(requested):
    """'tensorrt' or 'torch'. auto means TensorRT where it can be imported, else the stand-in, with a notice."""
    if requested == "torch":
        return "torch"
    try:
        import tensorrt as trt
    except ImportError as error:
        if requested == "tensorrt":
            raise CourseError(f"TensorRT cannot be imported ({error}): install TensorRT 10 or 11 "
                              "(see README), or use --backend torch") from None
        print("notice: TensorRT is not installed; using the PyTorch stand-in engine "
              "(its figures are PyTorch's, not TensorRT's)", file=sys.stderr)
        return "torch"
    if int(trt.__version__.split(".")[0]) not in SUPPORTED_TENSORRT:
        raise CourseError(f"TensorRT {trt.__version__} is not supported: the course needs TensorRT 10.x or 11.x")
    return "tensorrt"


def accepted(done, what):
    """TensorRT's setters (set_input_shape, set_tensor_address) return False and log why instead of raising: stop
    there, rather than run with the shape or address that was set before."""
    if not done:
        raise CourseError(f"TensorRT refused {what}: see its log above")


def backend_label(backend, stand_in=None):
    """What runs the engine: "TensorRT 10.13.3.9", or the stand-in and how it runs (`stand_in`: compiled, eager)."""
    if backend == "tensorrt":
        import tensorrt as trt
        return f"TensorRT {trt.__version__}"
    from common import torch_engine
    return torch_engine.label(stand_in)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One I/O tensor: its name, its shape with -1 for the dynamic batch axis, and its numpy dtype."""
    name: str
    shape: tuple
    dtype: np.dtype

    def shape_for(self, batch_size):
        return (batch_size, *self.shape[1:])

    def nbytes(self, batch_size):
        return int(np.prod(self.shape_for(batch_size))) * self.dtype.itemsize


class StaleEngine(CourseError):
    """An engine file that cannot be used as it is, which rebuilding fixes. `problem` says what is wrong, without
    the advice: 0_build.py, which rebuilds such a file, says so and rebuilds."""

    def __init__(self, problem, advice="rebuild it with `make build` or 0_build.py"):
        super().__init__(f"{problem}: {advice}")
        self.problem = problem


class ProfileChecks:
    """Batch sizes against the optimization profiles an engine was built with (`self.metadata`, `self.path`)."""

    @property
    def profiles(self):
        return [tuple(profile) for profile in self.metadata["profiles"]]

    def check_batch(self, batch_size, profile):
        """Raise a CourseError unless `profile` (None: any profile) holds batch_size."""
        if profile is None:
            self.profile_for(batch_size)
            return
        low, _, high = self.profiles[profile]
        if not low <= batch_size <= high:
            raise CourseError(f"batch size {batch_size} is outside optimization profile {profile} of {self.path} "
                              f"(batch {low}..{high}), which this step uses: use a batch size in range or rebuild "
                              "with 0_build.py --profile MIN:OPT:MAX")

    def profile_for(self, batch_size):
        """Index of the first optimization profile whose batch range holds batch_size."""
        for index, (low, _, high) in enumerate(self.profiles):
            if low <= batch_size <= high:
                return index
        raise CourseError(f"batch size {batch_size} is outside every profile of {self.path} "
                          f"({build.format_profiles(self.profiles)}): use a batch size in range or rebuild "
                          "with 0_build.py --profile MIN:OPT:MAX")


@dataclasses.dataclass(frozen=True)
class EngineFile(ProfileChecks):
    """An engine file whose metadata passed every check that needs no GPU (check_file)."""
    path: Path
    metadata: dict


@dataclasses.dataclass
class LoadedEngine(ProfileChecks):
    engine: object  # tensorrt.ICudaEngine, or the stand-in's TorchEngine
    metadata: dict
    path: Path
    backend: str
    input: TensorSpec
    output: TensorSpec
    runtime: object = None  # TensorRT's runtime must outlive the engines it deserialized
    stand_in: str | None = None  # the stand-in's mode, "compiled" or "eager"; None for TensorRT
    load_s: float = 0.0  # deserializing (the stand-in: loading its compile cache and compiling from it)

    @property
    def label(self):
        return backend_label(self.backend, self.stand_in)


def check_file(backend, path, precision, input_dtype="float32"):
    """Every check of an engine file that needs no GPU: it exists, its metadata is whole and matches the backend,
    the precision, the input the step sends (`input_dtype`: float32, the ladder's normalized NCHW images, or
    uint8, NHWC images as decoded) and the weights, and the file is the one that was built. Steps call this
    before they touch the GPU, so that a wrong path or a stale engine is one line on any machine, before any
    set-up."""
    path = Path(path)
    metadata = read_metadata(path)
    _check_metadata(metadata, path, backend, precision, input_dtype)
    return EngineFile(path, metadata)


def load(backend, path, precision, device, checked=None, input_dtype="float32"):
    """Load and check an engine file; `device` is (name, compute capability) of this GPU. `checked`: what
    check_file returned for this file, where the caller checked it before touching the GPU."""
    engine_file = checked or check_file(backend, path, precision, input_dtype)
    path, metadata = engine_file.path, engine_file.metadata
    _check_device(metadata, path, backend, device)
    started = time.perf_counter()
    if backend == "tensorrt":
        engine, runtime = _deserialize_tensorrt(path)
        nptype, stand_in = _tensorrt_nptype, None
    else:
        from common import torch_engine
        engine = torch_engine.load_torch_engine(path, metadata, build.engine_input(metadata))
        runtime, nptype, stand_in = None, torch_engine.nptype, torch_engine.mode_of(engine)
    specs = _describe_io(engine, nptype)
    return LoadedEngine(engine, metadata, path, backend, specs["input"], specs["output"], runtime, stand_in,
                        time.perf_counter() - started)


def read_metadata(path):
    """The metadata of engine file `path`, whole and of this course's format; a StaleEngine where it is not."""
    path = Path(path)
    if path.is_dir():
        raise CourseError(f"{path} is a directory, not an engine file: pass an engine file (under engines/)")
    if not path.exists():
        raise StaleEngine(f"{path} not found", "build it first (`make build`, or python 0_build.py --help)")
    metadata_file = build.metadata_path(path)
    if not metadata_file.exists():
        raise StaleEngine(f"{path} has no metadata file {metadata_file}",
                          "pass an engine file that 0_build.py built, or rebuild it with `make build` or 0_build.py")
    try:
        metadata = json.loads(metadata_file.read_text())
    except OSError as error:
        raise StaleEngine(f"{metadata_file} cannot be read ({error.strerror})") from None
    except ValueError as error:  # not JSON, or not text at all
        raise StaleEngine(f"{metadata_file} is not valid JSON ({error})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != build.METADATA_FORMAT:
        raise StaleEngine(f"{path} was written by another version of this course (its metadata is not of format "
                          f"{build.METADATA_FORMAT})")
    missing = [key for key in build.METADATA_KEYS if key not in metadata]
    if missing:
        raise StaleEngine(f"{metadata_file} lacks {', '.join(missing)}")
    if metadata["backend"] == "torch":
        from common import torch_engine
        stand_in = metadata["stand_in"]
        if not (isinstance(stand_in, dict) and stand_in.get("mode") in torch_engine.MODES):
            raise StaleEngine(f"{metadata_file} does not say how the stand-in runs (its stand_in is {stand_in!r})")
    return metadata


def _check_metadata(metadata, path, backend, precision, input_dtype):
    """Each mismatch that would crash or give a silently wrong answer becomes a one-line error."""
    rebuild = "rebuild it with `make build` or 0_build.py"
    if metadata["backend"] != backend:
        raise CourseError(f"{path} is a {metadata['backend']} engine but the backend is {backend}: "
                          f"pass --backend {metadata['backend']} or use another engine")
    if metadata["precision"] != precision:
        raise CourseError(f"this step needs an {precision} engine but {path} is {metadata['precision']}: "
                          f"pass the {precision} engine or {rebuild}")
    engine_input, step_input = build.engine_input(metadata), data.IMAGE_INPUTS[input_dtype]
    if engine_input != step_input:
        raise CourseError(f"{path} takes {engine_input} images but this step sends {step_input}: pass an engine "
                          f"built with `python 0_build.py --precision {precision} --input {input_dtype}` "
                          f"(named {build.default_name(precision, input_dtype)} by default)")
    if backend == "tensorrt":
        import tensorrt as trt
        if metadata["tensorrt_version"] != trt.__version__:
            raise StaleEngine(f"{path} was built with TensorRT {metadata['tensorrt_version']} but TensorRT "
                              f"{trt.__version__} is installed (engines do not move between versions)")
    if not build.WEIGHTS_PATH.exists():
        raise CourseError(f"{build.WEIGHTS_PATH} not found: {rebuild}")
    if metadata["weights_digest"] != digest(build.WEIGHTS_PATH):
        raise StaleEngine(f"{path} was built from other weights than {build.WEIGHTS_PATH}, so the reference "
                          "outputs would not match")
    check_unchanged(metadata, path)


def check_unchanged(metadata, path):
    """A StaleEngine unless the engine file is the one its metadata describes: not truncated, not overwritten."""
    size = path.stat().st_size
    if size != metadata["engine_bytes"]:
        raise StaleEngine(f"{path} is {size} bytes but was {metadata['engine_bytes']} when built "
                          "(truncated or overwritten)")
    if digest(path) != metadata["engine_digest"]:
        raise StaleEngine(f"{path} has changed since it was built (its content does not match its metadata)")


def digest(path):
    """data.file_digest, with a file that cannot be read as one line."""
    try:
        return data.file_digest(path)
    except OSError as error:
        raise CourseError(f"{path} cannot be read ({error.strerror}): check the file, or rebuild it with "
                          "`make build`") from None


def _check_device(metadata, path, backend, device):
    """A TensorRT engine runs only on GPUs of the compute capability it was built for."""
    if backend == "tensorrt" and metadata["compute_capability"] != device[1]:
        raise StaleEngine(f"{path} was built for a GPU of compute capability {metadata['compute_capability']} "
                          f"({metadata['device']}), this one is {device[1]} ({device[0]})")


def _deserialize_tensorrt(path):
    import tensorrt as trt
    runtime = trt.Runtime(build.tensorrt_logger())  # one logger per process, shared with the builder
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise CourseError(f"TensorRT could not load {path} (see its log above): rebuild it with `make build`")
    _check_tensorrt_formats(engine, path)
    return _TensorRTEngine(engine, path), runtime


def _check_tensorrt_formats(engine, path):
    """The host code copies every I/O tensor as a dense row-major array: TensorRT's LINEAR format, which is what
    an engine built without `allowed_formats` has (docs/tensorrt-notes.md section 15), in every profile."""
    import tensorrt as trt
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        for profile in range(engine.num_optimization_profiles):
            tensor_format = engine.get_tensor_format(name, profile)
            if tensor_format != trt.TensorFormat.LINEAR:
                raise CourseError(f"{path}: its tensor {name!r} is in TensorRT's {tensor_format.name} format in "
                                  f"profile {profile}, not LINEAR, which the host code copies: build it with "
                                  "0_build.py (which sets no allowed_formats)")


class _TensorRTEngine:
    """TensorRT's engine, except that a context it cannot create is one line instead of a crash later.

    TensorRT reserves the activation memory of a profile's largest batch when it creates a context, and returns
    None where that does not fit in GPU memory; the steps would fail on their first call to that None.
    """

    def __init__(self, engine, path):
        self._engine, self._path = engine, path
        self._contexts = LiveObjects()  # what it made and is still in use, for common/memory.py

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def create_execution_context(self):
        context = self._engine.create_execution_context()
        if context is None:
            raise CourseError(f"out of GPU memory creating an execution context for {self._path} (TensorRT reserves "
                              "the memory of its profiles' largest batch): build the engine with a smaller --profile "
                              "MAX, or free the GPU")
        return self._contexts.add(context)


def tensorrt_contexts(wrapped):
    """The execution contexts a loaded TensorRT engine (a _TensorRTEngine) made and that are still in use, in the
    order it made them."""
    return wrapped._contexts.alive()


class LiveObjects:
    """Objects in the order they were added, held weakly: counting a step's execution contexts must not keep one
    (and its activation memory) alive once the step has let it go (step 10 frees the engine's before eager PyTorch
    runs)."""

    def __init__(self):
        self._references = []

    def add(self, item):
        self._references.append(weakref.ref(item))
        return item

    def alive(self):
        return [item for reference in self._references if (item := reference()) is not None]


def _tensorrt_nptype(dtype):
    import tensorrt as trt
    return trt.nptype(dtype)


def _describe_io(engine, nptype):
    """The engine's I/O tensors by their role; the course's ResNet-18 has one input and one output."""
    specs = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        role = "input" if engine.get_tensor_mode(name).name == "INPUT" else "output"
        specs[role] = TensorSpec(name, tuple(engine.get_tensor_shape(name)), np.dtype(nptype(engine.get_tensor_dtype(name))))
    return specs

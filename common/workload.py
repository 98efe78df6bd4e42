"""What every step does before its lesson: check the inputs, the GPU and the engine, make the batches and the
reference."""
import dataclasses
import os

import numpy as np

from common import build, cli, cuda, data, engine as engines, memory
from common.errors import CourseError

IMAGE_BYTES = int(np.prod(data.IMAGE_SHAPE)) * np.dtype(np.float32).itemsize


@dataclasses.dataclass
class Workload:
    engine: object  # tensorrt.ICudaEngine, or the stand-in's TorchEngine: the same interface
    input: engines.TensorSpec
    output: engines.TensorSpec
    loaded: engines.LoadedEngine
    device: tuple  # (GPU name, compute capability)
    batches: list  # the timed run: --repeats passes over the same --batches batches (the same arrays, not copies)
    reference: list  # the fp32 PyTorch logits of each of them


def prepare(args, engine_name, precision, batch_sizes=None, make_batches=None, profile=0, input_dtype="float32",
            later_batch_sizes=()):
    """Everything a step needs, checked, so that its main() holds only its lesson.

    `batch_sizes` and `make_batches()` override the default workload (args.batches batches of args.batch_size
    images): the sizes are checked before the batches are made. The run repeats the batches args.repeats
    times (one timed window each, see results.Timer). `profile` is the optimization profile the step's
    contexts use (a new context starts on profile 0); None for a step that picks a profile per batch.
    `input_dtype` is what the step sends the engine: float32 (the ladder's normalized images) or uint8 (the
    same images as decoded, step 12). `later_batch_sizes`: sizes the step runs after its timed run (a comparison),
    checked against the profile with the others.
    """
    backend = engines.resolve_backend(args.backend)
    # Every check that needs no GPU comes first: a wrong path, a stale engine or a batch it cannot take is one
    # line on any machine (and is tested on one without a GPU), before the GPU's and the batches' set-up.
    engine_file = engines.check_file(backend, args.engine or build.engine_path(engine_name, backend), precision,
                                     input_dtype)
    cli.check_writable_directory(args.reports, "--reports")
    batch_sizes = batch_sizes or [args.batch_size] * args.batches
    for batch_size in sorted({*batch_sizes, *later_batch_sizes}):
        engine_file.check_batch(batch_size, profile)
    check_host_memory(sum(batch_sizes))
    device = cuda.require_gpu()
    memory.driver.begin()  # the driver's figure before the step holds anything: its peak is measured from here
    loaded = engines.load(backend, engine_file.path, precision, device, checked=engine_file)
    if make_batches:
        batches = make_batches()
    else:
        make = data.make_uint8_batches if input_dtype == "uint8" else data.make_batches
        batches = make(args.batches, args.batch_size, args.seed)
    reference = data.reference_logits(build.WEIGHTS_PATH, batches, build.ENGINE_DIR / "cache")
    return Workload(loaded.engine, loaded.input, loaded.output, loaded, device, batches * args.repeats,
                    reference * args.repeats)


def check_host_memory(images):
    """Refuse a workload whose images cannot fit in this machine's memory, before it is made: the steps hold
    every batch, and from step 3 a pinned copy of it too."""
    needed = 2 * images * IMAGE_BYTES
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > total:
        raise CourseError(f"{images} images need up to {needed / 2**30:.1f} GiB of host memory (the batches and their "
                          f"pinned copies), more than this machine's {total / 2**30:.1f} GiB: use fewer --batches or "
                          "a smaller --batch-size")

"""What every step does before its lesson: check the GPU, load the engine, make the batches and the reference."""
import dataclasses

from common import build, cuda, data, engine as engines


@dataclasses.dataclass
class Workload:
    engine: object  # tensorrt.ICudaEngine, or the stand-in's TorchEngine: the same interface
    input: engines.TensorSpec
    output: engines.TensorSpec
    loaded: engines.LoadedEngine
    device: tuple  # (GPU name, compute capability)
    batches: list  # the timed run: --repeats passes over the same --batches batches (the same arrays, not copies)
    reference: list  # the fp32 PyTorch logits of each of them


def prepare(args, engine_name, precision, batches=None, profile=0, input_dtype="float32"):
    """Everything a step needs, checked, so that its main() holds only its lesson.

    `batches` overrides the default workload (args.batches batches of args.batch_size images); the run
    repeats them args.repeats times (one timed window each, see results.Timer). `profile`
    is the optimization profile the step's contexts use (a new context starts on profile 0); None for a
    step that picks a profile per batch. `input_dtype` is what the step sends the engine: float32 (the
    ladder's normalized images) or uint8 (the same images as decoded, step 12).
    """
    backend = engines.resolve_backend(args.backend)
    device = cuda.require_gpu()
    path = args.engine or build.engine_path(engine_name, backend)
    loaded = engines.load(backend, path, precision, device, input_dtype)
    if batches is None:
        make_batches = data.make_uint8_batches if input_dtype == "uint8" else data.make_batches
        batches = make_batches(args.batches, args.batch_size, args.seed)
    for images in batches:  # fail early, with one line, on a batch the step's profile cannot take
        loaded.check_batch(len(images), profile)
    reference = data.reference_logits(build.WEIGHTS_PATH, batches, build.ENGINE_DIR / "cache")
    return Workload(loaded.engine, loaded.input, loaded.output, loaded, device, batches * args.repeats,
                    reference * args.repeats)

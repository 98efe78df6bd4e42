"""Build: export ResNet-18 to ONNX and build an engine from it (TensorRT, or the PyTorch stand-in).

1. The model: torchvision's ResNet-18, with deterministic random weights from --seed (the default, no
   download) or torchvision's ImageNet weights (--weights imagenet). Saved once to
   engines/resnet18_weights.pt; every engine and the reference outputs come from that file.
2. ONNX: exported with a dynamic batch axis, in fp32 or in fp16. The fp16 model casts to fp16 inside the
   graph, so its inputs and outputs stay fp32 and the host code of later steps does not change.
   With --input uint8 the model takes images as a decoder produces them (uint8, NHWC) and does the cast,
   the layout change and ImageNet's normalization itself, before ResNet-18: step 12's engine.
   With --precision int8 (step 13's engine) the model is first calibrated: NVIDIA Model Optimizer's INT8
   configuration (or, where it is not installed, the same max calibration in PyTorch) runs it on
   --calibration-batches batches of 32 images of its own (--calibration-seed; never the timed images) and
   records the range of every convolution's and the classifier's input and weights; the export carries them
   as QuantizeLinear/DequantizeLinear (Q/DQ) nodes, which is how TensorRT 10 and 11 take INT8 (common/int8.py).
3. The engine: TensorRT builds a strongly typed network (layer precisions come from the ONNX types: the
   only mode TensorRT 11 has) with one optimization profile per --profile, reusing a timing cache.
   With --backend torch it writes the stand-in's engine file instead (for int8: the weights and the
   calibration's scales, from which it runs the fake-quantized network), and compiles the stand-in with
   PyTorch's Inductor, a graph per profile at its opt shape, as a build compiles a plan, saving the compile
   cache beside it (--stand-in eager, or a machine where compiling cannot run, leaves it eager PyTorch).
Each engine gets a metadata file (<engine>.json) that later steps check before they run.

Examples:
  python 0_build.py                                   # engines/resnet18_fp32, batch 1..128
  python 0_build.py --precision fp16                  # engines/resnet18_fp16
  python 0_build.py --precision fp16 --profile 1:16:32 --profile 64:128:128 --name resnet18_fp16_2profiles
  python 0_build.py --precision fp16 --input uint8    # engines/resnet18_fp16_uint8 (step 12)
  python 0_build.py --precision int8                  # engines/resnet18_int8 (step 13)
"""
import argparse
import json

from common import build, cli, cuda, data, engine as engines
from common.errors import CourseError

DEFAULT_PROFILE = (1, 128, 128)
MAX_WORKSPACE_MIB = 2**20  # 1 TiB: more than any GPU has
DEFAULT_CALIBRATION = {"batches": 8, "seed": 0}  # 256 images: Model Optimizer's guide suggests 128 to 512
MAX_CALIBRATION_BATCHES = 64  # 2,048 images, 1.2 GiB as fp32: calibration runs on the CPU, one batch at a time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    cli.add_backend_option(parser)
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                        help="fp32 (default), fp16, or int8: calibrated, with Q/DQ nodes (step 13)")
    parser.add_argument("--profile", type=build.parse_profile, action="append", metavar="MIN:OPT:MAX",
                        help="an optimization profile's batch sizes; repeat for several (default 1:128:128)")
    parser.add_argument("--input", choices=list(data.IMAGE_INPUTS), default="float32",
                        help="float32: normalized NCHW images, as the ladder sends them (default); uint8: NHWC "
                             "images as decoded, normalized inside the engine (step 12)")
    parser.add_argument("--name", type=build.parse_engine_name,
                        help="engine name under engines/, a plain file name (default resnet18_<precision>, "
                             "with _uint8 after it for --input uint8)")
    parser.add_argument("--weights", choices=["seed", "imagenet"], default="seed",
                        help="deterministic random weights (default) or torchvision's ImageNet weights")
    cli.add_seed_option(parser, "the random weights")
    parser.add_argument("--calibration-batches", type=cli.whole_number(1, MAX_CALIBRATION_BATCHES),
                        help=f"with --precision int8: batches of {data.CALIBRATION_BATCH_SIZE} images to calibrate on "
                             f"(default {DEFAULT_CALIBRATION['batches']})")
    parser.add_argument("--calibration-seed", type=cli.whole_number(0, cli.MAX_SEED),
                        help="with --precision int8: seed of the calibration images, a random stream apart from the "
                             f"timed images' (default {DEFAULT_CALIBRATION['seed']})")
    parser.add_argument("--stand-in", choices=["compiled", "eager"], default="compiled",
                        help="with --backend torch: compile the stand-in with PyTorch's Inductor (default), or run it "
                             "as eager PyTorch")
    parser.add_argument("--workspace-mib", type=cli.whole_number(1, MAX_WORKSPACE_MIB), default=4096,
                        help="TensorRT's workspace limit (default 4096)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the engine is up to date")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's INFO log during the build")
    return parser.parse_args()


def ensure_weights(source, seed):
    """Write the weights only when missing, changed or asked for differently, so engines stay valid across builds."""
    wanted = {"source": source, "seed": seed if source == "seed" else None}
    recorded = build.metadata_path(build.WEIGHTS_PATH)
    if build.WEIGHTS_PATH.exists() and recorded.exists():
        record = read_record(recorded)
        if record == {**wanted, "digest": engines.digest(build.WEIGHTS_PATH)}:
            return
        if record is None:
            print(f"{recorded} cannot be read or is not a JSON object: writing the weights again")
    print(f"writing {build.WEIGHTS_PATH} ({source} weights) ...")
    recorded.unlink(missing_ok=True)  # first: weights written half-way must not keep the old record
    build.save_weights(source, seed)
    recorded.write_text(json.dumps({**wanted, "digest": data.file_digest(build.WEIGHTS_PATH)}) + "\n")


def read_record(path):
    """The JSON object in `path`, or None where it cannot be read or is not one: a record to write again."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def calibration_of(args):
    """The calibration an int8 build asks for ({"batches", "seed"}), None for the other precisions; an option
    that only int8 takes, given to another, is one line."""
    given = {name: value for name, value in (("batches", args.calibration_batches), ("seed", args.calibration_seed))
             if value is not None}
    if args.precision != "int8":
        if given:
            option = f"--calibration-{next(iter(given))}"
            raise CourseError(f"{option} is for an INT8 build: add --precision int8, or leave {option} out")
        return None
    if args.input != "float32":
        raise CourseError(f"--precision int8 takes --input float32 only (step 13 sends the ladder's images), not "
                          f"{args.input}: leave --input out")
    return {**DEFAULT_CALIBRATION, **given}


def is_up_to_date(path, backend, precision, profiles, device, input_dtype, stand_in, calibration=None):
    """Whether the engine file was built for exactly this (for int8, on these calibration images). One whose
    metadata cannot be read, or that changed since it was built, is stale: say why, and rebuild it."""
    if not path.exists():
        return False
    try:
        metadata = engines.read_metadata(path)
        engines.check_unchanged(metadata, path)
    except engines.StaleEngine as stale:
        print(f"{stale.problem}: rebuilding it")
        return False
    recorded = metadata.get("calibration") or {}
    built_for = (metadata["backend"], metadata["precision"], [tuple(profile) for profile in metadata["profiles"]],
                 metadata["weights_digest"], build.engine_input(metadata).dtype,
                 calibration and {key: recorded.get(key) for key in calibration})
    wanted = (backend, precision, profiles, data.file_digest(build.WEIGHTS_PATH), input_dtype, calibration)
    if backend == "tensorrt":
        import tensorrt as trt
        built_for += (metadata.get("tensorrt_version"), metadata.get("compute_capability"))
        wanted += (trt.__version__, device[1])
    return built_for == wanted and (backend == "tensorrt" or stand_in_is_current(path, metadata, stand_in))


def stand_in_is_current(path, metadata, requested):
    """Whether the stand-in runs as asked: eager as asked, or where compiling cannot run here; or compiled, with a
    compile cache that is there, unchanged and made for this GPU and this torch."""
    from common import torch_engine
    recorded = metadata["stand_in"]
    if recorded.get("requested") != requested:
        return False
    if torch_engine.why_not_compiled() is not None:
        return True  # nothing else can be built here
    if recorded["mode"] == "eager":
        return requested == "eager"
    problem = torch_engine.cache_problem_here(path, metadata, build.engine_input(metadata))
    if problem:
        print(f"{problem}: rebuilding it")
    return problem is None


def main():
    args = parse_args()
    backend = engines.resolve_backend(args.backend)
    calibration = calibration_of(args)
    profiles = args.profile or [DEFAULT_PROFILE]
    name = args.name or build.default_name(args.precision, args.input)
    path = build.engine_path(name, backend)
    cli.check_writable_directory(build.ENGINE_DIR, "the engine directory")
    if path.is_dir():
        raise CourseError(f"{path} is a directory, where the engine would go: remove it, or pass another --name")
    # TensorRT builds for the GPU it runs on, and so does the compiled stand-in; without a GPU the stand-in is eager.
    device = cuda.require_gpu() if backend == "tensorrt" else gpu_if_any()
    ensure_weights(args.weights, args.seed)
    if not args.force and is_up_to_date(path, backend, args.precision, profiles, device, args.input, args.stand_in,
                                        calibration):
        print(f"{path} is up to date ({args.precision}, {data.IMAGE_INPUTS[args.input]} input, "
              f"profiles {build.format_profiles(profiles)}); --force rebuilds it")
        return
    build.build_engine(name, backend, args.precision, profiles, build.WEIGHTS_PATH,
                       workspace_mib=args.workspace_mib, verbose=args.verbose, device=device, input_dtype=args.input,
                       stand_in=args.stand_in, calibration=calibration)


def gpu_if_any():
    """(name, compute capability) of this GPU, or None on a machine without one."""
    try:
        return cuda.require_gpu()
    except CourseError:
        return None


if __name__ == "__main__":
    cli.run(main)

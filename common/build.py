"""ONNX export and engine building: TensorRT engines, or the PyTorch stand-in's engine file.

Every engine file gets a metadata file beside it (`<engine>.json`) recording what it was built from,
so that loading a stale or mismatched engine is a clear error rather than a crash or a wrong answer.
"""
import argparse
import datetime
import functools
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import torch

from common import data, int8
from common.errors import CourseError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ENGINE_DIR = Path("engines")
WEIGHTS_PATH = ENGINE_DIR / "resnet18_weights.pt"
# 2: the engine file's size and digest, checked before it is loaded; 3: how the stand-in runs (compiled or eager)
METADATA_FORMAT = 3
# What a step needs from an engine's metadata; a file that lacks any of them is rebuilt.
METADATA_KEYS = ("backend", "precision", "profiles", "weights_digest", "tensorrt_version", "compute_capability",
                 "device", "engine_bytes", "engine_digest", "stand_in")
EAGER_STAND_IN = {"requested": "eager", "mode": "eager", "why_eager": "asked for (--stand-in eager)"}
MAX_BATCH = 2**31 - 1  # TensorRT's shapes are 32-bit (and no GPU holds a batch anywhere near it)
MAX_FILE_NAME = 255  # bytes, on the file systems Linux uses
ONNX_OPSET = 18  # within what TensorRT 10.0's ONNX parser and every later version accept


def engine_path(name, backend):
    """TensorRT plans end in .plan; the stand-in's files in .torch.pt, so the two never mix."""
    return ENGINE_DIR / (f"{name}.plan" if backend == "tensorrt" else f"{name}.torch.pt")


def default_name(precision, input_dtype):
    """0_build.py's engine name: resnet18_fp16, or resnet18_fp16_uint8 for the engine that takes uint8 images."""
    return f"resnet18_{precision}" + ("_uint8" if input_dtype == "uint8" else "")


def metadata_path(engine_file):
    return Path(f"{engine_file}.json")


def engine_input(metadata):
    """The input an engine takes, from its metadata; engines written before it was recorded all take float32."""
    return data.IMAGE_INPUTS[metadata.get("input_dtype", "float32")]


def save_weights(source, seed, path=WEIGHTS_PATH):
    """The course's "trained model": every engine and the reference outputs come from this one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data.make_weights(source, seed), path)
    return path


def weights_source():
    """"seed" or "imagenet": what 0_build.py wrote the weights from (its record beside them); None where unknown."""
    try:
        return json.loads(metadata_path(WEIGHTS_PATH).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None


def export_onnx(weights_path, precision, input_dtype, onnx_path, max_batch):
    """Export ResNet-18 with a dynamic batch axis (1..max_batch) through torch.export (the dynamo exporter)."""
    model = data.inference_model(data.load_model(weights_path), precision, input_dtype)
    image_input = data.IMAGE_INPUTS[input_dtype]
    example = torch.zeros(2, *image_input.shape, dtype=getattr(torch, image_input.dtype))
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch.export's own internals (a deepcopy of a pytree spec) use a name torch deprecated: harmless, and
        # not the course's to fix, but a learner would read it as a problem of the build. Only that one warning.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        torch.onnx.export(model, (example,), onnx_path, dynamo=True, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                          external_data=False, verbose=False)  # one self-contained file
    return onnx_path


def build_tensorrt(onnx_path, image_shape, profiles, workspace_mib, verbose, compute_capability):
    """Build a serialized TensorRT engine from the ONNX file: strongly typed, one optimization profile per range.

    The input's type is the ONNX file's (a strongly typed network takes it from there; a uint8 input needs
    nothing more), and `image_shape` is one image's shape in its layout. Returns the plan's bytes. The
    timing cache (kernel timings from earlier builds) makes rebuilds fast.
    """
    import tensorrt as trt

    logger = tensorrt_logger()
    logger.min_severity = trt.Logger.INFO if verbose else trt.Logger.WARNING
    builder = trt.Builder(logger)
    # Strongly typed: precisions come from the ONNX types (TensorRT 11 accepts nothing else). INT8 too: its
    # QuantizeLinear/DequantizeLinear nodes make it explicit quantization, which takes no INT8 flag and no
    # calibrator (TensorRT 11 has neither; 10.x deprecates both), docs/tensorrt-notes.md section 18.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise CourseError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    # Kernel timings are only valid for one TensorRT version on one GPU architecture: key the file by both.
    cache_path = ENGINE_DIR / f"timing-trt{trt.__version__}-sm{compute_capability}.cache"
    timing_cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    if not config.set_timing_cache(timing_cache, False):  # False: do not silently use a mismatched cache
        raise CourseError(f"TensorRT refused the timing cache {cache_path}: delete it and build again")
    for low, opt, high in profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, (low, *image_shape), (opt, *image_shape), (high, *image_shape))
        config.add_optimization_profile(profile)

    serialized_engine = builder.build_serialized_network(network, config)
    if serialized_engine is None:
        raise CourseError(f"TensorRT could not build an engine from {onnx_path}: see its log above")
    cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized_engine))


@functools.cache
def tensorrt_logger():
    """The process's one TensorRT logger, for every builder and runtime: NVIDIA's samples share one, a second one
    costs a log line, and each must outlive all that was made through it (docs/tensorrt-notes.md section 13)."""
    import tensorrt as trt
    return trt.Logger(trt.Logger.WARNING)


def build_engine(name, backend, precision, profiles, weights_path, workspace_mib=4096, verbose=False,
                 device=None, input_dtype="float32", stand_in="compiled", calibration=None):
    """Export, build and save one engine with its metadata; returns the engine file's path. `stand_in`: how the
    PyTorch stand-in is to run, compiled (its cache is built here) or eager. `calibration`: for int8, the
    calibration images ({"batches": N, "seed": S}, data.make_calibration_batches)."""
    started = time.perf_counter()
    target = engine_path(name, backend)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The old metadata goes first: a build that stops half-way must not leave a new file under old metadata.
    metadata_path(target).unlink(missing_ok=True)
    onnx_path = ENGINE_DIR / f"{name}.onnx"  # per engine: its batch range is part of the export
    max_batch = max(high for _, _, high in profiles)
    image_input = data.IMAGE_INPUTS[input_dtype]
    if precision == "int8":
        quantized, int8_record, calibration = calibrate_int8(weights_path, calibration)
        print(f"exporting {onnx_path} (ResNet-18 with INT8 Q/DQ, {image_input} input) ...")
        int8.export_onnx(quantized, onnx_path, INPUT_NAME, OUTPUT_NAME)
    else:
        print(f"exporting {onnx_path} (ResNet-18, {precision}, {image_input} input, batch 1..{max_batch}) ...")
        export_onnx(weights_path, precision, input_dtype, onnx_path, max_batch)
    if backend == "tensorrt":
        print(f"building {target} with TensorRT: profiles {format_profiles(profiles)} ...")
        target.write_bytes(build_tensorrt(onnx_path, image_input.shape, profiles, workspace_mib, verbose, device[1]))
        import tensorrt as trt
        tensorrt_version, stand_in_record = trt.__version__, None
    else:
        from common import torch_engine
        print(f"writing the PyTorch stand-in's engine {target}: profiles {format_profiles(profiles)} ...")
        if precision == "int8":
            int8.save(int8_record, target)  # the folded weights and the calibration's scales: no calibration to run
        else:
            shutil.copyfile(weights_path, target)  # the stand-in's "plan" is the weights themselves, and its compile cache
        stand_in_record = torch_engine.build(target, precision, profiles, image_input, data.file_digest(weights_path),
                                             stand_in)
        tensorrt_version = None
    write_metadata(target, backend, precision, profiles, weights_path, onnx_path, tensorrt_version, device, image_input,
                   stand_in_record, calibration if precision == "int8" else None)
    size_mib = target.stat().st_size / 2**20
    print(f"built {target} ({size_mib:.1f} MiB) in {time.perf_counter() - started:.1f} s")
    return target


def write_metadata(target, backend, precision, profiles, weights_path, onnx_path, tensorrt_version=None, device=None,
                   image_input=data.IMAGE_INPUTS["float32"], stand_in=None, calibration=None):
    """Record what the finished engine file `target` was built from, beside it (<engine>.json). `stand_in`: what
    torch_engine.build recorded of a stand-in's compile (None: eager, as asked); None for TensorRT. `calibration`:
    an INT8 engine's (calibrate_int8); None for the other precisions."""
    if backend == "torch" and stand_in is None:
        stand_in = EAGER_STAND_IN
    metadata = {
        "format": METADATA_FORMAT, "model": "resnet18", "backend": backend, "precision": precision,
        "profiles": [list(profile) for profile in profiles], "input": INPUT_NAME, "output": OUTPUT_NAME,
        "input_dtype": image_input.dtype, "input_layout": image_input.layout,
        "weights_digest": data.file_digest(weights_path), "onnx": str(onnx_path),
        "tensorrt_version": tensorrt_version, "torch_version": torch.__version__,
        "device": device[0] if device else None, "compute_capability": device[1] if device else None,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "engine_bytes": target.stat().st_size, "engine_digest": data.file_digest(target), "stand_in": stand_in,
        "calibration": calibration,
    }
    metadata_path(target).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


def calibrate_int8(weights_path, calibration):
    """The INT8 network calibrated on its own images: (the fake-quantized module, what its stand-in's engine file
    holds, what the metadata records of the calibration)."""
    batches = data.make_calibration_batches(calibration["batches"], calibration["seed"])
    quantizer = int8.quantizer_name()
    print(f"calibrating INT8 with {quantizer} on {len(batches)} batches of {data.CALIBRATION_BATCH_SIZE} images "
          f"(calibration seed {calibration['seed']}) ...")
    started = time.perf_counter()
    quantized, record = int8.calibrated(weights_path, batches)
    print(f"calibrated {len(record['input_amax'])} quantized inputs and {len(record['weight_amax'])} weights in "
          f"{time.perf_counter() - started:.1f} s")
    return quantized, record, {**calibration, "batch_size": data.CALIBRATION_BATCH_SIZE, "quantizer": quantizer}


def format_profiles(profiles):
    return ", ".join(f"batch {low}..{high} (opt {opt})" for low, opt, high in profiles)


def parse_profile(text):
    """'MIN:OPT:MAX' batch sizes, e.g. '1:128:128'; argparse type, so errors are one line."""
    try:
        low, opt, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a profile is MIN:OPT:MAX batch sizes, e.g. 1:128:128, not {text!r}") from None
    if not 1 <= low <= opt <= high:
        raise argparse.ArgumentTypeError(f"a profile needs 1 <= MIN <= OPT <= MAX, not {text!r}")
    if high > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"a profile's MAX must be at most {MAX_BATCH}, not {high}")
    return low, opt, high


def parse_engine_name(text):
    """An engine's name: a plain file name, so that the engine, its ONNX export and its metadata land in engines/.
    argparse type, so errors are one line."""
    if not text or text in (".", "..") or Path(text).name != text:
        raise argparse.ArgumentTypeError(f"an engine name is a plain file name (it goes under {ENGINE_DIR}/), "
                                         f"not {text!r}")
    longest = f"{text}.torch.pt.json"  # the longest file name made from it
    if len(os.fsencode(longest)) > MAX_FILE_NAME:
        raise argparse.ArgumentTypeError(f"an engine name of {len(os.fsencode(text))} bytes is too long: the names of "
                                         f"its files would be over {MAX_FILE_NAME} bytes")
    return text

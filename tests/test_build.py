"""CPU tier: the ONNX exports match PyTorch, and engine files carry metadata that loading checks."""
import json
import re
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from common import build, data, engine, int8
from common.errors import CourseError
from conftest import make_course, run_script

BUILD_OUTPUT = {}  # the 0_build.py arguments, joined -> what the built fixture's 0_build.py printed


BUILDS = (["--precision", "fp32"], ["--precision", "fp16"], ["--precision", "fp16", "--input", "uint8"],
          ["--precision", "int8", "--calibration-batches", "1"])  # one batch of 32: the same path, in seconds
EXPORTS = ["resnet18_fp32", "resnet18_fp16", "resnet18_fp16_uint8", "resnet18_int8"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The stand-in's fp32 and fp16 engines, step 12's uint8-input fp16 engine and step 13's INT8 engine, built by
    0_build.py in a scratch directory (no GPU needed)."""
    workdir = tmp_path_factory.mktemp("course")
    for args in BUILDS:
        result = run_script("0_build.py", "--backend", "torch", *args, cwd=workdir)
        assert result.returncode == 0, result.stderr
        BUILD_OUTPUT[" ".join(args)] = result
    return workdir


@pytest.mark.parametrize("build_args", [" ".join(args) for args in BUILDS])
def test_build_prints_no_warning(built, build_args):
    """The exporter's own FutureWarning (about torch's pytree internals) is silenced at the export, and only it."""
    result = BUILD_OUTPUT[build_args]
    assert "Warning" not in result.stdout + result.stderr, result.stderr
    assert result.stderr == "" and result.stdout.splitlines()[-1].startswith("built engines/resnet18_")


def test_only_the_exporters_known_warning_is_silenced(tmp_path, monkeypatch):
    """Another warning raised during the export still reaches the user."""
    import warnings

    def export(*args, **kwargs):
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("something else", FutureWarning)
    monkeypatch.setattr(torch.onnx, "export", export)
    monkeypatch.setattr(data, "load_model", lambda path: torch.nn.Identity())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build.export_onnx("weights", "fp32", "float32", tmp_path / "model.onnx", max_batch=4)
    assert [str(warning.message) for warning in caught] == ["something else"]


def test_corrupt_metadata_is_reported_and_rebuilt(built):
    """The issue's case: garbage in the engine's metadata file, and in the weights' record as well. 0_build.py
    says so in one line each and builds again; the weights it writes again are the same, so the fp32 engine
    stays valid."""
    metadata_file = built / "engines/resnet18_fp16.torch.pt.json"
    metadata_file.write_text("garbage\n")
    (built / "engines/resnet18_weights.pt.json").write_text("[]")
    result = run_script("0_build.py", "--backend", "torch", "--precision", "fp16", cwd=built)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert "engines/resnet18_weights.pt.json cannot be read or is not a JSON object: writing the weights again" in lines
    assert any(line.startswith(f"{metadata_file.relative_to(built)} is not valid JSON (") and
               line.endswith("): rebuilding it") for line in lines), result.stdout
    assert lines[-1].startswith("built engines/resnet18_fp16.torch.pt")
    assert json.loads(metadata_file.read_text())["precision"] == "fp16"
    up_to_date = run_script("0_build.py", "--backend", "torch", "--precision", "fp32", cwd=built)
    assert up_to_date.returncode == 0 and "is up to date" in up_to_date.stdout, up_to_date.stdout


def onnx_logits(path, images):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {build.INPUT_NAME: images})[0]


def torch_logits(weights_path, images):
    with torch.inference_mode():
        return data.load_model(weights_path)(torch.from_numpy(images)).numpy()


@pytest.mark.parametrize("precision, max_rel_err", [("fp32", 1e-5), ("fp16", 5e-3)])
def test_onnx_export_matches_pytorch(built, precision, max_rel_err):
    images = data.make_batches(1, 3, seed=1)[0]  # batch 3: not the export's example batch of 2
    want = torch_logits(built / build.WEIGHTS_PATH, images)
    got = onnx_logits(built / build.ENGINE_DIR / f"resnet18_{precision}.onnx", images)
    assert got.shape == want.shape == (3, 1000)
    assert got.dtype == np.float32  # fp16 compute, fp32 outputs: the host code stays the same
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < max_rel_err
    assert (got.argmax(1) == want.argmax(1)).all()


def test_uint8_export_takes_decoded_images_and_matches_pytorch(built):
    """Step 12's model: uint8 NHWC in, the host's normalization inside, fp16 compute, fp32 logits."""
    images = data.make_uint8_batches(1, 3, seed=1)[0]
    want = torch_logits(built / build.WEIGHTS_PATH, data.normalize(images))
    path = built / build.ENGINE_DIR / "resnet18_fp16_uint8.onnx"
    got = onnx_logits(path, images)
    assert got.shape == want.shape == (3, 1000) and got.dtype == np.float32
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 5e-3
    assert (got.argmax(1) == want.argmax(1)).all()
    graph = onnx.load(path).graph
    shape = [dim.dim_param or dim.dim_value for dim in graph.input[0].type.tensor_type.shape.dim]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8 and shape == ["batch", 224, 224, 3]
    # TensorRT takes UINT8 only as network I/O: the input's one consumer must be a cast to float
    consumers = [node for node in graph.node if build.INPUT_NAME in node.input]
    assert [node.op_type for node in consumers] == ["Cast"]
    assert consumers[0].attribute[0].i == onnx.TensorProto.FLOAT


def test_ladder_batches_are_the_uint8_images_normalized_on_the_host():
    images = data.make_uint8_batches(2, 3, seed=5)
    batches = data.make_batches(2, 3, seed=5)
    assert images[0].dtype == np.uint8 and images[0].shape == (3, 224, 224, 3)
    assert batches[0].dtype == np.float32 and batches[0].shape == (3, 3, 224, 224) and batches[0].flags.c_contiguous
    for uint8, normalized in zip(images, batches):
        np.testing.assert_array_equal(normalized, data.normalize(uint8))
        pixel = uint8[:, 10, 20, :] / np.float32(255)  # one pixel of each image, by hand: ImageNet's mean and std
        want = (pixel - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
        np.testing.assert_array_equal(normalized[:, :, 10, 20], want)
    # what the uint8 engine does on the GPU, in PyTorch on the CPU: the same numbers as the host's
    on_device = data.Uint8Preprocessing(torch.nn.Identity())(torch.from_numpy(images[0])).numpy()
    np.testing.assert_array_equal(on_device, batches[0])


@pytest.mark.parametrize("name", EXPORTS)
def test_every_onnx_export_passes_polygraphys_lint(built, name, tmp_path):
    """NVIDIA Polygraphy's ONNX checker (ONNX's checker, then every node run in ONNX Runtime on the CPU): no
    failing node in any model the course builds. 3 s each on two CPU cores, up to 18 s when they are busy."""
    report = tmp_path / "lint.json"
    started = time.perf_counter()
    command = [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())"]  # its script
    result = subprocess.run([*command, "check", "lint", str(built / f"engines/{name}.onnx"), "-o", str(report)],
                            text=True, capture_output=True, timeout=300)
    seconds = time.perf_counter() - started
    assert result.returncode == 0 and "PASSED" in result.stdout + result.stderr, result.stdout + result.stderr
    summary = json.loads(report.read_text())["summary"]
    assert summary["passing"] and not summary["failing"], (summary["failing"], seconds)


def test_int8_metadata_records_its_calibration(built):
    metadata = json.loads((built / "engines/resnet18_int8.torch.pt.json").read_text())
    assert metadata["precision"] == "int8" and metadata["onnx"] == "engines/resnet18_int8.onnx"
    calibration = metadata["calibration"]
    assert (calibration["batches"], calibration["seed"], calibration["batch_size"]) == (1, 0, 32)
    assert calibration["quantizer"] == int8.quantizer_name()
    assert json.loads((built / "engines/resnet18_fp16.torch.pt.json").read_text())["calibration"] is None


@pytest.mark.parametrize("args, up_to_date", [(["--calibration-batches", "1"], True),
                                              (["--calibration-batches", "1", "--calibration-seed", "0"], True),
                                              (["--calibration-batches", "2"], False),
                                              (["--calibration-batches", "1", "--calibration-seed", "5"], False)])
def test_int8_engine_is_rebuilt_when_its_calibration_changes(built, monkeypatch, args, up_to_date):
    """0_build.py's up-to-date check, as it is asked from the command line (no build runs here)."""
    from common import steps
    step = steps.load("0_build")
    monkeypatch.chdir(built)
    monkeypatch.setattr(sys, "argv", ["0_build.py", "--backend", "torch", "--precision", "int8", *args])
    calibration = step.calibration_of(step.parse_args())
    path = build.engine_path("resnet18_int8", "torch")
    assert step.is_up_to_date(path, "torch", "int8", [(1, 128, 128)], None, "float32", "compiled",
                              calibration) is up_to_date


@pytest.mark.parametrize("name, precision", [("resnet18_int8", "fp32"), ("resnet18_int8", "fp16"),
                                             ("resnet18_fp16", "int8"), ("resnet18_fp32", "int8")])
def test_an_int8_engine_and_a_step_of_another_precision_refuse_each_other(built, monkeypatch, name, precision):
    with pytest.raises(CourseError) as refused:
        check(built, monkeypatch, build.engine_path(name, "torch"), precision=precision)
    assert f"this step needs an {precision} engine but engines/{name}.torch.pt is" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_metadata_records_what_the_engine_was_built_from(built):
    metadata = json.loads((built / "engines/resnet18_fp16.torch.pt.json").read_text())
    assert metadata["backend"] == "torch" and metadata["precision"] == "fp16"
    assert metadata["profiles"] == [[1, 128, 128]]
    assert metadata["tensorrt_version"] is None
    assert metadata["weights_digest"] == data.file_digest(built / build.WEIGHTS_PATH)
    assert (metadata["input_dtype"], metadata["input_layout"]) == ("float32", "NCHW")
    uint8 = json.loads((built / "engines/resnet18_fp16_uint8.torch.pt.json").read_text())
    assert (uint8["input_dtype"], uint8["input_layout"], uint8["precision"]) == ("uint8", "NHWC", "fp16")


@pytest.mark.parametrize("args", [[], ["--input", "uint8"]])
def test_second_build_is_skipped_when_up_to_date(built, args):
    result = run_script("0_build.py", "--backend", "torch", "--precision", "fp16", *args, cwd=built)
    assert result.returncode == 0 and "is up to date" in result.stdout


@pytest.mark.parametrize("profile, message", [("1:128", "MIN:OPT:MAX"), ("64:16:128", "MIN <= OPT <= MAX")])
def test_bad_profile_is_one_line(built, profile, message):
    result = run_script("0_build.py", "--backend", "torch", "--profile", profile, cwd=built)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def check(built, monkeypatch, path, backend="torch", precision="fp16", input_dtype="float32"):
    monkeypatch.chdir(built)
    engine.check_file(backend, path, precision, input_dtype)


def test_matching_engine_passes_the_checks(built, monkeypatch):
    check(built, monkeypatch, build.engine_path("resnet18_fp16", "torch"))


@pytest.mark.parametrize("change, message", [
    (dict(precision="fp32"), "this step needs an fp32 engine but"),
    (dict(backend="tensorrt"), "is a torch engine but the backend is tensorrt"),
])
def test_mismatched_engine_is_a_clear_error(built, monkeypatch, change, message):
    with pytest.raises(CourseError, match=message):
        check(built, monkeypatch, build.engine_path("resnet18_fp16", "torch"), **change)


@pytest.mark.parametrize("name, input_dtype, message", [
    ("resnet18_fp16", "uint8", "resnet18_fp16.torch.pt takes float32 NCHW images but this step sends uint8 NHWC: "
     "pass an engine built with `python 0_build.py --precision fp16 --input uint8` (named resnet18_fp16_uint8"),
    ("resnet18_fp16_uint8", "float32", "resnet18_fp16_uint8.torch.pt takes uint8 NHWC images but this step sends "
     "float32 NCHW: pass an engine built with `python 0_build.py --precision fp16 --input float32`"),
])
def test_engine_with_the_wrong_input_type_is_refused_before_loading(built, monkeypatch, name, input_dtype, message):
    """engine.load checks the metadata before it touches the GPU: on a CPU the stand-in is never loaded."""
    monkeypatch.chdir(built)
    with pytest.raises(CourseError) as refused:
        engine.load("torch", build.engine_path(name, "torch"), "fp16", ("GPU", "9.0"), input_dtype=input_dtype)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_engine_from_before_input_types_were_recorded_takes_float32(built, monkeypatch, tmp_path):
    old = tmp_path / "old.torch.pt"
    shutil.copyfile(built / "engines/resnet18_fp16.torch.pt", old)
    metadata = json.loads((built / "engines/resnet18_fp16.torch.pt.json").read_text())
    del metadata["input_dtype"], metadata["input_layout"]
    build.metadata_path(old).write_text(json.dumps(metadata))
    check(built, monkeypatch, old)
    with pytest.raises(CourseError, match="takes float32 NCHW images"):
        check(built, monkeypatch, old, input_dtype="uint8")


def test_standin_reports_a_uint8_nhwc_input_as_tensorrt_would():
    """The stand-in's engine description, on the CPU: no model is needed to describe the I/O tensors."""
    from common import torch_engine
    standin = torch_engine.TorchEngine(None, [(1, 64, 128)], data.IMAGE_INPUTS["uint8"])
    assert standin.get_tensor_dtype("input") is torch_engine.DataType.UINT8
    assert standin.get_tensor_dtype("logits") is torch_engine.DataType.FLOAT
    assert standin.get_tensor_shape("input") == (-1, 224, 224, 3)
    assert standin.get_tensor_profile_shape("input", 0) == [(1, 224, 224, 3), (64, 224, 224, 3), (128, 224, 224, 3)]
    specs = engine._describe_io(standin, torch_engine.nptype)
    assert specs["input"].dtype == np.uint8 and specs["input"].nbytes(128) == 128 * 224 * 224 * 3
    assert specs["output"].dtype == np.float32 and specs["output"].shape == (-1, 1000)
    ladder = torch_engine.TorchEngine(None, [(1, 128, 128)], data.IMAGE_INPUTS["float32"])
    assert ladder.get_tensor_dtype("input") is torch_engine.DataType.FLOAT
    assert ladder.get_tensor_shape("input") == (-1, 3, 224, 224)


def test_engine_from_other_weights_is_refused(built, monkeypatch, tmp_path):
    stale = tmp_path / "stale.torch.pt"
    stale.write_bytes(b"")
    metadata = json.loads((built / "engines/resnet18_fp16.torch.pt.json").read_text())
    build.metadata_path(stale).write_text(json.dumps({**metadata, "weights_digest": "0" * 16, "backend": "torch"}))
    with pytest.raises(CourseError, match="built from other weights"):
        check(built, monkeypatch, stale)


def test_engine_from_another_tensorrt_version_is_refused(built, monkeypatch, tmp_path):
    """Checked on the metadata alone, with a stand-in `tensorrt` module: TensorRT cannot be installed here."""
    import sys
    import types
    plan = tmp_path / "old.plan"
    plan.write_bytes(b"")
    metadata = json.loads((built / "engines/resnet18_fp16.torch.pt.json").read_text())
    build.metadata_path(plan).write_text(json.dumps({**metadata, "backend": "tensorrt", "tensorrt_version": "10.1.0",
                                                     "compute_capability": "9.0"}))
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))
    with pytest.raises(CourseError, match="built with TensorRT 10.1.0 but TensorRT 11.4.0 is installed"):
        check(built, monkeypatch, plan, backend="tensorrt")


@pytest.mark.parametrize("files, message", [(("engine",), "has no metadata file"), ((), "not found: build it first")])
def test_missing_engine_or_metadata_is_a_clear_error(tmp_path, files, message):
    path = tmp_path / "x.plan"
    if "engine" in files:
        path.write_bytes(b"")
    with pytest.raises(CourseError, match=message):
        engine.read_metadata(path)


def test_batch_outside_every_profile_is_refused():
    loaded = engine.LoadedEngine(None, {"profiles": [[1, 16, 32], [33, 128, 128]]}, "e.plan", "torch", None, None)
    assert loaded.profile_for(16) == 0 and loaded.profile_for(64) == 1
    with pytest.raises(CourseError, match="batch size 200 is outside every profile"):
        loaded.profile_for(200)


def test_steps_on_profile_0_refuse_a_batch_only_profile_1_takes():
    loaded = engine.LoadedEngine(None, {"profiles": [[1, 16, 32], [33, 128, 128]]}, "e.plan", "torch", None, None)
    loaded.check_batch(16, profile=0)
    loaded.check_batch(128, profile=None)  # a step that routes batches by profile
    with pytest.raises(CourseError, match="batch size 128 is outside optimization profile 0"):
        loaded.check_batch(128, profile=0)



@pytest.mark.parametrize("damage, said", [
    (lambda engine_file, metadata_file: engine_file.write_bytes(engine_file.read_bytes()[:10]),
     "(truncated or overwritten): rebuilding it"),
    (lambda engine_file, metadata_file: engine_file.write_bytes(engine_file.read_bytes()[::-1]),
     "has changed since it was built (its content does not match its metadata): rebuilding it"),
    (lambda engine_file, metadata_file: metadata_file.write_text("[]"), "is not of format"),
    (lambda engine_file, metadata_file: metadata_file.write_text(f'{{"format": {build.METADATA_FORMAT}}}'),
     "lacks backend"),
    (lambda engine_file, metadata_file: metadata_file.unlink(), "has no metadata file"),
])
def test_build_rebuilds_an_engine_it_cannot_trust(tmp_path, monkeypatch, capsys, damage, said):
    """0_build.py's up-to-date check reads the metadata as the steps do; what they refuse, it rebuilds (and says why)."""
    from common import steps
    monkeypatch.chdir(make_course(tmp_path))
    path = build.engine_path("resnet18_fp16", "torch")
    is_up_to_date = steps.load("0_build").is_up_to_date
    assert is_up_to_date(path, "torch", "fp16", [(1, 128, 128)], None, "float32", "eager")
    damage(path, build.metadata_path(path))
    assert not is_up_to_date(path, "torch", "fp16", [(1, 128, 128)], None, "float32", "eager")
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(str(path)) and said in printed and printed.endswith(": rebuilding it"), printed


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04 truncated zip"])
def test_weights_that_do_not_load_are_one_line(tmp_path, content):
    """The stand-in's engine file is its weights: a damaged one is refused in one line (torch's own are many)."""
    path = tmp_path / "resnet18_weights.pt"
    path.write_bytes(content)
    with pytest.raises(CourseError, match=r"is not ResNet-18's weights as the course saves them \(\w+\): rebuild") as error:
        data.load_model(path)
    assert "\n" not in str(error.value)


def test_a_damaged_reference_cache_is_computed_again(built, tmp_path):
    images = [data.make_batches(1, 2, seed=5)[0]]
    weights = built / build.WEIGHTS_PATH
    first = data.reference_logits(weights, images, tmp_path)
    cache, = tmp_path.glob("reference-*.npz")
    cache.write_bytes(cache.read_bytes()[:100])  # an interrupted write
    np.testing.assert_array_equal(data.reference_logits(weights, images, tmp_path)[0], first[0])
    np.testing.assert_array_equal(data.reference_logits(weights, images, tmp_path)[0], first[0])  # from the cache


def test_tensorrt_context_that_does_not_fit_is_one_line():
    """TensorRT returns None where a context's activation memory does not fit; the steps would crash on it later."""
    class EngineOutOfMemory:
        num_io_tensors = 2

        def create_execution_context(self):
            return None
    wrapped = engine._TensorRTEngine(EngineOutOfMemory(), "engines/resnet18_fp16_wide.plan")
    assert wrapped.num_io_tensors == 2  # everything else is TensorRT's engine
    with pytest.raises(CourseError, match="out of GPU memory creating an execution context for "
                                          "engines/resnet18_fp16_wide.plan .*: build the engine with a smaller"):
        wrapped.create_execution_context()


class FakeTensorRT:
    """The part of `tensorrt` that the logger and the format check use, for the CPU."""
    __version__ = "10.16.1.11"

    class Logger:
        WARNING, INFO = "warning", "info"

        def __init__(self, min_severity):
            self.min_severity = min_severity

    class TensorFormat:
        LINEAR = types.SimpleNamespace(name="LINEAR")
        HWC8 = types.SimpleNamespace(name="HWC8")


def test_one_tensorrt_logger_per_process(monkeypatch):
    """Builds and loads share one logger (step 12 loads two engines; TensorRT notes a second logger)."""
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT)
    build.tensorrt_logger.cache_clear()
    try:
        assert build.tensorrt_logger() is build.tensorrt_logger()
        assert build.tensorrt_logger().min_severity == FakeTensorRT.Logger.WARNING
    finally:
        build.tensorrt_logger.cache_clear()


@pytest.mark.parametrize("formats, refused", [
    ({}, None),
    ({("logits", 1): FakeTensorRT.TensorFormat.HWC8}, "its tensor 'logits' is in TensorRT's HWC8 format in profile 1"),
])
def test_an_engine_whose_io_is_not_linear_is_refused_in_one_line(monkeypatch, formats, refused):
    """The host code copies dense row-major arrays: any other I/O format would give wrong results, silently."""
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT)

    class Engine:
        num_io_tensors, num_optimization_profiles = 2, 2

        def get_tensor_name(self, index):
            return ("input", "logits")[index]

        def get_tensor_format(self, name, profile):
            return formats.get((name, profile), FakeTensorRT.TensorFormat.LINEAR)
    if refused is None:
        engine._check_tensorrt_formats(Engine(), "engines/x.plan")
        return
    with pytest.raises(CourseError, match=re.escape(refused)) as error:
        engine._check_tensorrt_formats(Engine(), "engines/x.plan")
    assert "\n" not in str(error.value) and "build it with 0_build.py" in str(error.value)

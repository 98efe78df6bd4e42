"""CPU tier: INT8 by explicit quantization (common/int8.py): the calibration, the fake-quantized network the stand-in
runs, and its Q/DQ ONNX export, which ONNX Runtime runs and TensorRT is to read.

The calibration runs here on 16 images (two batches of 8), not the build's 256: the same code, in seconds. The
build itself (0_build.py --precision int8, end to end up to the engine file) is in test_build.py.
"""
import collections

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper
from torch.fx.experimental.optimization import fuse

from common import build, data, int8
from common.errors import CourseError

# ONNX Runtime against the fake-quantized PyTorch module. Both compute the same Q/DQ (round half to even of x /
# scale, saturate, times scale), but their fp32 convolutions sum in other orders: the first layer whose output
# differs differs by about 5e-5, which flips an INT8 rounding here and there at the next layer's input. A flip is
# a whole INT8 step, so the difference grows through the 20 layers: 1.1% of the logits, measured. The limit is
# about three times that, and a tenth of what one wrong scale or axis does (errors the size of the logits).
ORT_MAX_REL_ERR = 3e-2


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return build.save_weights("seed", 0, tmp_path_factory.mktemp("int8") / "weights.pt")


def small_calibration(seed=0):
    """Two batches of 8 images from the calibration stream of `seed`."""
    return [batch[:8] for batch in data.make_calibration_batches(2, seed)]


@pytest.fixture(scope="module")
def calibrated(weights):
    return int8.calibrated(weights, small_calibration())


@pytest.fixture(scope="module")
def exported(calibrated, tmp_path_factory):
    return int8.export_onnx(calibrated[0], tmp_path_factory.mktemp("int8") / "resnet18_int8.onnx",
                            build.INPUT_NAME, build.OUTPUT_NAME)


def test_calibration_images_come_from_their_seed_and_never_are_the_timed_images():
    first, again, other = (data.make_calibration_batches(2, seed) for seed in (3, 3, 4))
    assert len(first) == 2 and first[0].shape == (data.CALIBRATION_BATCH_SIZE, *data.IMAGE_SHAPE)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    timed = data.make_batches(1, data.CALIBRATION_BATCH_SIZE, seed=3)[0]
    assert not np.array_equal(first[0], timed)  # the same seed, another stream


def test_calibration_is_deterministic_from_its_seed(weights, calibrated):
    _, again = int8.calibrated(weights, small_calibration())
    _, other = int8.calibrated(weights, small_calibration(seed=1))
    record = calibrated[1]
    assert again["input_amax"] == record["input_amax"] and again["weight_amax"] == record["weight_amax"]
    assert other["input_amax"] != record["input_amax"]
    assert other["weight_amax"] == record["weight_amax"]  # the weights' ranges do not depend on the images


def test_the_course_max_calibration_is_model_optimizers(weights):
    """Where Model Optimizer is missing (the GPU machines), the build calibrates with max_calibration: the same
    amaxes as INT8_DEFAULT_CFG's, for the same layers."""
    pytest.importorskip("modelopt.torch.quantization")
    folded = fuse(data.load_model(weights))
    batches = [torch.from_numpy(batch) for batch in small_calibration()]
    ours, theirs = int8.max_calibration(folded, batches), int8.modelopt_calibration(folded, batches)
    assert ours["input_amax"].keys() == theirs["input_amax"].keys()
    assert len(ours["input_amax"]) == 23 and len(ours["weight_amax"]) == 21  # 20 convolutions, the fc, 2 pools
    for name, amax in theirs["input_amax"].items():
        assert ours["input_amax"][name] == pytest.approx(amax, rel=1e-6), name
    for name, amax in theirs["weight_amax"].items():
        np.testing.assert_allclose(ours["weight_amax"][name], amax, rtol=1e-6, err_msg=name)


def test_quantize_dequantize_is_onnx_q_dq():
    """Round half to even of x / scale, saturated to [-128, 127], times scale; per channel along an axis."""
    values = torch.tensor([0.05, 0.15, 0.25, -0.25, 100.0, -100.0])
    np.testing.assert_allclose(int8.quantize_dequantize(values, 0.1), [0.0, 0.2, 0.2, -0.2, 12.7, -12.8], rtol=1e-6)
    weights = torch.tensor([[1.0, -2.0], [0.3, 0.1]])
    per_channel = int8.quantize_dequantize(weights, torch.tensor([2.0 / 127, 0.3 / 127]), axis=0)
    np.testing.assert_allclose(per_channel, weights, rtol=1e-2)
    onnx_op = torch.fake_quantize_per_channel_affine(weights, torch.tensor([2.0 / 127, 0.3 / 127]),
                                                     torch.zeros(2, dtype=torch.int32), 0, -128, 127)
    np.testing.assert_array_equal(per_channel, onnx_op)  # what the export writes as Q/DQ


def test_the_export_has_q_dq_where_tensorrt_expects_them(exported):
    """Every Conv and the Gemm takes its input and its weights through DequantizeLinear(QuantizeLinear(...)):
    weights per output channel (axis 0), inputs per tensor, zero points int8 0; opset 13 or more (the axis)."""
    model = onnx.load(exported)
    assert model.opset_import[0].version >= 13
    nodes = model.graph.node
    producer = {output: node for node in nodes for output in node.output}
    constants = {**{init.name: numpy_helper.to_array(init) for init in model.graph.initializer},
                 **{node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in nodes
                    if node.op_type == "Constant"}}

    def constant(name):
        while name not in constants and producer[name].op_type == "Identity":
            name = producer[name].input[0]
        return constants[name]

    counts = collections.Counter(node.op_type for node in nodes)
    assert counts["QuantizeLinear"] == counts["DequantizeLinear"] == 44
    weighted = [node for node in nodes if node.op_type in ("Conv", "Gemm")]
    assert collections.Counter(node.op_type for node in weighted) == {"Conv": 20, "Gemm": 1}
    for node in weighted:
        for role, tensor in (("input", node.input[0]), ("weight", node.input[1])):
            dequantize = producer[tensor]
            quantize = producer[dequantize.input[0]]
            assert (dequantize.op_type, quantize.op_type) == ("DequantizeLinear", "QuantizeLinear"), (node.name, role)
            scale, zero_point = constant(quantize.input[1]), constant(quantize.input[2])
            assert zero_point.dtype == np.int8 and not zero_point.any(), (node.name, role)
            axis = {attribute.name: attribute.i for attribute in quantize.attribute}.get("axis")
            if role == "weight":
                output_channels = constant(quantize.input[0]).shape[0]
                assert axis == 0 and scale.shape == (output_channels,), node.name
            else:
                assert scale.shape == (), node.name
        assert node.input[2] in {init.name for init in model.graph.initializer}, node.name  # TensorRT: a constant bias
    # The residual additions stay float, as Model Optimizer's INT8_DEFAULT_CFG leaves them.
    assert all(producer[name].op_type != "DequantizeLinear" for node in nodes if node.op_type == "Add"
               for name in node.input)


def test_onnx_runtime_runs_the_export_as_the_fake_quantized_module(calibrated, exported):
    images = data.make_batches(1, 8, seed=2)[0]
    with torch.inference_mode():
        want = calibrated[0](torch.from_numpy(images)).numpy()
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    got = session.run(None, {build.INPUT_NAME: images})[0]
    assert got.shape == (8, data.NUM_CLASSES) and got.dtype == np.float32
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < ORT_MAX_REL_ERR
    assert (got.argmax(1) == want.argmax(1)).all()


def test_the_engine_file_rebuilds_the_same_network(calibrated, tmp_path):
    """The stand-in's INT8 engine file holds the folded weights and the scales: loading it needs no calibration."""
    path = tmp_path / "resnet18_int8.torch.pt"
    int8.save(calibrated[1], path)
    images = torch.from_numpy(data.make_batches(1, 2, seed=2)[0])
    with torch.inference_mode():
        torch.testing.assert_close(int8.load(path)(images), calibrated[0](images), rtol=0, atol=0)


@pytest.mark.parametrize("content", [b"", b"garbage"])
def test_an_int8_engine_file_that_does_not_load_is_one_line(tmp_path, content):
    path = tmp_path / "resnet18_int8.torch.pt"
    path.write_bytes(content)
    with pytest.raises(CourseError, match=r"is not an INT8 engine file as 0_build.py writes it \(\w+\): rebuild") as error:
        int8.load(path)
    assert "\n" not in str(error.value)


def test_int8_check_fails_a_broken_calibration(calibrated, weights):
    """INT8's limits pass the calibrated network and fail one whose scales are off (results.TOLERANCES)."""
    from common import results
    images = data.make_batches(1, 16, seed=2)[0]
    reference = data.reference_logits(weights, [images], weights.parent / "cache")
    model, record = calibrated
    broken = int8.quantized_model(int8.folded_resnet18(record["weights"]),
                                  {**record, "input_amax": {name: amax / 8 for name, amax in
                                                            record["input_amax"].items()}})
    with torch.inference_mode():
        good = results.check_outputs([model(torch.from_numpy(images)).numpy()], reference, "int8")
        bad = results.check_outputs([broken(torch.from_numpy(images)).numpy()], reference, "int8")
    assert good["passed"] and good["top5_agreement"] >= good["top1_agreement"], good["summary"]
    assert not bad["passed"], bad["summary"]

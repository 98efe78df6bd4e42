"""INT8 by explicit quantization: calibrate ResNet-18, keep what the calibration found, and rebuild from it the
fake-quantized network that the stand-in runs and that is exported to ONNX with QuantizeLinear/DequantizeLinear.

TensorRT 11 has no INT8 builder flag and no calibrator: INT8 comes from Q/DQ nodes in the ONNX model, built as a
strongly typed network (docs/tensorrt-notes.md section 18). NVIDIA's tool that inserts and calibrates them is Model
Optimizer, `mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)`. Its INT8 configuration quantizes the input of
every convolution, fully connected and pooling layer per tensor and every weight per output channel, symmetric
(zero point 0), with the scale amax / 127, where amax is the largest magnitude seen ("max" calibration): of the
weights themselves, and of each input over the calibration images.

The calibration runs on the network with each BatchNorm folded into its convolution, as TensorRT's builder and the
stand-in fold it (per-channel scales make the folding exact: it scales a channel's weights and their amax alike).
What is kept, in the stand-in's INT8 engine file: the folded weights and, per quantized layer, its input's amax and
its weight's per-channel amax. The network is rebuilt from these in plain PyTorch, so running it needs neither
Model Optimizer nor the calibration images. Where Model Optimizer is not installed (the GPU machines the course is
measured on have no pip access), the same max calibration runs in PyTorch (`max_calibration`, which a CPU test
checks against Model Optimizer's), and the engine's metadata says which calibrated it.
"""
import contextlib
import copy
import importlib.metadata
import io
import logging
import warnings

import torch
import torchvision
from torch.fx.experimental.optimization import fuse

from common import data
from common.errors import CourseError

QUANTIZED_LAYERS = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.MaxPool2d, torch.nn.AdaptiveAvgPool2d)
INT8_MAX = 127
ONNX_OPSET = 17  # the TorchScript exporter's Q/DQ; per-channel scales (the axis attribute) need 13 or more
MODELOPT = "NVIDIA Model Optimizer"


def quantizer_name():
    """Which calibration runs here: Model Optimizer's, where it is installed, else the course's own."""
    try:
        version = importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError:
        return "PyTorch max calibration (Model Optimizer's INT8_DEFAULT_CFG rules; nvidia-modelopt not installed)"
    return f"{MODELOPT} {version} INT8_DEFAULT_CFG (max calibration)"


def folded_resnet18(state_dict=None):
    """ResNet-18 in eval mode with every BatchNorm folded into its convolution; with `state_dict`, the folded
    weights an INT8 engine file holds."""
    model = fuse(torchvision.models.resnet18().eval())
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.eval()


def quantized_layers(model):
    """(name, layer) of every layer whose input is quantized, in the network's order."""
    return [(name, layer) for name, layer in model.named_modules() if isinstance(layer, QUANTIZED_LAYERS)]


def calibrate(model, batches):
    """What the calibration finds on `model` (folded, fp32, CPU) over `batches` (normalized fp32 arrays):
    {"quantizer", "input_amax": {layer: float}, "weight_amax": {layer: [float per output channel]}}."""
    quantizer = quantizer_name()
    calibration = modelopt_calibration if quantizer.startswith(MODELOPT) else max_calibration
    return {"quantizer": quantizer, **calibration(model, [torch.from_numpy(batch) for batch in batches])}


def modelopt_calibration(model, batches):
    """Model Optimizer's INT8_DEFAULT_CFG on a copy of `model` (it quantizes in place); its amaxes."""
    with quiet():
        import modelopt.torch.quantization as mtq

        def forward_loop(quantized):
            for images in batches:
                quantized(images)
        with torch.no_grad():
            quantized = mtq.quantize(copy.deepcopy(model), mtq.INT8_DEFAULT_CFG, forward_loop)
    inputs, weights = {}, {}
    for name, _ in quantized_layers(model):
        layer = quantized.get_submodule(name)
        inputs[name] = float(layer.input_quantizer.amax)
        if hasattr(layer, "weight_quantizer"):
            weights[name] = layer.weight_quantizer.amax.flatten().tolist()
    return {"input_amax": inputs, "weight_amax": weights}


@contextlib.contextmanager
def quiet():
    """Model Optimizer's import and quantize print what a build's reader need not see: a line per call ("Inserted
    N quantizers"), a warning that transformers is missing (for language models), and torch's note, on a machine
    without CUDA, that it found no CUDA runtime for C++ extensions. Only those are silenced."""
    extensions = logging.getLogger("torch.utils.cpp_extension")
    level = extensions.level
    extensions.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message="Cannot find transformers package", category=UserWarning)
            yield
    finally:
        extensions.setLevel(level)


def max_calibration(model, batches):
    """INT8_DEFAULT_CFG's "max" calibration in plain PyTorch: each quantized layer's largest input magnitude over
    the batches, and each weight's largest magnitude per output channel."""
    layers = quantized_layers(model)
    inputs = dict.fromkeys((name for name, _ in layers), 0.0)

    def record(name):
        def hook(_, args):
            inputs[name] = max(inputs[name], float(args[0].abs().max()))
        return hook
    handles = [layer.register_forward_pre_hook(record(name)) for name, layer in layers]
    try:
        with torch.no_grad():
            for images in batches:
                model(images)
    finally:
        for handle in handles:
            handle.remove()
    weights = {name: layer.weight.detach().abs().flatten(1).amax(1).tolist() for name, layer in layers
               if hasattr(layer, "weight")}
    return {"input_amax": inputs, "weight_amax": weights}


def quantize_dequantize(values, scale, axis=None):
    """INT8 quantize then dequantize, as ONNX's QuantizeLinear and DequantizeLinear define them with a zero point
    of 0: round(values / scale) to nearest even, saturated to [-128, 127], times scale. `scale`: a float (per
    tensor), or a tensor of one scale per index of `axis`.

    In an ONNX export it is torch's fake-quantize op, which the exporter writes as that Q/DQ pair, the nodes
    TensorRT reads; elsewhere plain arithmetic, which PyTorch's compiler can fuse (it has no kernel for the op)."""
    if torch.onnx.is_in_onnx_export():
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(values, scale, 0, -INT8_MAX - 1, INT8_MAX)
        zero_points = torch.zeros(scale.shape, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(values, scale, zero_points, axis, -INT8_MAX - 1, INT8_MAX)
    if axis is not None:
        scale = scale.reshape(-1, *[1] * (values.dim() - 1))
    return torch.clamp(torch.round(values / scale), -INT8_MAX - 1, INT8_MAX) * scale


class Int8Layer(torch.nn.Module):
    """A layer whose input (per tensor) and weight (per output channel, axis 0) pass through INT8 Q/DQ."""

    def __init__(self, layer, input_amax, weight_amax=None):
        super().__init__()
        self.layer = layer
        self.input_scale = input_amax / INT8_MAX
        self.weighted = weight_amax is not None
        if self.weighted:
            self.register_buffer("weight_scale", torch.tensor(weight_amax, dtype=torch.float32) / INT8_MAX)

    def forward(self, values):
        values = quantize_dequantize(values, self.input_scale)
        if not self.weighted:
            return self.layer(values)
        weight = quantize_dequantize(self.layer.weight, self.weight_scale, axis=0)
        if isinstance(self.layer, torch.nn.Linear):
            return torch.nn.functional.linear(values, weight, self.layer.bias)
        layer = self.layer
        return torch.nn.functional.conv2d(values, weight, layer.bias, layer.stride, layer.padding, layer.dilation,
                                          layer.groups)


def quantized_model(folded, calibration):
    """The fake-quantized network: `folded` (changed in place) with each quantized layer wrapped in an Int8Layer."""
    for name, layer in quantized_layers(folded):
        parent, _, leaf = name.rpartition(".")
        setattr(folded.get_submodule(parent), leaf, Int8Layer(layer, calibration["input_amax"][name],
                                                              calibration["weight_amax"].get(name)))
    return folded


def calibrated(weights_path, batches):
    """The course's weights, folded and calibrated on `batches`: (the fake-quantized network, its record)."""
    folded = fuse(data.load_model(weights_path))
    calibration = calibrate(folded, batches)
    record = {"weights": folded.state_dict(), **calibration}
    return quantized_model(folded, calibration), record


def save(record, path):
    """The stand-in's INT8 engine file: the folded weights and the calibration's amaxes."""
    torch.save(record, path)


def load(path):
    """The fake-quantized network of an INT8 engine file that `save` wrote; one line where it is not one."""
    try:
        record = torch.load(path, weights_only=True)
        model = folded_resnet18(record["weights"])
        return quantized_model(model, record)
    except Exception as error:  # truncated, corrupt, another kind of file: torch raises many kinds, many lines long
        raise CourseError(f"{path} is not an INT8 engine file as 0_build.py writes it ({type(error).__name__}): "
                          "rebuild it with `python 0_build.py --precision int8`") from None


def export_onnx(model, onnx_path, input_name, output_name):
    """The fake-quantized network to ONNX with Q/DQ nodes and a dynamic batch axis, through the TorchScript
    exporter: torch.export has no kernel for fake quantization (it fails inside it), so the dynamo exporter that
    the other precisions use cannot trace it. (The batch axis has no upper bound here: the profiles set it.)"""
    import onnx  # here, not at the top: every step imports this module (through the stand-in), none exports
    example = torch.zeros(2, *data.IMAGE_SHAPE)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which cannot trace fake quantization.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        torch.onnx.export(model.eval(), (example,), onnx_path, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
    onnx.save(without_shared_constants(onnx.load(onnx_path)), onnx_path)
    return onnx_path


def without_shared_constants(model):
    """The exporter stores equal initializers once and gives each further user an Identity of it (the folded
    biases of the seeded weights are all zero); TensorRT's parser wants a convolution's bias as an initializer, so
    each user gets the initializer itself."""
    initializers = {initializer.name for initializer in model.graph.initializer}
    shared = {node.output[0]: node.input[0] for node in model.graph.node
              if node.op_type == "Identity" and node.input[0] in initializers}
    kept = [node for node in model.graph.node if node.output[0] not in shared]
    for node in kept:
        node.input[:] = [shared.get(name, name) for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model

"""The model's weights, the deterministic input batches, and the PyTorch reference outputs."""
import contextlib
import dataclasses
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch
import torchvision

from common.errors import CourseError

IMAGE_SHAPE = (3, 224, 224)  # one image as the network takes it: normalized fp32, CHW
DECODED_SHAPE = (224, 224, 3)  # one image as a decoder produces it: uint8, HWC
NUM_CLASSES = 1000
# ImageNet's normalization, so the synthetic images have the statistics the network expects.
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


@dataclasses.dataclass(frozen=True)
class ImageInput:
    """What an engine's input tensor holds: its element type, its layout and the shape of one image."""
    dtype: str
    layout: str
    shape: tuple

    def __str__(self):
        return f"{self.dtype} {self.layout}"


IMAGE_INPUTS = {
    "float32": ImageInput("float32", "NCHW", IMAGE_SHAPE),  # the ladder: normalized on the host
    "uint8": ImageInput("uint8", "NHWC", DECODED_SHAPE),  # as decoded; normalized on the GPU (step 12)
}


def make_weights(source, seed):
    """ResNet-18's state dict: deterministic random weights from `seed`, or torchvision's ImageNet weights."""
    if source == "imagenet":
        try:
            model = torchvision.models.resnet18(weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
        except Exception as error:  # no network, proxy, corrupt cache: all end the same way for the user
            raise CourseError(f"could not download torchvision's ResNet-18 weights ({error}); "
                              "use --weights seed") from None
    else:
        torch.manual_seed(seed)
        model = torchvision.models.resnet18()
    return model.state_dict()


def load_model(weights_path):
    """ResNet-18 in eval mode with the weights saved by 0_build.py."""
    weights_path = Path(weights_path)
    if not weights_path.exists():
        raise CourseError(f"{weights_path} not found: run `make build` (or python 0_build.py) first")
    model = torchvision.models.resnet18()
    try:
        model.load_state_dict(torch.load(weights_path, weights_only=True))
    except Exception as error:  # truncated, corrupt, or not these weights: torch raises many kinds, many lines long
        raise CourseError(f"{weights_path} is not ResNet-18's weights as the course saves them "
                          f"({type(error).__name__}): rebuild it with `make build` (or python 0_build.py)") from None
    return model.eval()


class Fp16Compute(torch.nn.Module):
    """fp16 compute with fp32 inputs and outputs: the casts live inside the model.

    TensorRT 11 removed the FP16 builder flag; a strongly typed network takes each layer's precision
    from the ONNX types, so exporting this module is how an fp16 engine is made on TensorRT 10 and 11
    alike, and the host code (fp32 buffers) stays the same as for the fp32 engine.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.half()

    def forward(self, images):
        return self.model(images.half()).float()


class Uint8Preprocessing(torch.nn.Module):
    """The host's preprocessing moved into the graph: uint8 NHWC images in, `model` on normalized fp32 NCHW.

    The cast comes first: TensorRT takes UINT8 only as a network input or output, converted to float
    before any other layer (docs/tensorrt-notes.md). The arithmetic is the host's (`normalize`), in fp32,
    so an engine built from this module sees the images the reference saw.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(_MEAN))
        self.register_buffer("std", torch.tensor(_STD))

    def forward(self, images):
        # contiguous(): without it torch.export carries the transposed strides through the network and exports
        # the final flatten as strided gathers sized by a Shape of the uint8 input, which TensorRT cannot take.
        pixels = images.float().permute(0, 3, 1, 2).contiguous() / 255
        return self.model((pixels - self.mean) / self.std)


def inference_model(model, precision, input_dtype):
    """What an engine computes from `model`: the ONNX export and the stand-in both run this module. (An int8
    `model` is already fake-quantized, fp32 in and out: common/int8.py.)"""
    if precision == "fp16":
        model = Fp16Compute(model)
    if input_dtype == "uint8":
        model = Uint8Preprocessing(model)
    return model.eval()


def file_digest(path):
    """A short content hash: ties engines and cached references to the weights they came from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def make_uint8_batches(count, batch_size, seed):
    """`count` batches of synthetic images as a decoder produces them (uint8, NHWC), the same for every step."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (batch_size, *DECODED_SHAPE), dtype=np.uint8) for _ in range(count)]


def normalize(images):
    """The host's preprocessing: uint8 NHWC images to fp32 NCHW with ImageNet's mean and std, C-contiguous."""
    pixels = images.transpose(0, 3, 1, 2).astype(np.float32, order="C")
    pixels /= 255
    pixels -= _MEAN
    pixels /= _STD
    return pixels


CALIBRATION_BATCH_SIZE = 32
_CALIBRATION_STREAM = 1  # the calibration images' random stream is (seed, 1), which no single --seed gives


def make_calibration_batches(count, seed):
    """INT8 calibration images: made and normalized as the timed images are, from a random stream of their own that
    no seed of the timed images reproduces, so that INT8's accuracy is measured on images its calibration never
    saw."""
    rng = np.random.default_rng([seed, _CALIBRATION_STREAM])
    return [normalize(rng.integers(0, 256, (CALIBRATION_BATCH_SIZE, *DECODED_SHAPE), dtype=np.uint8))
            for _ in range(count)]


def make_batches(count, batch_size, seed):
    """The ladder's batches: the images of `make_uint8_batches`, normalized on the host, in pageable memory."""
    return [normalize(images) for images in make_uint8_batches(count, batch_size, seed)]


@contextlib.contextmanager
def _without_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def reference_logits(weights_path, batches, cache_dir):
    """The fp32 PyTorch outputs for `batches` (a list of arrays), computed once and cached next to the engines.

    uint8 batches are normalized as the ladder's are first, so both kinds of the same images share one
    reference. TF32 is switched off so the reference is true fp32, the yardstick for every engine precision.
    """
    batches = [normalize(batch) if batch.dtype == np.uint8 else batch for batch in batches]
    inputs_digest = hashlib.sha256(b"".join(batch[:1].tobytes() for batch in batches)).hexdigest()[:16]
    sizes = [len(batch) for batch in batches]
    key = f"{file_digest(weights_path)}-{inputs_digest}-{len(batches)}x{max(sizes)}"
    cache = Path(cache_dir) / f"reference-{key}.npz"
    if cache.exists():
        try:
            with np.load(cache) as saved:
                return np.split(saved["logits"], np.cumsum(sizes)[:-1])
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a damaged cache (an interrupted write, say) is computed again and overwritten
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = load_model(weights_path).to(device)
        with _without_tf32(), torch.inference_mode():
            logits = [model(torch.from_numpy(batch).to(device)).cpu().numpy() for batch in batches]
        del model
        if device == "cuda":
            torch.cuda.empty_cache()  # the fp32 activations are not the step's: its memory figures leave them out
    except torch.cuda.OutOfMemoryError:
        raise CourseError(f"out of GPU memory computing the fp32 reference outputs of batches of up to {max(sizes)} "
                          "images: use a smaller --batch-size or free the GPU") from None
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, logits=np.concatenate(logits))
    return logits

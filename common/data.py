"""The model's weights, the deterministic input batches, and the PyTorch reference outputs."""
import contextlib
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch
import torchvision

from common.errors import CourseError

IMAGE_SHAPE = (3, 224, 224)
NUM_CLASSES = 1000
# ImageNet's normalization, so the synthetic images have the statistics the network expects.
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


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


def file_digest(path):
    """A short content hash: ties engines and cached references to the weights they came from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def make_batches(count, batch_size, seed):
    """`count` batches of synthetic, normalized images in pageable host memory, the same for every step."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        pixels = rng.random((batch_size, *IMAGE_SHAPE), dtype=np.float32)
        batches.append((pixels - _MEAN) / _STD)
    return batches


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

    TF32 is switched off so the reference is true fp32, the yardstick for every engine precision.
    """
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
    except torch.cuda.OutOfMemoryError:
        raise CourseError(f"out of GPU memory computing the fp32 reference outputs of batches of up to {max(sizes)} "
                          "images: use a smaller --batch-size or free the GPU") from None
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, logits=np.concatenate(logits))
    return logits

"""GPU tier: the bad inputs that only a run on a GPU reaches, each refused in one line with nothing changed.

Skipped, with the reason, where there is no CUDA GPU (CI): there the steps stop at "no usable NVIDIA driver", after
every check that needs no GPU (test_bad_inputs.py tries those). Here, on the PyTorch stand-in, with the engines
built by 0_build.py as `make build BACKEND=torch` builds them:
- engine files that pass every check of their metadata and still cannot be loaded (corrupt, truncated, of the
  wrong kind), and one the metadata check catches;
- real engines of the wrong precision or profile, and batches outside the profile, in the ladder and beyond it;
- out of memory at a batch too large for the GPU memory left: in the engine, and in the fp32 reference.
"""
import json
import sys

import pytest

from conftest import assert_refused, build_engines, requires_gpu, run_script, snapshot

pytestmark = requires_gpu
TORCH = ["--backend", "torch"]
SMALL = ["--batches", "4", "--batch-size", "32", "--repeats", "1"]  # for the ladder's steps
DAMAGED = "engines/damaged.torch.pt"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad-inputs")
    build_engines(path, [["--precision", "fp32"], ["--precision", "fp16"],
                         ["--precision", "fp16", "--profile", "1:16:32", "--profile", "33:128:128",
                          "--name", "resnet18_fp16_2profiles"]])
    (path / "reports").mkdir()  # as a run leaves it: a check that it can be created would touch the directory above
    return path


def damaged_copy(workdir, content, metadata_matches):
    """DAMAGED: the fp16 engine's metadata with `content(engine bytes)` as the file; where `metadata_matches`, the
    metadata's size and digest are those of the new content, so that only loading the file can tell."""
    from common import build, data
    source = workdir / build.engine_path("resnet18_fp16", "torch")
    target = workdir / DAMAGED
    target.write_bytes(content(source.read_bytes()))
    metadata = json.loads(build.metadata_path(source).read_text())
    if metadata_matches:
        metadata.update(engine_bytes=target.stat().st_size, engine_digest=data.file_digest(target))
    build.metadata_path(target).write_text(json.dumps(metadata))


def other_weights(engine_bytes):
    """A file in PyTorch's format, but not ResNet-18's weights."""
    import io
    import torch
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(1)}, buffer)
    return buffer.getvalue()


NOT_WEIGHTS = "is not ResNet-18's weights as the course saves them"
CASES = [  # (what it tries, script, arguments after --backend torch, damage or None, message)
    ("a corrupt engine file whose metadata matches it", "4_use_fp16", [*SMALL, "--engine", DAMAGED],
     lambda workdir: damaged_copy(workdir, lambda engine: bytes(byte ^ 0x5A for byte in engine), True), NOT_WEIGHTS),
    ("a truncated engine file whose metadata matches it", "4_use_fp16", [*SMALL, "--engine", DAMAGED],
     lambda workdir: damaged_copy(workdir, lambda engine: engine[:len(engine) // 2], True), NOT_WEIGHTS),
    ("an engine file of the wrong kind whose metadata matches it", "4_use_fp16", [*SMALL, "--engine", DAMAGED],
     lambda workdir: damaged_copy(workdir, other_weights, True), NOT_WEIGHTS),
    ("a truncated engine file", "4_use_fp16", [*SMALL, "--engine", DAMAGED],
     lambda workdir: damaged_copy(workdir, lambda engine: engine[:len(engine) // 2], False),
     "(truncated or overwritten)"),
    ("an fp32 engine for an fp16 step", "4_use_fp16", [*SMALL, "--engine", "engines/resnet18_fp32.torch.pt"], None,
     "this step needs an fp16 engine"),
    ("an fp16 engine for an fp32 step", "1_baseline", [*SMALL, "--engine", "engines/resnet18_fp16.torch.pt"], None,
     "this step needs an fp32 engine"),
    ("a batch only the second profile takes", "4_use_fp16",
     [*SMALL, "--engine", "engines/resnet18_fp16_2profiles.torch.pt", "--batch-size", "64"], None,
     "batch size 64 is outside optimization profile 0"),
    ("a batch larger than the profile", "7_cuda_graph", [*SMALL, "--batch-size", "200"], None,
     "batch size 200 is outside optimization profile 0"),
    ("a sweep past the first profile", "10_batch_size_sweep",
     ["--engine", "engines/resnet18_fp16_2profiles.torch.pt", "--batch-size", "64"], None,
     "is outside the first profile"),
    ("batches past the first profile", "11_dynamic_batching",
     ["--engine", "engines/resnet18_fp16_2profiles.torch.pt", "--batch-size", "64"], None,
     "must all fit the first profile"),
]


@pytest.mark.parametrize("tries, script, args, damage, message", CASES, ids=[case[0] for case in CASES])
def test_bad_engine_or_batch_is_one_line(workdir, tries, script, args, damage, message):
    if damage:
        damage(workdir)
    before = snapshot(workdir)
    result = run_script(f"{script}.py", *TORCH, *args, cwd=workdir)
    assert_refused(result.returncode, result.stderr, message)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("where, seed, message", [
    ("engine", 11, "out of GPU memory running a batch of 128"),
    ("reference", 12, "out of GPU memory computing the fp32 reference"),
])
def test_out_of_memory_at_a_large_batch_is_one_line(workdir, monkeypatch, where, seed, message):
    """Step 4 at batch 128 with PyTorch's allocator held to 150 MiB more than it has: room for the weights, not for
    a batch's activations. For "engine", the fp32 reference is computed (and cached) first, without the limit."""
    import torch
    from common import build, cli, data, steps
    monkeypatch.chdir(workdir)
    if where == "engine":
        data.reference_logits(build.WEIGHTS_PATH, data.make_batches(4, 128, seed), build.ENGINE_DIR / "cache")
    step = steps.load("4_use_fp16")
    monkeypatch.setattr(sys, "argv", ["4_use_fp16.py", *TORCH, "--batches", "4", "--batch-size", "128",
                                      "--seed", str(seed)])
    before = snapshot(workdir)
    torch.cuda.empty_cache()
    limit = torch.cuda.memory_reserved() + (150 << 20)
    torch.cuda.set_per_process_memory_fraction(limit / torch.cuda.get_device_properties(0).total_memory)
    try:
        with pytest.raises(SystemExit) as stopped:
            cli.run(step.main)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    error = stopped.value.code
    assert isinstance(error, str) and "\n" not in error, error
    assert error.startswith("error: ") and message in error and "--batch-size" in error, error
    assert snapshot(workdir) == before

"""CPU tier: how the stand-in is compiled and when it is not: its cache's keying and staleness, and the fallback.

The compiling itself needs a GPU (tests/test_gpu_steps.py runs it); here the compile and the GPU are faked, so
what is checked is which way each case goes and what it says.
"""
import json

import pytest
import torch

from common import build, data, engine, torch_engine
from common.errors import CourseError
from conftest import make_course

IMAGES = data.IMAGE_INPUTS["float32"]
PROFILES = [(1, 128, 128)]


@pytest.mark.parametrize("profiles, graphs", [
    # a dynamic graph for batches 2 to 128 compiled at the opt shape, then batch 1, which PyTorch compiles apart
    ([(1, 128, 128)], [(128, (2, 128)), (1, None)]),
    ([(1, 16, 32), (33, 128, 128)], [(16, (2, 32)), (128, (33, 128)), (1, None)]),  # step 9's engine: one per profile
    ([(64, 128, 256)], [(128, (64, 256))]),  # no batch 1 in range: nothing to compile apart
    ([(1, 1, 8)], [(8, (2, 8)), (1, None)]),  # an opt of 1: the profile's graph is compiled at its largest batch
    ([(8, 8, 8), (1, 1, 1)], [(8, None), (1, None)]),  # profiles of one size: a graph of that size each
])
def test_a_graph_is_compiled_per_profile_at_its_opt_shape_and_batch_1_apart(profiles, graphs):
    assert torch_engine.profile_graphs(profiles) == graphs


def test_a_load_compiles_the_profiles_graphs_and_leaves_batch_1_to_its_first_enqueue():
    assert torch_engine.load_graphs([(1, 16, 32), (33, 128, 128)]) == [(16, (2, 32)), (128, (33, 128))]
    assert torch_engine.load_graphs([(1, 1, 1)]) == [(1, None)]
    assert torch_engine.describe_graphs([(16, (2, 32)), (1, None)]) == "2..32 at 16, 1"


def key(**changes):
    return {"compute_capability": "9.0", "torch": "2.11.0+cu130", "precision": "fp16", "input": "float32 NCHW",
            "weights": "abc", "profiles": [[1, 128, 128]], **changes}


@pytest.fixture
def compiled_engine(tmp_path):
    """An engine file with a compile cache beside it, and the stand_in record a build would have written."""
    engine_file = tmp_path / "resnet18_fp16.torch.pt"
    engine_file.write_bytes(b"weights")
    cache = torch_engine.cache_path(engine_file)
    cache.write_bytes(b"portable compile caches")
    record = {"requested": "compiled", "mode": "compiled", "why_eager": None, "cache": cache.name,
              "cache_digest": data.file_digest(cache), "cache_key": key()}
    return engine_file, record


def test_a_cache_made_for_this_machine_is_used(compiled_engine):
    engine_file, record = compiled_engine
    assert torch_engine.cache_problem(engine_file, record, key()) is None


@pytest.mark.parametrize("changes, said", [
    ({"torch": "2.13.0+cu130"}, "was made for torch 2.11.0+cu130 (this machine: 2.13.0+cu130)"),
    ({"compute_capability": "8.0"}, "was made for compute_capability 9.0 (this machine: 8.0)"),
    ({"precision": "fp32", "input": "uint8 NHWC"}, "precision fp16 (this machine: fp32), input float32 NCHW"),
])
def test_a_cache_made_for_another_gpu_torch_or_engine_is_stale(compiled_engine, changes, said):
    engine_file, record = compiled_engine
    assert said in torch_engine.cache_problem(engine_file, record, key(**changes))


def test_a_missing_or_changed_cache_is_stale(compiled_engine):
    engine_file, record = compiled_engine
    cache = torch_engine.cache_path(engine_file)
    cache.write_bytes(b"other bytes")
    assert torch_engine.cache_problem(engine_file, record, key()).endswith("has changed since it was built")
    cache.unlink()
    assert torch_engine.cache_problem(engine_file, record, key()).endswith("is missing")


class FakeCompiler:
    """torch.compiler's cache calls and the stand-in's compile, recorded; `fails` makes the compile raise."""

    def __init__(self, monkeypatch, fails=None, can_compile=True):
        self.loaded, self.compiled, self.fails = [], [], fails
        why = None if can_compile else "no CUDA GPU to compile for"
        monkeypatch.setattr(torch_engine, "why_not_compiled", lambda: why)
        monkeypatch.setattr(torch_engine, "cache_key", lambda *args: key())
        monkeypatch.setattr(torch_engine, "compile_module", self.compile_module)
        monkeypatch.setattr(torch_engine, "inference_module", lambda *args: "the module")
        monkeypatch.setattr(torch.compiler, "load_cache_artifacts", self.loaded.append)
        monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"artifacts", "info"))
        monkeypatch.setattr(torch.compiler, "reset", lambda: None)

    def compile_module(self, model, image_input, graphs):
        if self.fails:
            raise self.fails
        self.compiled.append((model, graphs))
        return f"compiled {model}", 8.5


def test_load_compiles_from_the_builds_cache(compiled_engine, monkeypatch, capsys):
    engine_file, record = compiled_engine
    fake = FakeCompiler(monkeypatch)
    metadata = {"stand_in": record, "profiles": PROFILES, "precision": "fp16", "weights_digest": "abc"}
    assert torch_engine.compiled_from_cache("the module", engine_file, metadata, IMAGES) == (
        "compiled the module", "compiled")
    assert fake.loaded == [b"portable compile caches"] and capsys.readouterr().out == ""
    assert fake.compiled == [("the module", [(128, (2, 128))])]  # the profile's graph; batch 1 at its first enqueue


def test_a_stale_cache_means_recompiling_said_in_one_line(compiled_engine, monkeypatch, capsys):
    engine_file, record = compiled_engine
    fake = FakeCompiler(monkeypatch)
    torch_engine.cache_path(engine_file).unlink()
    metadata = {"stand_in": record, "profiles": PROFILES, "precision": "fp16", "weights_digest": "abc"}
    assert torch_engine.compiled_from_cache("the module", engine_file, metadata, IMAGES)[1] == "compiled"
    printed = capsys.readouterr().out.splitlines()
    assert fake.loaded == [] and len(printed) == 1 and printed[0].startswith("recompiling: ")
    assert "is missing; a slower start, the same results" in printed[0]


@pytest.mark.parametrize("fails, can_compile, said", [
    (None, False, "runs as the eager PyTorch stand-in: no CUDA GPU to compile for"),
    (RuntimeError("Triton failed\nmany lines"), True, "compilation failed (RuntimeError: Triton failed)"),
])
def test_where_compiling_cannot_run_the_stand_in_is_eager_and_says_so(compiled_engine, monkeypatch, capsys, fails,
                                                                     can_compile, said):
    engine_file, record = compiled_engine
    FakeCompiler(monkeypatch, fails=fails, can_compile=can_compile)
    metadata = {"stand_in": record, "profiles": PROFILES, "precision": "fp16", "weights_digest": "abc"}
    assert torch_engine.compiled_from_cache("the module", engine_file, metadata, IMAGES) == ("the module", "eager")
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and said in printed[0], printed


def test_build_compiles_saves_the_cache_and_records_its_key(tmp_path, monkeypatch, capsys):
    FakeCompiler(monkeypatch)
    engine_file = tmp_path / "resnet18_fp16.torch.pt"
    engine_file.write_bytes(b"weights")
    record = torch_engine.build(engine_file, "fp16", PROFILES, IMAGES, "abc", "compiled")
    cache = torch_engine.cache_path(engine_file)
    assert cache.read_bytes() == b"artifacts"
    assert record == {"requested": "compiled", "mode": "compiled", "why_eager": None, "compile_s": 8.5,
                      "cache": cache.name, "cache_digest": data.file_digest(cache), "cache_key": key()}
    assert "compiled in 8.5 s" in capsys.readouterr().out


@pytest.mark.parametrize("requested, fails, can_compile, why", [
    ("eager", None, True, "asked for (--stand-in eager)"),
    ("compiled", None, False, "no CUDA GPU to compile for"),
    ("compiled", RuntimeError("no working C compiler"), True,
     "compilation failed (RuntimeError: no working C compiler)"),
])
def test_build_falls_back_to_eager_and_says_why(tmp_path, monkeypatch, capsys, requested, fails, can_compile, why):
    FakeCompiler(monkeypatch, fails=fails, can_compile=can_compile)
    engine_file = tmp_path / "resnet18_fp16.torch.pt"
    engine_file.write_bytes(b"weights")
    torch_engine.cache_path(engine_file).write_bytes(b"an earlier compiled build's cache")
    record = torch_engine.build(engine_file, "fp16", PROFILES, IMAGES, "abc", requested)
    assert record == {"requested": requested, "mode": "eager", "why_eager": why}
    assert not torch_engine.cache_path(engine_file).exists()
    assert f"the stand-in runs eager PyTorch: {why}" in capsys.readouterr().out


def test_labels_name_the_stand_in_and_never_tensorrt():
    compiled, eager = torch_engine.label("compiled"), torch_engine.label("eager")
    assert compiled.startswith("compiled PyTorch stand-in (Inductor, torch ") and compiled.endswith("not TensorRT")
    assert eager.startswith("eager PyTorch stand-in (torch ") and eager.endswith("not TensorRT")
    assert engine.backend_label("torch", "compiled") == compiled


@pytest.mark.parametrize("stand_in", [None, {}, {"mode": "fast"}, "compiled"])
def test_metadata_that_does_not_say_how_the_stand_in_runs_is_stale(tmp_path, monkeypatch, stand_in):
    monkeypatch.chdir(make_course(tmp_path))
    path = build.engine_path("resnet18_fp16", "torch")
    metadata = json.loads(build.metadata_path(path).read_text())
    build.metadata_path(path).write_text(json.dumps({**metadata, "stand_in": stand_in}))
    with pytest.raises(engine.StaleEngine, match="does not say how the stand-in runs"):
        engine.read_metadata(path)


def test_the_build_is_redone_when_the_stand_in_was_asked_for_otherwise(tmp_path, monkeypatch):
    """An eager engine is not what `--stand-in compiled` asks for, on a machine that can compile."""
    from common import steps
    monkeypatch.chdir(make_course(tmp_path))
    monkeypatch.setattr(torch_engine, "why_not_compiled", lambda: None)
    is_up_to_date = steps.load("0_build").is_up_to_date
    path = build.engine_path("resnet18_fp16", "torch")
    assert is_up_to_date(path, "torch", "fp16", PROFILES, None, "float32", "eager")
    assert not is_up_to_date(path, "torch", "fp16", PROFILES, None, "float32", "compiled")


def test_without_a_gpu_an_eager_fallback_stays_up_to_date(tmp_path, monkeypatch):
    """On a machine that cannot compile, the eager engine a compiled build left is the best there is: not rebuilt."""
    from common import steps
    monkeypatch.chdir(make_course(tmp_path))
    path = build.engine_path("resnet18_fp16", "torch")
    metadata = json.loads(build.metadata_path(path).read_text())
    fallback = {"requested": "compiled", "mode": "eager", "why_eager": "no CUDA GPU to compile for"}
    build.metadata_path(path).write_text(json.dumps({**metadata, "stand_in": fallback}))
    monkeypatch.setattr(torch_engine, "why_not_compiled", lambda: "no CUDA GPU to compile for")
    assert steps.load("0_build").is_up_to_date(path, "torch", "fp16", PROFILES, None, "float32", "compiled")
    monkeypatch.setattr(torch_engine, "why_not_compiled", lambda: None)
    assert not steps.load("0_build").is_up_to_date(path, "torch", "fp16", PROFILES, None, "float32", "compiled")


def test_a_compile_error_at_load_is_not_a_course_error_but_an_out_of_memory_is(compiled_engine, monkeypatch):
    engine_file, record = compiled_engine
    FakeCompiler(monkeypatch, fails=torch.cuda.OutOfMemoryError("CUDA out of memory"))
    metadata = {"stand_in": record, "profiles": PROFILES, "precision": "fp16", "weights_digest": "abc"}
    with pytest.raises(CourseError, match="out of GPU memory compiling"):
        torch_engine.compiled_from_cache("the module", engine_file, metadata, IMAGES)


@pytest.mark.parametrize("own_forward, all_compiled", [(True, True), (False, False)])
def test_every_load_in_a_process_compiles_its_own_graphs(own_forward, all_compiled):
    """Each engine load is compiled, however many a process makes (the GPU tests make dozens): a uint8 stand-in wraps
    the folded network in a class whose forward all loads share, and torch.compile stops compiling a code object after
    recompile_limit graphs. with_own_forward gives each load code of its own; the control without it hits the limit,
    which the stand-in makes an error instead of a silent eager run. Dynamo's own tracing (backend "eager") on the
    CPU, with the limit lowered to 2 so that three loads reach it."""
    from common import int8
    images = torch.zeros((2, *data.IMAGE_INPUTS["uint8"].shape), dtype=torch.uint8)
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        torch.compiler.reset()
        compiled = []
        try:
            for _ in range(3):
                model = data.inference_model(int8.folded_resnet18(), "fp32", "uint8")
                module = torch.compile(torch_engine.with_own_forward(model) if own_forward else model, backend="eager")
                with torch.inference_mode():
                    module(images)
                compiled.append(module)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            pass
        finally:
            torch.compiler.reset()
    assert (len(compiled) == 3) == all_compiled

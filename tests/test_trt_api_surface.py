"""Every TensorRT name the course uses must exist in every TensorRT version the course supports.

TensorRT cannot be installed in CI, so the API surface of each supported version is read from the
lists in tests/trt_api/, which tools/trt_api_surface.py derives from the real bindings wheels. A
name counts as present when some listed string ENDS WITH it (the linker stores "name" inside
"get_tensor_name", for example).

The course's names are found by reading its code with `ast` (lesson files `[0-9]*_*.py` at the
repo root and `common/*.py`), following the course's conventions:
  a. `import tensorrt as trt`: every name in an attribute chain on `trt` (`trt.Logger.WARNING`).
  b. Variables holding TensorRT objects have fixed names (TRT_OBJECT_NAMES, plain or `self.`):
     every attribute on them (`engine.num_io_tensors`, `context.execute_async_v3`), and the keyword
     arguments of calls to them (`set_tensor_address(name=...)`). `run.engine` and `loaded.engine`
     count as well (TRT_OBJECT_HOLDERS).
  c. The PyTorch stand-in classes `Torch*` in common/torch_engine.py mirror TensorRT's engine and
     context, so their public method and property names must be TensorRT names too.
  d. A use inside an `if` (or conditional expression) that tests `TRT_MAJOR`, `trt_major` or
     `__version__` is guarded: it need only exist in one supported version, not in all.
"""

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SURFACE_DIR = Path(__file__).resolve().parent / "trt_api"
TORCH_STANDIN = Path("common") / "torch_engine.py"

# Names the course gives to variables that hold TensorRT objects (rule b).
TRT_OBJECT_NAMES = frozenset({
    "builder", "network", "config", "parser", "profile", "runtime", "engine", "context",
    "timing_cache", "logger", "serialized_engine", "inspector",
})

# Objects whose attributes of those names hold TensorRT objects too: `self.engine`, and the course's
# Workload (`run.engine`) and LoadedEngine (`loaded.engine`). Not `args`: `args.engine` is a path.
TRT_OBJECT_HOLDERS = frozenset({"self", "run", "loaded"})

# Attributes that are not TensorRT's although they sit on one of those names: `parser` is also
# what every argparse example calls its ArgumentParser. Keep this short; prefer renaming.
NOT_TENSORRT = {
    "parser": frozenset({"add_argument", "add_argument_group", "parse_args", "print_help"}),
}

# An `if` whose test mentions an identifier containing one of these is a version check (rule d).
VERSION_CHECK_MARKERS = ("TRT_MAJOR", "trt_major", "__version__")

HOW_TO_FIX = (
    "Use the name that TensorRT 10.x and 11.x both have (see NVIDIA's TensorRT 10.x-to-11.x "
    "migration guide), or put the use inside `if TRT_MAJOR ...:` so that it runs only on the "
    "versions that have it. The version lists are tests/trt_api/*.txt, made by "
    "tools/trt_api_surface.py."
)


@dataclass(frozen=True)
class NameUse:
    name: str
    path: str
    line: int
    guarded: bool  # inside a version check, so one supported version having it is enough

    @property
    def where(self):
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Problem:
    use: NameUse
    missing_from: tuple


# --- The committed API surfaces ------------------------------------------------------------------

def version_key(version):
    """Sort "10.16.1.11" after "10.1.0" (numerically), and ".post1" releases after their base."""
    return tuple(int(part) if part.isdigit() else -1 for part in version.replace("post", "").split("."))


def names_and_their_tails(listed_strings):
    """Every suffix of every listed string, so a membership test is the "ends with" rule."""
    return frozenset(text[start:] for text in listed_strings for start in range(len(text)))


@cache
def load_surfaces():
    """{version: searchable surface} for every tests/trt_api/tensorrt-<version>.txt, oldest first."""
    surfaces = {}
    for path in SURFACE_DIR.glob("tensorrt-*.txt"):
        version = path.stem.removeprefix("tensorrt-")
        listed = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
        surfaces[version] = names_and_their_tails(listed)
    return dict(sorted(surfaces.items(), key=lambda item: version_key(item[0])))


def versions_of_major(surfaces, major):
    return tuple(version for version in surfaces if version.split(".")[0] == str(major))


# --- Collecting the TensorRT names a piece of course code uses -----------------------------------

def tensorrt_aliases(tree):
    """The names under which this module imported `tensorrt` (by convention only `trt`)."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names if alias.name == "tensorrt"
    }


def mentions_version(test):
    identifiers = (
        node.id if isinstance(node, ast.Name) else node.attr
        for node in ast.walk(test) if isinstance(node, (ast.Name, ast.Attribute))
    )
    return any(marker in identifier for identifier in identifiers for marker in VERSION_CHECK_MARKERS)


def version_guarded_nodes(tree):
    """ids of the nodes in the branches of version checks. The test itself runs on every version,
    so it is not guarded."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and mentions_version(node.test):
            branches = node.body + node.orelse
        elif isinstance(node, ast.IfExp) and mentions_version(node.test):
            branches = [node.body, node.orelse]
        else:
            continue
        guarded.update(id(inner) for branch in branches for inner in ast.walk(branch))
    return guarded


def attribute_chain(node):
    """`trt.Logger.WARNING` -> ["trt", "Logger", "WARNING"]; None unless it starts at a plain name
    (`make_engine().name` is not followed: what a call returns is not known here)."""
    attributes = []
    while isinstance(node, ast.Attribute):
        attributes.insert(0, node.attr)
        node = node.value
    return [node.id, *attributes] if isinstance(node, ast.Name) else None


def is_dunder(name):
    return name.startswith("__") and name.endswith("__")


def is_tensorrt_attribute(chain, aliases):
    """Whether the last name of this attribute chain is one that TensorRT must provide."""
    root, *attributes = chain
    if root in aliases and len(attributes) == 1:
        return True  # `trt.X`, `trt.__version__`
    if any(is_dunder(name) for name in attributes):
        return False  # Python's: `trt.__version__.split`, `engine.__class__`
    if root in aliases:
        return True  # rule a: every name on `trt`, like `trt.Logger.WARNING`
    if root in TRT_OBJECT_HOLDERS and len(attributes) >= 2:
        root, *attributes = attributes  # `self.engine.x` is treated like `engine.x`
    if root not in TRT_OBJECT_NAMES:
        return False
    accessed_directly = len(attributes) == 1
    return not (accessed_directly and attributes[0] in NOT_TENSORRT.get(root, ()))


def torch_standin_members(tree):
    """Public methods and properties of the `Torch*` classes, which mirror TensorRT's (rule c)."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.startswith("Torch"):
            for member in node.body:
                if isinstance(member, ast.FunctionDef) and not member.name.startswith("_"):
                    yield member


def collect_uses(source, filename, is_torch_standin=False):
    """All TensorRT names used in one module's source, with where they are and whether guarded."""
    tree = ast.parse(source, filename=filename)
    aliases = tensorrt_aliases(tree)
    guarded = version_guarded_nodes(tree)

    def use(name, node):
        return NameUse(name, filename, node.lineno, id(node) in guarded)

    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = attribute_chain(node)
            if chain and is_tensorrt_attribute(chain, aliases):
                uses.append(use(node.attr, node))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            chain = attribute_chain(node.func)
            if chain and is_tensorrt_attribute(chain, aliases):
                # pybind11 names keyword arguments too: a wrong one fails only at run time.
                uses.extend(use(keyword.arg, keyword) for keyword in node.keywords if keyword.arg)
    if is_torch_standin:
        uses.extend(use(member.name, member) for member in torch_standin_members(tree))
    return sorted(uses, key=lambda found: (found.line, found.name))


def course_files(root=REPO_ROOT):
    """The course's own Python: lesson scripts at the root and the shared `common` package."""
    return sorted(root.glob("[0-9]*_*.py")) + sorted((root / "common").glob("*.py"))


def collect_course_uses(root=REPO_ROOT):
    uses = []
    for path in course_files(root):
        relative = path.relative_to(root)
        uses += collect_uses(path.read_text(), str(relative), is_torch_standin=relative == TORCH_STANDIN)
    return uses


# --- Checking names against the versions ---------------------------------------------------------

def find_problems(uses, surfaces):
    """Uses missing from a supported version; a guarded use only fails if every version lacks it."""
    problems = []
    for use in uses:
        missing_from = tuple(version for version, surface in surfaces.items() if use.name not in surface)
        allowed_missing = len(surfaces) - 1 if use.guarded else 0
        if len(missing_from) > allowed_missing:
            problems.append(Problem(use, missing_from))
    return problems


def describe(problems):
    lines = [f"{len(problems)} TensorRT name(s) missing from a supported version:"]
    for problem in problems:
        note = " (guarded by a version check, but no supported version has it)" if problem.use.guarded else ""
        lines.append(f"  {problem.use.where}: {problem.use.name} is missing from TensorRT "
                     f"{', '.join(problem.missing_from)}{note}")
    lines.append(HOW_TO_FIX)
    return "\n".join(lines)


def problems_in(source, is_torch_standin=False):
    return find_problems(collect_uses(source, "snippet.py", is_torch_standin), load_surfaces())


# --- The committed lists are usable --------------------------------------------------------------

def test_lists_cover_tensorrt_10_and_11():
    surfaces = load_surfaces()
    assert versions_of_major(surfaces, 10), f"no TensorRT 10.x list in {SURFACE_DIR}"
    assert versions_of_major(surfaces, 11), f"no TensorRT 11.x list in {SURFACE_DIR}"
    for version, surface in surfaces.items():
        assert "execute_async_v3" in surface, f"tensorrt-{version}.txt does not look like an API list"


# --- The collector and the checker can fail (small inline snippets) ------------------------------

def test_collector_follows_the_course_conventions():
    source = '''
import argparse
import numpy as np
import tensorrt as trt

TRT_MAJOR = int(trt.__version__.split(".")[0])
logger = trt.Logger(trt.Logger.WARNING)
kind = engine.__class__.__name__
count = engine.num_io_tensors
context.set_tensor_address(name="x", memory=0)
self.context.execute_async_v3(stream)
context = run.engine.create_execution_context()
path = args.engine or "default.plan"
self.engine = engine
parser = argparse.ArgumentParser()
parser.add_argument("--onnx")
dtype = np.float32

class TorchEngine:
    def get_tensor_name(self, index): ...
    @property
    def num_io_tensors(self): ...
    def _forward(self): ...
'''
    found = {use.name for use in collect_uses(source, "snippet.py", is_torch_standin=True)}
    assert found == {
        "__version__", "Logger", "WARNING", "num_io_tensors", "set_tensor_address", "name", "memory",
        "execute_async_v3", "create_execution_context", "get_tensor_name",
    }


def test_binding_index_api_fails_on_every_version():
    problems = problems_in("context.execute_async_v2(bindings, stream)\n")
    assert [(p.use.name, p.missing_from) for p in problems] == [("execute_async_v2", tuple(load_surfaces()))]


def test_fp16_builder_flag_fails_on_11x_only():
    surfaces = load_surfaces()
    problems = problems_in("import tensorrt as trt\nconfig.set_flag(trt.BuilderFlag.FP16)\n")
    assert [(p.use.name, p.missing_from) for p in problems] == [("FP16", versions_of_major(surfaces, 11))]
    message = describe(problems)
    assert "snippet.py:2: FP16 is missing from TensorRT 11." in message
    assert "if TRT_MAJOR" in message


@pytest.mark.parametrize("guarded_source", [
    "if TRT_MAJOR < 11:\n    config.set_flag(trt.BuilderFlag.FP16)\n",
    "if common.trt_major() >= 11:\n    pass\nelse:\n    config.set_flag(trt.BuilderFlag.FP16)\n",
    "flag = trt.BuilderFlag.FP16 if trt.__version__.startswith('10.') else None\n",
], ids=["if-body", "else-branch", "conditional-expression"])
def test_fp16_builder_flag_passes_under_a_version_check(guarded_source):
    assert problems_in("import tensorrt as trt\n" + guarded_source) == []


def test_version_check_does_not_excuse_a_name_no_version_has():
    problems = problems_in("if TRT_MAJOR < 11:\n    context.execute_async_v2(bindings, stream)\n")
    assert [p.use.name for p in problems] == ["execute_async_v2"]
    assert "no supported version has it" in describe(problems)


def test_strongly_typed_network_flag_passes():
    source = "import tensorrt as trt\nflag = trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED\n"
    assert problems_in(source) == []


def test_torch_standin_method_that_tensorrt_lacks_fails():
    source = "class TorchExecutionContext:\n    def execute_async_v2(self, bindings, stream): ...\n"
    assert [p.use.name for p in problems_in(source, is_torch_standin=True)] == ["execute_async_v2"]


# --- The course itself -----------------------------------------------------------------------------

def is_tensorrt_module(module):
    return module == "tensorrt" or module.startswith("tensorrt.")


def test_course_imports_tensorrt_only_as_trt():
    """Any other import form would hide names from this test."""
    other_forms = []
    for path in course_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            from_tensorrt = isinstance(node, ast.ImportFrom) and is_tensorrt_module(node.module or "")
            other_alias = isinstance(node, ast.Import) and any(
                is_tensorrt_module(alias.name) and alias.asname != "trt" for alias in node.names)
            if from_tensorrt or other_alias:
                other_forms.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not other_forms, f"use `import tensorrt as trt` instead, at: {', '.join(other_forms)}"


def test_course_uses_tensorrt_names():
    """Guards against the main test passing on an empty scan."""
    if not (REPO_ROOT / "common" / "build.py").exists():
        pytest.skip("common/build.py is not written yet, so there is no TensorRT code to scan")
    build_path = REPO_ROOT / "common" / "build.py"
    uses_in_build = collect_uses(build_path.read_text(), "common/build.py")
    assert uses_in_build, "found no TensorRT names in common/build.py: do the conventions still hold?"


def test_course_uses_only_names_in_every_supported_version():
    problems = find_problems(collect_course_uses(), load_surfaces())
    assert not problems, describe(problems)


def test_torch_standin_enum_members_are_tensorrt_names():
    """The stand-in's DataType and TensorIOMode mirror TensorRT's enums member by member (UINT8: step 12)."""
    from common import torch_engine
    surfaces = load_surfaces()
    for enum in (torch_engine.DataType, torch_engine.TensorIOMode):
        for member in enum.__members__:
            missing = [version for version, surface in surfaces.items() if member not in surface]
            assert not missing, f"{enum.__name__}.{member} is missing from TensorRT {', '.join(missing)}"

"""The PyTorch stand-in and the course's TensorRT code, checked against TensorRT's own Python signatures.

TensorRT cannot be installed in CI, but its signatures can: the PyPI package tensorrt-stubs holds the .pyi files
of one TensorRT release (10.13, pinned in requirements-stubs.txt) and nothing else. `make setup` installs it with
--no-deps into .venv/tensorrt-stubs, off the import path (see requirements-stubs.txt for why). Two checks:

1. The stand-in (common/torch_engine.py) against the stubs, read with `ast`: every public method and property of
   TorchEngine and TorchExecutionContext exists in tensorrt.ICudaEngine / tensorrt.IExecutionContext, as a method
   or as a property (or attribute) alike, and a method takes the parameters TensorRT's does: the same names, in
   the same order, the same ones with defaults. It may leave out trailing parameters that TensorRT gives a
   default (create_execution_context's `strategy`): it mirrors the calls the course makes, and a call it accepts
   is then one TensorRT accepts. Where TensorRT overloads a method, one overload must fit. The enums
   (TensorIOMode, the DataType members used) and nptype are compared as well.
2. mypy checks the TensorRT code of common/build.py and common/engine.py against the stubs (MYPYPATH), bodies of
   unannotated functions included (check_untyped_defs). Only TensorRT code counts: the top-level functions and
   classes that import tensorrt or are named after it; other errors in those files are not this test's. A
   negative control shows the check can fail.

The stubs have two constructs Python's parser refuses (and on which mypy stops): a parameter named `in`, and in
add_scale_nd a parameter without a default after ones with defaults. A copy repaired at test time is used; each
repair fails loudly once the construct it mends is gone, so that a new stubs version is noticed.
"""
import ast
import dataclasses
import importlib.metadata
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STUBS_DISTRIBUTION = "tensorrt-stubs"
# Where `make setup` installs the stubs (the Makefile's --target): beside the venv's interpreter, off sys.path.
STUBS_TARGET = Path(sys.prefix) / "tensorrt-stubs"
HOW_TO_INSTALL = ("run `make setup` (it installs requirements-stubs.txt with --no-deps into .venv/tensorrt-stubs) "
                  "or use the course's .venv")

# The stand-in's classes and the TensorRT classes they mirror.
MIRRORED_CLASSES = {"TorchEngine": "ICudaEngine", "TorchExecutionContext": "IExecutionContext"}


# --- Finding the stubs and repairing them ----------------------------------------------------------

class StubsChanged(Exception):
    """The stubs are not what the repairs expect: a new tensorrt-stubs version needs a look."""


@dataclasses.dataclass(frozen=True)
class Repair:
    what: str
    pattern: re.Pattern
    replacement: str


# Applied to `def` lines only (a docstring may say ":arg in:"). Each must mend something somewhere in the stubs.
REPAIRS = (
    Repair("a parameter named `in` (a Python keyword) is renamed `in_`",
           re.compile(r"([(,]\s*)in(\s*:)"), r"\1in_\2"),
    Repair("add_scale_nd's `channel_axis: int`, without a default after parameters with defaults, gets `= ...`",
           re.compile(r"(def add_scale_nd\(.*=.*, channel_axis: int)\)"), r"\1 = ...)"),
)


def repair_stubs(sources):
    """{module: source} with every repair applied; StubsChanged if a repair finds nothing to mend or a module
    still does not parse."""
    mended = {repair.what: 0 for repair in REPAIRS}
    repaired = {}
    for module, source in sources.items():
        lines = source.splitlines(keepends=True)
        for index, line in enumerate(lines):
            if line.lstrip().startswith("def "):
                for repair in REPAIRS:
                    line, count = repair.pattern.subn(repair.replacement, line)
                    mended[repair.what] += count
                lines[index] = line
        repaired[module] = "".join(lines)
    missing = [what for what, count in mended.items() if not count]
    if missing:
        raise StubsChanged(f"no construct found for the repair(s): {'; '.join(missing)}. The stubs changed: drop "
                           "or update these repairs in tests/test_trt_stubs.py (REPAIRS)")
    for module, source in repaired.items():
        try:
            ast.parse(source, filename=module)
        except SyntaxError as error:
            raise StubsChanged(f"{module} still does not parse after the repairs, at line {error.lineno}: "
                               f"{error.msg}: {(error.text or '').strip()!r}. Add a repair to REPAIRS") from None
    return repaired


def module_name(relative_path):
    """tensorrt/__init__.pyi -> tensorrt; tensorrt_bindings/tensorrt.pyi -> tensorrt_bindings.tensorrt"""
    parts = Path(relative_path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_stubs_distribution():
    """The installed tensorrt-stubs: on the import path, or where `make setup` puts it. None if neither."""
    try:
        return importlib.metadata.distribution(STUBS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return next(iter(importlib.metadata.distributions(name=STUBS_DISTRIBUTION, path=[str(STUBS_TARGET)])), None)


@dataclasses.dataclass
class Stubs:
    version: str
    directory: Path  # the repaired copy: a stub-only tree for MYPYPATH
    trees: dict  # {module: ast.Module}
    sources: dict  # {module: repaired source}, for the comments that record enum values

    def resolve(self, module, name, seen=()):
        """(module, node) defining `name` as seen from `module`, following `from X import name` re-exports."""
        if (module, name) in seen:
            raise StubsChanged(f"{module}.{name} re-exports itself")
        tree = self.trees.get(module)
        if tree is None:
            raise StubsChanged(f"the stubs have no module {module}")
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
                return module, node
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        return self.resolve(node.module, alias.name, (*seen, (module, name)))
        raise StubsChanged(f"the stubs' {module} has no {name}")


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    distribution = find_stubs_distribution()
    if distribution is None:
        pytest.skip(f"{STUBS_DISTRIBUTION} is not installed: {HOW_TO_INSTALL}")
    files = [path for path in distribution.files or () if path.suffix == ".pyi"]
    if "tensorrt/__init__.pyi" not in {path.as_posix() for path in files}:
        pytest.fail(f"{STUBS_DISTRIBUTION} {distribution.version} has no tensorrt/__init__.pyi: the stubs changed")
    sources = {module_name(path): Path(distribution.locate_file(path)).read_text() for path in files}
    try:
        repaired = repair_stubs(sources)
    except StubsChanged as error:
        pytest.fail(f"{STUBS_DISTRIBUTION} {distribution.version}: {error}")
    directory = tmp_path_factory.mktemp("tensorrt-stubs")
    for path in files:
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(repaired[module_name(path)])
    trees = {module: ast.parse(source, filename=module) for module, source in repaired.items()}
    return Stubs(distribution.version, directory, trees, repaired)


def test_repairs_fail_loudly_once_the_stubs_lack_what_they_mend():
    with pytest.raises(StubsChanged, match="channel_axis"):
        repair_stubs({"m": "def get_workspace_size(self, in: list, out: list) -> int: ...\n"})
    with pytest.raises(StubsChanged, match="`in`"):
        repair_stubs({"m": "def add_scale_nd(self, mode: int, shift: int = None, channel_axis: int) -> None: ...\n"})
    both = ("def get_workspace_size(self, in: list, out: list) -> int: ...\n"
            "def add_scale_nd(self, mode: int, shift: int = None, channel_axis: int) -> None: ...\n")
    assert repair_stubs({"m": both + "def f(x, y=1, *, z): ...\n"})["m"] == (
        "def get_workspace_size(self, in_: list, out: list) -> int: ...\n"
        "def add_scale_nd(self, mode: int, shift: int = None, channel_axis: int = ...) -> None: ...\n"
        "def f(x, y=1, *, z): ...\n")
    with pytest.raises(StubsChanged, match="still does not parse"):
        repair_stubs({"m": both + "def lambda(self): ...\n"})


def test_stubs_do_not_make_tensorrt_importable():
    """Installed on the import path, the stubs' tensorrt/ folder (no __init__.py) imports as an empty namespace
    package: `import tensorrt` would succeed without TensorRT, and BACKEND=auto would fail on trt.__version__."""
    spec = importlib.util.find_spec("tensorrt")
    assert spec is None or spec.origin not in (None, "namespace"), (
        f"`import tensorrt` finds a package without code at {list(spec.submodule_search_locations or ())}: "
        f"{STUBS_DISTRIBUTION} is installed on the import path; uninstall it ({sys.executable} -m pip uninstall "
        f"{STUBS_DISTRIBUTION}) and {HOW_TO_INSTALL}")


# --- The stand-in against the stubs -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "" (positional or keyword), "*", "**" or "keyword-only"
    has_default: bool

    def __str__(self):
        star = self.kind if self.kind in ("*", "**") else ""
        return f"{star}{self.name}{'=...' if self.has_default else ''}"


@dataclasses.dataclass(frozen=True)
class Signature:
    params: tuple  # of Param, without self

    def __str__(self):
        shown, keyword_only_marked = [], False
        for param in self.params:
            if param.kind == "keyword-only" and not keyword_only_marked:
                shown.append("*")
                keyword_only_marked = True
            keyword_only_marked = keyword_only_marked or param.kind == "*"
            shown.append(str(param))
        return f"({', '.join(shown)})"

    def fits(self, stub):
        """Whether a stand-in of this signature mirrors `stub`: the same parameters, leaving out only trailing
        ones that the stub gives a default."""
        count = len(self.params)
        return self.params == stub.params[:count] and all(param.has_default for param in stub.params[count:])


@dataclasses.dataclass(frozen=True)
class Member:
    kind: str  # "method", "property" or "attribute"
    signatures: tuple = ()  # a method's signatures (several where TensorRT overloads it)

    @property
    def read_as_attribute(self):
        return self.kind in ("property", "attribute")

    def describe(self):
        if self.kind == "method":
            return " or ".join(str(signature) for signature in self.signatures)
        return f"a {self.kind}"


def decorator_names(function):
    return {ast.unparse(decorator) for decorator in function.decorator_list}


def stub_signature(function, is_method=True):
    """The parameters of a stub's function, without self (or `this`) where it is a method."""
    arguments = function.args
    positional = [*arguments.posonlyargs, *arguments.args]
    first_default = len(positional) - len(arguments.defaults)
    params = [Param(argument.arg, "", index >= first_default) for index, argument in enumerate(positional)]
    if arguments.vararg:
        params.append(Param(arguments.vararg.arg, "*", False))
    params += [Param(argument.arg, "keyword-only", default is not None)
               for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults)]
    if arguments.kwarg:
        params.append(Param(arguments.kwarg.arg, "**", False))
    is_method = is_method and "staticmethod" not in decorator_names(function)
    return Signature(tuple(params[1:] if is_method and params else params))


def stub_members(class_node):
    """{name: Member} of a stub class: its methods (with every overload), properties and annotated attributes."""
    members, overloads = {}, {}
    for node in class_node.body:
        if isinstance(node, ast.FunctionDef):
            decorators = decorator_names(node)
            if "property" in decorators:
                members[node.name] = Member("property")
            elif not any(decorator.endswith((".setter", ".deleter")) for decorator in decorators):
                overloads.setdefault(node.name, []).append(stub_signature(node))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            members[node.target.id] = Member("attribute")
        elif isinstance(node, ast.Assign):
            members.update((target.id, Member("attribute")) for target in node.targets if isinstance(target, ast.Name))
    members.update((name, Member("method", tuple(signatures))) for name, signatures in overloads.items())
    return members


def runtime_signature(function, is_method=True):
    kinds = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**",
             inspect.Parameter.KEYWORD_ONLY: "keyword-only"}
    params = [Param(param.name, kinds.get(param.kind, ""), param.default is not inspect.Parameter.empty)
              for param in inspect.signature(function).parameters.values()]
    return Signature(tuple(params[1:] if is_method else params))


def standin_members(cls):
    """{name: Member} of the stand-in class's public methods, properties and class attributes."""
    members = {}
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            members[name] = Member("property")
        elif isinstance(value, staticmethod):
            members[name] = Member("method", (runtime_signature(value.__func__, is_method=False),))
        elif isinstance(value, classmethod):
            members[name] = Member("method", (runtime_signature(value.__func__),))
        elif inspect.isfunction(value):
            members[name] = Member("method", (runtime_signature(value),))
        else:
            members[name] = Member("attribute")
    return members


def differences(standin_name, standin, stub_name, stub):
    """One message per stand-in member that TensorRT's class (or module) does not have as the stand-in has it;
    `standin_name` "" for the stand-in module's own functions."""
    found = []
    for name, member in standin.items():
        where = f"{standin_name + '.' if standin_name else ''}{name}: stub ({stub_name}.{name}) says"
        theirs = stub.get(name)
        if theirs is None:
            found.append(f"{where} there is no such member, stand-in says {member.describe()}")
        elif member.read_as_attribute != theirs.read_as_attribute:
            found.append(f"{where} {theirs.describe()}, stand-in says {member.describe()}")
        elif member.kind == "method" and not any(member.signatures[0].fits(signature)
                                                 for signature in theirs.signatures):
            found.append(f"{where} {theirs.describe()}, stand-in says {member.describe()}")
    return found


def test_comparison_says_exactly_what_differs():
    source = '''
class IExecutionContext:
    name: str
    @typing.overload
    def set_input_shape(self, name: str, shape: tuple) -> bool: ...
    @typing.overload
    def set_input_shape(self, name: str, shape: Dims) -> bool: ...
    def set_tensor_address(self, name: str, memory: int) -> bool: ...
    def create_execution_context(self, strategy: int = ...) -> None: ...
    def get_tensor_shape(self, name: str) -> Dims: ...
    @property
    def active_optimization_profile(self) -> int: ...
'''
    stub = stub_members(ast.parse(source).body[0])

    class TorchExecutionContext:
        name = "context"  # an attribute in TensorRT: fine

        def set_input_shape(self, name, shape):  # fits either overload
            pass

        def create_execution_context(self):  # leaves out a parameter with a default: fine
            pass

        def set_tensor_address(self, name, address):
            pass

        def get_tensor_shape(self, name=None):
            pass

        def active_optimization_profile(self):
            pass

        def execute_async_v2(self, bindings, stream_handle):
            pass

    found = differences("TorchExecutionContext", standin_members(TorchExecutionContext), "IExecutionContext", stub)
    assert found == [
        "TorchExecutionContext.set_tensor_address: stub (IExecutionContext.set_tensor_address) says (name, memory), "
        "stand-in says (name, address)",
        "TorchExecutionContext.get_tensor_shape: stub (IExecutionContext.get_tensor_shape) says (name), "
        "stand-in says (name=...)",
        "TorchExecutionContext.active_optimization_profile: stub (IExecutionContext.active_optimization_profile) "
        "says a property, stand-in says ()",
        "TorchExecutionContext.execute_async_v2: stub (IExecutionContext.execute_async_v2) says there is no such "
        "member, stand-in says (bindings, stream_handle)",
    ]


@pytest.mark.parametrize("standin_name", sorted(MIRRORED_CLASSES))
def test_standin_class_has_tensorrt_signatures(stubs, standin_name):
    from common import torch_engine
    stub_name = MIRRORED_CLASSES[standin_name]
    _, stub_class = stubs.resolve("tensorrt", stub_name)
    standin = standin_members(getattr(torch_engine, standin_name))
    assert standin, f"{standin_name} has no public members: is this still the stand-in?"
    found = differences(standin_name, standin, f"tensorrt.{stub_name}", stub_members(stub_class))
    assert not found, (f"{standin_name} differs from TensorRT {stubs.version}'s tensorrt.{stub_name}:\n  "
                       + "\n  ".join(found))


def test_standin_nptype_has_tensorrt_signature(stubs):
    from common import torch_engine
    _, stub_function = stubs.resolve("tensorrt", "nptype")
    found = differences("", {"nptype": Member("method", (runtime_signature(torch_engine.nptype, is_method=False),))},
                        "tensorrt", {"nptype": Member("method", (stub_signature(stub_function, is_method=False),))})
    assert not found, "\n".join(found)


ENUM_VALUE_COMMENT = re.compile(r"#\s*value\s*=\s*<(?P<enum>\w+)\.(?P<member>\w+):\s*(?P<value>-?\d+)>")


def enum_members(stubs, module, class_node):
    """{member: TensorRT's integer value, or None where the stub's comment does not record it}."""
    lines = stubs.sources[module].splitlines()
    members = {}
    for node in class_node.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                not node.target.id.startswith("_") and class_node.name in ast.unparse(node.annotation):
            recorded = ENUM_VALUE_COMMENT.search(lines[node.lineno - 1])
            members[node.target.id] = int(recorded["value"]) if recorded else None
    return members


@pytest.mark.parametrize("enum_name", ["TensorIOMode", "DataType"])
def test_standin_enum_members_are_tensorrt_members(stubs, enum_name):
    from common import torch_engine
    module, stub_enum = stubs.resolve("tensorrt", enum_name)
    theirs = enum_members(stubs, module, stub_enum)
    assert theirs, f"the stubs' {enum_name} has no members: the stubs changed"
    ours = getattr(torch_engine, enum_name)
    missing = [name for name in ours.__members__ if name not in theirs]
    assert not missing, f"{enum_name}: stub has no member(s) {missing}; it has {sorted(theirs)}"
    if enum_name == "TensorIOMode":  # DataType's stand-in values are numpy types: see the test below
        wrong = [f"{name}: stub says {theirs[name]}, stand-in says {member.value}"
                 for name, member in ours.__members__.items() if theirs[name] not in (None, member.value)]
        assert not wrong, f"{enum_name} values differ from TensorRT's: {'; '.join(wrong)}"


def test_standin_datatypes_map_to_numpy_as_tensorrt_does(stubs):
    """TensorRT names its DataTypes after numpy's types too (`trt.float32` is DataType.FLOAT), so the stand-in's
    DataType -> numpy type (what its nptype returns) must agree with those aliases."""
    import numpy as np
    from common import torch_engine
    tree, lines = stubs.trees["tensorrt"], stubs.sources["tensorrt"].splitlines()
    aliases = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            recorded = ENUM_VALUE_COMMENT.search(lines[node.lineno - 1])
            if recorded and recorded["enum"] == "DataType":
                aliases[node.target.id] = recorded["member"]
    if not aliases:
        pytest.skip(f"tensorrt-stubs {stubs.version} does not record what trt.float32 and the like are")
    wrong = []
    for member in torch_engine.DataType:
        numpy_name = np.dtype(torch_engine.nptype(member)).name
        if aliases.get(numpy_name) != member.name:
            wrong.append(f"DataType.{member.name}: stub says trt.{numpy_name} is DataType.{aliases.get(numpy_name)}, "
                         f"stand-in's nptype gives {numpy_name}")
    assert not wrong, "; ".join(wrong)


# --- mypy on the course's TensorRT code -----------------------------------------------------------------

TYPECHECKED = ("common/build.py", "common/engine.py")
# Must be in what is checked, so that the check cannot pass on an empty scan; update if they are renamed.
REQUIRED_IN_SCOPE = {
    "common/build.py": {"build_tensorrt"},
    "common/engine.py": {"_deserialize_tensorrt", "_TensorRTEngine", "_tensorrt_nptype", "resolve_backend"},
}
# Errors that come from the stubs being narrower than TensorRT, by file and message; each must still be reported
# (else remove it), so none outlives its reason.
KNOWN_STUB_GAPS = (
    ("common/build.py",
     re.compile(r'Argument [234] to "set_shape" of "IOptimizationProfile" has incompatible type "tuple\[.*\]"; '
                r'expected "Dims"'),
     "TensorRT's bindings convert a tuple or list to Dims implicitly (pybind11); the stubs say so for "
     "IExecutionContext.set_input_shape (overloads for tuple, list and Dims) but not for "
     "IOptimizationProfile.set_shape"),
)

MYPY_CONFIG = """\
[mypy]
check_untyped_defs = True
# Only the checked files, the course's own modules and the stubs are read: torch, numpy and the rest are Any.
follow_imports = skip
ignore_missing_imports = True

[mypy-common,common.*]
follow_imports = silent

[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
follow_imports = silent
# The stubs' own errors are not the course's; but they must be found.
ignore_errors = True
ignore_missing_imports = False
"""

MYPY_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<severity>error|note): (?P<message>.*)$")


@dataclasses.dataclass(frozen=True)
class MypyError:
    path: Path
    line: int
    message: str

    def __str__(self):
        return f"{self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path}:{self.line}: " \
               f"error: {self.message}"


@pytest.fixture(scope="session")
def typecheck(stubs, tmp_path_factory):
    """mypy against the repaired stubs: typecheck(paths) -> every error reported in those files."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed: run `make setup` (requirements.txt pins it)")
    work = tmp_path_factory.mktemp("mypy")
    config = work / "mypy.ini"
    config.write_text(MYPY_CONFIG)

    def run(paths):
        command = [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(work / "cache"),
                   "--no-error-summary", "--no-pretty", "--no-color-output", "--show-error-codes", *map(str, paths)]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "MYPYPATH": str(stubs.directory)})
        output = result.stdout + result.stderr
        if result.returncode not in (0, 1):
            pytest.fail(f"mypy did not run (exit {result.returncode}):\n{output}")
        wanted = {Path(REPO, path).resolve() for path in paths}
        errors = []
        for line in output.splitlines():
            match = MYPY_LINE.match(line)
            if match and match["severity"] == "error" and Path(REPO, match["path"]).resolve() in wanted:
                errors.append(MypyError(Path(REPO, match["path"]).resolve(), int(match["line"]), match["message"]))
        return errors

    return run


def imports_tensorrt(node):
    return any(isinstance(inner, ast.Import) and any(alias.name.split(".")[0] == "tensorrt" for alias in inner.names)
               or isinstance(inner, ast.ImportFrom) and (inner.module or "").split(".")[0] == "tensorrt"
               for inner in ast.walk(node))


def tensorrt_scope(path):
    """{name: (first line, last line)} of the module's TensorRT code: top-level functions and classes that import
    tensorrt or are named after it; the whole module where it imports tensorrt at the top."""
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    if any(imports_tensorrt(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))):
        return {"<module>": (1, len(Path(path).read_text().splitlines()))}
    return {
        node.name: (min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)]), node.end_lineno)
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and ("tensorrt" in node.name.lower() or imports_tensorrt(node))
    }


def tensorrt_errors(errors, path):
    """The errors inside the TensorRT code of `path`, with the name of the function or class they are in."""
    scope = tensorrt_scope(path)
    resolved = Path(REPO, path).resolve()
    return [(error, name) for error in errors if error.path == resolved
            for name, (first, last) in scope.items() if first <= error.line <= last]


def test_course_tensorrt_code_typechecks_against_the_stubs(stubs, typecheck):
    for path, required in REQUIRED_IN_SCOPE.items():
        missing = required - set(tensorrt_scope(REPO / path))
        assert not missing, (f"{path}: {sorted(missing)} not found as TensorRT code (a top-level function or class "
                             "that imports tensorrt or is named after it): update REQUIRED_IN_SCOPE")
    errors = typecheck(TYPECHECKED)
    found = [(error, name) for path in TYPECHECKED for error, name in tensorrt_errors(errors, path)]
    gaps_seen = set()
    real = []
    for error, name in found:
        gap = next((index for index, (path, pattern, _) in enumerate(KNOWN_STUB_GAPS)
                    if error.path == Path(REPO, path).resolve() and pattern.search(error.message)), None)
        if gap is None:
            real.append(f"{error}  (in {name})")
        else:
            gaps_seen.add(gap)
    assert not real, (f"mypy finds type errors in the course's TensorRT code against TensorRT {stubs.version}'s "
                      "signatures:\n" + "\n".join(real))
    stale = [f"{path}: {pattern.pattern}" for index, (path, pattern, _) in enumerate(KNOWN_STUB_GAPS)
             if index not in gaps_seen]
    assert not stale, f"no longer reported, remove from KNOWN_STUB_GAPS: {stale}"


def test_typecheck_catches_a_wrong_argument_type(stubs, typecheck, tmp_path):
    """The negative control: the same check, on code that passes a str where TensorRT takes a stream handle."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import tensorrt as trt\n"
        "\n"
        "\n"
        "def enqueue_on_tensorrt(context: trt.IExecutionContext, stream_handle: int):\n"
        "    assert context.execute_async_v3(stream_handle)\n"
        '    context.execute_async_v3("x")\n'
        "    return trt.Logger(trt.Logger.WARNING)\n")
    found = tensorrt_errors(typecheck([probe]), probe)
    assert [(error.line, error.message, name) for error, name in found] == [
        (6, 'Argument 1 to "execute_async_v3" of "IExecutionContext" has incompatible type "str"; expected "int"  '
            '[arg-type]', "<module>"),
    ]

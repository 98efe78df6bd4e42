"""CPU tier: every script's command line with bad values for each of its options, and bad files where it takes them.

Each try must end the run with a non-zero status and one line, `error: <what is wrong>: <what to do>` (status 1)
or argparse's usage error (status 2), never a traceback; and it must leave the scratch course it ran in
(engines/, reports/, everything else) as it found it: no file changed, added or removed.

The tries are the rows of a table, CASES, made from SCRIPTS: each script's options with the bad values of each
(made by the *_values functions, by the option's kind), then BACKEND in the environment and the course's weights
file. A row says what it tries, and that is its test's id. Rows run the script's main() in this process as its
entry point does (cli.run, sys.argv), in a scratch course (conftest.make_course): a subprocess per row would
import torch hundreds of times. ENTRY_POINT_CASES run some of them through the real command line, and the last
test a typo in BACKEND through make.

A control per step runs it with good values, which must get as far as the GPU ("no usable NVIDIA driver" on a
machine without one): so the scratch course is a usable one, and a bad row fails because of its bad value.

To extend the table: a new option goes into the options of the scripts that take it, with the values of its kind
(`"--repeats": whole_number_values(1)` in step_options, say); a new script into SCRIPTS (a step built on
cli.parser and workload.prepare: step_script(stem), with its own options in `extra`). What only a GPU reaches
(an engine file that passes every check but does not load, out of memory) is in test_gpu_bad_inputs.py.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from common import build, cli, steps
from conftest import REPO, STAND_IN_ENGINES, assert_refused, gpu_reason, make_course, snapshot

LADDER = ["1_baseline", "2_reuse_buffers", "3_use_pin_memory", "4_use_fp16", "5_multi_streams", "6_multi_threads",
          "7_cuda_graph", "8_multi_context", "9_multi_profiles"]
TORCH = ("--backend", "torch")  # so that no row depends on BACKEND in the environment of the tests
HUGE = str(10**30)
INT8_ENGINE = "resnet18_int8"  # step 13's, which the scratch course gets here (make_course_with_int8)


@dataclasses.dataclass(frozen=True)
class Bad:
    """A bad value of an option (or, with `damage`, a bad state of the course), and how it must be refused."""
    value: str
    expect: str  # in the last line of what the run prints
    tries: str  # what it tries, in words
    usage: bool = True  # argparse refuses it (status 2); False: the course's own check, `error: ...` (status 1)
    damage: object = None  # damage(course, engine_name): what to break in the scratch course before the run
    only_permissions: bool = False  # only a file's permission bits make it bad: root reads it anyway


@dataclasses.dataclass(frozen=True)
class Script:
    options: dict  # option -> its bad values
    engine: str = None  # the engine it loads by default (None: it loads none)
    fixed: tuple = TORCH  # arguments every row passes besides the option it tries


@dataclasses.dataclass(frozen=True)
class Case:
    script: str  # a numbered script's stem, or "common.report"
    args: tuple
    bad: Bad
    env: tuple = ()  # (name, value) pairs to set; BACKEND is unset otherwise

    @property
    def id(self):
        return f"{self.script} {self.bad.tries}"


# ---------------------------------------------------------------------------------------------------
# Bad values, by the kind of option

def whole_number_values(minimum, maximum=None, too_large=None):
    """For cli.whole_number: below `minimum`, not whole numbers, above `maximum`; where there is no maximum,
    `too_large`: a huge value, refused by the script's own check before the GPU."""
    below, not_whole = f"must be at least {minimum}", "is not a whole number"
    values = {Bad(str(minimum - 1), below, "below the minimum"), Bad("-5", below, "negative"),
              Bad("x", not_whole, "not a number"), Bad("2.5", not_whole, "a fraction"),
              Bad("1e3", not_whole, "in exponent notation"), Bad("nan", not_whole, "NaN"),
              Bad("inf", not_whole, "infinite"), Bad("", not_whole, "empty")}
    if minimum > 1:
        values.add(Bad("0", below, "zero"))
    if maximum is not None:
        values |= {Bad(str(maximum + 1), f"must be at most {maximum}", "above the maximum"),
                   Bad(HUGE, f"must be at most {maximum}", "huge")}
    if too_large is not None:
        values.add(too_large)
    return sorted(values, key=lambda bad: bad.tries)


def number_values(low, high=None, low_allowed=False):
    """For cli.number(low, high, low_allowed): not numbers, not finite, out of range."""
    values = [Bad("x", "is not a number", "not a number"), Bad("", "is not a number", "empty"),
              Bad("nan", "must be", "NaN"), Bad("inf", "must be", "infinite"),
              Bad("-inf", "must be", "minus infinity"), Bad("1e999", "must be", "huge (infinite as a float)"),
              Bad(f"{low - 1:g}", "must be", "below the minimum")]
    if not low_allowed:
        values.append(Bad(f"{low:g}", f"must be above {low:g}", "at the excluded minimum"))
    if high is not None:
        values.append(Bad(f"{high:g}", f"below {high:g}", "at the excluded maximum"))
    return values


def list_values(low, low_allowed, below=None):
    """For step 11's comma-separated lists of numbers."""
    not_a_list, each = "is not a comma-separated list of numbers", "each must be"
    values = [Bad("x", not_a_list, "not a number"), Bad("", not_a_list, "empty"),
              Bad("1,,2", not_a_list, "an empty item"), Bad("1;2", not_a_list, "another separator"),
              Bad("nan", each, "NaN"), Bad("1,inf", each, "an infinite item"),
              Bad("1e999", each, "huge (infinite as a float)"),
              Bad(f"1,{low - 1:g}", each, "an item below the minimum")]
    if not low_allowed:
        values.append(Bad(f"{low:g}", f"each must be above {low:g}", "at the excluded minimum"))
    if below is not None:
        values.append(Bad(f"{below:g}", f"and below {below:g}", "at the excluded maximum"))
    return values


def choice_values():
    return [Bad("bogus", "invalid choice", "not a choice"), Bad("", "invalid choice", "empty"),
            Bad("TORCH", "invalid choice", "a choice in another case")]


def directory_values(option):
    """For a directory a run writes to: one that is a file, cannot be created or cannot be written to."""
    advice = f"pass {option} a directory you can write to"
    return [Bad("reports/1_baseline.json", f"is not a directory: {advice}", "a file", usage=False),
            Bad("/proc/forbidden", f"cannot be created (No such file or directory): {advice}",
                "a directory that cannot be created", usage=False),
            Bad("reports/1_baseline.json/sub", f"cannot be created (Not a directory): {advice}",
                "a directory under a file", usage=False),
            Bad("/proc/self", f"is not writable: {advice}", "a directory that cannot be written to", usage=False),
            Bad("", "an empty path", "empty")]


# Engine files: engines/damaged.torch.pt, a copy of the step's own engine and its metadata, then damaged.
DAMAGED = "engines/damaged.torch.pt"
REMOVED = object()


def damaged_engine(change):
    """A damage(course, engine_name) that copies the engine as DAMAGED, then calls change(engine, metadata file)."""
    def damage(course, engine_name):
        engine_file, copy = course / build.engine_path(engine_name, "torch"), course / DAMAGED
        copy.write_bytes(engine_file.read_bytes())
        build.metadata_path(copy).write_text(build.metadata_path(engine_file).read_text())
        change(copy, build.metadata_path(copy))
    return damage


def edited_metadata(**changes):
    """A change that sets keys of the metadata, or removes those set to REMOVED."""
    def change(_, metadata_file):
        metadata = {**json.loads(metadata_file.read_text()), **changes}
        metadata_file.write_text(json.dumps({key: value for key, value in metadata.items() if value is not REMOVED}))
    return change


def unreadable(path):
    """`path` made a link to /proc/self/mem, which no one can read from its start (EIO), not even root."""
    path.unlink()
    path.symlink_to("/proc/self/mem")


def engine_values(precision):
    """For --engine: files missing, of the wrong kind, damaged, or built for something else."""
    other = "resnet18_fp32" if precision == "fp16" else "resnet18_fp16"
    not_json = "is not valid JSON"

    def damaged(expect, tries, change, **more):
        return Bad(DAMAGED, expect, tries, usage=False, damage=damaged_engine(change), **more)
    return [
        Bad("", "an empty path", "empty"),
        Bad("engines/missing.torch.pt", "not found: build it first", "a missing file", usage=False),
        Bad("engines", "is a directory, not an engine file", "a directory", usage=False),
        Bad("reports/1_baseline.json", "no metadata file reports/1_baseline.json.json: pass an engine file that "
            "0_build.py built", "a file of the wrong kind (a step's result)", usage=False),
        Bad(f"engines/{other}.torch.pt", f"this step needs an {precision} engine but",
            "an engine of the other precision", usage=False),
        damaged("is 0 bytes but was", "an empty engine file", lambda engine, _: engine.write_bytes(b"")),
        damaged("(truncated or overwritten): rebuild it", "a truncated engine file",
                lambda engine, _: engine.write_bytes(engine.read_bytes()[:20])),
        damaged("has changed since it was built", "a corrupt engine file (same size)",
                lambda engine, _: engine.write_bytes(bytes(byte ^ 0xFF for byte in engine.read_bytes()))),
        damaged("cannot be read (Permission denied)", "an engine file that cannot be read",
                lambda engine, _: engine.chmod(0), only_permissions=True),
        damaged("has no metadata file", "an engine without its metadata file", lambda _, metadata: metadata.unlink()),
        damaged(not_json, "metadata that is not JSON", lambda _, metadata: metadata.write_text("garbage\n")),
        damaged(not_json, "an empty metadata file", lambda _, metadata: metadata.write_text("")),
        damaged(not_json, "a truncated metadata file",
                lambda _, metadata: metadata.write_text(metadata.read_text()[:40])),
        damaged(not_json, "a metadata file that is not text",
                lambda _, metadata: metadata.write_bytes(b"\xff\xfe\x00")),
        damaged(f"its metadata is not of format {build.METADATA_FORMAT}", "metadata of the wrong kind (a JSON list)",
                lambda _, metadata: metadata.write_text("[1, 2]")),
        damaged("written by another version of this course", "metadata of an older format",
                edited_metadata(format=1)),
        damaged("lacks backend", "metadata without a key it needs", edited_metadata(backend=REMOVED)),
        damaged("cannot be read (Input/output error)", "a metadata file that cannot be read",
                lambda _, metadata: unreadable(metadata)),
        damaged("cannot be read (Is a directory)", "a metadata file that is a directory",
                lambda _, metadata: (metadata.unlink(), metadata.mkdir())),
        damaged("is a tensorrt engine but the backend is torch", "an engine of the other backend",
                edited_metadata(backend="tensorrt")),
        damaged("was built from other weights", "an engine built from other weights",
                edited_metadata(weights_digest="0" * 16)),
    ] + ([] if precision == "int8" else [
        Bad(f"engines/{INT8_ENGINE}.torch.pt", f"this step needs an {precision} engine but engines/{INT8_ENGINE}"
            ".torch.pt is int8", "an INT8 engine", usage=False)])


def weights_states():
    """The weights file that every engine and reference comes from: not an option, the course's own file."""
    weights = build.WEIGHTS_PATH
    return [Bad(None, f"{weights} not found", "the weights file missing", usage=False,
                damage=lambda course, _: (course / weights).unlink()),
            Bad(None, f"{weights} cannot be read (Input/output error)", "the weights file unreadable", usage=False,
                damage=lambda course, _: unreadable(course / weights))]


def backend_environment_values():
    """BACKEND, the default of --backend: (value, how it must be refused)."""
    message = f"in the environment is not a backend: set BACKEND to one of {', '.join(cli.BACKENDS)}, or unset it"
    return [(value, Bad(None, f"BACKEND={value!r} {message}", f"BACKEND={value!r} in the environment", usage=False))
            for value in ("bogus", "", "TORCH")]


# ---------------------------------------------------------------------------------------------------
# The scripts and their options

def step_options(precision, outside_profile, batches=None):
    """The options of cli.parser; `outside_profile`: how the step refuses a batch size its engine cannot take."""
    return {
        "--backend": choice_values(),
        "--engine": engine_values(precision),
        "--batches": batches or whole_number_values(4, cli.MAX_BATCHES) + [
            Bad(str(cli.MAX_BATCHES), "GiB of host memory", "as many as allowed: more than the host's memory",
                usage=False)],
        "--repeats": whole_number_values(1, cli.MAX_REPEATS),
        "--batch-size": whole_number_values(1, too_large=Bad(
            "100000", outside_profile, "huge (outside the engine's profile)", usage=False)),
        "--seed": whole_number_values(0, cli.MAX_SEED),
        "--reports": directory_values("--reports"),
    }


def step_script(stem, outside_profile="is outside optimization profile 0", extra=None):
    """A step built on cli.parser and workload.prepare: the shared options, and its own (`extra`)."""
    engine = steps.load(stem).ENGINE
    precision = STAND_IN_ENGINES[engine][0]
    return Script({**step_options(precision, outside_profile), **(extra or {})}, engine)


def multi_profile_step():
    outside = "is outside every profile"
    return step_script("9_multi_profiles", outside, extra={
        "--small-batch-size": whole_number_values(
            1, too_large=Bad("100000", outside, "huge (outside the engine's profiles)", usage=False)),
        "--one-profile-engine": engine_values("fp16")[:5]})  # the files; a damaged one is --engine's case


def multi_context_step():
    outside = "is outside optimization profile 0"
    return step_script("8_multi_context", extra={"--small-batch-size": whole_number_values(
        1, too_large=Bad("100000", outside, "huge (outside the engine's profile)", usage=False))})


def sweep_step():
    step = steps.load("10_batch_size_sweep")
    options = step_options("fp16", "is outside the first profile", batches=whole_number_values(3, step.MAX_RUNS))
    options["--repeats"] = whole_number_values(1, step.MAX_RUNS)
    options["--knee-within"] = number_values(0, 100, low_allowed=True)
    options["--latency-budget-ms"] = number_values(0)
    return Script(options, step.ENGINE)


def dynamic_batching_step():
    step = steps.load("11_dynamic_batching")
    requests = "requests per run: a run needs 1 to"
    options = step_options("fp16", "is outside every profile", batches=[
        Bad("10", "step 11 has no --batches", "any value (requests are what count here)")])
    options["--repeats"] = [Bad("3", "step 11 has no --repeats", "any value (one run per rate and setting)")]
    options["--rates"] = list_values(0, low_allowed=False) + [
        Bad("1e12", requests, "huge (more requests than a run can hold)"),
        Bad("0.5", requests, "so low that a run expects no request")]
    options["--max-wait-ms"] = list_values(0, low_allowed=True, below=step.MAX_WAIT_MS)
    options["--duration-s"] = number_values(0) + [
        Bad("1e9", requests, "huge (more requests than a run can hold)"),
        Bad("1e-9", requests, "so short that a run expects no request")]
    return Script(options, step.ENGINE)


def int8_step():
    """Step 13: the ladder's options, on the INT8 engine (which conftest's STAND_IN_ENGINES does not list)."""
    return Script(step_options("int8", "is outside optimization profile 0"), steps.load("13_int8").ENGINE)


def gpu_preprocessing_step():
    bad_list = "is not a whole number"
    return step_script("12_gpu_preprocessing", extra={
        "--latency-batch-sizes": [Bad("x", bad_list, "not a number"), Bad("", bad_list, "empty"),
                                  Bad("1,,8", bad_list, "an empty item"), Bad("0", "must be at least 1", "zero"),
                                  Bad("8,-1", "must be at least 1", "a negative item")],
        "--fp32-input-engine": [Bad("", "an empty path", "empty")]})


def build_script():
    step = steps.load("0_build")
    profile, order, name = "a profile is MIN:OPT:MAX", "1 <= MIN <= OPT <= MAX", "an engine name is a plain file name"
    return Script({
        "--backend": choice_values(),
        "--precision": choice_values(),
        "--weights": choice_values(),
        "--profile": [
            Bad("1:128", profile, "two numbers"), Bad("1:1:1:1", profile, "four numbers"), Bad("", profile, "empty"),
            Bad("a:b:c", profile, "not numbers"), Bad("1:2.5:4", profile, "a fraction"), Bad("nan:1:1", profile, "NaN"),
            Bad("0:1:1", order, "a zero batch"), Bad("-1:1:1", order, "negative"),
            Bad("64:16:128", order, "out of order"),
            Bad(f"1:1:{build.MAX_BATCH + 1}", f"MAX must be at most {build.MAX_BATCH}", "MAX above the maximum"),
            Bad(f"1:1:{HUGE}", f"MAX must be at most {build.MAX_BATCH}", "huge")],
        "--name": [
            Bad("../../etc/x", name, "a path out of engines/"), Bad("sub/x", name, "a sub-directory"),
            Bad("/tmp/x", name, "an absolute path"), Bad("x/", name, "a trailing slash"), Bad("", name, "empty"),
            Bad(".", name, "the current directory"), Bad("..", name, "the parent directory"),
            Bad("x" * 250, "is too long", "too long for a file name")],
        "--seed": whole_number_values(0, cli.MAX_SEED),
        "--workspace-mib": whole_number_values(1, step.MAX_WORKSPACE_MIB),
        # Without --precision int8 (the rows' default is fp32), even a good value is refused.
        "--calibration-batches": whole_number_values(1, step.MAX_CALIBRATION_BATCHES) + [
            Bad("4", "--calibration-batches is for an INT8 build: add --precision int8", "without --precision int8",
                usage=False)],
        "--calibration-seed": whole_number_values(0, cli.MAX_SEED) + [
            Bad("1", "--calibration-seed is for an INT8 build: add --precision int8", "without --precision int8",
                usage=False)],
    })


def report_script():
    """common.report: where it writes (--reports), and the examples it reports where --reports holds no results."""
    def with_examples(make=lambda course: None):
        def damage(course, _):
            (course / "no-results").mkdir()  # an existing, empty --reports: the examples are what is reported
            make(course)
        return damage

    def result_in_bad(text):
        def make(course):
            (course / "bad").mkdir()
            (course / "bad/1_baseline.json").write_text(text)
        return with_examples(make)
    no_examples, no_step = "has no example results: run `make run-all`", "has a timed window"
    truncated = (REPO / "tests/fixtures/h100-eager/1_baseline.json").read_text()[:200]
    examples = [
        Bad("nowhere", no_examples, "missing", usage=False, damage=with_examples()),
        Bad("reports/1_baseline.json", no_examples, "a file", usage=False, damage=with_examples()),
        Bad("empty", no_examples, "an empty directory", usage=False,
            damage=with_examples(lambda course: (course / "empty").mkdir())),
        Bad("bad", no_step, "results that are not JSON", usage=False, damage=result_in_bad("garbage")),
        Bad("bad", no_step, "a truncated result", usage=False, damage=result_in_bad(truncated)),
        Bad("bad", no_step, "results of the wrong kind (a JSON list)", usage=False, damage=result_in_bad("[1, 2]")),
        Bad("", "an empty path", "empty"),
    ]

    def examples_and(make=lambda course: None):
        """The committed examples are there to report (a step's result), and `make` adds what --compare names."""
        def add(course):
            (course / "results/h100-torch").mkdir(parents=True)
            shutil.copy(course / "reports/1_baseline.json", course / "results/h100-torch")
            make(course)
        return with_examples(add)

    def garbage_result(course):
        (course / "bad").mkdir()
        (course / "bad/1_baseline.json").write_text("garbage")
    another_run = "pass --compare the reports directory of another run of the steps"
    not_a_directory, no_result = f"is not a directory: {another_run}", f"holds no timed step result: {another_run}"
    compare = [
        Bad("nowhere", not_a_directory, "missing", usage=False, damage=examples_and()),
        Bad("reports/1_baseline.json", not_a_directory, "a file", usage=False, damage=examples_and()),
        Bad("empty", no_result, "an empty directory", usage=False,
            damage=examples_and(lambda course: (course / "empty").mkdir())),
        Bad("bad", no_result, "results that are not JSON", usage=False, damage=examples_and(garbage_result)),
        Bad("results/h100-torch", f"is the run being reported: {another_run}", "the run being reported",
            usage=False, damage=examples_and()),
        Bad("", "an empty path", "empty"),
    ]
    return Script({"--reports": directory_values("--reports"), "--examples": examples, "--compare": compare},
                  fixed=("--reports", "no-results"))


SCRIPTS = {
    "0_build": build_script(),
    **{stem: step_script(stem) for stem in LADDER if stem not in ("8_multi_context", "9_multi_profiles")},
    "8_multi_context": multi_context_step(),
    "9_multi_profiles": multi_profile_step(),
    "10_batch_size_sweep": sweep_step(),
    "11_dynamic_batching": dynamic_batching_step(),
    "12_gpu_preprocessing": gpu_preprocessing_step(),
    "13_int8": int8_step(),
    "common.report": report_script(),
}


def cases():
    """Every row: each option's bad values, then BACKEND in the environment, then the weights file."""
    rows = []
    for name, script in SCRIPTS.items():
        for option, values in script.options.items():
            fixed = () if option in script.fixed else script.fixed
            rows += [Case(name, (*fixed, f"{option}={bad.value}"),  # --option=value: "-5" is a value, not an option
                          dataclasses.replace(bad, tries=f"{option} {bad.tries}")) for bad in values]
        if "--backend" in script.options:
            rows += [Case(name, (), bad, env=(("BACKEND", value),)) for value, bad in backend_environment_values()]
        if script.engine:
            rows += [Case(name, script.fixed, bad) for bad in weights_states()]
    return rows


CASES = cases()


# ---------------------------------------------------------------------------------------------------
# The rows, run in this process

def make_course_with_int8(directory):
    """conftest's scratch course, with step 13's INT8 engine beside the others (its metadata, and the few bytes
    that stand in for the file, as make_course writes them)."""
    course = make_course(directory)
    weights, target = course / build.WEIGHTS_PATH, course / build.engine_path(INT8_ENGINE, "torch")
    shutil.copyfile(weights, target)
    build.write_metadata(target, "torch", "int8", [(1, 128, 128)], weights, build.ENGINE_DIR / f"{INT8_ENGINE}.onnx",
                         calibration={"batches": 8, "seed": 0, "batch_size": 32, "quantizer": "test"})
    return course


@pytest.fixture
def course(tmp_path):
    return make_course_with_int8(tmp_path / "course")


def entry_point(script):
    """The program name and main() of a script."""
    if script == "common.report":
        from common.report import summary
        return "python -m common.report", summary.main
    return f"{script}.py", steps.load(script).main


def run_in_process(case, course, monkeypatch, capsys):
    """The script's main() under cli.run, as `python <script>.py` runs it, in `course`; returns (status, stderr)."""
    monkeypatch.chdir(course)
    monkeypatch.delenv("BACKEND", raising=False)
    for name, value in case.env:
        monkeypatch.setenv(name, value)
    program, main = entry_point(case.script)
    monkeypatch.setattr(sys, "argv", [program, *case.args])
    with pytest.raises(SystemExit) as stopped:
        cli.run(main)
    message = stopped.value.code
    if isinstance(message, str):  # the interpreter prints it to stderr, and exits with 1
        return 1, capsys.readouterr().err + message + "\n"
    return message, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(case, course, monkeypatch, capsys):
    if case.bad.only_permissions and os.geteuid() == 0:
        pytest.skip("root reads a file whatever its permission bits")
    if case.bad.damage:
        case.bad.damage(course, SCRIPTS[case.script].engine)
    before = snapshot(course)
    status, stderr = run_in_process(case, course, monkeypatch, capsys)
    assert_refused(status, stderr, case.bad.expect, case.bad.usage)
    assert snapshot(course) == before


@pytest.mark.skipif(gpu_reason() is None, reason="with good values, a step runs on a GPU")
@pytest.mark.parametrize("script", [name for name, script in SCRIPTS.items() if script.engine])
def test_good_values_get_as_far_as_the_gpu(script, course, monkeypatch, capsys):
    """The control: with the scratch course's engines and good values, every check passes and only the GPU lacks."""
    case = Case(script, TORCH, Bad(None, "no usable NVIDIA driver", "good values", usage=False))
    before = snapshot(course)
    status, stderr = run_in_process(case, course, monkeypatch, capsys)
    assert_refused(status, stderr, case.bad.expect, case.bad.usage)
    assert snapshot(course) == before


# ---------------------------------------------------------------------------------------------------
# Through the real entry points: the command line, the interpreter's exit, make

ENTRY_POINT_CASES = [
    Case("common.report", ("--reports", "/proc/forbidden"),
         Bad(None, "--reports /proc/forbidden cannot be created", "--reports a directory that cannot be created",
             usage=False)),
    Case("0_build", (*TORCH, "--name", "../../etc/x"),
         Bad(None, "an engine name is a plain file name", "--name a path out of engines/")),
    Case("1_baseline", (), Bad(None, "BACKEND='bogus' in the environment is not a backend",
                               "BACKEND='bogus' in the environment", usage=False), env=(("BACKEND", "bogus"),)),
    Case("4_use_fp16", (*TORCH, "--engine", "engines/resnet18_fp32.torch.pt"),
         Bad(None, "this step needs an fp16 engine", "--engine an engine of the other precision", usage=False)),
    Case("13_int8", (*TORCH, "--engine", "engines/resnet18_fp16.torch.pt"),
         Bad(None, "this step needs an int8 engine", "--engine an engine of another precision", usage=False)),
    Case("0_build", (*TORCH, "--precision", "int8", "--input", "uint8"),
         Bad(None, "--precision int8 takes --input float32 only", "--precision int8 with --input uint8", usage=False)),
    Case("9_multi_profiles", (*TORCH, "--small-batch-size", "0"),
         Bad(None, "must be at least 1", "--small-batch-size zero")),
    Case("10_batch_size_sweep", (*TORCH, "--batch-size", "100000"),
         Bad(None, "is outside the first profile", "--batch-size huge", usage=False)),
    Case("11_dynamic_batching", (*TORCH, "--rates", "1e12"), Bad(None, "requests per run", "--rates huge")),
]


def run_entry_point(case, cwd):
    """`python <script>.py ARGS` (or `python -m common.report ARGS`) in `cwd`, with BACKEND only where the case
    sets it."""
    environment = {key: value for key, value in os.environ.items() if key != "BACKEND"}
    environment.update(case.env)
    if case.script == "common.report":
        command = [sys.executable, "-m", "common.report"]
        environment["PYTHONPATH"] = str(REPO)
    else:
        command = [sys.executable, str(REPO / f"{case.script}.py")]
    return subprocess.run([*command, *case.args], cwd=cwd, text=True, capture_output=True, timeout=300,
                          env=environment)


@pytest.mark.parametrize("case", ENTRY_POINT_CASES, ids=[case.id for case in ENTRY_POINT_CASES])
def test_bad_input_through_the_command_line(case, course):
    before = snapshot(course.parent)  # the parent too: --name ../../etc/x must not write above engines/
    result = run_entry_point(case, course)
    assert_refused(result.returncode, result.stderr, case.bad.expect, case.bad.usage)
    assert result.stdout == ""  # nothing done, nor announced, before the refusal
    assert snapshot(course.parent) == before


@pytest.mark.parametrize("target", ["build", "run-all", "batching", "profile-all"])
def test_make_refuses_a_typo_in_backend_before_any_work(target):
    """`make run-all BACKEND=bogus`: refused in one line before the set-up and the build (PYTHON=false: a command
    that ran would fail with another message)."""
    result = subprocess.run(["make", "--no-print-directory", target, "BACKEND=bogus", "PYTHON=false", "NSYS=true"],
                            cwd=REPO, text=True, capture_output=True, timeout=60)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: ")]
    assert result.returncode != 0
    assert errors == ["error: BACKEND=bogus is not a backend: set BACKEND to auto, tensorrt or torch"], result.stdout
    assert "0_build.py" not in result.stdout + result.stderr


@pytest.mark.parametrize("nsys", ["/nowhere/nsys", "reports"], ids=["missing", "a directory"])
def test_bad_nsys_is_a_note_and_the_report_goes_on(nsys, course, monkeypatch, capsys):
    """--nsys is what exports a step's .nsys-rep: a bad one loses that step's trace figures, with a note saying so,
    not the report."""
    from common.report import summary as report
    monkeypatch.chdir(course)
    (course / "reports/1_baseline.nsys-rep").write_bytes(b"a trace")
    report.main(["--nsys", nsys])
    printed = capsys.readouterr().out
    assert "report: 1_baseline: no trace figures: reports/1_baseline.nsys-rep not read: " in printed, printed
    assert (course / "reports/summary.md").exists()

"""The options every step shares, the checks of their values, and the entry point that turns a CourseError
into one line."""
import argparse
import math
import os
import sys
from pathlib import Path

from common.errors import CourseError

BACKENDS = ("auto", "tensorrt", "torch")
MAX_REPEATS = 1000  # timed windows
MAX_BATCHES = 100_000  # the batches are made in host memory before the run; far more than a lesson needs
MAX_SEED = 2**32 - 1  # numpy and torch both take seeds this large; larger ones fail in one or the other


def parser(docstring):
    """The shared options; a step may add its own before parsing."""
    summary = docstring.strip().splitlines()[0]
    arguments = argparse.ArgumentParser(description=summary)
    add_backend_option(arguments)
    arguments.add_argument("--engine", type=non_empty_path,
                           help="engine file (default: the step's engine under engines/)")
    arguments.add_argument("--batches", type=whole_number(4, MAX_BATCHES), default=10,
                           help="batches in a timed window (default 10; at least 4: the source tutorial times the last 3)")
    arguments.add_argument("--repeats", type=whole_number(1, MAX_REPEATS), default=5,
                           help="timed windows of --batches batches, run back to back after the warm-up; the "
                                "figure is their median (default 5)")
    arguments.add_argument("--batch-size", type=whole_number(1), default=128, help="images per batch (default 128)")
    add_seed_option(arguments, "the synthetic images")
    arguments.add_argument("--reports", type=non_empty_path, default="reports",
                           help="where the JSON result goes (default reports/)")
    return arguments


def add_backend_option(arguments):
    """--backend, whose default is $BACKEND (what `make ... BACKEND=...` sets).

    argparse checks a value given on the command line against the choices, never the default: a typo in
    BACKEND would silently run as if it were a valid backend, so the environment's value is checked here.
    """
    default = os.environ.get("BACKEND", "auto")
    if default not in BACKENDS:
        raise CourseError(f"BACKEND={default!r} in the environment is not a backend: set BACKEND to one of "
                          f"{', '.join(BACKENDS)}, or unset it")
    arguments.add_argument("--backend", choices=BACKENDS, default=default,
                           help="tensorrt, the PyTorch stand-in (torch), or auto: TensorRT if installed (default: "
                                "$BACKEND or auto)")


def add_seed_option(arguments, what):
    arguments.add_argument("--seed", type=whole_number(0, MAX_SEED), default=0, help=f"seed of {what} (default 0)")


def whole_number(minimum, maximum=None):
    """An argparse type: an int from `minimum` to `maximum` (None: no limit), with a one-line error otherwise."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {value}")
        return value
    return parse


def number(low, high=None, low_allowed=False):
    """An argparse type: a float above `low` (or equal to it, where allowed) and below `high` (None: no limit)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = value < low or (value == low and not low_allowed)
        if not math.isfinite(value) or too_low or (high is not None and value >= high):
            bounds = f"at least {low:g}" if low_allowed else f"above {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds}" + (f" and below {high:g}" if high else "")
                                             + f", not {text}")
        return value
    return parse


def non_empty_path(text):
    """An argparse type: a path. An empty one is refused: Path("") is the current directory, a silent default."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path: name a file or a directory")
    return Path(text)


def check_writable_directory(path, label):
    """Raise a CourseError unless `path` is a directory this process can write to, or can create.

    Called before any work, so that a run does not end, after the work, unable to save it. A directory that
    does not exist yet is created and removed again: only trying tells whether it can be (a directory
    under /proc, say, cannot be created even where the permission bits allow it).
    """
    path = Path(path)
    advice = f"pass {label} a directory you can write to"
    if path.exists():
        if not path.is_dir():
            raise CourseError(f"{label} {path} is not a directory: {advice}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise CourseError(f"{label} {path} is not writable: {advice}")
        return
    missing = [path, *(parent for parent in path.parents if not parent.exists())]  # deepest first
    try:
        path.mkdir(parents=True)
    except OSError as error:
        raise CourseError(f"{label} {path} cannot be created ({error.strerror}): {advice}") from None
    finally:  # leave no trace of the check, nor of a creation that failed half-way
        for directory in missing:
            if directory.is_dir():
                directory.rmdir()


def run(main):
    """Run a step's main(); a CourseError or an interrupt ends it with one line and a non-zero status."""
    try:
        main()
    except CourseError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted")

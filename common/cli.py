"""The options every step shares, and the entry point that turns a CourseError into one line."""
import argparse
import math
import os
import sys

from common.errors import CourseError


def parser(docstring):
    """The shared options; a step may add its own before parsing."""
    summary = docstring.strip().splitlines()[0]
    arguments = argparse.ArgumentParser(description=summary)
    arguments.add_argument("--backend", choices=["auto", "tensorrt", "torch"], default=os.environ.get("BACKEND", "auto"),
                           help="tensorrt, the PyTorch stand-in (torch), or auto: TensorRT if installed (default: "
                                "$BACKEND or auto)")
    arguments.add_argument("--engine", help="engine file (default: the step's engine under engines/)")
    arguments.add_argument("--batches", type=whole_number(4), default=10,
                           help="batches in a timed window (default 10; at least 4: the source tutorial times the last 3)")
    arguments.add_argument("--repeats", type=whole_number(1), default=5,
                           help="timed windows of --batches batches, run back to back after the warm-up; the "
                                "figure is their median (default 5)")
    arguments.add_argument("--batch-size", type=whole_number(1), default=128, help="images per batch (default 128)")
    arguments.add_argument("--seed", type=int, default=0, help="seed of the synthetic images (default 0)")
    arguments.add_argument("--reports", default="reports", help="where the JSON result goes (default reports/)")
    return arguments


def whole_number(minimum):
    """An argparse type: an int of at least `minimum`, with a one-line error otherwise."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
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


def run(main):
    """Run a step's main(); a CourseError or an interrupt ends it with one line and a non-zero status."""
    try:
        main()
    except CourseError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted")

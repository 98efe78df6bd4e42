"""Named, coloured NVTX ranges for the phases of a batch, so timelines line up across steps.

Phases are push/pop ranges on the thread that does the work. The timed window ("last 3 batches") and
the per-batch ranges are start/end ranges, which may open on one thread and close on another.
"""
import nvtx as _nvtx

_COLORS = {
    "alloc": "red", "h2d": "green", "infer": "blue", "d2h": "purple", "free": "orange",
    "output": "yellow", "sync": "grey", "warm-up": "white", "capture": "cyan",
}


def phase(name):
    """A context manager: `with nvtx.phase("h2d"): ...`."""
    return _nvtx.annotate(name, color=_COLORS.get(name, "white"))


def start(message, color="darkgreen"):
    return _nvtx.start_range(message, color=color)


def end(range_id):
    _nvtx.end_range(range_id)

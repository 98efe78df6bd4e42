"""Named, coloured NVTX ranges for the phases of a batch, so timelines line up across steps.

Phases are push/pop ranges on the thread that does the work. The timed run ("all batches") and the source
tutorial's window ("last 3 batches") are start/end ranges, which may open on one thread and close on another.
Colours are given as RGB numbers, not names: the nvtx package turns a name it does not know (such as
"grey") into a number by importing matplotlib the first time that range opens, which under nsys took
150 to 500 ms and, in step 5, landed in the first timed batch.
"""
import nvtx as _nvtx

_COLORS = {
    "alloc": 0xFF0000, "h2d": 0x008000, "infer": 0x0000FF, "d2h": 0x800080, "free": 0xFFA500,
    "output": 0xFFFF00, "sync": 0x808080, "warm-up": 0xFFFFFF, "capture": 0x00FFFF,
}
_RANGE_COLOR = 0x006400  # dark green
_OTHER_PHASE_COLOR = 0xFFFFFF


def phase(name):
    """A context manager: `with nvtx.phase("h2d"): ...`."""
    return _nvtx.annotate(name, color=_COLORS.get(name, _OTHER_PHASE_COLOR))


def start(message, color=_RANGE_COLOR):
    return _nvtx.start_range(message, color=color)


def end(range_id):
    _nvtx.end_range(range_id)

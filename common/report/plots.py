"""The report's pictures: the ladder chart and the step timelines (steps 10 and 11 draw theirs with common/plots.py)."""
import dataclasses

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works on CI machines
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
from matplotlib.patches import Patch  # noqa: E402

from common.report.intervals import clip  # noqa: E402
from common.report.nsys_trace import (API_KINDS, COPY_OPS, MIB, RUN_RANGE, WINDOW_RANGE, api_kind,  # noqa: E402
                                      process_of)

# Timeline colours: GPU work in strong colours, the NVTX phase doing it in a light tint of the same hue
# (the hues of common/nvtx.py, so the picture matches what the Nsight Systems GUI shows).
GPU_COLORS = {"kernel": "#1f5fbf", "H2D": "#2e9e44", "D2H": "#8e44ad", "D2D": "#b8860b",
              "other copy": "#7f7f7f", "memset": "#c0392b"}
PHASE_COLORS = {"infer": "#aec7e8", "h2d": "#a8dcb0", "d2h": "#d7bde2", "alloc": "#f5b7b1",
                "free": "#f8c471", "output": "#f7dc6f", "sync": "#d5d8dc", "warm-up": "#eeeeee",
                "capture": "#a3e4d7"}
OTHER_RANGE_COLOR = "#e5e5e5"
# The CUDA API row of each host thread, by nsys_trace.api_kind: a launch in its kernel's blue, the rarer kinds
# in colours of their own; drawn in this order, so the kinds after "other" lie on top where calls nest.
API_COLORS = {"other": "#c8ccd0", "synchronization": "#2c3e50", "copy": "#16a085", "kernel launch": "#1f5fbf",
              "graph launch": "#e67e22"}
API_ROW_LABEL = "CUDA API calls"
# The course's NVTX phases in a batch's order: a thread's label lists those it runs in the window.
PHASE_ORDER = ("alloc", "h2d", "infer", "d2h", "sync", "output", "free")
MIN_BAR_PX = 1.2  # a call or an operation shorter than this is widened to it, so that each one shows
# GPU memory: what a step holds (weights, activations, buffers, stacked) and the device memory in use.
MEMORY_COLORS = {"weights": "#1f5fbf", "activations": "#6baed6", "buffers": "#2e9e44"}
IN_USE_COLOR = "#d9730d"
MEMORY_LANE_INCHES = 1.1  # the timeline's panel of device memory in use

# ---------------------------------------------------------------------------------------------------
# The ladder chart


@dataclasses.dataclass(frozen=True)
class LadderBar:
    label: str
    ms: float  # the step's figure: median ms per batch
    fastest_ms: float  # its windows' range
    slowest_ms: float
    note: str  # beside the bar: the speedup, "within noise"
    floor_ms: float | None = None  # the step's own floor (its own engine: fp32 or FP16); None: not drawn
    apart: bool = False  # another workload (step 9): below a divider, not a rung


@dataclasses.dataclass(frozen=True)
class MemoryBar:
    """A step's GPU memory (MiB): what it holds, stacked, and the device memory in use at its peak (None: not
    measured)."""
    weights_mib: float
    activations_mib: float  # all its execution contexts together
    buffers_mib: float
    peak_in_use_mib: float


FLOOR_COLOR = "#c0392b"
APART_GAP = 0.6  # rows of space between the rungs and the bars drawn apart from them


def ladder_rows(bars):
    """Each bar's row on the chart: the rungs one after the other, the bars apart below a gap."""
    rows, row = [], 0.0
    for index, bar in enumerate(bars):
        if bar.apart and (index == 0 or not bars[index - 1].apart):
            row += APART_GAP
        rows.append(row)
        row += 1
    return rows


def plot_ladder(path, bars, xlabel, title, memory=None):
    """Horizontal bars (step names stay readable) of ms per batch, each with its windows' range as an error bar,
    its own floor as a dashed mark across it with its distance from it, and its note beside it. Bars `apart`
    (another workload) come last, below a divider, without a floor. With `memory` (a MemoryBar or None per bar),
    a panel to the right shows each step's GPU memory on the same rows."""
    height = 1.5 + 0.55 * (len(bars) + APART_GAP)
    if memory:
        figure, (axes, memory_axes) = plt.subplots(1, 2, figsize=(18, height), layout="constrained", sharey=True,
                                                   width_ratios=(2.2, 1))
    else:
        figure, axes = plt.subplots(figsize=(12, height), layout="constrained")
    rows = ladder_rows(bars)
    errors = [[bar.ms - bar.fastest_ms for bar in bars], [bar.slowest_ms - bar.ms for bar in bars]]
    colors = ["#9e9e9e" if bar.apart else "#1f5fbf" for bar in bars]  # another workload in grey
    axes.barh(rows, [bar.ms for bar in bars], xerr=errors, color=colors,
              error_kw={"ecolor": "black", "capsize": 3, "linewidth": 1})
    for row, bar in zip(rows, bars):
        distance = ""
        if bar.floor_ms:
            axes.vlines(bar.floor_ms, row - 0.45, row + 0.45, colors=FLOOR_COLOR, linestyles="--", linewidth=1.4,
                        zorder=3)  # over the bar it measures
            distance = f", {bar.ms / bar.floor_ms:.2f}× its floor ({bar.floor_ms:.2f})"
        label = f"  {bar.ms:.2f} ms{distance}" + (f", {bar.note}" if bar.note else "")
        axes.text(max(bar.slowest_ms, bar.ms), row, label, va="center", fontsize=9)
    apart = [row for row, bar in zip(rows, bars) if bar.apart]
    if apart and len(apart) < len(bars):
        axes.axhline(apart[0] - 0.5 - APART_GAP / 2, color="#555555", linewidth=0.8, linestyle=":")
    if any(bar.floor_ms for bar in bars):
        axes.plot([], [], color=FLOOR_COLOR, linestyle="--", label="its floor: max(H2D, inference) per batch on one "
                                                                   "stream, on the step's own engine")
        axes.legend(loc="lower right", fontsize=9)
    axes.set_yticks(rows, [bar.label for bar in bars])
    axes.set_ylim(rows[-1] + 0.7, -0.7)  # step 1 on top, as the course reads
    axes.set_xlim(0, max(bar.slowest_ms for bar in bars) * 1.9)  # room for the labels right of the longest bar
    axes.set_xlabel(xlabel)
    axes.set_ylabel("step")
    axes.grid(axis="x", alpha=0.3)
    if memory:
        draw_memory_panel(memory_axes, memory, rows)
        figure.suptitle(title, fontsize=11)  # over both panels
    else:
        axes.set_title(title, fontsize=11)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def draw_memory_panel(axes, memory, rows=None):
    """Per step (on the ladder's `rows`): weights, activations and buffers stacked above, the peak of device memory
    in use below; "not recorded" where the step's result has no memory figures."""
    rows = list(range(len(memory))) if rows is None else rows
    parts = {"weights": [], "activations": [], "buffers": []}
    for bar in memory:
        for name in parts:
            parts[name].append(getattr(bar, f"{name}_mib") if bar else 0)
    left = [0] * len(memory)
    for name, widths in parts.items():
        axes.barh([row - 0.2 for row in rows], widths, height=0.38, left=left,
                  color=MEMORY_COLORS[name], label=f"{name} (the step's own)")
        left = [start + width for start, width in zip(left, widths)]
    peaks = [bar.peak_in_use_mib if bar and bar.peak_in_use_mib is not None else 0 for bar in memory]
    axes.barh([row + 0.2 for row in rows], peaks, height=0.38, color=IN_USE_COLOR,
              label="device memory in use at its peak")
    for index, (row, bar) in enumerate(zip(rows, memory)):
        if bar is None:
            axes.text(0, row, "  not recorded", va="center", fontsize=8, color="#555555")
            continue
        axes.text(left[index], row - 0.2, f" {left[index]:.0f}", va="center", fontsize=8)
        axes.text(peaks[index], row + 0.2, f" {peaks[index]:.0f}" if bar.peak_in_use_mib is not None
                  else "  peak not measured", va="center", fontsize=8)
    axes.set_xlim(0, max(left + peaks) * 1.3 or 1)  # room for the figures right of the bars
    axes.set_xlabel("GPU memory (MiB)")
    axes.set_title("GPU memory of each step", fontsize=10)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8, frameon=False)
    axes.grid(axis="x", alpha=0.3)


def plot_timeline(path, trace, title):
    """The window as lanes: one per CUDA stream (its kernels and copies; a stream with work elsewhere in the run
    and none in the window keeps an empty lane), then per host thread that drives the GPU (NVTX ranges or CUDA
    API calls in the window) a row of its CUDA API calls coloured by kind and its NVTX ranges (nested ranges on
    rows below their parent); time in ms from the start of the window. The title's second line says which
    window it is (Trace.window_label). Where the trace records device memory, a thin panel below shows the
    memory in use."""
    stream_lanes = stream_lanes_of(trace)
    thread_lanes = thread_lanes_of(trace)
    rows = len(stream_lanes) + sum(1 + len(lane_rows) for _, _, lane_rows in thread_lanes)
    lanes_height = 2.1 + 0.42 * rows
    if trace.memory:
        figure, (axes, memory_axes) = plt.subplots(2, 1, figsize=(14, lanes_height + MEMORY_LANE_INCHES),
                                                   layout="constrained", sharex=True,
                                                   height_ratios=(lanes_height - 0.9, MEMORY_LANE_INCHES))
    else:
        figure, axes = plt.subplots(figsize=(14, lanes_height), layout="constrained")
    window_ms = (trace.window[1] - trace.window[0]) / 1e6
    axes.set_xlim(0, window_ms)
    pixels_per_ms = figure.get_figwidth() * 0.8 * figure.dpi / window_ms  # about 80% of the width is the plot
    min_ms = MIN_BAR_PX / pixels_per_ms

    ticks, tick_labels, y = [], [], 0
    for stream, ops in stream_lanes:
        for kind in GPU_COLORS:
            spans = [widened(to_ms(clip(op, trace.window), trace.window), min_ms) for op in ops if op.kind == kind]
            axes.broken_barh(spans, (y + 0.15, 0.7), color=GPU_COLORS[kind], linewidth=0)
        if not ops:
            axes.text(window_ms / 100, y + 0.5, "no work in this window (this stream has work elsewhere in the run)",
                      va="center", fontsize=8, color="#555555")
        ticks.append(y + 0.5)
        tick_labels.append(stream_label(stream, trace))
        y += 1
    for thread, calls, lane_rows in thread_lanes:
        axes.axhline(y, color="black", linewidth=0.6)
        draw_api_row(axes, calls, trace.window, y, min_ms)
        ticks.append(y + 0.5)
        tick_labels.append(API_ROW_LABEL if lane_rows else f"{thread_label(thread, trace)}\n{API_ROW_LABEL}")
        axes.axhline(y + 1, color="#bbbbbb", linewidth=0.4)
        for depth, ranges in enumerate(lane_rows, start=1):
            for nvtx_range in ranges:
                draw_range(axes, nvtx_range, trace.window, y + depth, pixels_per_ms)
        if lane_rows:
            ticks.append(y + 1 + len(lane_rows) / 2)
            tick_labels.append(thread_label(thread, trace))
        y += 1 + len(lane_rows)

    axes.set_ylim(y, 0)  # lanes top to bottom: GPU streams first
    axes.set_yticks(ticks, tick_labels, fontsize=8)
    if trace.memory:
        draw_memory_lane(memory_axes, trace.memory, trace.window)
    bottom = memory_axes if trace.memory else axes
    bottom.set_xlabel(axis_label(trace))
    axes.set_title(f"{title}\nwindow: {trace.window_label}" if trace.window_label else title, fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    axes.tick_params(axis="y", length=0)
    figure.legend(handles=legend_entries(trace, thread_lanes), loc="outside lower center", ncols=7, fontsize=9,
                  frameon=False)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_api_row(axes, calls, window, row, min_ms):
    """A thread's CUDA API calls on one row, coloured by kind (nsys_trace.api_kind); "other" first, so the kinds
    the lesson is about lie on top where calls nest (a runtime call and the driver call inside it)."""
    for kind, color in API_COLORS.items():
        spans = [widened(to_ms(clip(call, window), window), min_ms) for call in calls if api_kind(call.name) == kind]
        axes.broken_barh(spans, (row + 0.2, 0.6), color=color, linewidth=0)


def widened(span, min_ms):
    """(offset, width) in ms, at least min_ms wide: a 5 µs launch in a 10 ms window is under a pixel."""
    return span[0], max(span[1], min_ms)


def axis_label(trace):
    """What the time axis counts from: the window's start, and where that lies in the range it was chosen in."""
    if not trace.axis_range:
        return "time since the window opened (ms)"
    name, start, _ = trace.axis_range
    if start == trace.window[0]:
        return f"time since the start of the NVTX range \"{name}\" (ms)"
    return f"time since the window opened (ms), {(trace.window[0] - start) / 1e6:.1f} ms into the NVTX range \"{name}\""


def draw_memory_lane(axes, memory, window):
    """Device memory in use (MiB) over the window, from the trace: its value as the window opens, then each
    allocation and free inside it."""
    times = [window[0], *(time for time, _ in memory.changes if window[0] < time < window[1]), window[1]]
    in_use = [memory.at(time) / MIB for time in times]
    offsets = [(time - window[0]) / 1e6 for time in times]
    axes.fill_between(offsets, in_use, step="post", color=IN_USE_COLOR, alpha=0.25, linewidth=0)
    axes.step(offsets, in_use, where="post", color=IN_USE_COLOR, linewidth=1.2)
    axes.set_ylim(0, max(in_use) * 1.2 or 1)
    axes.set_ylabel("device memory\nin use (MiB)", fontsize=9)
    axes.set_title("GPU: device memory allocated less freed since the process started (the trace); its peak up to "
                   f"the window's end: {memory.peak_mib():.1f} MiB", fontsize=8, loc="left")
    axes.grid(axis="x", alpha=0.3)


def legend_entries(trace, thread_lanes):
    """A patch per GPU operation kind, CUDA API call kind and NVTX phase in the picture: short ranges carry no
    name."""
    names = {r.name for _, _, rows in thread_lanes for row in rows for r in row}
    api_kinds = {api_kind(call.name) for _, calls, _ in thread_lanes for call in calls}
    entries = [Patch(color=color, label=f"GPU: {kind}") for kind, color in GPU_COLORS.items()
               if any(op.kind == kind for op in trace.gpu_ops)]
    entries += [Patch(color=API_COLORS[kind], label=f"CUDA API: {kind}") for kind in API_KINDS if kind in api_kinds]
    entries += [Patch(facecolor=color, edgecolor="#555555", label=f"host: {name}")
                for name, color in PHASE_COLORS.items() if name in names]
    if names - PHASE_COLORS.keys():
        entries.append(Patch(facecolor=OTHER_RANGE_COLOR, edgecolor="#555555", label="host: other range"))
    return entries


def stream_lanes_of(trace):
    """(stream, its operations in the window) for every stream with work in the window or, for a timeline, in the
    whole run (trace.stream_kinds: a copy stream idle in the window keeps its lane, empty), in id order."""
    streams = sorted({op.stream for op in trace.gpu_ops} | set(trace.stream_kinds))
    return [(stream, [op for op in trace.gpu_ops if op.stream == stream]) for stream in streams]


def thread_lanes_of(trace):
    """(thread, its CUDA API calls, rows of its NVTX ranges) for each host thread that drives the GPU: with NVTX
    ranges or CUDA API calls in the window; the main thread first, then in thread id order (the order the
    threads were started in, so that a context's thread and its output thread sit side by side)."""
    shown = [r for r in trace.ranges if r.name not in (WINDOW_RANGE, RUN_RANGE)]  # they span the whole axis
    threads = sorted({r.thread for r in shown} | {call.thread for call in trace.api_calls},
                     key=lambda t: (not is_main_thread(t), t % 0x1000000, t))
    return [(thread, [call for call in trace.api_calls if call.thread == thread],
             stack_rows([r for r in shown if r.thread == thread])) for thread in threads]


def stack_rows(ranges):
    """Put each range on the first row that is free when it starts: a nested range lands below its parent."""
    rows, row_ends = [], []
    for nvtx_range in sorted(ranges, key=lambda r: (r.start, -r.end)):
        row = next((i for i, end in enumerate(row_ends) if end <= nvtx_range.start), len(rows))
        if row == len(rows):
            rows.append([])
            row_ends.append(0)
        rows[row].append(nvtx_range)
        row_ends[row] = nvtx_range.end
    return rows


def draw_range(axes, nvtx_range, window, row, pixels_per_ms):
    start, end = to_ms(clip(nvtx_range, window), window)
    color = PHASE_COLORS.get(nvtx_range.name, OTHER_RANGE_COLOR)
    axes.broken_barh([(start, end)], (row + 0.1, 0.8), facecolor=color, edgecolor="#555555", linewidth=0.5)
    if end * pixels_per_ms > 7 * len(nvtx_range.name) + 6:  # name it only where the name fits (about 7 px a letter)
        axes.text(start + end / 2, row + 0.5, nvtx_range.name, ha="center", va="center", fontsize=8, clip_on=True)


def to_ms(span, window):
    """(start, end) in ns -> (offset from the window start, width) in ms, as broken_barh wants."""
    return (span[0] - window[0]) / 1e6, (span[1] - span[0]) / 1e6


def is_main_thread(global_tid):
    """A process's main thread has the process's id (globalTid packs both, 24 bits each)."""
    return global_tid % 0x1000000 == process_of(global_tid)


def stream_role(stream, trace):
    """"compute" for a stream that runs kernels, "copy" for one that only copies, from its work in the run (a
    timeline) or in the window; "memset" or "" otherwise."""
    kinds = trace.stream_kinds.get(stream) or {op.kind for op in trace.gpu_ops if op.stream == stream}
    if "kernel" in kinds:
        return "compute"
    if kinds and set(kinds) <= set(COPY_OPS):
        return "copy"
    return "memset" if kinds else ""


def stream_label(stream, trace):
    """'GPU stream 14 (compute)' and, on a second line, the kinds of work it has in the run."""
    role = ", ".join(filter(None, [stream_role(stream, trace), "default" if stream in trace.null_streams else ""]))
    kinds = trace.stream_kinds.get(stream) or sorted({op.kind for op in trace.gpu_ops if op.stream == stream})
    return f"GPU stream {stream}" + (f" ({role})" if role else "") + (f"\n{', '.join(kinds)}" if kinds else "")


def thread_label(thread, trace):
    """'host thread 2992 (worker)' with the name the trace gives it (nsys's ThreadNames: the process's name for
    the main thread; Python's thread names are not the OS's before Python 3.14), and on a second line the
    course's NVTX phases it runs in the window, which say what the thread does."""
    name = trace.thread_names.get(thread, "")
    role = "main" if is_main_thread(thread) else "worker"
    phases = {r.name for r in trace.ranges if r.thread == thread}
    doing = ", ".join(phase for phase in PHASE_ORDER if phase in phases) or "CUDA API calls only"
    return f"host thread {thread % 0x1000000} ({', '.join(filter(None, [name, role]))})\n{doing}"

"""The report's pictures: the ladder chart and the step timelines (steps 10 and 11 draw theirs with common/plots.py)."""
import dataclasses

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works on CI machines
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
from matplotlib import ticker  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from common.plots import plain_log_scale  # noqa: E402
from common.report.intervals import clip  # noqa: E402
from common.report.nsys_trace import MIB, RUN_RANGE, WINDOW_RANGE, process_of  # noqa: E402

# Timeline colours: GPU work in strong colours, the NVTX phase doing it in a light tint of the same hue
# (the hues of common/nvtx.py, so the picture matches what the Nsight Systems GUI shows).
GPU_COLORS = {"kernel": "#1f5fbf", "H2D": "#2e9e44", "D2H": "#8e44ad", "D2D": "#b8860b",
              "other copy": "#7f7f7f", "memset": "#c0392b"}
PHASE_COLORS = {"infer": "#aec7e8", "h2d": "#a8dcb0", "d2h": "#d7bde2", "alloc": "#f5b7b1",
                "free": "#f8c471", "output": "#f7dc6f", "sync": "#d5d8dc", "warm-up": "#eeeeee",
                "capture": "#a3e4d7"}
OTHER_RANGE_COLOR = "#e5e5e5"
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


@dataclasses.dataclass(frozen=True)
class MemoryBar:
    """A step's GPU memory (MiB): what it holds, stacked, and the device memory in use at its peak (None: not
    measured)."""
    weights_mib: float
    activations_mib: float  # all its execution contexts together
    buffers_mib: float
    peak_in_use_mib: float


def plot_ladder(path, bars, floor, xlabel, title, memory=None):
    """Horizontal bars (step names stay readable) of ms per batch, each with its windows' range as an error bar,
    its note beside it, and the floor (ms, label) as a dashed line with each bar's distance from it. With
    `memory` (a MemoryBar or None per bar), a panel to the right shows each step's GPU memory."""
    height = 1.5 + 0.55 * len(bars)
    if memory:
        figure, (axes, memory_axes) = plt.subplots(1, 2, figsize=(18, height), layout="constrained", sharey=True,
                                                   width_ratios=(2.2, 1))
    else:
        figure, axes = plt.subplots(figsize=(12, height), layout="constrained")
    values = [bar.ms for bar in bars]
    errors = [[bar.ms - bar.fastest_ms for bar in bars], [bar.slowest_ms - bar.ms for bar in bars]]
    drawn = axes.barh([bar.label for bar in bars], values, xerr=errors, color="#1f5fbf",
                      error_kw={"ecolor": "black", "capsize": 3, "linewidth": 1})
    axes.invert_yaxis()  # step 1 on top, as the course reads
    for rectangle, bar in zip(drawn, bars):
        distance = f", {bar.ms / floor[0]:.1f}× floor" if floor else ""
        axes.text(max(bar.slowest_ms, bar.ms), rectangle.get_y() + rectangle.get_height() / 2,
                  f"  {bar.ms:.2f} ms{distance}" + (f", {bar.note}" if bar.note else ""), va="center", fontsize=9)
    if floor:
        axes.axvline(floor[0], color="#c0392b", linestyle="--", linewidth=1.2, label=floor[1])
        axes.legend(loc="lower right", fontsize=9)
    axes.set_xlim(0, max(bar.slowest_ms for bar in bars) * 1.9)  # room for the labels right of the longest bar
    axes.set_xlabel(xlabel)
    axes.set_ylabel("step")
    axes.grid(axis="x", alpha=0.3)
    if memory:
        draw_memory_panel(memory_axes, memory)
        figure.suptitle(title, fontsize=11)  # over both panels
    else:
        axes.set_title(title, fontsize=11)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def draw_memory_panel(axes, memory):
    """Per step (rows as the ladder's): weights, activations and buffers stacked above, the peak of device memory
    in use below; "not recorded" where the step's result has no memory figures."""
    parts = {"weights": [], "activations": [], "buffers": []}
    for bar in memory:
        for name in parts:
            parts[name].append(getattr(bar, f"{name}_mib") if bar else 0)
    left = [0] * len(memory)
    for name, widths in parts.items():
        axes.barh([row - 0.2 for row in range(len(memory))], widths, height=0.38, left=left,
                  color=MEMORY_COLORS[name], label=f"{name} (the step's own)")
        left = [start + width for start, width in zip(left, widths)]
    peaks = [bar.peak_in_use_mib if bar and bar.peak_in_use_mib is not None else 0 for bar in memory]
    axes.barh([row + 0.2 for row in range(len(memory))], peaks, height=0.38, color=IN_USE_COLOR,
              label="device memory in use at its peak")
    for row, bar in enumerate(memory):
        if bar is None:
            axes.text(0, row, "  not recorded", va="center", fontsize=8, color="#555555")
            continue
        axes.text(left[row], row - 0.2, f" {left[row]:.0f}", va="center", fontsize=8)
        axes.text(peaks[row], row + 0.2, f" {peaks[row]:.0f}" if bar.peak_in_use_mib is not None
                  else "  peak not measured", va="center", fontsize=8)
    axes.set_xlim(0, max(left + peaks) * 1.3 or 1)  # room for the figures right of the bars
    axes.set_xlabel("GPU memory (MiB)")
    axes.set_title("GPU memory of each step", fontsize=10)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncols=2, fontsize=8, frameon=False)
    axes.grid(axis="x", alpha=0.3)


def plot_timeline(path, trace, title):
    """The window as lanes: one per CUDA stream (its kernels and copies), one per host thread (its NVTX
    ranges, nested ranges on rows below their parent); time in ms from the start of the window. Where the
    trace records device memory, a thin panel below shows the memory in use."""
    stream_lanes = stream_lanes_of(trace)
    thread_lanes = thread_lanes_of(trace)
    rows = len(stream_lanes) + sum(len(lane_rows) for _, lane_rows in thread_lanes)
    lanes_height = 1.9 + 0.42 * rows
    if trace.memory:
        figure, (axes, memory_axes) = plt.subplots(2, 1, figsize=(14, lanes_height + MEMORY_LANE_INCHES),
                                                   layout="constrained", sharex=True,
                                                   height_ratios=(lanes_height - 0.9, MEMORY_LANE_INCHES))
    else:
        figure, axes = plt.subplots(figsize=(14, lanes_height), layout="constrained")
    window_ms = (trace.window[1] - trace.window[0]) / 1e6
    axes.set_xlim(0, window_ms)
    pixels_per_ms = figure.get_figwidth() * 0.8 * figure.dpi / window_ms  # about 80% of the width is the plot

    ticks, tick_labels, y = [], [], 0
    for stream, ops in stream_lanes:
        for kind in GPU_COLORS:
            spans = [to_ms(clip(op, trace.window), trace.window) for op in ops if op.kind == kind]
            axes.broken_barh(spans, (y + 0.15, 0.7), color=GPU_COLORS[kind], linewidth=0)
        ticks.append(y + 0.5)
        tick_labels.append(stream_label(stream, trace))
        y += 1
    for thread, lane_rows in thread_lanes:
        axes.axhline(y, color="black", linewidth=0.6)
        for depth, ranges in enumerate(lane_rows):
            for nvtx_range in ranges:
                draw_range(axes, nvtx_range, trace.window, y + depth, pixels_per_ms)
        ticks.append(y + len(lane_rows) / 2)
        tick_labels.append(thread_label(thread, trace))
        y += len(lane_rows)

    axes.set_ylim(y, 0)  # lanes top to bottom: GPU streams first
    axes.set_yticks(ticks, tick_labels, fontsize=9)
    if trace.memory:
        draw_memory_lane(memory_axes, trace.memory, trace.window)
    bottom = memory_axes if trace.memory else axes
    bottom.set_xlabel(f"time since the start of the NVTX range \"{WINDOW_RANGE}\" (ms)")
    axes.set_title(title, fontsize=11)
    axes.grid(axis="x", alpha=0.3)
    axes.tick_params(axis="y", length=0)
    figure.legend(handles=legend_entries(trace, thread_lanes), loc="outside lower center", ncols=7, fontsize=9,
                  frameon=False)
    figure.savefig(path, dpi=110)
    plt.close(figure)


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
    """A patch per GPU operation kind and per NVTX phase in the picture: short ranges carry no name."""
    names = {r.name for _, rows in thread_lanes for row in rows for r in row}
    entries = [Patch(color=color, label=f"GPU: {kind}") for kind, color in GPU_COLORS.items()
               if any(op.kind == kind for op in trace.gpu_ops)]
    entries += [Patch(facecolor=color, edgecolor="#555555", label=f"host: {name}")
                for name, color in PHASE_COLORS.items() if name in names]
    if names - PHASE_COLORS.keys():
        entries.append(Patch(facecolor=OTHER_RANGE_COLOR, edgecolor="#555555", label="host: other range"))
    return entries


def stream_lanes_of(trace):
    streams = sorted({op.stream for op in trace.gpu_ops})
    return [(stream, [op for op in trace.gpu_ops if op.stream == stream]) for stream in streams]


def thread_lanes_of(trace):
    """(thread, rows) for each thread with NVTX ranges in the window; the main thread first."""
    shown = [r for r in trace.ranges if r.name not in (WINDOW_RANGE, RUN_RANGE)]  # they span the whole axis
    threads = sorted({r.thread for r in shown}, key=lambda t: (not is_main_thread(t), min(
        r.start for r in shown if r.thread == t)))
    return [(thread, stack_rows([r for r in shown if r.thread == thread])) for thread in threads]


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


def stream_label(stream, trace):
    return f"GPU stream {stream}" + (" (default)" if stream in trace.null_streams else "")


def thread_label(thread, trace):
    name = trace.thread_names.get(thread, "")
    role = "main" if is_main_thread(thread) else "worker"
    return f"host thread {thread % 0x1000000}\n({', '.join(filter(None, [name, role]))})"

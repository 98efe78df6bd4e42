"""Every picture the course draws, in one style: the ladder, the step timelines, and the figures of steps 10 and 11."""
import dataclasses

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works on CI machines
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
from matplotlib import ticker  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from common.intervals import clip  # noqa: E402
from common.nsys_trace import MIB, RUN_RANGE, WINDOW_RANGE, process_of  # noqa: E402

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


def plain_log_scale(axes, which):
    """A log scale on the x or y axis, labelled 1, 2, 5, 10, 20, ... rather than in powers of ten."""
    getattr(axes, f"set_{which}scale")("log")
    axis = getattr(axes, f"{which}axis")
    axis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


# ---------------------------------------------------------------------------------------------------
# Timelines


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


# ---------------------------------------------------------------------------------------------------
# Beyond the ladder


def plot_sweep(path, summaries, within, title):
    """Step 10: throughput (with its runs' range), latency and GPU memory against batch size, and latency against
    throughput."""
    figure, ((by_size, latency), (trade, held)) = plt.subplots(2, 2, figsize=(15, 10), layout="constrained")
    colors = {"engine": "#1f5fbf", "pytorch": "#d9730d"}
    all_sizes = sorted({row["batch_size"] for summary in summaries for row in summary["rows"]})
    for summary in summaries:
        color = colors.get(summary["name"], "black")
        rows = [row for row in summary["rows"] if not row["failure"]]
        sizes = [row["batch_size"] for row in rows]
        throughput = [row["images_per_s"] for row in rows]
        latency_ms = [row["latency_ms"] for row in rows]
        label = f"{summary['name']}: {summary['label']}"
        runs = [row["throughput_runs"] or [row["images_per_s"]] for row in rows]
        spread = [[value - min(r) for value, r in zip(throughput, runs)],
                  [max(r) - value for value, r in zip(throughput, runs)]]
        by_size.errorbar(sizes, throughput, yerr=spread, marker="o", color=color, capsize=3, label=label)
        latency.plot(sizes, latency_ms, marker="o", color=color, label=label)
        plot_memory(held, summary, rows, color)
        trade.plot(throughput, latency_ms, marker="o", color=color, label=label)
        for row in rows:
            trade.annotate(str(row["batch_size"]), (row["images_per_s"], row["latency_ms"]), fontsize=8,
                           textcoords="offset points", xytext=(4, -10), color=color)
        for knee in (row for row in rows if row["batch_size"] in summary.get("knee_candidates", [summary["knee"]])):
            named = summary["knee"] is not None  # else: candidates the noise cannot tell apart, hollow stars
            for axes, point in ((by_size, (knee["batch_size"], knee["images_per_s"])),
                                (latency, (knee["batch_size"], knee["latency_ms"])),
                                (trade, (knee["images_per_s"], knee["latency_ms"]))):
                axes.plot(*point, marker="*", markersize=16, color=color if named else "none", markeredgecolor="black",
                          linestyle="none")
                axes.annotate(f"knee: {knee['batch_size']}" if named else f"knee? {knee['batch_size']}", point,
                              textcoords="offset points", xytext=(-12, 2), ha="right", va="bottom", fontsize=9,
                              color=color, fontweight="bold")
        for size in summary["out_of_memory"]:
            for axes in (by_size, latency, held):
                axes.axvline(size, color=color, linestyle=":", linewidth=1)
                axes.annotate("out of memory", (size, 0.5), xycoords=("data", "axes fraction"), rotation=90,
                              fontsize=8, color=color, ha="right", va="center")
    for axes in (by_size, latency, held):
        axes.set_xscale("log", base=2)
        axes.set_xticks(all_sizes, [str(size) for size in all_sizes], fontsize=8)
        axes.set_xlabel("batch size (images)")
    by_size.set_ylabel("throughput (images/s), batches back to back")
    by_size.set_ylim(bottom=0)
    by_size.set_title(f"Throughput (bars: the runs' range): the knee is the smallest batch within {within:.0%} of the "
                      "peak", fontsize=10)
    for axes in (latency, trade):
        plain_log_scale(axes, "y")
    latency.set_ylabel("latency of one batch (ms): H2D + inference + D2H")
    latency.set_title("Latency of a batch run alone", fontsize=10)
    trade.set_xlabel("throughput (images/s)")
    trade.set_ylabel("latency of one batch (ms)")
    trade.set_title("The trade-off (points: batch sizes); lower right is better", fontsize=10)
    held.set_ylabel("GPU memory (MiB)")
    held.set_ylim(bottom=0)
    held.set_title("GPU memory: activations (solid), in use (dashed); star: the largest batch that fits", fontsize=10)
    if held.lines:
        held.legend(fontsize=8, loc="upper left")
    for axes in (by_size, latency, trade, held):
        axes.grid(alpha=0.3)
    figure.legend(*by_size.get_legend_handles_labels(), loc="outside lower center", ncols=len(summaries), fontsize=9,
                  frameon=False)  # below the panels, where it hides no curve
    figure.suptitle(title, fontsize=11)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_memory(axes, summary, rows, color):
    """One sweep's memory against batch size, where its rows recorded it (results from before did not)."""
    sizes = [row["batch_size"] for row in rows if row.get("activations_mib") is not None]
    if not sizes:
        return
    axes.plot(sizes, [row["activations_mib"] for row in rows if row.get("activations_mib") is not None],
              marker="o", color=color, label=f"{summary['name']}: activations")
    in_use = [(row["batch_size"], row["peak_in_use_mib"]) for row in rows if row.get("peak_in_use_mib") is not None]
    if in_use:
        axes.plot(*zip(*in_use), marker=".", linestyle="--", color=color, label=f"{summary['name']}: in use")
    fits = next((row for row in rows if row["batch_size"] == summary.get("largest_that_fits")), None)
    if fits and fits.get("peak_in_use_mib") is not None:
        axes.plot(fits["batch_size"], fits["peak_in_use_mib"], marker="*", markersize=16, color=color,
                  markeredgecolor="black", linestyle="none")
        axes.annotate(f"fits: {fits['batch_size']} ({summary.get('fits_until')})",
                      (fits["batch_size"], fits["peak_in_use_mib"]), textcoords="offset points", xytext=(-12, 4),
                      ha="right", fontsize=9, color=color)


def plot_dynamic_batching(path, runs, title):
    """Step 11: latency (p50 and p99) against the throughput served, a curve per setting, points labelled by rate."""
    figure, panels = plt.subplots(1, 2, figsize=(14, 5.4), layout="constrained", sharey=True)
    settings = list(dict.fromkeys(run["setting"] for run in runs))
    colors = plt.get_cmap("tab10")
    for panel, (key, name) in zip(panels, (("p50_ms", "median (p50)"), ("p99_ms", "p99"))):
        for index, setting in enumerate(settings):
            points = [run for run in runs if run["setting"] == setting]
            served = [run["served_per_s"] for run in points]
            latency = [run[key] for run in points]
            style = "--" if points[0]["max_batch_size"] == 1 else "-"
            panel.plot(served, latency, style, marker="o", color=colors(index), label=setting)
            for run in points:
                panel.annotate(f"{run['offered_per_s']:g}/s", (run["served_per_s"], run[key]), fontsize=7,
                               textcoords="offset points", xytext=(4, 4), color=colors(index))
        for which in "xy":
            plain_log_scale(panel, which)
        panel.margins(x=0.08)  # room for the rate labels of the rightmost points
        panel.set_xlabel("throughput served (requests/s); labels: the offered arrival rate")
        panel.set_ylabel(f"{name} latency (ms)")
        panel.set_title(f"{name} latency, arrival to result", fontsize=10)
        panel.grid(alpha=0.3, which="both")
        panel.yaxis.set_tick_params(labelleft=True)
    panels[0].legend(fontsize=8, loc="upper left")
    figure.suptitle(title, fontsize=11)
    figure.savefig(path, dpi=110)
    plt.close(figure)

"""Turn the steps' results into what a reader looks at: a summary table, the ladder chart, timelines.

    python -m common.report [--reports DIR] [--examples DIR] [--nsys PATH]

Reads DIR/<stem>.json (one per step) and, where the step was profiled, DIR/<stem>.nsys-rep; writes
    DIR/summary.md           one row per step: timings, speedups, output check, and figures from the trace
    DIR/ladder.png           ms per batch of every step, with its speedup over the baseline
    DIR/timeline_<stem>.png  the last three batches of a profiled step: GPU streams and host threads
If DIR holds no step results (a fresh clone, a machine without a GPU), it reports the committed example
results in results/h100-torch/ instead, says so, and still writes to DIR.

How the trace is read
---------------------
A .nsys-rep is exported once with `nsys export --type sqlite` (an up-to-date <stem>.sqlite beside it is
reused) and read with plain SQL. The SQLite export is the documented interface (Nsight Systems
documentation, "SQLite Export Schema Reference"; it is also what `nsys stats` reads), while the .nsys-rep
format is not documented. Tables and columns this module reads:
    NVTX_EVENTS                 start, end, text or textId (-> StringIds), globalTid, domainId, eventType
    StringIds                   id, value
    CUPTI_ACTIVITY_KIND_KERNEL  start, end, streamId
    CUPTI_ACTIVITY_KIND_MEMCPY  start, end, streamId, copyKind (CUPTI's memcpy kinds: 1 host-to-device,
                                2 device-to-host, 8 device-to-device; the export's ENUM_CUDA_MEMCPY_OPER)
    CUPTI_ACTIVITY_KIND_MEMSET  start, end, streamId
    CUPTI_ACTIVITY_KIND_RUNTIME start, end, nameId (-> StringIds: 'cudaLaunchKernel_v7000', 'cuLaunchKernel',
                                'cudaGraphLaunch_v10000', ...); holds runtime and driver API calls
    ThreadNames                 globalTid, nameId;  TARGET_INFO_CUDA_CONTEXT_INFO  nullStreamId
    META_DATA_EXPORT            name, value (the exporting nsys version, shown in the summary)
Checked against Nsight Systems 2025.3.1 on an H100 (its exporter calls itself 2025.3.2.0, schema 3.20.3)
and the layout documented for 2021.5, where NVTX text is inline in `text`; tables are made only when
they have rows (no memsets, say), so a missing table reads as empty.
Timestamps are nanoseconds on one clock for CPU and GPU events; globalTid % 0x1000000 is the thread id.

What the figures mean
---------------------
They cover the NVTX range "all batches" (the whole timed run) and are divided by its number of batches;
traces made before that range existed fall back to "last 3 batches" (the timed window), divided by 3.
An operation counts when it overlaps the range, with its whole duration: the same selection as
`nsys stats --filter-nvtx "all batches" -r cuda_gpu_kern_sum,cuda_gpu_mem_time_sum,cuda_api_sum`, so a
reader can check any figure with nsys itself. Shares of time (GPU idle, copy overlapped with compute) are
measured inside the window. Kernel launches count the API calls that launch one kernel; a CUDA graph
launch starts many kernels with one call and is counted separately.
"""
import argparse
import dataclasses
import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works on CI machines
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
from matplotlib import ticker  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from common import cli  # noqa: E402
from common.errors import CourseError  # noqa: E402

WINDOW_RANGE = "last 3 batches"
BATCHES_IN_WINDOW = 3
# The range around every timed batch: per-batch counts and GPU times are read over it, divided by the
# number of batches. The last-3 window sits at the end of the run, where a pipelined step is draining
# (its last batches were launched before the window opened), so per-batch counts there would mislead.
RUN_RANGE = "all batches"
DEFAULT_REPORTS = Path("reports")
DEFAULT_EXAMPLES = Path("results/h100-torch")

# CUPTI_ActivityMemcpyKind values, as the export stores them in CUPTI_ACTIVITY_KIND_MEMCPY.copyKind.
COPY_KINDS = {1: "H2D", 2: "D2H", 8: "D2D"}
COPY_OPS = ("H2D", "D2H", "D2D", "other copy")

# API calls that launch one kernel (runtime and driver), and those that launch a whole CUDA graph.
# The export names them with a version suffix ('cudaLaunchKernel_v7000'); it is stripped before matching.
KERNEL_LAUNCH_CALLS = {
    "cudaLaunchKernel", "cudaLaunchKernelExC", "cudaLaunchCooperativeKernel",
    "cuLaunchKernel", "cuLaunchKernelEx", "cuLaunchCooperativeKernel",
}
GRAPH_LAUNCH_CALLS = {"cudaGraphLaunch", "cuGraphLaunch"}

# `nsys profile -t cublas,cudnn` records every cuBLAS/cuDNN call as an NVTX range in these domains; they
# describe the library, not the course's phases, so the timelines leave them out.
LIBRARY_NVTX_DOMAINS = ("cuBLAS", "cuDNN")

# Timeline colours: GPU work in strong colours, the NVTX phase doing it in a light tint of the same hue
# (the hues of common/nvtx.py, so the picture matches what the Nsight Systems GUI shows).
GPU_COLORS = {"kernel": "#1f5fbf", "H2D": "#2e9e44", "D2H": "#8e44ad", "D2D": "#b8860b",
              "other copy": "#7f7f7f", "memset": "#c0392b"}
PHASE_COLORS = {"infer": "#aec7e8", "h2d": "#a8dcb0", "d2h": "#d7bde2", "alloc": "#f5b7b1",
                "free": "#f8c471", "output": "#f7dc6f", "sync": "#d5d8dc", "warm-up": "#eeeeee",
                "capture": "#a3e4d7"}
OTHER_RANGE_COLOR = "#e5e5e5"


class TraceUnavailable(Exception):
    """A step's trace could not be read; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class GpuOp:
    kind: str  # "kernel", "memset", or a copy kind from COPY_OPS
    start: int  # ns
    end: int
    stream: int


@dataclasses.dataclass(frozen=True)
class NvtxRange:
    name: str
    start: int  # ns
    end: int
    thread: int  # globalTid of the thread that opened it


@dataclasses.dataclass
class Trace:
    """What the report uses from one trace: everything that overlaps the "last 3 batches" window."""
    window: tuple  # (start, end) in ns
    gpu_ops: list
    ranges: list
    api_calls: list  # (base name such as 'cudaLaunchKernel', globalTid) of the CUDA API calls
    thread_names: dict  # globalTid -> name
    null_streams: set
    nsys_version: str


@dataclasses.dataclass(frozen=True)
class TraceFigures:
    """Per-batch figures of one trace (ms, counts) and shares of the window (%)."""
    h2d_ms: float
    kernel_ms: float
    d2h_ms: float
    gpu_idle_pct: float
    kernel_launches: float
    graph_launches: float
    copy_overlap_pct: float  # None when the window holds no copies


# ---------------------------------------------------------------------------------------------------
# Finding and exporting traces


def sqlite_for(directory, stem, nsys):
    """The SQLite export of DIR/<stem>.nsys-rep: reused if up to date, made with nsys otherwise."""
    report, database = directory / f"{stem}.nsys-rep", directory / f"{stem}.sqlite"
    if database.exists() and (not report.exists() or database.stat().st_mtime >= report.stat().st_mtime):
        return database
    if not report.exists():
        raise TraceUnavailable(f"no {report} (profile the step with `make profile-all` for trace figures)")
    if nsys is None:
        stale = f" ({database.name} is older than it)" if database.exists() else ""
        raise TraceUnavailable(f"{report} not read{stale}: nsys is not on PATH "
                               "(install Nsight Systems, or export the .sqlite where nsys is)")
    command = [nsys, "export", "--type", "sqlite", "--force-overwrite", "true", "--output", str(database), str(report)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TraceUnavailable(f"{report} not read: `{' '.join(command)}` failed ({error})") from None
    if done.returncode != 0 or not database.exists():
        last_line = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise TraceUnavailable(f"{report} not read: nsys export failed: {last_line}")
    return database


# ---------------------------------------------------------------------------------------------------
# Reading a trace


def read_trace(database, range_name=WINDOW_RANGE):
    """Read the last NVTX range of that name in an nsys SQLite export, and what overlaps it."""
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise TraceUnavailable(f"{database} not read: {error}") from None
    try:
        window = find_window(connection, database, range_name)
        return Trace(
            window=window, gpu_ops=read_gpu_ops(connection, window),
            ranges=read_nvtx_ranges(connection, window), api_calls=read_api_calls(connection, window),
            thread_names=read_thread_names(connection), null_streams=read_null_streams(connection),
            nsys_version=read_export_version(connection))
    except sqlite3.Error as error:  # not an nsys export, or a damaged one
        raise TraceUnavailable(f"{database} not read: {error}") from None
    finally:
        connection.close()


def columns(connection, table):
    """The column names of a table; empty when the export has no such table (tables are made lazily)."""
    return {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}


def nvtx_name_sql(connection):
    """SQL for an NVTX event's text: inline in `text`, or a registered string behind `textId`."""
    if "textId" in columns(connection, "NVTX_EVENTS"):
        return "COALESCE(n.text, (SELECT value FROM StringIds WHERE id = n.textId))"
    return "n.text"


def find_window(connection, database, range_name=WINDOW_RANGE):
    """(start, end) in ns of the last NVTX range named range_name."""
    if not columns(connection, "NVTX_EVENTS"):
        raise TraceUnavailable(f"{database} has no NVTX events (profile with `nsys profile -t cuda,nvtx`)")
    row = connection.execute(
        f"SELECT n.start, n.end FROM NVTX_EVENTS AS n WHERE {nvtx_name_sql(connection)} = ? AND n.end > n.start "
        "ORDER BY n.start DESC LIMIT 1", (range_name,)).fetchone()
    if row is None:
        raise TraceUnavailable(f"{database} has no NVTX range {range_name!r} (is it a trace of a course step?)")
    return row


def read_gpu_ops(connection, window):
    """Kernels, copies and memsets that overlap the window, in start order."""
    ops = []
    if columns(connection, "CUPTI_ACTIVITY_KIND_KERNEL"):
        rows = overlapping(connection, "CUPTI_ACTIVITY_KIND_KERNEL", "start, end, streamId", window)
        ops += [GpuOp("kernel", start, end, stream) for start, end, stream in rows]
    if columns(connection, "CUPTI_ACTIVITY_KIND_MEMCPY"):
        rows = overlapping(connection, "CUPTI_ACTIVITY_KIND_MEMCPY", "start, end, streamId, copyKind", window)
        ops += [GpuOp(COPY_KINDS.get(kind, "other copy"), start, end, stream) for start, end, stream, kind in rows]
    if columns(connection, "CUPTI_ACTIVITY_KIND_MEMSET"):
        rows = overlapping(connection, "CUPTI_ACTIVITY_KIND_MEMSET", "start, end, streamId", window)
        ops += [GpuOp("memset", start, end, stream) for start, end, stream in rows]
    return sorted(ops, key=lambda op: op.start)


def overlapping(connection, table, selected, window):
    return connection.execute(f"SELECT {selected} FROM {table} WHERE start < ? AND end > ?", (window[1], window[0]))


def read_nvtx_ranges(connection, window):
    """NVTX ranges (not marks) that overlap the window, minus the cuBLAS/cuDNN call ranges."""
    library_domains = ""
    if "domainId" in columns(connection, "NVTX_EVENTS"):
        marks = ", ".join("?" * len(LIBRARY_NVTX_DOMAINS))
        # A domain's name is the text of its creation event, the only one of its events without an end.
        library_domains = (f"AND COALESCE(n.domainId, 0) NOT IN (SELECT d.domainId FROM NVTX_EVENTS AS d "
                           f"WHERE d.end IS NULL AND d.domainId IS NOT NULL AND d.text IN ({marks}))")
    rows = connection.execute(
        f"SELECT {nvtx_name_sql(connection)}, n.start, n.end, n.globalTid FROM NVTX_EVENTS AS n "
        f"WHERE n.end > n.start AND n.start < ? AND n.end > ? {library_domains} ORDER BY n.start",
        (window[1], window[0], *(LIBRARY_NVTX_DOMAINS if library_domains else ())))
    return [NvtxRange(name or "(unnamed)", start, end, thread) for name, start, end, thread in rows]


def read_api_calls(connection, window):
    """(base name, thread) of the CUDA runtime/driver API calls that overlap the window, on every thread."""
    if not columns(connection, "CUPTI_ACTIVITY_KIND_RUNTIME"):
        return []
    rows = connection.execute(
        "SELECT s.value, r.globalTid FROM CUPTI_ACTIVITY_KIND_RUNTIME AS r JOIN StringIds AS s ON s.id = r.nameId "
        "WHERE r.start < ? AND r.end > ?", (window[1], window[0]))
    return [(api_base_name(name), thread) for name, thread in rows]


def api_base_name(name):
    """'cudaLaunchKernel_v7000' -> 'cudaLaunchKernel' (the export appends the API version)."""
    return re.sub(r"_v\d+$", "", name)


def read_thread_names(connection):
    if not columns(connection, "ThreadNames"):
        return {}
    rows = connection.execute(
        "SELECT t.globalTid, s.value FROM ThreadNames AS t JOIN StringIds AS s ON s.id = t.nameId")
    return dict(rows.fetchall())


def read_null_streams(connection):
    if "nullStreamId" not in columns(connection, "TARGET_INFO_CUDA_CONTEXT_INFO"):
        return set()
    return {row[0] for row in connection.execute("SELECT nullStreamId FROM TARGET_INFO_CUDA_CONTEXT_INFO")}


def read_export_version(connection):
    if not columns(connection, "META_DATA_EXPORT"):
        return "unknown"
    row = connection.execute("SELECT value FROM META_DATA_EXPORT WHERE name = 'EXPORT_PRODUCT_VERSION'").fetchone()
    return row[0] if row else "unknown"


# ---------------------------------------------------------------------------------------------------
# Figures from a trace


def trace_figures(trace, batches=BATCHES_IN_WINDOW):
    """The per-batch figures of the summary table over a trace's range holding `batches` batches."""
    per_batch_ms = lambda ns: ns / 1e6 / batches  # noqa: E731
    durations = {kind: sum(op.end - op.start for op in trace.gpu_ops if op.kind == kind) for kind in GPU_COLORS}
    window_ns = trace.window[1] - trace.window[0]
    busy = union(clip(op, trace.window) for op in trace.gpu_ops)
    copies = union(clip(op, trace.window) for op in trace.gpu_ops if op.kind in COPY_OPS)
    kernels = union(clip(op, trace.window) for op in trace.gpu_ops if op.kind == "kernel")
    copy_ns = total_length(copies)
    return TraceFigures(
        h2d_ms=per_batch_ms(durations["H2D"]), kernel_ms=per_batch_ms(durations["kernel"]),
        d2h_ms=per_batch_ms(durations["D2H"]),
        gpu_idle_pct=100.0 * (1 - total_length(busy) / window_ns),
        kernel_launches=sum(name in KERNEL_LAUNCH_CALLS for name, _ in trace.api_calls) / batches,
        graph_launches=sum(name in GRAPH_LAUNCH_CALLS for name, _ in trace.api_calls) / batches,
        copy_overlap_pct=100.0 * total_length(intersection(copies, kernels)) / copy_ns if copy_ns else None)


def clip(op, window):
    return max(op.start, window[0]), min(op.end, window[1])


def union(intervals):
    """Merge (start, end) intervals into a sorted list of disjoint ones."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [tuple(interval) for interval in merged]


def intersection(a, b):
    """Intersection of two sorted lists of disjoint intervals."""
    result, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            result.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return result


def total_length(intervals):
    return sum(end - start for start, end in intervals)


# ---------------------------------------------------------------------------------------------------
# Step results (the JSONs)


def load_results(directory):
    """The step JSONs in a directory, in step order, and one note per file that could not be used."""
    results, notes = [], []
    for path in sorted(directory.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            notes.append(f"{path}: not read ({error})")
            continue
        if not isinstance(result, dict):
            notes.append(f"{path}: not a step result (expected a JSON object)")
            continue
        result.setdefault("stem", path.stem)
        results.append(result)
    results.sort(key=lambda result: (step_number(result), result["stem"]))
    return results, notes


def step_number(result):
    """The step number: the JSON's "step", else the digits its stem starts with."""
    if isinstance(result.get("step"), int):
        return result["step"]
    digits = re.match(r"\d+", str(result.get("stem", "")))
    return int(digits.group()) if digits else 1_000_000


def is_ladder_step(result):
    """Steps with a timed window; other results (a batch-size sweep, say) are not rungs of the ladder."""
    return isinstance(result.get("last3_ms"), (int, float)) and result["last3_ms"] > 0


def images_per_second(result):
    if isinstance(result.get("images_per_s"), (int, float)):
        return result["images_per_s"]
    batch_size = result.get("batch_size")
    if isinstance(batch_size, int):
        return BATCHES_IN_WINDOW * batch_size / result["last3_ms"] * 1e3
    return None


def speedups(ladder):
    """Speedup of every step over the baseline (step 1) and over the step before it, from throughput.

    Throughput (images/s) rather than ms per batch, so steps with different batch sizes still compare.
    Returns a list of (over_baseline, over_previous); None where there is nothing to compare with.
    """
    baseline = next((images_per_second(r) for r in ladder if step_number(r) == 1), None)
    pairs, previous = [], None
    for result in ladder:
        throughput = images_per_second(result)
        over_baseline = throughput / baseline if throughput and baseline else None
        over_previous = throughput / previous if throughput and previous else None
        pairs.append((over_baseline, over_previous))
        previous = throughput
    return pairs


# ---------------------------------------------------------------------------------------------------
# The summary table


def write_summary(path, ladder, traces, figures, notes, source_line):
    """reports/summary.md: what the runs were, one row per step, then the trace figures and notes."""
    lines = ["# Results of the inference ladder", ""]
    if any(result.get("backend") == "torch" for result in ladder):
        lines += ["> **PyTorch stand-in backend: not TensorRT numbers.** These runs used the course's PyTorch",
                  "> engine behind TensorRT's interface (no TensorRT on that machine). The host-side lessons hold;",
                  "> the kernel times are PyTorch's, not TensorRT's.", ""]
    lines += describe_runs(ladder, source_line)
    lines += ["", "## Timings (host clock, from the step results)", "",
              "| step | what changed | last 3 batches (ms) | ms per batch | images/s | × baseline | × previous "
              "| output check |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for result, (over_baseline, over_previous) in zip(ladder, speedups(ladder)):
        throughput = images_per_second(result)
        lines.append(
            f"| {step_label(result)} | {cell(result.get('lesson', ''))} | {result['last3_ms']:.2f} "
            f"| {result['last3_ms'] / BATCHES_IN_WINDOW:.2f} | {f'{throughput:,.0f}' if throughput else '–'} "
            f"| {times(over_baseline)} | {times(over_previous)} | {cell(check_text(result.get('check')))} |")
    ranges = sorted({range_name for _, range_name in figures.values()}) or [RUN_RANGE]
    lines += ["", f"## From the Nsight Systems traces (per batch, over the NVTX range \"{'/'.join(ranges)}\")", "",
              "H2D, kernel and D2H: summed GPU time of the operations that overlap the range, divided by its "
              "number of batches. GPU idle: share of the range with no kernel, copy or memset running. Launches: "
              "API calls per batch. Overlap: share of the copy time during which a kernel also ran.", "",
              "| step | H2D (ms) | kernels (ms) | D2H (ms) | GPU idle (%) | kernel launches | graph launches "
              "| copy overlapped with compute (%) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for result in ladder:
        lines.append(figures_row(result, figures.get(result["stem"], (None, None))[0]))
    versions = sorted({trace.nsys_version for trace in traces.values()})
    if versions:
        lines += ["", f"Traces exported by Nsight Systems {', '.join(versions)}."]
    if notes:
        lines += ["", "## What could not be read", ""] + [f"- {note}" for note in notes]
    lines += ["", "## Commands", ""]
    lines += [f"- {step_label(r)}: `{r.get('command', 'command unknown')}` ({r.get('date', 'date unknown')})"
              for r in ladder]
    path.write_text("\n".join(lines) + "\n")


def describe_runs(ladder, source_line):
    """The lines above the table: where the numbers come from."""
    def distinct(key):
        values = sorted({str(result[key]) for result in ladder if result.get(key) is not None})
        return "; ".join(values) if values else "unknown"

    dates = sorted({str(result["date"]) for result in ladder if result.get("date")})
    taken = " to ".join(dict.fromkeys([dates[0], dates[-1]])) if dates else "unknown"
    return [f"- Device: {distinct('device')}",
            f"- Backend: {distinct('backend_label')}",
            f"- Workload: {distinct('batches')} batches of {distinct('batch_size')} images; the timed window is "
            f"the time to produce the last {BATCHES_IN_WINDOW} results",
            f"- Taken: {taken} (commands at the end){profiling_note(ladder)}: tracing adds to every CUDA "
            "call's host time, so launch-bound steps look slower than in `make run-all`" if profiling_note(ladder)
            else f"- Taken: {taken} (commands at the end)",
            f"- Source: {source_line}"]


def step_label(result):
    return str(result.get("stem", "?"))


def cell(text):
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def times(factor):
    return f"{factor:.2f}×" if factor else "–"


def check_text(check):
    if not isinstance(check, dict) or "passed" not in check:
        return "not checked"
    verdict = "pass" if check["passed"] else "**FAIL**"
    return f"{verdict}: {check['summary']}" if check.get("summary") else verdict


def figures_row(result, f):
    if f is None:
        return f"| {step_label(result)} | – | – | – | – | – | – | – |"
    overlap = f"{f.copy_overlap_pct:.1f}" if f.copy_overlap_pct is not None else "no copies"
    return (f"| {step_label(result)} | {f.h2d_ms:.3f} | {f.kernel_ms:.3f} | {f.d2h_ms:.3f} | {f.gpu_idle_pct:.1f} "
            f"| {count(f.kernel_launches)} | {count(f.graph_launches)} | {overlap} |")


def count(per_batch):
    return f"{per_batch:.0f}" if per_batch == int(per_batch) else f"{per_batch:.1f}"


# ---------------------------------------------------------------------------------------------------
# The ladder chart


def plot_ladder(path, ladder):
    """Horizontal bars (step names stay readable) of ms per batch, labelled with the speedup in throughput."""
    labels = [f"{step_label(r)}" for r in ladder]
    ms_per_batch = [r["last3_ms"] / BATCHES_IN_WINDOW for r in ladder]
    figure, axes = plt.subplots(figsize=(10, 1.2 + 0.55 * len(ladder)), layout="constrained")
    bars = axes.barh(labels, ms_per_batch, color="#1f5fbf")
    axes.invert_yaxis()  # step 1 on top, as the course reads
    for bar, value, (over_baseline, _) in zip(bars, ms_per_batch, speedups(ladder)):
        label = f"  {value:.2f} ms" + (f", {times(over_baseline)} baseline images/s" if over_baseline else "")
        axes.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=9)
    axes.set_xlim(0, max(ms_per_batch) * 1.45)  # room for the labels right of the longest bar
    axes.set_xlabel(f"time per batch (ms), mean of the last {BATCHES_IN_WINDOW} batches; shorter is faster")
    axes.set_ylabel("step")
    axes.set_title(f"Inference ladder\n{ladder_subtitle(ladder)}", fontsize=11)
    axes.grid(axis="x", alpha=0.3)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def ladder_subtitle(ladder):
    devices = sorted({str(r["device"]) for r in ladder if r.get("device")})
    backends = sorted({str(r["backend_label"]) for r in ladder if r.get("backend_label")})
    sizes = sorted({str(r["batch_size"]) for r in ladder if r.get("batch_size")})
    return f"{', '.join(devices) or 'unknown device'}; {', '.join(backends) or 'unknown backend'}; " \
           f"batches of {', '.join(sizes) or '?'} images{profiling_note(ladder)}"


def profiling_note(ladder):
    """Runs under nsys pay its tracing cost on every CUDA call: say so wherever their times are shown."""
    profiled = [r for r in ladder if r.get("under_nsys")]
    if not profiled:
        return ""
    return "; timed under nsys" if len(profiled) == len(ladder) else f"; {len(profiled)} step(s) timed under nsys"


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
    ranges, nested ranges on rows below their parent); time in ms from the start of the window."""
    stream_lanes = stream_lanes_of(trace)
    thread_lanes = thread_lanes_of(trace)
    rows = len(stream_lanes) + sum(len(lane_rows) for _, lane_rows in thread_lanes)
    figure, axes = plt.subplots(figsize=(14, 1.9 + 0.42 * rows), layout="constrained")
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
    starts = batch_starts(trace)
    for start in starts:
        axes.axvline(start, color="black", linestyle=":", linewidth=0.8)

    axes.set_ylim(y, 0)  # lanes top to bottom: GPU streams first
    axes.set_yticks(ticks, tick_labels, fontsize=9)
    axes.set_xlabel(f"time since the start of the NVTX range \"{WINDOW_RANGE}\" (ms)"
                    + ("; dotted: a batch starts" if starts else ""))
    axes.set_title(title, fontsize=11)
    axes.grid(axis="x", alpha=0.3)
    axes.tick_params(axis="y", length=0)
    figure.legend(handles=legend_entries(trace, thread_lanes), loc="outside lower center", ncols=7, fontsize=9,
                  frameon=False)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def legend_entries(trace, thread_lanes):
    """A patch per GPU operation kind and per NVTX phase in the picture: short ranges carry no name."""
    names = {r.name for _, rows in thread_lanes for row in rows for r in row}
    entries = [Patch(color=color, label=f"GPU: {kind}") for kind, color in GPU_COLORS.items()
               if any(op.kind == kind for op in trace.gpu_ops)]
    entries += [Patch(facecolor=color, edgecolor="#555555", label=f"host: {name}")
                for name, color in PHASE_COLORS.items() if name in names]
    if names - PHASE_COLORS.keys():
        entries.append(Patch(facecolor=OTHER_RANGE_COLOR, edgecolor="#555555", label="host: batch i or other range"))
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


def batch_starts(trace):
    return [(r.start - trace.window[0]) / 1e6 for r in trace.ranges
            if re.fullmatch(r"batch \d+", r.name) and r.start >= trace.window[0]]


def is_main_thread(global_tid):
    """A process's main thread has the process's id (globalTid packs both, 24 bits each)."""
    return global_tid % 0x1000000 == global_tid // 0x1000000 % 0x1000000


def stream_label(stream, trace):
    return f"GPU stream {stream}" + (" (default)" if stream in trace.null_streams else "")


def thread_label(thread, trace):
    name = trace.thread_names.get(thread, "")
    role = "main" if is_main_thread(thread) else "worker"
    return f"host thread {thread % 0x1000000}\n({', '.join(filter(None, [name, role]))})"


# ---------------------------------------------------------------------------------------------------
# The command


def choose_source(reports, examples):
    """The directory whose results are reported, and a line that says where they come from.

    A fresh clone or a machine without a GPU has no results of its own: then the committed examples.
    """
    if any(reports.glob("*.json")):
        return reports, f"{reports}/ (this machine's runs)"
    why = "holds no step results" if reports.is_dir() else "does not exist"
    if not any(examples.glob("*.json")):
        raise CourseError(f"{reports}/ {why} and {examples}/ has no example results: "
                          "run `make run-all` (or `make profile-all`) first")
    print(f"report: {reports}/ {why}; reporting the committed example results in {examples}/ instead")
    return examples, f"{examples}/ (committed example results; {reports}/ {why})"


def build_report(source, output, nsys, source_line):
    """Read every step in `source`, write the summary and pictures to `output`.

    Returns the notes (one line per thing that could not be read) and the number of timelines drawn.
    """
    results, notes = load_results(source)
    ladder = [result for result in results if is_ladder_step(result)]
    notes += [f"{r['stem']}: not a ladder step (kind {r.get('kind', 'unknown')!r}), not in the table"
              for r in results if not is_ladder_step(r)]
    if not ladder:
        raise CourseError(f"no step result in {source}/ has a timed window (\"last3_ms\"): run the steps "
                          "(`make run-all`) first")
    output.mkdir(parents=True, exist_ok=True)
    traces, figures = {}, {}
    for result in ladder:
        try:
            database = sqlite_for(source, result["stem"], nsys)
            traces[result["stem"]] = read_trace(database)
            figures[result["stem"]] = run_figures(database, result, traces[result["stem"]])
        except TraceUnavailable as reason:
            notes.append(f"{result['stem']}: no trace figures: {reason}")
    write_summary(output / "summary.md", ladder, traces, figures, notes, source_line)
    plot_ladder(output / "ladder.png", ladder)
    for result in ladder:
        if result["stem"] in traces:
            title = f"{result['stem']}: {result.get('lesson', '')}"
            plot_timeline(output / f"timeline_{result['stem']}.png", traces[result["stem"]], title)
    return notes, len(traces)


def run_figures(database, result, window_trace):
    """Per-batch figures over the "all batches" range; over the last-3 window for traces made before it existed."""
    try:
        return trace_figures(read_trace(database, RUN_RANGE), result["batches"]), RUN_RANGE
    except TraceUnavailable:
        return trace_figures(window_trace), WINDOW_RANGE


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m common.report",
        description="Summarise the steps' results: reports/summary.md, reports/ladder.png and a timeline picture "
                    "per profiled step.")
    parser.add_argument("--reports", type=cli.non_empty_path, default=DEFAULT_REPORTS,
                        help=f"where the steps wrote <stem>.json and <stem>.nsys-rep; the report is written here "
                             f"too (default: {DEFAULT_REPORTS}/)")
    parser.add_argument("--examples", type=cli.non_empty_path, default=DEFAULT_EXAMPLES,
                        help="committed results to report when the reports directory holds none "
                             f"(default: {DEFAULT_EXAMPLES}/)")
    parser.add_argument("--nsys", help="the nsys executable that exports .nsys-rep files (default: nsys on PATH)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_arguments(argv)
    cli.check_writable_directory(args.reports, "--reports")  # before any work, and before naming a source
    source, source_line = choose_source(args.reports, args.examples)
    try:
        notes, timelines = build_report(source, args.reports, args.nsys or shutil.which("nsys"), source_line)
    except OSError as error:  # what it reads is read with care; this is a write that failed after the check
        raise CourseError(f"could not write the report to {args.reports}/ ({error}): pass --reports a directory "
                          "you can write to") from None
    for note in notes:
        print(f"report: {note}")
    print(f"report: wrote summary.md, ladder.png and {timelines} timeline picture(s) to {args.reports}/")


if __name__ == "__main__":
    cli.run(main)

"""Read an Nsight Systems trace: the SQLite export of a step's .nsys-rep, and the per-batch figures in it.

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
    CUDA_GPU_MEMORY_USAGE_EVENTS  start, globalPid, address, bytes, memKind, memoryOperationType: one row per
                                device memory allocation or free (also deviceId, contextId, pc, name, correlationId
                                and the memory pool columns); made only by `nsys profile --cuda-memory-usage=true`.
                                memKind -> ENUM_CUDA_MEM_KIND (2 CUDA_MEMOPR_MEMORY_KIND_DEVICE "Device": cudaMalloc,
                                cuMemAlloc; 0 pageable, 1 pinned, 4 managed, 5 device static, ...);
                                memoryOperationType -> ENUM_CUDA_DEV_MEM_EVENT_OPER (0 Allocation, 1 Deallocation).
                                Both enum tables are (id, name, label), like ENUM_CUDA_MEMCPY_OPER.
The memory table and its enums are those of the "SQLite Schema Reference" of the Nsight Systems User Guide
(docs.nvidia.com/nsight-systems/UserGuide/index.html#sqlite-schema-reference; the memory kinds are also in the
2021.5 "SQLite Export Schema Reference", docs.nvidia.com/nsight-systems/2021.5/nsys-exporter/exported_data.html,
"CUDA MemoryKind enum"); its columns follow CUPTI's memory activity record (CUpti_ActivityMemory4, one record
per allocation and one per free). Only memKind 2 counts: memory allocated on the device (cudaMalloc,
cuMemAlloc), not __device__ variables (5), pinned host or managed memory.
Checked against Nsight Systems 2025.3.1 on an H100 (its exporter calls itself 2025.3.2.0, schema 3.20.3)
and the layout documented for 2021.5, where NVTX text is inline in `text`; tables are made only when
they have rows (no memsets, say), so a missing table reads as empty. The memory table and its enums were
checked against two exports of Nsight Systems 2025.3.1 on an H200 (tests/fixtures/nsys_memory); the traces in
tests/fixtures/h100-eager/ were trimmed without them.
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

Device memory in use (traces made with --cuda-memory-usage=true) is the running sum of the device memory
allocations less frees of the process that opened the range, from the start of the trace (allocations made
before the range count) to the range's end; its peak is the summary's "peak in use, trace". A free is matched
to the allocation at its address and takes back that allocation's bytes; a free with no recorded allocation
takes nothing back (the sum never goes below zero) and is counted. What the trace sees are the calls into the
CUDA allocator: PyTorch's caching allocator reserves segments with cudaMalloc and keeps them, so for the PyTorch
stand-in the sum is the segments reserved, not the tensors in them; the CUDA context and the driver's own
memory are not in it.

What the timelines draw
-----------------------
read_timeline reads a picture's window: about three batches' time (the length of "all batches" over its
batches, times three) from the middle of "all batches", where the pipeline is full (middle_window), its ends
moved to the nearest batch start (the start of a batch's "infer" phase) within half a batch. A trace without
"all batches", or one that holds no rows from its middle (trimmed to the end of the run before the pictures
needed it), is drawn over "last 3 batches", where a pipeline drains. Trace.window_label says which window it
is, in the picture's title. The picture lists every stream with GPU work anywhere in the run (Trace.stream_kinds)
and every thread with NVTX ranges or CUDA API calls in the window, its API calls by kind (api_kind).
"""
import bisect
import collections
import contextlib
import dataclasses
import re
import sqlite3
import subprocess

from common.report.intervals import clip, intersection, subtract, total_length, union

WINDOW_RANGE = "last 3 batches"
BATCHES_IN_WINDOW = 3
# The range around every timed batch: per-batch counts and GPU times are read over it, divided by the
# number of batches. The last-3 window sits at the end of the run, where a pipelined step is draining
# (its last batches were launched before the window opened), so per-batch counts there would mislead.
RUN_RANGE = "all batches"

# CUPTI_ActivityMemcpyKind values, as the export stores them in CUPTI_ACTIVITY_KIND_MEMCPY.copyKind.
COPY_KINDS = {1: "H2D", 2: "D2H", 8: "D2D"}
COPY_OPS = ("H2D", "D2H", "D2D", "other copy")
GPU_OP_KINDS = ("kernel", *COPY_OPS, "memset")

# API calls that launch one kernel (runtime and driver), and those that launch a whole CUDA graph.
# The export names them with a version suffix ('cudaLaunchKernel_v7000'); it is stripped before matching.
KERNEL_LAUNCH_CALLS = {
    "cudaLaunchKernel", "cudaLaunchKernelExC", "cudaLaunchCooperativeKernel",
    "cuLaunchKernel", "cuLaunchKernelEx", "cuLaunchCooperativeKernel",
}
GRAPH_LAUNCH_CALLS = {"cudaGraphLaunch", "cuGraphLaunch"}
# The timelines' row of CUDA API calls, by kind (api_kind): copies are the cudaMemcpy*/cuMemcpy* calls, the
# synchronous cudaMemcpy too; synchronizations are the calls that make a thread or a stream wait.
API_KINDS = ("kernel launch", "graph launch", "copy", "synchronization", "other")
COPY_CALL_PREFIXES = ("cudaMemcpy", "cuMemcpy")
SYNCHRONIZATION_CALLS = {"cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize",
                         "cudaStreamWaitEvent", "cuStreamSynchronize", "cuEventSynchronize", "cuCtxSynchronize",
                         "cuStreamWaitEvent"}
# Calls that allocate or free device memory (step 2 removes them from the batch loop).
ALLOCATION_CALLS = {"cudaMalloc", "cudaFree", "cuMemAlloc", "cuMemFree"}
# Calls in which the host thread waits for the GPU: not enqueue work, though they sit inside "infer" in steps 1-4.
BLOCKING_CALLS = {"cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize", "cudaMemcpy",
                  "cuStreamSynchronize", "cuEventSynchronize", "cuCtxSynchronize"}
# CUDA_GPU_MEMORY_USAGE_EVENTS: the values of memKind and memoryOperationType that the running sum reads
# (named in the export's ENUM_CUDA_MEM_KIND and ENUM_CUDA_DEV_MEM_EVENT_OPER).
MEMORY_TABLE = "CUDA_GPU_MEMORY_USAGE_EVENTS"
MEMORY_ENUM_TABLES = ("ENUM_CUDA_MEM_KIND", "ENUM_CUDA_DEV_MEM_EVENT_OPER")
DEVICE_MEMORY_KIND = 2  # CUDA_MEMOPR_MEMORY_KIND_DEVICE
ALLOCATION, DEALLOCATION = 0, 1  # CUDA_DEV_MEM_EVENT_OPR_ALLOCATION, CUDA_DEV_MEM_EVENT_OPR_DEALLOCATION
MIB = 1 << 20
# The NVTX phases in which a host thread queues GPU work; "output" is processing results on the host.
ENQUEUE_PHASES = ("h2d", "infer", "d2h")
LIMIT_BUSY_PCT = 70.0  # a resource busy this much of the run holds the critical path
# The timelines: this many batches from the middle of the run, each batch starting where one of its threads
# opens its "infer" phase (every step has exactly one per batch, on the thread that queues the batch).
TIMELINE_BATCHES = 3
BATCH_PHASE = "infer"

# `nsys profile -t cublas,cudnn` records every cuBLAS/cuDNN call as an NVTX range in these domains; they
# describe the library, not the course's phases, so the timelines leave them out.
LIBRARY_NVTX_DOMAINS = ("cuBLAS", "cuDNN")


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


@dataclasses.dataclass(frozen=True)
class ApiCall:
    name: str  # base name, such as 'cudaLaunchKernel'
    thread: int  # globalTid
    start: int  # ns
    end: int


@dataclasses.dataclass(frozen=True)
class MemoryInUse:
    """Device memory in use by a process: a step function from the start of the trace to the end of a range."""
    changes: tuple  # (ns, bytes in use from then on), in time order
    unmatched_frees: int  # frees with no recorded allocation at their address: they took nothing back

    def peak_mib(self):
        return max((in_use for _, in_use in self.changes), default=0) / MIB

    def at(self, time):
        """Bytes in use at `time` (ns): after every change at or before it."""
        index = bisect.bisect_right(self.changes, time, key=lambda change: change[0])
        return self.changes[index - 1][1] if index else 0


@dataclasses.dataclass
class Trace:
    """What the report uses from one trace: everything that overlaps the window it was read over (an NVTX range,
    or for a timeline the window read_timeline chose)."""
    window: tuple  # (start, end) in ns
    gpu_ops: list
    ranges: list
    api_calls: list  # ApiCall of every CUDA runtime/driver API call
    thread_names: dict  # globalTid -> name
    null_streams: set
    nsys_version: str
    memory: MemoryInUse = None  # device memory in use up to the window's end; None where the trace has no record
    # Timelines (read_timeline): which window this is, in words; the NVTX range whose start the time axis counts
    # from, with its (start, end); and every stream with GPU work in the whole run -> the kinds of that work
    # (streams idle in the window still get their lane). Empty for a trace read over a range by read_trace.
    window_label: str = ""
    axis_range: tuple = ()  # (name, start, end)
    stream_kinds: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TraceFigures:
    """Per-batch figures of one trace (ms, counts) and shares (%) of the range it was read over."""
    h2d_ms: float
    kernel_ms: float
    d2h_ms: float
    gpu_idle_pct: float
    kernel_launches: float
    graph_launches: float
    copy_overlap_pct: float  # None when the window holds no copies
    alloc_free_ms: float  # host time in the NVTX phases "alloc" and "free"
    allocation_calls: float  # cudaMalloc and cudaFree calls
    busy_pct: dict  # resource -> share of the range it was busy (see busy_shares)
    limited_by: str  # the resource that holds the critical path, or "synchronization"
    memory_peak_mib: float  # device memory in use at its highest up to the range's end; None: not in the trace


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
    with open_export(database) as connection:
        return read_window(connection, find_window(connection, database, range_name))


@contextlib.contextmanager
def open_export(database):
    """`with open_export(database) as connection:` a read-only connection; SQLite errors (not an nsys export, a
    damaged one) become TraceUnavailable."""
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise TraceUnavailable(f"{database} not read: {error}") from None
    try:
        yield connection
    except sqlite3.Error as error:
        raise TraceUnavailable(f"{database} not read: {error}") from None
    finally:
        connection.close()


def read_window(connection, window, **timeline):
    """What overlaps `window` (start, end) in ns; `timeline`: the Trace fields only a timeline has."""
    return Trace(
        window=tuple(window), gpu_ops=read_gpu_ops(connection, window),
        ranges=read_nvtx_ranges(connection, window), api_calls=read_api_calls(connection, window),
        thread_names=read_thread_names(connection), null_streams=read_null_streams(connection),
        nsys_version=read_export_version(connection), memory=read_memory_in_use(connection, window), **timeline)


def read_timeline(database, batches=None):
    """The trace a timeline picture draws: about TIMELINE_BATCHES batches from the middle of the NVTX range
    "all batches" (middle_window), with `batches` the run's number of batches (the step's batches × repeats;
    None: its "infer" phases are counted). Where the trace has no "all batches", or holds no rows from its
    middle (trimmed to the end of the run), the window is the range "last 3 batches". Its window_label says
    which window it is."""
    with open_export(database) as connection:
        run = find_range(connection, RUN_RANGE)
        if run is not None:
            starts = batch_starts(connection, run)
            batches = batches or len(starts)
            window = middle_window(run, batches, starts) if batches else None
            if window is not None and holds(connection, window):
                return read_window(connection, window, window_label=middle_label(window, run, batches, starts),
                                   axis_range=(RUN_RANGE, *run), stream_kinds=stream_kinds(connection, run))
            why = f"this trace holds no rows from the middle of \"{RUN_RANGE}\""
        else:
            why = f"this trace has no NVTX range \"{RUN_RANGE}\""
        window = find_window(connection, database, WINDOW_RANGE)
        label = f"the NVTX range \"{WINDOW_RANGE}\", the end of the run, where a pipeline drains ({why})"
        return read_window(connection, window, window_label=label, axis_range=(WINDOW_RANGE, *window),
                           stream_kinds=stream_kinds(connection, run or window))


def middle_window(run, batches, starts=(), count=TIMELINE_BATCHES):
    """(start, end) in ns of about `count` batches from the middle of the run range `run` (start, end) of
    `batches` batches: count × the mean batch time (the range's length over `batches`), centred on the range's
    middle; with `starts`, the batches' start times, both ends move to the nearest batch start within half a
    batch time (the window opens and closes on batch boundaries). A run of `count` batches or fewer is drawn
    whole."""
    if batches <= count:
        return tuple(run)
    batch_ns = (run[1] - run[0]) / batches
    start = (run[0] + run[1] - count * batch_ns) / 2
    inside = sorted(time for time in starts if run[0] <= time < run[1])

    def nearest_start(time, after):
        candidates = [anchor for anchor in inside if anchor > after and abs(anchor - time) <= batch_ns / 2]
        return min(candidates, key=lambda anchor: abs(anchor - time), default=round(time))

    start = nearest_start(start, run[0] - 1)
    return start, min(nearest_start(start + count * batch_ns, start), run[1])


def middle_label(window, run, batches, starts):
    """Which window a timeline of middle_window draws, in words (the picture's title says it)."""
    anchored = f", opening as the {ordinal(starts.index(window[0]) + 1)} batch's \"{BATCH_PHASE}\" starts" \
        if window[0] in starts else ""
    return (f"about {TIMELINE_BATCHES} batches' time ({(window[1] - window[0]) / 1e6:.1f} ms) from the middle of "
            f"the NVTX range \"{RUN_RANGE}\" ({batches} batches), the steady state{anchored}")


def ordinal(number):
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def batch_starts(connection, run):
    """When each batch of the run starts: the starts of its BATCH_PHASE ranges inside the run range, in order."""
    if not columns(connection, "NVTX_EVENTS"):
        return []
    rows = connection.execute(
        f"SELECT n.start FROM NVTX_EVENTS AS n WHERE {nvtx_name_sql(connection)} = ? AND n.end > n.start "
        "AND n.start >= ? AND n.start < ? ORDER BY n.start", (BATCH_PHASE, *run))
    return [start for (start,) in rows]


def holds(connection, window):
    """Whether the export holds its rows from before the window to after it: a trimmed export keeps only the rows
    that overlap what it was trimmed to, so its earliest end and latest start bound what it holds. Checked on
    the API calls and the NVTX ranges, which every batch has."""
    for table, where in (("CUPTI_ACTIVITY_KIND_RUNTIME", ""), ("NVTX_EVENTS", "WHERE end IS NOT NULL")):
        if not columns(connection, table):
            continue
        earliest_end, latest_start = connection.execute(f"SELECT MIN(end), MAX(start) FROM {table} {where}").fetchone()
        if earliest_end is not None and not (earliest_end <= window[0] and latest_start >= window[1]):
            return False
    return True


def stream_kinds(connection, span):
    """Every stream with GPU work overlapping `span` -> the kinds of that work, in GPU_OP_KINDS order."""
    kinds = collections.defaultdict(set)
    for op in read_gpu_ops(connection, span):
        kinds[op.stream].add(op.kind)
    return {stream: tuple(kind for kind in GPU_OP_KINDS if kind in found) for stream, found in sorted(kinds.items())}


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
    row = find_range(connection, range_name)
    if row is None:
        raise TraceUnavailable(f"{database} has no NVTX range {range_name!r} (is it a trace of a course step?)")
    return row


def find_range(connection, range_name):
    """(start, end) in ns of the last NVTX range named range_name; None where there is none."""
    if not columns(connection, "NVTX_EVENTS"):
        return None
    return connection.execute(
        f"SELECT n.start, n.end FROM NVTX_EVENTS AS n WHERE {nvtx_name_sql(connection)} = ? AND n.end > n.start "
        "ORDER BY n.start DESC LIMIT 1", (range_name,)).fetchone()


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
    """The CUDA runtime/driver API calls that overlap the window, on every thread."""
    if not columns(connection, "CUPTI_ACTIVITY_KIND_RUNTIME"):
        return []
    rows = connection.execute(
        "SELECT s.value, r.globalTid, r.start, r.end FROM CUPTI_ACTIVITY_KIND_RUNTIME AS r "
        "JOIN StringIds AS s ON s.id = r.nameId WHERE r.start < ? AND r.end > ?", (window[1], window[0]))
    return [ApiCall(api_base_name(name), thread, start, end) for name, thread, start, end in rows]


def api_base_name(name):
    """'cudaLaunchKernel_v7000' -> 'cudaLaunchKernel' (the export appends the API version)."""
    return re.sub(r"_v\d+$", "", name)


def api_kind(name):
    """The kind of a CUDA API call (its base name) in the timelines' API row: one of API_KINDS."""
    if name in KERNEL_LAUNCH_CALLS:
        return "kernel launch"
    if name in GRAPH_LAUNCH_CALLS:
        return "graph launch"
    if name.startswith(COPY_CALL_PREFIXES):
        return "copy"
    if name in SYNCHRONIZATION_CALLS:
        return "synchronization"
    return "other"


def read_memory_in_use(connection, window):
    """Device memory in use by the process that opened the window, from the start of the trace to the window's
    end; None where the export has no memory table (profiled without --cuda-memory-usage=true, or trimmed)."""
    present = columns(connection, MEMORY_TABLE)
    if not present:
        return None
    process = opening_process(connection, window)
    same_process, parameters = "", [DEVICE_MEMORY_KIND, window[1]]
    if process is not None and "globalPid" in present:
        same_process = "AND globalPid / 16777216 % 16777216 = ?"  # globalPid's process id, as process_of reads it
        parameters.append(process)
    rows = connection.execute(
        f"SELECT start, memoryOperationType, address, bytes FROM {MEMORY_TABLE} WHERE memKind = ? AND start <= ? "
        f"{same_process} ORDER BY start, rowid", parameters)
    return memory_in_use(rows)


def opening_process(connection, window):
    """The process id of the thread that opened the window's NVTX range; None where the export does not say."""
    row = connection.execute("SELECT globalTid FROM NVTX_EVENTS WHERE start = ? AND end = ? LIMIT 1",
                             window).fetchone()
    return process_of(row[0]) if row and row[0] is not None else None


def process_of(global_id):
    """The process id in a serialized globalTid or globalPid (24 bits above the thread id's 24)."""
    return global_id // 0x1000000 % 0x1000000


def memory_in_use(events):
    """The running sum of device memory allocated less freed, over (ns, operation, address, bytes) events in
    time order. A free takes back the bytes of the live allocation at its address; one without (its allocation
    was not recorded) takes back nothing and is counted, so the sum never goes below zero."""
    live, in_use, changes, unmatched = {}, 0, [], 0
    for start, operation, address, size in events:
        if operation == ALLOCATION:
            in_use += size - live.get(address, 0)  # an address allocated again: its earlier free was not recorded
            live[address] = size
        elif operation != DEALLOCATION:
            continue  # an operation the export's ENUM_CUDA_DEV_MEM_EVENT_OPER did not have when this was written
        elif address in live:
            in_use -= live.pop(address)
        else:
            unmatched += 1
            continue
        changes.append((start, in_use))
    return MemoryInUse(tuple(changes), unmatched)


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
    durations = {kind: sum(op.end - op.start for op in trace.gpu_ops if op.kind == kind) for kind in GPU_OP_KINDS}
    window_ns = trace.window[1] - trace.window[0]
    busy = union(clip(op, trace.window) for op in trace.gpu_ops)
    copies = union(clip(op, trace.window) for op in trace.gpu_ops if op.kind in COPY_OPS)
    kernels = union(clip(op, trace.window) for op in trace.gpu_ops if op.kind == "kernel")
    copy_ns = total_length(copies)
    calls = collections.Counter(call.name for call in trace.api_calls)
    shares = busy_shares(trace)
    return TraceFigures(
        h2d_ms=per_batch_ms(durations["H2D"]), kernel_ms=per_batch_ms(durations["kernel"]),
        d2h_ms=per_batch_ms(durations["D2H"]),
        gpu_idle_pct=100.0 * (1 - total_length(busy) / window_ns),
        kernel_launches=sum(calls[name] for name in KERNEL_LAUNCH_CALLS) / batches,
        graph_launches=sum(calls[name] for name in GRAPH_LAUNCH_CALLS) / batches,
        copy_overlap_pct=100.0 * total_length(intersection(copies, kernels)) / copy_ns if copy_ns else None,
        alloc_free_ms=per_batch_ms(sum(r.end - r.start for r in trace.ranges if r.name in ("alloc", "free"))),
        allocation_calls=sum(calls[name] for name in ALLOCATION_CALLS) / batches,
        busy_pct=shares, limited_by=limiting_resource(shares),
        memory_peak_mib=trace.memory.peak_mib() if trace.memory else None)


def busy_shares(trace):
    """How much of the range (%) each resource that can limit a step was busy.

    GPU compute and H2D: the union of the kernels' and of the host-to-device copies' spans. Host enqueue: the
    union, over the threads, of their time in the phases that queue GPU work ("h2d", "infer", "d2h") less
    their time blocked in a call that waits for the GPU (a synchronize, a synchronous cudaMemcpy). Host output:
    the union of the "output" phases. (Python threads share one interpreter, so busy host threads are
    counted once, not added up.)
    """
    window = trace.window

    def share(intervals):
        """Of (start, end) intervals already clipped to the window."""
        return 100.0 * total_length(union(intervals)) / (window[1] - window[0])

    enqueue = []
    for thread in {r.thread for r in trace.ranges}:
        phases = union(clip(r, window) for r in trace.ranges if r.thread == thread and r.name in ENQUEUE_PHASES)
        waits = union(clip(c, window) for c in trace.api_calls if c.thread == thread and c.name in BLOCKING_CALLS)
        enqueue += subtract(phases, waits)
    return {
        "GPU compute": share(clip(op, window) for op in trace.gpu_ops if op.kind == "kernel"),
        "H2D": share(clip(op, window) for op in trace.gpu_ops if op.kind == "H2D"),
        "host enqueue": share(enqueue),
        "host output": share(clip(r, window) for r in trace.ranges if r.name == "output"),
    }


def limiting_resource(shares):
    """The busiest resource if it was busy at least LIMIT_BUSY_PCT of the range; else "synchronization": no
    resource is near full, so the time goes to the phases waiting for one another (the host for the GPU,
    the GPU for the host)."""
    resource, busy = max(shares.items(), key=lambda item: item[1])
    return resource if busy >= LIMIT_BUSY_PCT else "synchronization"

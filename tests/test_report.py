"""Tests of the report: common/report/nsys_trace.py (trace figures), common/report/summary.py (the results page
README.md and the short summary.md), common/report/plots.py (ladder, timelines) and tools/trim_nsys_sqlite.py.

The traces are real Nsight Systems SQLite exports made on the lent H100 (nsys 2025.3.1) and trimmed
with tools/trim_nsys_sqlite.py:
- tests/fixtures/h100-eager/<stem>.sqlite and <stem>.json: the course's own steps, from an earlier `make profile-all`
  (eager stand-in, kept as fixtures; tests/fixtures/nsys holds nsys stats' own totals for them);
- tests/fixtures/nsys_probe/<name>.sqlite: a probe that uses the course's NVTX conventions (a baseline, two
  streams with an output thread, a CUDA graph; README.md there), with the CSVs of nsys's own
  `nsys stats --filter-nvtx "last 3 batches"` beside each.
Every figure the report derives is recomputed here another way: SQL that names copy kinds through the
export's own enum table, launches counted through the kernels they started, a sweep over start/end
events for the shares of time, and nsys stats. One small hand-made database in the older documented
layout (NVTX text inline, no memset table) checks the arithmetic against figures worked out by hand; with
CUDA_GPU_MEMORY_USAGE_EVENTS and its enum tables added (`nsys profile --cuda-memory-usage=true`, which the
committed traces were trimmed without), it checks the device memory in use the same way.
"""
import csv
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from common import stats
from common.report import ladder, nsys_trace, plots, reproduce, summary as report
from tools import trim_nsys_sqlite

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE_RESULTS = REPO / "tests" / "fixtures" / "h100-eager"  # real traces whose figures the tests know
COMMITTED_RESULTS = REPO / "results" / "h100-torch"  # what the README links: the report must make those pages
COURSE_FIXTURES = EXAMPLE_RESULTS  # the course's steps, profiled on the H100 with the eager stand-in
COURSE_STATS = FIXTURES / "nsys"  # nsys stats' own totals for them
PROBE_FIXTURES = FIXTURES / "nsys_probe"
PROBE_STEPS = {"baseline": (1, "1_baseline"), "overlap": (5, "5_multi_streams"), "graph": (7, "7_cuda_graph")}
FIXTURE_SIZE_LIMIT = 2_000_000  # bytes: fixtures are committed


def course_trace(pattern):
    """The course fixture matching a stem pattern ('7_*'), or a skip that names the missing file."""
    found = sorted(COURSE_FIXTURES.glob(f"{pattern}.sqlite"))
    if not found:
        pytest.skip(f"missing real fixture {COURSE_FIXTURES.relative_to(REPO)}/{pattern}.sqlite "
                    "(make profile-all on a GPU, then tools/trim_nsys_sqlite.py)")
    return found[0]


def all_real_traces():
    missing = pytest.param(None, marks=pytest.mark.skip(
        reason=f"missing real fixtures {COURSE_FIXTURES.relative_to(REPO)}/<stem>.sqlite"))
    course = sorted(COURSE_FIXTURES.glob("*.sqlite")) or [missing]
    return sorted(PROBE_FIXTURES.glob("*.sqlite")) + course


def fixture_id(path):
    return f"{path.parent.name}/{path.stem}" if path else "course"


# ---------------------------------------------------------------------------------------------------
# Independent computations


def timed_batches(database):
    """Batches in the "all batches" range of a course fixture: its windows times their batches."""
    result = json.loads(database.with_suffix(".json").read_text())
    return result["batches"] * result.get("repeats", 1)


def independent_window(db, name="last 3 batches"):
    """The last range of that name, found by scanning every NVTX event's text in Python."""
    text_id = "textId" in {row[1] for row in db.execute("PRAGMA table_info(NVTX_EVENTS)")}
    strings = dict(db.execute("SELECT id, value FROM StringIds"))
    events = db.execute(f"SELECT start, end, text{', textId' if text_id else ''} FROM NVTX_EVENTS").fetchall()
    windows = [(e[0], e[1]) for e in events if e[1] is not None
               and (e[2] or (strings.get(e[3]) if text_id else None)) == name]
    return max(windows)


def copy_ns(db, window, label):
    """Summed duration of the copies of one kind, named through the export's ENUM_CUDA_MEMCPY_OPER."""
    return db.execute(
        "SELECT COALESCE(SUM(m.end - m.start), 0) FROM CUPTI_ACTIVITY_KIND_MEMCPY AS m "
        "JOIN ENUM_CUDA_MEMCPY_OPER AS o ON o.id = m.copyKind WHERE o.label = ? AND m.start < ? AND m.end > ?",
        (label, window[1], window[0])).fetchone()[0]


def launches_that_started(db, window, graph):
    """API calls in the window that started kernels, counted through the kernels' correlation ids."""
    return db.execute(
        "SELECT COUNT(DISTINCT r.correlationId) FROM CUPTI_ACTIVITY_KIND_RUNTIME AS r "
        "JOIN CUPTI_ACTIVITY_KIND_KERNEL AS k ON k.correlationId = r.correlationId "
        f"WHERE r.start < ? AND r.end > ? AND k.graphNodeId IS {'NOT ' if graph else ''}NULL",
        (window[1], window[0])).fetchone()[0]


def sweep_shares(db, window):
    """(GPU idle %, copy overlapped with compute %) by sweeping start/end events across the window."""
    events = []
    for table, kind in (("CUPTI_ACTIVITY_KIND_KERNEL", "kernel"), ("CUPTI_ACTIVITY_KIND_MEMCPY", "copy"),
                        ("CUPTI_ACTIVITY_KIND_MEMSET", "memset")):
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            for start, end in db.execute(f"SELECT start, end FROM {table}"):
                start, end = max(start, window[0]), min(end, window[1])
                if start < end:
                    events += [(start, 1, kind), (end, -1, kind)]
    active = {"kernel": 0, "copy": 0, "memset": 0}
    busy = copying = overlapped = 0
    previous = window[0]
    for time, change, kind in sorted(events):
        span = time - previous
        busy += span if any(active.values()) else 0
        copying += span if active["copy"] else 0
        overlapped += span if active["copy"] and active["kernel"] else 0
        active[kind] += change
        previous = time
    idle_pct = 100 * (1 - busy / (window[1] - window[0]))
    return idle_pct, (100 * overlapped / copying if copying else None)


# ---------------------------------------------------------------------------------------------------
# The report's figures on real traces


@pytest.mark.parametrize("database", all_real_traces(), ids=fixture_id)
def test_trace_figures_match_independent_computation(database):
    trace = nsys_trace.read_trace(database)
    figures = nsys_trace.trace_figures(trace)
    db = sqlite3.connect(database)
    window = independent_window(db)
    assert trace.window == window
    kernel_ns = db.execute("SELECT SUM(end - start) FROM CUPTI_ACTIVITY_KIND_KERNEL WHERE start < ? AND end > ?",
                           (window[1], window[0])).fetchone()[0]
    idle_pct, overlap_pct = sweep_shares(db, window)

    assert figures.h2d_ms == pytest.approx(copy_ns(db, window, "Host-to-Device") / 3e6, rel=1e-12)
    assert figures.d2h_ms == pytest.approx(copy_ns(db, window, "Device-to-Host") / 3e6, rel=1e-12)
    assert figures.kernel_ms == pytest.approx(kernel_ns / 3e6, rel=1e-12)
    assert figures.kernel_launches == launches_that_started(db, window, graph=False) / 3
    assert figures.graph_launches == launches_that_started(db, window, graph=True) / 3
    assert figures.gpu_idle_pct == pytest.approx(idle_pct, abs=1e-9)
    assert figures.copy_overlap_pct == pytest.approx(overlap_pct, abs=1e-9)


@pytest.mark.parametrize("database", sorted(COURSE_FIXTURES.glob("*.sqlite")), ids=fixture_id)
def test_run_range_figures_match_independent_computation(database):
    """The summary's figures: over the "all batches" range, divided by the step's batch count."""
    batches = timed_batches(database)
    trace = nsys_trace.read_trace(database, nsys_trace.RUN_RANGE)
    figures = nsys_trace.trace_figures(trace, batches)
    db = sqlite3.connect(database)
    window = independent_window(db, "all batches")
    assert trace.window == window
    kernel_ns = db.execute("SELECT SUM(end - start) FROM CUPTI_ACTIVITY_KIND_KERNEL WHERE start < ? AND end > ?",
                           (window[1], window[0])).fetchone()[0]
    idle_pct, overlap_pct = sweep_shares(db, window)
    assert figures.h2d_ms == pytest.approx(copy_ns(db, window, "Host-to-Device") / batches / 1e6, rel=1e-12)
    assert figures.kernel_ms == pytest.approx(kernel_ns / batches / 1e6, rel=1e-12)
    assert figures.kernel_launches == launches_that_started(db, window, graph=False) / batches
    assert figures.graph_launches == launches_that_started(db, window, graph=True) / batches
    assert figures.gpu_idle_pct == pytest.approx(idle_pct, abs=1e-9)
    assert figures.copy_overlap_pct == pytest.approx(overlap_pct, abs=1e-9)


def nsys_stats(database, report_name):
    directory = COURSE_STATS if database.parent == COURSE_FIXTURES else database.parent
    path = directory / f"{database.stem}.{report_name}.csv"
    if not path.exists():
        pytest.skip(f"missing {path.relative_to(REPO)} (nsys stats -r {report_name} --filter-nvtx 'last 3 batches')")
    return list(csv.DictReader(path.open()))


@pytest.mark.parametrize("database", all_real_traces(), ids=fixture_id)
def test_trace_figures_match_nsys_stats(database):
    """nsys's own reports, filtered to the same NVTX range, give the same totals."""
    trace = nsys_trace.read_trace(database)
    figures = nsys_trace.trace_figures(trace)
    kernels = nsys_stats(database, "cuda_gpu_kern_sum")
    copies = {row["Operation"]: int(row["Total Time (ns)"]) for row in nsys_stats(database, "cuda_gpu_mem_time_sum")}
    calls = {}
    for row in nsys_stats(database, "cuda_api_sum"):
        name = re.sub(r"_v\d+$", "", row["Name"])
        calls[name] = calls.get(name, 0) + int(row["Num Calls"])
    # When the range is closed on another thread than the one that opened it (steps 8 and 9), nsys 2025.3
    # counts only the API calls of the opening thread; the report counts every thread's. Compare there.
    opener = sqlite3.connect(database).execute(
        "SELECT globalTid FROM NVTX_EVENTS WHERE start = ? AND end = ?", trace.window).fetchone()[0]
    launches = [call.name for call in trace.api_calls if call.thread == opener]

    assert figures.kernel_ms * 3e6 == pytest.approx(sum(int(row["Total Time (ns)"]) for row in kernels), rel=1e-12)
    assert figures.h2d_ms * 3e6 == pytest.approx(copies.get("[CUDA memcpy Host-to-Device]", 0), rel=1e-12)
    assert figures.d2h_ms * 3e6 == pytest.approx(copies.get("[CUDA memcpy Device-to-Host]", 0), rel=1e-12)
    for kind in (nsys_trace.KERNEL_LAUNCH_CALLS, nsys_trace.GRAPH_LAUNCH_CALLS):
        assert sum(name in kind for name in launches) == sum(calls.get(name, 0) for name in kind)


def test_probe_traces_show_what_each_technique_changes():
    figures = {path.stem: nsys_trace.trace_figures(nsys_trace.read_trace(path)) for path in PROBE_FIXTURES.glob("*.sqlite")}
    assert figures["baseline"].kernel_launches > 50 and figures["baseline"].graph_launches == 0
    assert figures["baseline"].copy_overlap_pct == 0  # synchronous copies never meet a kernel
    assert figures["overlap"].copy_overlap_pct > 50  # the copy stream runs under the compute stream
    assert figures["graph"].graph_launches == 1 and figures["graph"].kernel_launches == 0


def course_figures(pattern):
    """Per-batch figures of a course fixture over its "all batches" range, as the summary shows them."""
    database = course_trace(pattern)
    batches = timed_batches(database)
    return nsys_trace.trace_figures(nsys_trace.read_trace(database, nsys_trace.RUN_RANGE), batches)


def test_cuda_graph_step_launches_one_graph_per_batch():
    figures = course_figures("7_*")
    assert figures.graph_launches == 1
    assert figures.kernel_launches < 10  # instead of one launch per kernel


def test_baseline_step_launches_every_kernel_and_overlaps_nothing():
    figures = course_figures("1_*")
    assert figures.kernel_launches > 10 and figures.graph_launches == 0
    assert figures.copy_overlap_pct in (0, None)


def test_two_stream_step_overlaps_copies_with_compute():
    one_stream, two_streams = course_figures("4_*"), course_figures("5_*")
    assert two_streams.copy_overlap_pct > (one_stream.copy_overlap_pct or 0) + 10


# ---------------------------------------------------------------------------------------------------
# An export in the older documented layout (Nsight Systems "SQLite Export Schema Reference", 2021):
# NVTX text inline with no textId or domainId column, no memset, thread-name or metadata table.
# Times in ms * 1e6 so the expected figures can be worked out by hand.

MS = 1_000_000


def make_old_layout_export(path, with_window=True):
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE NVTX_EVENTS (start INT NOT NULL, end INT, eventType INT NOT NULL, rangeId INT,
                                  category INT, color INT, text TEXT, globalTid INT);
        CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INT NOT NULL, end INT NOT NULL, deviceId INT, contextId INT,
                                                 streamId INT NOT NULL, correlationId INT, shortName INT);
        CREATE TABLE CUPTI_ACTIVITY_KIND_MEMCPY (start INT NOT NULL, end INT NOT NULL, streamId INT NOT NULL,
                                                 correlationId INT, copyKind INT NOT NULL, bytes INT);
        CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (start INT NOT NULL, end INT NOT NULL, globalTid INT,
                                                  correlationId INT, nameId INT NOT NULL, returnValue INT);
    """)
    thread = (4242 << 24) + 4242  # the main thread of process 4242
    db.executemany("INSERT INTO StringIds VALUES (?, ?)", [
        (1, "cudaLaunchKernel_v7000"), (2, "cuLaunchKernel"), (3, "cudaGraphLaunch_v10000"),
        (4, "cudaMemcpyAsync_v3020")])
    nvtx = [(11 * MS, 19 * MS, 59, "batch 0"), (11 * MS, 13 * MS, 59, "h2d"), (1 * MS, None, 34, "a mark")]
    if with_window:
        nvtx.append((10 * MS, 40 * MS, 60, "last 3 batches"))
    db.executemany("INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid) VALUES (?, ?, ?, ?, ?)",
                   [(*event, thread) for event in nvtx])
    db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, end, streamId) VALUES (?, ?, ?)", [
        (11 * MS, 20 * MS, 2), (38 * MS, 45 * MS, 2), (50 * MS, 51 * MS, 2)])
    db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY (start, end, streamId, copyKind) VALUES (?, ?, ?, ?)", [
        (8 * MS, 12 * MS, 1, 1), (15 * MS, 17 * MS, 1, 1), (21 * MS, 22 * MS, 2, 2), (25 * MS, 26 * MS, 2, 8)])
    db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME (start, end, globalTid, nameId) VALUES (?, ?, ?, ?)", [
        (12 * MS, 12 * MS + 5, thread, 1), (13 * MS, 13 * MS + 5, thread, 1), (14 * MS, 14 * MS + 5, thread, 2),
        (15 * MS, 15 * MS + 5, thread, 3), (16 * MS, 16 * MS + 5, thread, 3), (17 * MS, 17 * MS + 5, thread, 3),
        (18 * MS, 18 * MS + 5, thread, 4), (41 * MS, 41 * MS + 5, thread, 1)])
    db.commit()
    db.close()
    return path


def test_figures_of_an_old_layout_export_worked_out_by_hand(tmp_path):
    trace = nsys_trace.read_trace(make_old_layout_export(tmp_path / "old.sqlite"))
    figures = nsys_trace.trace_figures(trace)
    # Window 10..40 ms. H2D: 8..12 (overlaps the start, counted whole) and 15..17; D2D is neither H2D nor D2H.
    assert figures.h2d_ms == pytest.approx((4 + 2) / 3)
    assert figures.d2h_ms == pytest.approx(1 / 3)
    assert figures.kernel_ms == pytest.approx((9 + 7) / 3)  # 11..20 and 38..45; 50..51 is outside
    # Busy inside the window: 10..20, 21..22, 25..26, 38..40 = 14 of 30 ms.
    assert figures.gpu_idle_pct == pytest.approx(100 * 16 / 30)
    # Copies inside: 10..12, 15..17, 21..22, 25..26 = 6 ms, of which 11..12 and 15..17 under a kernel = 3 ms.
    assert figures.copy_overlap_pct == pytest.approx(50)
    assert figures.kernel_launches == 1  # 2 runtime + 1 driver launch in the window; one more outside
    assert figures.graph_launches == 1
    assert [r.name for r in trace.ranges] == ["last 3 batches", "batch 0", "h2d"]  # the mark is no range
    assert trace.thread_names == {} and trace.null_streams == set() and trace.nsys_version == "unknown"


def make_phases_export(path, kernel_ms):
    """A 100 ms window on two threads, with the course's NVTX phases, a wait inside "infer", and allocations."""
    db = sqlite3.connect(path)
    make_old_layout_export(path, with_window=False)
    main, worker = (4242 << 24) + 4242, (4242 << 24) + 4243
    db.execute("DELETE FROM NVTX_EVENTS")
    db.execute("DELETE FROM CUPTI_ACTIVITY_KIND_KERNEL")
    db.execute("DELETE FROM CUPTI_ACTIVITY_KIND_MEMCPY")
    db.execute("DELETE FROM CUPTI_ACTIVITY_KIND_RUNTIME")
    db.executemany("INSERT INTO StringIds VALUES (?, ?)", [
        (10, "cudaStreamSynchronize_v3020"), (11, "cudaMalloc_v3020"), (12, "cudaFree_v3020")])
    db.executemany("INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid) VALUES (?, ?, ?, ?, ?)", [
        (0, 100 * MS, 60, "last 3 batches", main),
        (0, 30 * MS, 59, "infer", main),  # 10..25 of it waits in a synchronize: 15 ms of enqueue
        (40 * MS, 50 * MS, 59, "h2d", main), (50 * MS, 52 * MS, 59, "alloc", main), (52 * MS, 53 * MS, 59, "free", main),
        (20 * MS, 60 * MS, 59, "output", worker), (55 * MS, 65 * MS, 59, "infer", worker)])
    db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME (start, end, globalTid, nameId) VALUES (?, ?, ?, ?)", [
        (10 * MS, 25 * MS, main, 10), (50 * MS, 51 * MS, main, 11), (51 * MS, 52 * MS, main, 11),
        (52 * MS, 53 * MS, main, 12)])
    db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, end, streamId) VALUES (0, ?, 2)", (kernel_ms * MS,))
    db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY (start, end, streamId, copyKind) VALUES (?, ?, 1, 1)",
               (40 * MS, 50 * MS))
    db.commit()
    db.close()
    return path


@pytest.mark.parametrize("kernel_ms, limited_by", [(80, "GPU compute"), (50, "synchronization")])
def test_busy_shares_and_the_limit_worked_out_by_hand(tmp_path, kernel_ms, limited_by):
    figures = nsys_trace.trace_figures(nsys_trace.read_trace(make_phases_export(tmp_path / "p.sqlite", kernel_ms)))
    # Enqueue: main 0..10, 25..30 and 40..50 (h2d), worker 55..65: 35 of 100 ms. Output: 20..60.
    assert figures.busy_pct == pytest.approx({"GPU compute": kernel_ms, "H2D": 10, "host enqueue": 35,
                                              "host output": 40})
    assert figures.limited_by == limited_by
    assert figures.alloc_free_ms == pytest.approx(3 / 3)  # alloc 2 ms + free 1 ms, over 3 batches
    assert figures.allocation_calls == 1  # two cudaMalloc and one cudaFree, over 3 batches


def sweep_busy_pct(spans, window):
    """Share of the window covered by at least one span, by sweeping start/end events."""
    events = sorted([(max(start, window[0]), 1) for start, end in spans if end > window[0] and start < window[1]]
                    + [(min(end, window[1]), -1) for start, end in spans if end > window[0] and start < window[1]])
    covered, active, previous = 0, 0, window[0]
    for time, change in events:
        covered += (time - previous) if active else 0
        active += change
        previous = time
    return 100 * covered / (window[1] - window[0])


@pytest.mark.parametrize("database", sorted(COURSE_FIXTURES.glob("*.sqlite")), ids=fixture_id)
def test_gpu_busy_shares_match_a_sweep_on_real_traces(database):
    trace = nsys_trace.read_trace(database, nsys_trace.RUN_RANGE)
    figures = nsys_trace.trace_figures(trace)
    db = sqlite3.connect(database)
    window = independent_window(db, "all batches")
    kernels = db.execute("SELECT start, end FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchall()
    h2d = db.execute("SELECT m.start, m.end FROM CUPTI_ACTIVITY_KIND_MEMCPY AS m JOIN ENUM_CUDA_MEMCPY_OPER AS o "
                     "ON o.id = m.copyKind WHERE o.label = 'Host-to-Device'").fetchall()
    assert figures.busy_pct["GPU compute"] == pytest.approx(sweep_busy_pct(kernels, window), abs=1e-9)
    assert figures.busy_pct["H2D"] == pytest.approx(sweep_busy_pct(h2d, window), abs=1e-9)


def test_the_baseline_is_limited_by_synchronization_and_the_graph_step_by_the_gpu():
    assert course_figures("1_*").limited_by == "synchronization"
    assert course_figures("7_*").limited_by == "GPU compute"


def test_timeline_of_an_old_layout_export_is_drawn(tmp_path):
    trace = nsys_trace.read_trace(make_old_layout_export(tmp_path / "old.sqlite"))
    plots.plot_timeline(tmp_path / "timeline.png", trace, "old layout")
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unreadable_traces_give_a_reason(tmp_path):
    no_window = make_old_layout_export(tmp_path / "no_window.sqlite", with_window=False)
    not_a_database = tmp_path / "junk.sqlite"
    not_a_database.write_text("not SQLite")
    with pytest.raises(nsys_trace.TraceUnavailable, match="no NVTX range 'last 3 batches'"):
        nsys_trace.read_trace(no_window)
    with pytest.raises(nsys_trace.TraceUnavailable, match="junk.sqlite not read"):
        nsys_trace.read_trace(not_a_database)


# ---------------------------------------------------------------------------------------------------
# Device memory in use (nsys profile --cuda-memory-usage=true): the table and enums named as the Nsight Systems
# "SQLite Schema Reference" names them, on the old-layout export (its window "last 3 batches" is 10..40 ms).

MIB = 1 << 20
OTHER_PROCESS = 4343 << 24
MEMORY_EVENTS = [  # (ms, process, kind, operation, address, MiB); kinds 1 pinned, 2 device; operations 0 alloc, 1 free
    (1, 4242 << 24, 2, 0, 0xA000, 100),  # before the window: counts
    (2, 4242 << 24, 1, 0, 0xB000, 50),  # pinned host memory: not device memory
    (5, 4242 << 24, 2, 0, 0xC000, 30),
    (12, 4242 << 24, 2, 1, 0xA000, 100),  # frees the allocation made before the window
    (15, 4242 << 24, 2, 1, 0xD000, 70),  # a free with no recorded allocation: takes nothing back
    (20, 4242 << 24, 2, 0, 0xE000, 200),  # the peak: 30 + 200
    (25, 4242 << 24, 2, 1, 0xE000, 200),
    (30, OTHER_PROCESS, 2, 0, 0xF000, 500),  # another process
    (45, 4242 << 24, 2, 0, 0x1000, 1000),  # after the window's end
]
# What the course's process has in use after each change (ms, MiB), worked out by hand from MEMORY_EVENTS.
IN_USE_BY_HAND = [(1, 100), (5, 130), (12, 30), (20, 230), (25, 30)]


def make_memory_export(path):
    """The old-layout export with CUDA_GPU_MEMORY_USAGE_EVENTS and its enum tables, as an export made with
    --cuda-memory-usage=true has them."""
    make_old_layout_export(path)
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE ENUM_CUDA_MEM_KIND (id INTEGER NOT NULL PRIMARY KEY, name TEXT, label TEXT);
        CREATE TABLE ENUM_CUDA_DEV_MEM_EVENT_OPER (id INTEGER NOT NULL PRIMARY KEY, name TEXT, label TEXT);
        CREATE TABLE CUDA_GPU_MEMORY_USAGE_EVENTS (
            start INTEGER NOT NULL, globalPid INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL,
            address INTEGER NOT NULL, pc INTEGER NOT NULL, bytes INTEGER NOT NULL, memKind INTEGER NOT NULL,
            memoryOperationType INTEGER NOT NULL, name TEXT, correlationId INTEGER, localMemoryPoolAddress INTEGER,
            localMemoryPoolReleaseThreshold INTEGER, localMemoryPoolSize INTEGER, localMemoryPoolUtilizedSize INTEGER,
            importedMemoryPoolAddress INTEGER, importedMemoryPoolProcessId INTEGER);
    """)
    db.executemany("INSERT INTO ENUM_CUDA_MEM_KIND VALUES (?, ?, ?)", [
        (0, "CUDA_MEMOPR_MEMORY_KIND_PAGEABLE", "Pageable"), (1, "CUDA_MEMOPR_MEMORY_KIND_PINNED", "Pinned"),
        (2, "CUDA_MEMOPR_MEMORY_KIND_DEVICE", "Device"), (5, "CUDA_MEMOPR_MEMORY_KIND_DEVICE_STATIC", "Device Static")])
    db.executemany("INSERT INTO ENUM_CUDA_DEV_MEM_EVENT_OPER VALUES (?, ?, ?)", [
        (0, "CUDA_DEV_MEM_EVENT_OPR_ALLOCATION", "Allocation"),
        (1, "CUDA_DEV_MEM_EVENT_OPR_DEALLOCATION", "Deallocation")])
    db.executemany(
        "INSERT INTO CUDA_GPU_MEMORY_USAGE_EVENTS (start, globalPid, deviceId, contextId, address, pc, bytes, memKind, "
        "memoryOperationType) VALUES (?, ?, 0, 1, ?, 0, ?, ?, ?)",
        [(ms * MS, process, address, mib * MIB, kind, operation)
         for ms, process, kind, operation, address, mib in MEMORY_EVENTS])
    db.commit()
    db.close()
    return path


def in_use_through_the_enums(db, end):
    """(ms, MiB) after each change, by SQL that names kinds and operations through the export's own enum tables and
    matches each free to the allocation before it at its address."""
    rows = db.execute(
        "SELECT e.start, e.bytes * (CASE o.label WHEN 'Allocation' THEN 1 ELSE -1 END) "
        "FROM CUDA_GPU_MEMORY_USAGE_EVENTS AS e JOIN ENUM_CUDA_MEM_KIND AS k ON k.id = e.memKind "
        "JOIN ENUM_CUDA_DEV_MEM_EVENT_OPER AS o ON o.id = e.memoryOperationType "
        "WHERE k.label = 'Device' AND e.start <= ? AND e.globalPid = ? AND (o.label = 'Allocation' "
        "OR EXISTS (SELECT 1 FROM CUDA_GPU_MEMORY_USAGE_EVENTS AS a WHERE a.address = e.address "
        "AND a.start < e.start AND a.memoryOperationType = "
        "(SELECT id FROM ENUM_CUDA_DEV_MEM_EVENT_OPER WHERE label = 'Allocation'))) ORDER BY e.start",
        (end, 4242 << 24)).fetchall()
    total, changes = 0, []
    for start, change in rows:
        total += change
        changes.append((start // MS, total // MIB))
    return changes


def test_device_memory_in_use_is_a_running_sum_from_the_start_of_the_trace(tmp_path):
    database = make_memory_export(tmp_path / "memory.sqlite")
    trace = nsys_trace.read_trace(database)
    changes = [(start // MS, in_use // MIB) for start, in_use in trace.memory.changes]
    assert changes == IN_USE_BY_HAND == in_use_through_the_enums(sqlite3.connect(database), trace.window[1])
    assert trace.memory.at(10 * MS) == 130 * MIB  # what was allocated before the window is in use when it opens
    assert trace.memory.at(0) == 0 and trace.memory.at(40 * MS) == 30 * MIB
    assert trace.memory.unmatched_frees == 1
    assert nsys_trace.trace_figures(trace).memory_peak_mib == 230  # not 200 (the window alone), not 1000 (after it)


def test_a_free_without_its_allocation_takes_nothing_back():
    alloc, free = nsys_trace.ALLOCATION, nsys_trace.DEALLOCATION
    memory = nsys_trace.memory_in_use([(0, free, 0x10, 5), (1, alloc, 0x20, 3), (2, free, 0x20, 3), (3, free, 0x20, 3),
                                       (4, alloc, 0x30, 8), (5, alloc, 0x30, 2), (6, 7, 0x40, 9)])
    assert memory.changes == ((1, 3), (2, 0), (4, 8), (5, 2))  # never below zero; an address allocated again: once
    assert memory.unmatched_frees == 2 and memory.peak_mib() == 8 / MIB


def test_a_trace_without_the_memory_table_has_no_memory_figures(tmp_path):
    trace = nsys_trace.read_trace(make_old_layout_export(tmp_path / "old.sqlite"))
    assert trace.memory is None and nsys_trace.trace_figures(trace).memory_peak_mib is None
    for database in [*sorted(COURSE_FIXTURES.glob("*.sqlite")), *sorted(PROBE_FIXTURES.glob("*.sqlite"))]:
        assert nsys_trace.read_trace(database).memory is None, database  # trimmed before the table was kept


def test_timeline_shows_the_memory_in_use_where_the_trace_has_it(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "draw_memory_lane", lambda axes, memory, window: drawn.append((memory, window)))
    for name, make in (("memory", make_memory_export), ("old", make_old_layout_export)):
        trace = nsys_trace.read_trace(make(tmp_path / f"{name}.sqlite"))
        plots.plot_timeline(tmp_path / f"{name}.png", trace, name)
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [window for _, window in drawn] == [(10 * MS, 40 * MS)]  # the export without the table has no lane
    monkeypatch.undo()
    plots.plot_timeline(tmp_path / "lane.png", nsys_trace.read_trace(tmp_path / "memory.sqlite"), "with the lane")
    assert (tmp_path / "lane.png").stat().st_size > (tmp_path / "old.png").stat().st_size


# ---------------------------------------------------------------------------------------------------
# Step results, speedups and the command


def write_result(directory, step, stem, last3_ms, **extra):
    result = {"step": step, "stem": stem, "title": stem, "lesson": f"lesson of {stem}", "backend": "torch",
              "backend_label": "PyTorch stand-in (torch 2.11.0), not TensorRT", "device": "NVIDIA H100 80GB HBM3",
              "batches": 10, "batch_size": 128, "last3_ms": last3_ms, "images_per_s": 384 / last3_ms * 1e3,
              "check": {"passed": True, "summary": "top-1 agreement 100.0%"},
              "command": f"python {stem}.py --backend torch", "date": "2026-11-23T10:00:00+00:00", **extra}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.json").write_text(json.dumps(result))
    return result


def probe_reports(directory):
    """A reports directory made of the probe traces, each with a step result."""
    for name, (step, stem) in PROBE_STEPS.items():
        write_result(directory, step, stem, 30.0 / step)
        shutil.copy(PROBE_FIXTURES / f"{name}.sqlite", directory / f"{stem}.sqlite")
    return directory


def table_rows(summary, header_start):
    """The body rows of the Markdown table whose header starts with `header_start`."""
    lines = summary.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(header_start)) + 2
    rows = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.fixture
def no_nsys(monkeypatch, tmp_path):
    """A PATH on which there is no nsys."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_speedups_over_baseline_and_previous_step(tmp_path):
    for step, ms in ((1, 30.0), (2, 15.0), (3, 10.0)):
        write_result(tmp_path, step, f"{step}_step", ms)
    results, _ = ladder.load_results(tmp_path)
    assert ladder.speedups(results) == [(("within noise", 1.0), None), (("faster", 2.0), ("faster", 2.0)),
                                        (("faster", pytest.approx(3.0)), ("faster", pytest.approx(1.5)))]


def test_speedups_compare_throughput_when_batch_sizes_differ(tmp_path):
    write_result(tmp_path, 1, "1_step", 30.0, batch_size=128, images_per_s=None)
    write_result(tmp_path, 2, "2_step", 30.0, batch_size=256, images_per_s=None)  # twice the images, same time
    results, _ = ladder.load_results(tmp_path)
    assert ladder.speedups(results)[1] == (("other workload", 2.0), ("other workload", 2.0))


def test_summary_rows_from_json_only(tmp_path, no_nsys, capsys):
    for step, ms in ((1, 30.0), (2, 15.0), (3, 10.0)):
        write_result(tmp_path, step, f"{step}_step", ms)
    write_result(tmp_path, 3, "3_step", 10.0, check={"passed": False, "summary": "top-1 agreement 12.0%"})
    report.main(["--reports", str(tmp_path)])
    rows = table_rows((tmp_path / "summary.md").read_text(), "| step | what changed")
    assert [row[0] for row in rows] == ["1_step", "2_step", "3_step"]
    assert [row[2:8] for row in rows] == [["10.00", "10.00–10.00", "–", "12,800", "1.00×", "–"],
                                         ["5.00", "5.00–5.00", "–", "25,600", "2.00×", "2.00× faster"],
                                         ["3.33", "3.33–3.33", "–", "38,400", "3.00×", "1.50× faster"]]
    assert rows[2][9] == "**FAIL**: top-1 agreement 12.0%"


def test_summary_ranks_by_the_median_and_marks_noise(tmp_path, no_nsys):
    write_result(tmp_path, 1, "1_step", 63.0, windows_ms_per_batch=[20.0, 21.0, 25.0], latency_p50_ms=20.5,
                 latency_p99_ms=30.25)
    write_result(tmp_path, 2, "2_step", 60.0, windows_ms_per_batch=[19.0, 20.0, 20.5])
    write_result(tmp_path, 3, "3_step", 30.0, windows_ms_per_batch=[10.0, 10.1, 10.2])
    for stem in ("2_step", "3_step"):
        result = json.loads((tmp_path / f"{stem}.json").read_text())
        result["images_per_s"] = 128 / stats.median(result["windows_ms_per_batch"]) * 1e3
        (tmp_path / f"{stem}.json").write_text(json.dumps(result))
    report.main(["--reports", str(tmp_path)])
    rows = table_rows((tmp_path / "summary.md").read_text(), "| step | what changed")
    assert [row[2:5] for row in rows] == [["21.00", "20.00–25.00", "23.8 ⚠"], ["20.00", "19.00–20.50", "7.5"],
                                         ["10.10", "10.00–10.20", "2.0"]]
    assert rows[1][7] == "within noise (1.05×)" and rows[2][7] == "1.98× faster"
    assert rows[0][8] == "20.50 / 30.25" and rows[1][8] == "not measured"


def test_without_nsys_every_step_says_what_could_not_be_read(tmp_path, no_nsys, capsys):
    write_result(tmp_path, 1, "1_baseline", 30.0)
    (tmp_path / "1_baseline.nsys-rep").write_bytes(b"a report nsys would have to export")
    write_result(tmp_path, 2, "2_reuse_buffers", 20.0)
    report.main(["--reports", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("report: 1_baseline:")] == [
        f"report: 1_baseline: no trace figures: {tmp_path}/1_baseline.nsys-rep not read: nsys is not on PATH "
        "(install Nsight Systems, or export the .sqlite where nsys is)"]
    assert [line for line in lines if line.startswith("report: 2_reuse_buffers:")] == [
        f"report: 2_reuse_buffers: no trace figures: no {tmp_path}/2_reuse_buffers.nsys-rep "
        "(profile the step with `make profile-all` for trace figures)"]
    page = (tmp_path / "README.md").read_text()
    assert "nsys is not on PATH" in page and "make profile-all" in page
    assert "| step | H2D" not in page  # no table of dashes
    assert (tmp_path / "ladder.png").exists() and not list(tmp_path.glob("timeline_*.png"))


def test_a_run_without_nsys_says_so_once_and_has_no_trace_table(tmp_path, no_nsys, capsys):
    for step in range(1, 4):
        write_result(tmp_path, step, f"{step}_step", 30.0 / step)
    report.main(["--reports", str(tmp_path)])
    notes = [line for line in capsys.readouterr().out.splitlines() if "profil" in line]
    assert notes == [f"report: no step was profiled (no .nsys-rep in {tmp_path}/): `make profile-all` adds the "
                     "trace figures"]
    page = (tmp_path / "README.md").read_text()
    assert "| step | H2D" not in page and "| step | GPU compute" not in page


def test_stand_in_backend_is_flagged(tmp_path, no_nsys):
    write_result(tmp_path, 1, "1_baseline", 30.0)
    report.main(["--reports", str(tmp_path)])
    assert "not TensorRT numbers" in (tmp_path / "summary.md").read_text()
    write_result(tmp_path, 1, "1_baseline", 30.0, backend="tensorrt", backend_label="TensorRT 10.13.3")
    report.main(["--reports", str(tmp_path)])
    assert "not TensorRT numbers" not in (tmp_path / "summary.md").read_text()


def banner(summary):
    """The blockquote above the summary's first list, as one line."""
    return " ".join(line[2:] for line in summary.splitlines() if line.startswith("> "))


@pytest.mark.parametrize("fields, named", [
    ({"stand_in": "compiled",
      "backend_label": "compiled PyTorch stand-in (Inductor, torch 2.11.0+cu130), not TensorRT"},
     "the course's compiled PyTorch stand-in (Inductor) behind"),
    ({"backend_label": "eager PyTorch stand-in (torch 2.11.0+cu130), not TensorRT"},
     "the course's eager PyTorch stand-in behind"),
    ({}, "the course's PyTorch stand-in (whether compiled or eager was not recorded) behind"),
], ids=["stand_in", "label only", "neither"])
def test_the_banner_names_the_stand_in_and_claims_no_gain(tmp_path, no_nsys, fields, named):
    write_result(tmp_path, 1, "1_baseline", 30.0, **fields)
    report.main(["--reports", str(tmp_path)])
    text = banner((tmp_path / "summary.md").read_text())
    assert named in text
    assert "lessons hold" not in text
    assert ("How much a lesson gains with TensorRT depends on the engine's kernels (how many there are and how fast "
            "they run), so the stand-in's figures show each lesson's mechanism, not TensorRT's gain.") in text


def test_the_banner_names_each_stand_in_of_a_mixed_run(tmp_path, no_nsys):
    write_result(tmp_path, 1, "1_baseline", 30.0, stand_in="eager")
    write_result(tmp_path, 2, "2_reuse_buffers", 20.0, stand_in="compiled")
    write_result(tmp_path, 3, "3_use_pin_memory", 10.0, stand_in="compiled")
    report.main(["--reports", str(tmp_path)])
    assert ("the course's eager PyTorch stand-in for 1_baseline; compiled PyTorch stand-in (Inductor) for "
            "2_reuse_buffers, 3_use_pin_memory behind") in banner((tmp_path / "summary.md").read_text())


# ---------------------------------------------------------------------------------------------------
# GPU memory in the summary and the ladder chart

HOW = {"weights": "the engine's weights on the device", "activations": "each context's scratch memory",
       "buffers": "the step's cudaMalloc'd inputs and outputs", "pinned_host": "the step's page-locked buffers",
       "peak_in_use": "cudaMemGetInfo, highest sample less the first"}


def memory(weights, activations, peak, **extra):
    return {"weights_mib": weights, "activations_mib": activations, "buffers_mib": 24.0, "pinned_host_mib": 12.5,
            "peak_in_use_mib": peak, "peak_note": None, "how": HOW, **extra}


def memory_run(directory):
    """Steps 1 (before memory figures), 3 (fp32), 4 (FP16), 7, 8 (a second context) and 9 (two profiles)."""
    write_result(directory, 1, "1_baseline", 30.0)
    write_result(directory, 3, "3_use_pin_memory", 15.0, precision="fp32", memory=memory(44.7, [77.0], 400.0),
                 floor={"h2d_ms": 1.4, "inference_ms": 3.2})
    write_result(directory, 4, "4_use_fp16", 12.0, precision="fp16", memory=memory(22.4, [38.5], 300.0))
    write_result(directory, 7, "7_cuda_graph", 6.0, precision="fp16",
                 memory=memory(22.4, [38.5], None, peak_note="no sample: the step ended first", how={}))
    write_result(directory, 8, "8_multi_context", 5.0, precision="fp16", memory=memory(22.4, [38.5, 38.5], 350.0))
    write_result(directory, 9, "9_multi_profiles", 4.0, precision="fp16", memory=memory(22.4, [9.6, 38.5], 330.0))
    return directory


def test_the_memory_table_shows_each_step_and_what_its_lesson_changes(tmp_path, no_nsys):
    report.main(["--reports", str(memory_run(tmp_path))])
    summary = (tmp_path / "README.md").read_text()
    assert summary.index("## How far from the floor") < summary.index("## GPU memory (MiB)")
    rows = table_rows(summary, "| step | weights")
    assert rows == [["1_baseline", "–", "–", "–", "–", "–", "–"],
                    ["3_use_pin_memory", "44.7", "1 × 77.0", "24.0", "400.0", "–", "12.5"],
                    ["4_use_fp16", "22.4", "1 × 38.5", "24.0", "300.0", "–", "12.5"],
                    ["7_cuda_graph", "22.4", "1 × 38.5", "24.0", "–", "–", "12.5"],
                    ["8_multi_context", "22.4", "2 × 38.5", "24.0", "350.0", "–", "12.5"],
                    ["9_multi_profiles", "22.4", "9.6 + 38.5", "24.0", "330.0", "–", "12.5"]]
    assert ("Against the fp32 engine of 3_use_pin_memory, FP16 (4_use_fp16) holds 22.4 MiB of weights against 44.7 "
            "(−50%), 38.5 MiB of activations against 77.0 (−50%) and 300.0 MiB of device memory in use at its peak "
            "against 400.0 (−25%).") in summary
    assert ("With a second context, 8_multi_context's activations change by +38.5 MiB (2 × 38.5 against 1 × 38.5 in "
            "7_cuda_graph).") in summary  # 7's peak was not measured: no peak compared
    assert ("The 2 contexts of 9_multi_profiles, one per optimization profile, hold 9.6 + 38.5 MiB of activations "
            "(48.1 MiB together).") in summary
    assert "- 7_cuda_graph: no sample: the step ended first" in summary
    assert "The results of 1_baseline predate memory figures" in summary
    measured = summary.split("How the columns are measured:\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert measured == [f"- {column}: {HOW[key]}" for key, column in (
        ("weights", "weights"), ("activations", "activations"), ("buffers", "buffers"),
        ("peak_in_use", "peak in use"), ("pinned_host", "pinned host"))]  # once, from the first result with them


def test_the_memory_sentences_follow_the_figures(tmp_path, no_nsys):
    write_result(tmp_path, 7, "7_cuda_graph", 6.0, memory=memory(20.0, [40.0], 300.0))
    write_result(tmp_path, 8, "8_multi_context", 5.0, memory=memory(20.0, [40.0, 40.0], 290.0))
    report.main(["--reports", str(tmp_path)])
    summary = (tmp_path / "README.md").read_text()
    assert ("With a second context, 8_multi_context's activations change by +40.0 MiB (2 × 40.0 against 1 × 40.0 in "
            "7_cuda_graph) and its peak in use by −10.0 MiB (290.0 against 300.0).") in summary
    assert "FP16" not in summary and "one per optimization profile" not in summary  # steps 3, 4 and 9 are not here


def test_results_without_memory_figures_say_so_once(tmp_path, no_nsys):
    for step in (1, 2):
        write_result(tmp_path, step, f"{step}_step", 30.0 / step)
    report.main(["--reports", str(tmp_path)])
    summary = (tmp_path / "README.md").read_text()
    section = summary.split("## GPU memory (MiB)\n\n", 1)[1].split("\n\n", 1)[0]
    assert section.startswith("Not recorded: these step results predate memory figures")
    assert "| step | weights" not in summary


def test_the_trace_peak_stands_beside_the_step_s_own(tmp_path, no_nsys):
    write_result(tmp_path, 1, "1_baseline", 30.0, memory=memory(22.4, [38.5], 280.0))
    make_memory_export(tmp_path / "1_baseline.sqlite")
    write_result(tmp_path, 2, "2_reuse_buffers", 20.0, memory=memory(22.4, [38.5], 270.0))
    make_old_layout_export(tmp_path / "2_reuse_buffers.sqlite")  # profiled without the memory record
    report.main(["--reports", str(tmp_path)])
    summary = (tmp_path / "README.md").read_text()
    rows = table_rows(summary, "| step | weights")
    assert [row[4:6] for row in rows] == [["280.0", "230.0"], ["270.0", "–"]]
    assert "segments reserved, not tensors" in summary
    assert (tmp_path / "timeline_1_baseline.png").exists() and (tmp_path / "timeline_2_reuse_buffers.png").exists()


def test_the_ladder_chart_has_a_memory_panel_only_with_memory_figures(tmp_path, monkeypatch):
    panels = []
    monkeypatch.setattr(plots, "draw_memory_panel", lambda axes, bars, rows=None: panels.append(bars))
    results, _ = ladder.load_results(memory_run(tmp_path / "with"))
    ladder.draw_ladder(tmp_path / "with.png", results)
    assert [bar and (bar.weights_mib, bar.activations_mib, bar.peak_in_use_mib) for bar in panels[0]] == [
        None, (44.7, 77.0, 400.0), (22.4, 38.5, 300.0), (22.4, 38.5, None), (22.4, 77.0, 350.0),
        (22.4, pytest.approx(48.1), 330.0)]
    write_result(tmp_path / "without", 1, "1_baseline", 30.0)
    ladder.draw_ladder(tmp_path / "without.png", ladder.load_results(tmp_path / "without")[0])
    assert len(panels) == 1
    monkeypatch.undo()
    ladder.draw_ladder(tmp_path / "drawn.png", results)
    assert (tmp_path / "drawn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_without_a_timed_window_stay_out_of_the_ladder(tmp_path, no_nsys, capsys):
    write_result(tmp_path, 1, "1_baseline", 30.0)
    (tmp_path / "14_probe.json").write_text(json.dumps({"step": 14, "kind": "probe", "points": []}))
    (tmp_path / "10_batch_sweep.json").write_text(json.dumps({"step": 10, "kind": "sweep", "points": []}))
    (tmp_path / "broken.json").write_text("{ not json")
    report.main(["--reports", str(tmp_path)])
    out = capsys.readouterr().out
    assert "report: 14_probe: not a ladder step (kind 'probe'), not in the table" in out
    assert "10_batch_sweep" not in out  # a sweep is the results page's: no note
    assert f"report: {tmp_path}/broken.json: not read (" in out
    for page in ("summary.md", "README.md"):
        assert [row[0] for row in table_rows((tmp_path / page).read_text(), "| step | what")] == ["1_baseline"]
    page = (tmp_path / "README.md").read_text()
    assert "### 10_batch_sweep: which batch size\n\nIts rows: not measured (no \"sweeps\" in 10_batch_sweep's result)." \
        in page


def test_report_on_probe_traces_fills_every_column(tmp_path, no_nsys):
    report.main(["--reports", str(probe_reports(tmp_path))])
    summary = (tmp_path / "README.md").read_text()
    rows = table_rows(summary, "| step | H2D")
    assert [row[0] for row in rows] == ["1_baseline", "5_multi_streams", "7_cuda_graph"]
    assert all("–" not in row for row in rows)
    graph = nsys_trace.trace_figures(nsys_trace.read_trace(PROBE_FIXTURES / "graph.sqlite"))
    assert rows[2] == ["7_cuda_graph", f"{graph.h2d_ms:.3f}", f"{graph.kernel_ms:.3f}", f"{graph.d2h_ms:.3f}",
                       f"{graph.gpu_idle_pct:.1f}", "0", "1", f"{graph.copy_overlap_pct:.1f}",
                       f"{graph.alloc_free_ms:.3f}", "0"]
    limits = table_rows(summary, "| step | GPU compute")
    assert [row[-1] for row in limits] == [nsys_trace.trace_figures(nsys_trace.read_trace(
        PROBE_FIXTURES / f"{name}.sqlite")).limited_by for name in PROBE_STEPS]
    assert "Traces exported by Nsight Systems 2025.3" in summary
    for stem in ("1_baseline", "5_multi_streams", "7_cuda_graph"):
        assert (tmp_path / f"timeline_{stem}.png").read_bytes()[:4] == b"\x89PNG"


def test_report_on_the_course_fixtures(tmp_path, no_nsys):
    results = sorted(COURSE_FIXTURES.glob("*.json"))
    if not results:
        pytest.skip(f"missing real fixtures {COURSE_FIXTURES.relative_to(REPO)}/<stem>.json and <stem>.sqlite")
    for path in results + sorted(COURSE_FIXTURES.glob("*.sqlite")):
        shutil.copy(path, tmp_path)
    report.main(["--reports", str(tmp_path)])
    rows = table_rows((tmp_path / "README.md").read_text(), "| step | H2D")
    profiled = {path.stem for path in COURSE_FIXTURES.glob("*.sqlite")}
    assert {row[0] for row in rows if "–" not in row[1:4]} == profiled
    assert {path.name for path in tmp_path.glob("timeline_*.png")} == {f"timeline_{stem}.png" for stem in profiled}


# ---------------------------------------------------------------------------------------------------
# Two runs compared (--compare, common/report/reproduce.py)


def two_runs(tmp_path):
    """Two runs whose steps differ between the runs in each of the ways the comparison tells apart."""
    steps = {  # stem: (windows of this run, windows of the other run)
        "1_baseline": ([20.0, 20.2, 20.4], [23.4, 23.5, 23.9]),  # steady in both, 16% apart
        "2_reuse_buffers": ([19.9, 20.0, 20.1], [19.3, 19.9, 20.0]),  # 0.5% apart
        "3_use_pin_memory": ([10.0, 10.5, 11.5], [9.4, 9.5, 10.2]),  # 10.5% apart, the windows overlap
        "4_use_fp16": ([6.0, 6.1, 7.0], [5.2, 5.4, 5.5]),  # 13% apart, no overlap, this run spread 16%
        "5_multi_streams": ([5.0, 5.1, 5.2], None),  # not in the other run
    }
    here, there = tmp_path / "run-2", tmp_path / "run-1"
    for number, (stem, (mine, theirs)) in enumerate(steps.items(), start=1):
        for directory, spans in ((here, mine), (there, theirs)):
            if spans:
                write_result(directory, number, stem, 3 * spans[-1], windows_ms_per_batch=spans,
                             images_per_s=128 / stats.median(spans) * 1e3)
    return here, there


def test_between_runs_each_kind_of_difference_is_named(tmp_path):
    here, there = two_runs(tmp_path)
    lines, verdicts = reproduce.comparison(ladder.load_results(here)[0], ladder.load_results(there)[0], "run-1/")
    assert verdicts == {"1_baseline": "differs between processes", "2_reuse_buffers": "reproduces",
                        "3_use_pin_memory": "within noise", "4_use_fp16": "not steady in this run"}
    rows = table_rows("\n".join(lines), "| step | ms per batch, this run")
    assert rows[0][1:5] == ["20.20 (20.00–20.40)", "23.50 (23.40–23.90)", "-14.0", "differs between processes"]
    assert rows[4][1:5] == ["5.10 (5.00–5.20)", "–", "–", "not in the other run"]
    # step 2 against step 1: within noise here (the windows overlap), faster in the other run
    assert rows[1][5] == "within noise (1.01×) / 1.18× faster ⚠"
    assert rows[2][5] == "1.90× faster / 2.09× faster"
    assert "1 of 4 steps reproduce within 5%; the others: 1_baseline (differs between processes)" in "\n".join(lines)
    assert "Lessons whose verdict differs between the runs (⚠): 2_reuse_buffers." in "\n".join(lines)


def test_another_workload_is_not_compared(tmp_path):
    here, there = tmp_path / "a", tmp_path / "b"
    write_result(here, 1, "1_baseline", 30.0)
    write_result(there, 1, "1_baseline", 30.0, batch_size=64, images_per_s=64 / 10.0 * 1e3)
    _, verdicts = reproduce.comparison(ladder.load_results(here)[0], ladder.load_results(there)[0], "b/")
    assert verdicts == {"1_baseline": "other workload: not compared"}


def test_compare_writes_the_section_and_says_the_verdict(tmp_path, no_nsys, capsys):
    here, there = two_runs(tmp_path)
    report.main(["--reports", str(here), "--compare", str(there)])
    summary = (here / "README.md").read_text()
    assert summary.index("## Between two runs") < summary.index("## What could not be read")
    assert "Between two runs" not in (here / "summary.md").read_text()  # the short page is the timings table
    assert f"This run against {there}/ (taken 2026-11-23T10:00:00+00:00)" in summary
    assert (f"report: against {there}/: 1 of 4 steps reproduce within 5%; the others: 1_baseline (differs between "
            "processes), 3_use_pin_memory (within noise), 4_use_fp16 (not steady in this run).") \
        in capsys.readouterr().out
    report.main(["--reports", str(here)])
    assert "Between two runs" not in (here / "README.md").read_text()


@pytest.mark.parametrize("other, says", [
    ("missing", "is not a directory"), ("run-2", "is the run being reported"), ("empty", "holds no timed step result")])
def test_compare_with_nothing_comparable_is_one_line(tmp_path, other, says):
    here, _ = two_runs(tmp_path)
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-m", "common.report", "--reports", str(here), "--compare",
                           str(tmp_path / other)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"error: --compare {tmp_path / other} {says}"
                                   + done.stderr.strip().split(says, 1)[1])
    assert done.stderr.strip().endswith("pass --compare the reports directory of another run of the steps "
                                        "(`make reproduce` makes two)")


# ---------------------------------------------------------------------------------------------------
# Where the results come from


def test_falls_back_to_the_committed_examples(tmp_path, monkeypatch, no_nsys, capsys):
    monkeypatch.chdir(tmp_path)
    probe_reports(tmp_path / "results" / "h100-torch")
    report.main([])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("report: reports/ does not exist; reporting the committed example results "
                                   "in results/h100-torch/ instead")
    assert "committed example results" in (tmp_path / "reports" / "summary.md").read_text()
    assert (tmp_path / "reports" / "timeline_7_cuda_graph.png").exists()


def test_the_committed_examples_give_a_full_report(tmp_path, monkeypatch, no_nsys):
    if not any(COMMITTED_RESULTS.glob("*.json")):
        pytest.skip(f"missing {COMMITTED_RESULTS.relative_to(REPO)}/<stem>.json (the committed run's results)")
    monkeypatch.chdir(tmp_path)
    report.main(["--examples", str(COMMITTED_RESULTS)])
    summary = (tmp_path / "reports" / "README.md").read_text()
    profiled = {path.stem for path in COMMITTED_RESULTS.glob("*.sqlite")}
    rows = table_rows(summary, "| step | H2D")
    assert {row[0] for row in rows if "–" not in row[1:4]} == profiled
    assert "not read" not in summary.replace("could not be read", "")


@pytest.mark.parametrize("page", ["summary.md", "README.md"])
@pytest.mark.parametrize("run, other", [("", None), ("run-1", None), ("run-2", "run-1")],
                         ids=["profiled", "run-1", "run-2 against run-1"])
def test_the_committed_summaries_are_what_the_report_makes_of_the_committed_results(tmp_path, monkeypatch, run, other,
                                                                                    page, no_nsys):
    """A README that links a committed page links what the current report says of those results: regenerate them
    with `python -m common.report --reports <the directory>` (and `--compare` for a second run) after a change."""
    committed = COMMITTED_RESULTS / run
    if not (committed / page).exists():
        pytest.skip(f"missing {committed.relative_to(REPO)}/{page}")
    copy = tmp_path / "results" / "h100-torch" / run
    copy.mkdir(parents=True)
    for path in [*committed.glob("*.json"), *committed.glob("*.sqlite")]:
        shutil.copy(path, copy)
    if other:
        shutil.copytree(COMMITTED_RESULTS / other, tmp_path / "results" / "h100-torch" / other)
    relative = copy.relative_to(tmp_path)  # the summary names its source as the committed one does
    monkeypatch.chdir(tmp_path)
    report.main(["--reports", str(relative), "--nsys", "/nonexistent"]
                + (["--compare", str(relative.parent / other)] if other else []))
    assert (copy / page).read_text() == (committed / page).read_text()


def test_nothing_to_report_is_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "common.report", "--reports", str(tmp_path / "missing"),
                           "--examples", str(tmp_path / "none")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert f"{tmp_path}/missing/ does not exist and {tmp_path}/none/ has no example results" in done.stderr


def test_help_names_the_options():
    done = subprocess.run([sys.executable, "-m", "common.report", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0
    assert all(option in done.stdout for option in ("--reports", "--examples", "--nsys", "--compare"))


# ---------------------------------------------------------------------------------------------------
# Exporting .nsys-rep files


def fake_nsys(tmp_path, source):
    """An `nsys` that records its arguments and 'exports' by copying a real export to --output."""
    script = tmp_path / "nsys"
    script.write_text(f"#!{sys.executable}\nimport shutil, sys\n"
                      f"open({str(tmp_path / 'nsys-args')!r}, 'w').write('\\n'.join(sys.argv[1:]))\n"
                      f"shutil.copy({str(source)!r}, sys.argv[sys.argv.index('--output') + 1])\n")
    script.chmod(0o755)
    return str(script)


def test_exports_a_report_with_nsys(tmp_path):
    rep = tmp_path / "7_cuda_graph.nsys-rep"
    rep.write_bytes(b"report")
    database = nsys_trace.sqlite_for(tmp_path, "7_cuda_graph", fake_nsys(tmp_path, PROBE_FIXTURES / "graph.sqlite"))
    assert database == tmp_path / "7_cuda_graph.sqlite"
    assert (tmp_path / "nsys-args").read_text().split("\n") == [
        "export", "--type", "sqlite", "--force-overwrite", "true", "--output", str(database), str(rep)]
    assert nsys_trace.trace_figures(nsys_trace.read_trace(database)).graph_launches == 1


def test_reuses_an_up_to_date_export_and_refuses_a_stale_one(tmp_path):
    rep, database = tmp_path / "7_cuda_graph.nsys-rep", tmp_path / "7_cuda_graph.sqlite"
    rep.write_bytes(b"report")
    shutil.copy(PROBE_FIXTURES / "graph.sqlite", database)
    os.utime(rep, (1_000, 1_000))
    assert nsys_trace.sqlite_for(tmp_path, "7_cuda_graph", fake_nsys(tmp_path, PROBE_FIXTURES / "graph.sqlite")) == database
    assert not (tmp_path / "nsys-args").exists()  # no export needed
    os.utime(database, (500, 500))
    with pytest.raises(nsys_trace.TraceUnavailable, match="7_cuda_graph.sqlite is older than it"):
        nsys_trace.sqlite_for(tmp_path, "7_cuda_graph", None)


# ---------------------------------------------------------------------------------------------------
# The trimming tool


def test_fixtures_are_small():
    for path in FIXTURES.rglob("*.sqlite"):
        assert path.stat().st_size < FIXTURE_SIZE_LIMIT, path


def test_trimming_keeps_the_figures(tmp_path, capsys):
    source = PROBE_FIXTURES / "overlap.sqlite"
    trim_nsys_sqlite.main([str(source), str(tmp_path / "trimmed.sqlite"), "--margin-ms", "0"])
    assert "same figures" in capsys.readouterr().out
    before, after = (nsys_trace.read_trace(path) for path in (source, tmp_path / "trimmed.sqlite"))
    assert nsys_trace.trace_figures(before) == nsys_trace.trace_figures(after)
    assert before.ranges == after.ranges and before.gpu_ops == after.gpu_ops


def test_trimming_keeps_the_memory_record_up_to_the_window_s_end(tmp_path, capsys):
    source = make_memory_export(tmp_path / "memory.sqlite")
    trim_nsys_sqlite.main([str(source), str(tmp_path / "trimmed.sqlite"), "--margin-ms", "0"])
    assert "same figures" in capsys.readouterr().out
    db = sqlite3.connect(tmp_path / "trimmed.sqlite")
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"CUDA_GPU_MEMORY_USAGE_EVENTS", "ENUM_CUDA_MEM_KIND", "ENUM_CUDA_DEV_MEM_EVENT_OPER"} <= tables
    kept = [start // MS for (start,) in db.execute("SELECT start FROM CUDA_GPU_MEMORY_USAGE_EVENTS ORDER BY start")]
    assert kept == [ms for ms, *_ in MEMORY_EVENTS if ms <= 40]  # those before the window too; none after it
    assert db.execute("SELECT COUNT(*) FROM ENUM_CUDA_DEV_MEM_EVENT_OPER").fetchone()[0] == 2
    assert nsys_trace.read_trace(tmp_path / "trimmed.sqlite").memory == nsys_trace.read_trace(source).memory


def test_trimming_an_export_without_the_window_fails_cleanly(tmp_path):
    source = make_old_layout_export(tmp_path / "no_window.sqlite", with_window=False)
    with pytest.raises(SystemExit, match="no NVTX range 'last 3 batches'"):
        trim_nsys_sqlite.main([str(source), str(tmp_path / "out.sqlite")])
    assert not (tmp_path / "out.sqlite").exists()



def test_floors_measured_the_earlier_way_are_named(tmp_path, no_nsys):
    floor = {"h2d_ms": 1.4, "inference_ms": 3.2}
    write_result(tmp_path, 1, "1_step", 30.0, floor=floor)
    write_result(tmp_path, 2, "2_step", 15.0, floor=floor, floor_method="back to back on one stream")
    report.main(["--reports", str(tmp_path)])
    summary = (tmp_path / "README.md").read_text()
    assert [row[3] for row in table_rows(summary, "| step | H2D (ms) | inference")] == ["3.20", "3.20"]
    assert "The floors of 1_step were measured by an earlier version of common/floor.py" in summary


# ---------------------------------------------------------------------------------------------------
# Device memory in real traces (tests/fixtures/nsys_memory: made on an H200 with --cuda-memory-usage=true)

MEMORY_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nsys_memory"


def running_sum_peak_mib(database):
    """The trace's device memory in use at its highest up to the end of "all batches", by a plain running sum of
    the table's rows (labels from the export's own enum tables), for the report's reading to be checked against."""
    connection = sqlite3.connect(database)
    window_end = connection.execute(
        "SELECT n.end FROM NVTX_EVENTS AS n LEFT JOIN StringIds AS s ON s.id = n.textId "
        "WHERE COALESCE(n.text, s.value) = 'all batches' ORDER BY n.start DESC LIMIT 1").fetchone()[0]
    rows = connection.execute(
        "SELECT o.label, m.bytes FROM CUDA_GPU_MEMORY_USAGE_EVENTS AS m "
        "JOIN ENUM_CUDA_DEV_MEM_EVENT_OPER AS o ON o.id = m.memoryOperationType "
        "JOIN ENUM_CUDA_MEM_KIND AS k ON k.id = m.memKind "
        "WHERE k.name = 'CUDA_MEMOPR_MEMORY_KIND_DEVICE' AND m.start <= ? ORDER BY m.start", (window_end,)).fetchall()
    in_use = peak = 0
    for operation, size in rows:
        in_use += size if operation == "Allocation" else -size
        peak = max(peak, in_use)
    return peak / 2**20


@pytest.mark.parametrize("stem", ["4_use_fp16", "8_multi_context"])
def test_the_traces_memory_in_use_is_the_running_sum_and_below_the_drivers_figure(stem):
    database = MEMORY_FIXTURES / f"{stem}.sqlite"
    result = json.loads((MEMORY_FIXTURES / f"{stem}.json").read_text())
    batches = result["batches"] * result["repeats"]
    figures = nsys_trace.trace_figures(nsys_trace.read_trace(database, nsys_trace.RUN_RANGE), batches)
    assert figures.memory_peak_mib == pytest.approx(running_sum_peak_mib(database), abs=0.1)
    held = result["memory"]
    # The allocator's calls hold at least what the step knows it holds, and less than the driver's figure, which
    # also counts the CUDA context, the modules' code and the driver's own memory.
    known = held["weights_mib"] + sum(held["activations_mib"]) + held["buffers_mib"]
    assert known <= figures.memory_peak_mib < held["peak_in_use_mib"]


def test_a_second_context_shows_in_the_traces_memory():
    peaks = {stem: nsys_trace.trace_figures(nsys_trace.read_trace(MEMORY_FIXTURES / f"{stem}.sqlite",
                                                                  nsys_trace.RUN_RANGE), 20).memory_peak_mib
             for stem in ("4_use_fp16", "8_multi_context")}
    assert peaks["8_multi_context"] > peaks["4_use_fp16"] + 300  # another 336 MiB pool, and step 8's buffers


def test_the_report_is_a_package_the_steps_never_import():
    """common/'s own modules and the numbered steps are what the steps use; common/report/ reads their results.
    Imports point down: nothing outside common/report/ (but tools and tests) imports it."""
    importers = [path.relative_to(REPO) for path in [*REPO.glob("common/*.py"), *REPO.glob("[0-9]*_*.py")]
                 if re.search(r"^\s*(from common\.report\b|from common import .*\breport\b|import common\.report)",
                              path.read_text(), re.M)]
    assert importers == []
    assert {path.name for path in (REPO / "common" / "report").glob("*.py")} >= {
        "__main__.py", "summary.py", "nsys_trace.py", "intervals.py", "plots.py", "ladder.py", "reproduce.py"}


# ---------------------------------------------------------------------------------------------------
# Batch latency beside throughput: steps 5 to 8 against the step before


def ladder_with_latency(directory, latencies):
    """Steps 4 to 8, each with windows at ms per batch and (p50, p99) latencies, or None for an older result."""
    per_batch = {4: 8.0, 5: 7.5, 6: 4.0, 7: 3.0, 8: 2.5}
    for step, stem in ((4, "4_use_fp16"), (5, "5_multi_streams"), (6, "6_multi_threads"), (7, "7_cuda_graph"),
                       (8, "8_multi_context")):
        ms = per_batch[step]
        latency = latencies.get(step)
        extra = {"latency_p50_ms": latency[0], "latency_p99_ms": latency[1]} if latency else {}
        write_result(directory, step, stem, 3 * ms, windows_ms_per_batch=[ms, ms * 1.01],
                     images_per_s=128 / stats.median([ms, ms * 1.01]) * 1e3, **extra)


def test_each_deeper_pipeline_says_how_its_latency_moved_and_why(tmp_path, no_nsys):
    ladder_with_latency(tmp_path, {4: (8.0, 9.0), 5: (9.2, 10.0), 6: (6.0, 8.0), 7: (12.0, 13.0), 8: (20.0, 24.0)})
    report.main(["--reports", str(tmp_path)])
    for page in ("summary.md", "README.md"):
        text = (tmp_path / page).read_text()
        rows = table_rows(text, "| step | what changed")
        assert [row[8] for row in rows] == ["8.00 / 9.00", "9.20 / 10.00", "6.00 / 8.00", "12.00 / 13.00",
                                            "20.00 / 24.00"]
        # batches in flight: p50 latency over the median ms per batch (7.5375 ms at step 5, 3.015 at step 7, ...)
        assert ("- p50 latency 9.20 ms at step 5 against 8.00 at step 4 (+15%; p99 10.00 against 9.00), 1.2 batches "
                "in flight against 1.0: step 5 overlaps the next batch's copy with this batch's inference, so a batch "
                "waits behind the one in flight.") in text
        assert ("- p50 latency 6.00 ms at step 6 against 9.20 at step 5 (−35%; p99 8.00 against 10.00), 1.5 batches "
                "in flight against 1.2: step 6 moves output processing to a thread, so a batch's result waits in a "
                "queue of two host buffers.") in text
        assert "- p50 latency 12.00 ms at step 7 against 6.00 at step 6 (+100%; p99 13.00 against 8.00), 4.0" in text
        assert ("- p50 latency 20.00 ms at step 8 against 12.00 at step 7 (+67%; p99 24.00 against 13.00), 8.0 batches "
                "in flight against 4.0: step 8 runs two batches at once on two contexts: each batch shares the GPU "
                "with another, so it takes longer while throughput rises.") in text


def test_latency_not_in_an_older_result_is_not_measured(tmp_path, no_nsys):
    ladder_with_latency(tmp_path, {4: (8.0, 9.0), 5: (9.0, 10.0), 7: (12.0, 13.0)})  # steps 6 and 8: older
    report.main(["--reports", str(tmp_path)])
    text = (tmp_path / "README.md").read_text()
    assert [row[8] for row in table_rows(text, "| step | what changed")][2:] == [
        "not measured", "12.00 / 13.00", "not measured"]
    assert ("- p50 latency not measured at step 6 against 9.00 at step 5: step 6 moves output processing") in text
    assert "- p50 latency 12.00 ms at step 7 against not measured at step 6: step 7 keeps" in text
    assert "- p50 latency not measured at step 8 against 12.00 at step 7: step 8 runs" in text


# ---------------------------------------------------------------------------------------------------
# The ladder chart: each step against its own floor, step 9 apart


def chart_run(directory):
    """Steps 1 (fp32), 3 (fp32), 4 (FP16), 8 (FP16) with floors of their own engines, and step 9 on its mixed
    workload (a mean of 72 images per batch)."""
    fp32, fp16 = {"h2d_ms": 1.4, "inference_ms": 7.2}, {"h2d_ms": 1.5, "inference_ms": 3.3}
    write_result(directory, 1, "1_baseline", 63.0, precision="fp32", floor=fp32)
    write_result(directory, 3, "3_use_pin_memory", 31.5, precision="fp32", floor={"h2d_ms": 1.3, "inference_ms": 7.0},
                 memory=memory(44.7, [77.0], 400.0))
    write_result(directory, 4, "4_use_fp16", 15.0, precision="fp16", floor=fp16, memory=memory(22.4, [38.5], 300.0))
    write_result(directory, 8, "8_multi_context", 9.0, precision="fp16", floor={"h2d_ms": 3.4, "inference_ms": 3.2})
    write_result(directory, 9, "9_multi_profiles", 6.0, precision="fp16", floor=fp16, images_per_s=72 / 2.0 * 1e3,
                 memory=memory(22.4, [9.6, 38.5], 330.0))
    return directory


def test_the_ladder_chart_measures_each_step_against_its_own_floor_and_draws_step_9_apart(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "plot_ladder", lambda path, bars, xlabel, title, memory=None: drawn.append(
        (bars, memory)))
    results, _ = ladder.load_results(chart_run(tmp_path))
    ladder.draw_ladder(tmp_path / "ladder.png", results)
    bars, memory_bars = drawn[0]
    assert [(bar.label, bar.floor_ms, bar.apart) for bar in bars] == [
        ("1_baseline", 7.2, False), ("3_use_pin_memory", 7.0, False), ("4_use_fp16", 3.3, False),
        ("8_multi_context", 3.4, False), ("9_multi_profiles", None, True)]  # H2D is step 8's larger part
    assert bars[-1].note == "another workload: not a rung"
    assert "other workload" not in " ".join(bar.note for bar in bars[:-1])
    assert [bar and bar.weights_mib for bar in memory_bars] == [None, 44.7, 22.4, None, 22.4]  # the bars' rows
    monkeypatch.undo()
    ladder.draw_ladder(tmp_path / "drawn.png", results)
    assert (tmp_path / "drawn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_chart_rows_put_the_other_workload_below_a_gap():
    bars = [plots.LadderBar(name, 1.0, 1.0, 1.0, "", apart=name == "9") for name in ("1", "2", "9")]
    assert plots.ladder_rows(bars) == [0, 1, 2 + plots.APART_GAP]


def test_the_page_says_what_the_chart_draws(tmp_path, no_nsys):
    report.main(["--reports", str(chart_run(tmp_path))])
    page = (tmp_path / "README.md").read_text()
    assert "![ladder](ladder.png)" in page
    assert ("on the step's own engine (fp32 for 1_baseline, 3_use_pin_memory; fp16 for 4_use_fp16, 8_multi_context). "
            "9_multi_profiles runs another workload (its batches' mean size differs from 1_baseline's) and is drawn "
            "apart, below a divider (another workload: not a rung), without a floor") in page
    floors = {row[0]: row[4] for row in table_rows(page, "| step | H2D (ms) | inference")}
    assert floors == {"1_baseline": "2.92×", "3_use_pin_memory": "1.50×", "4_use_fp16": "1.52×",
                      "8_multi_context": "0.88×", "9_multi_profiles": "– (another workload)"}


# ---------------------------------------------------------------------------------------------------
# The lessons' own measurements: step 3's staging, step 8's one context against two, step 9's one profile


def lesson_run(directory, **fields):
    """Steps 2, 3, 8 and 9 of a run; `fields` adds a step's new fields by stem: {"3_use_pin_memory": {...}}."""
    for step, stem, ms in ((2, "2_reuse_buffers", 20.0), (3, "3_use_pin_memory", 10.0), (8, "8_multi_context", 3.0),
                           (9, "9_multi_profiles", 2.0)):
        extra = fields.get(stem, {})
        write_result(directory, step, stem, 3 * ms, windows_ms_per_batch=[ms, ms * 1.02],
                     latency_p50_ms=3 * ms, latency_p99_ms=4 * ms, **extra)
    return directory


def staging(ms):
    return {"staging": {"how": "np.copyto of the pageable batch into a pinned buffer, 10 batches", "ms_per_batch": ms,
                        "per_image_us": ms * 1e3 / 128, "windows_ms": [ms * 0.99, ms, ms * 1.03]}}


@pytest.mark.parametrize("cost, after", [
    (4.0, " The saving outlives it: 6.10 ms per batch remain after staging."),
    (12.0, " Paid per batch, it consumes the saving (12.00 ms ≥ 10.10): a pipeline that stages its batches gains "
           "nothing from pinned memory.")], ids=["smaller than the saving", "consumes it"])
def test_step_3_sets_its_saving_beside_what_staging_costs(tmp_path, no_nsys, cost, after):
    report.main(["--reports", str(lesson_run(tmp_path, **{"3_use_pin_memory": staging(cost)}))])
    page = (tmp_path / "README.md").read_text()
    # medians 20.2 and 10.1 ms per batch: a saving of 10.10 ms
    assert (f"3_use_pin_memory saves 10.10 ms per batch against 2_reuse_buffers (2.00× faster); staging the batch into "
            f"pinned memory costs {cost:.2f} ms per batch ({cost * 1e3 / 128:.1f} us per image; windows "
            f"{cost * 0.99:.2f}–{cost * 1.03:.2f} ms), which a pipeline pays unless its loader writes pinned memory "
            f"(DataLoader(pin_memory=True) or a decoder writing there).{after} How it is measured: np.copyto of the "
            "pageable batch into a pinned buffer, 10 batches.") in page


def test_lessons_without_their_new_fields_say_not_measured(tmp_path, no_nsys):
    report.main(["--reports", str(lesson_run(tmp_path))])
    page = (tmp_path / "README.md").read_text()
    assert ("3_use_pin_memory saves 10.10 ms per batch against 2_reuse_buffers (2.00× faster); staging a batch into "
            "pinned memory: not measured (no \"staging\" in its result).") in page
    assert ("Two contexts against one at the same batch size: not measured (no \"contexts_compared\" in "
            "8_multi_context's result).") in page
    assert ("The same workload on a one-profile engine: not measured (no \"one_profile\" in 9_multi_profiles's "
            "result).") in page


def run_figures_of(median, spread, latency):
    return {"windows_ms_per_batch": [median * 0.98, median, median * (0.98 + spread / 100)],
            "median_ms_per_batch": median, "spread_pct": spread, "images_per_s": 128 / median * 1e3,
            "latency_p50_ms": latency, "latency_p99_ms": latency * 1.5}


CONTEXTS_COMPARED = {"contexts_compared": {
    "how": "the same batches on one context and on two, in the same process after the timed run",
    "rows": [{"batch_size": 128, "one_context": run_figures_of(3.9, 2.0, 8.0),
              "two_contexts": run_figures_of(3.0, 3.0, 12.0), "within_noise": False, "speedup": 1.3},
             {"batch_size": 16, "one_context": run_figures_of(0.9, 8.0, 2.0),
              "two_contexts": run_figures_of(0.88, 9.0, 3.5), "within_noise": True, "speedup": 0.9 / 0.88}]}}


def test_step_8_says_where_two_contexts_pay_and_where_they_only_add_memory_and_latency(tmp_path, no_nsys):
    fields = {**CONTEXTS_COMPARED, "memory": memory(22.4, [38.5, 38.5], 350.0)}
    report.main(["--reports", str(lesson_run(tmp_path, **{"8_multi_context": fields}))])
    page = (tmp_path / "README.md").read_text()
    assert "How: the same batches on one context and on two, in the same process after the timed run" in page
    assert table_rows(page, "| batch | one context") == [
        ["128", "3.90 (2.0)", "3.00 (3.0)", "1.30×", "32,821 / 42,667", "8.00 / 12.00", "12.00 / 18.00",
         "two contexts pay"],
        ["16", "0.90 (8.0)", "0.88 (9.0)", "1.02×", "142,222 / 145,455", "2.00 / 3.50", "3.00 / 5.25", "within noise"]]
    assert ("- At batch 128, two contexts pay: 1.30× one context's throughput (3.00 ms per batch against 3.90), at p50 "
            "latency 12.00 ms against 8.00 with one.") in page
    assert ("- At batch 16, two contexts are within noise of one (1.02×): they only add memory (a second activation "
            "pool, 38.5 MiB) and latency (p50 latency 3.50 ms against 2.00 with one).") in page


@pytest.mark.parametrize("within_noise, speedup, verdict", [
    (False, 1.4, "The two profiles buy 1.40× the throughput of one (one profile's median over 9_multi_profiles's), "
                 "each batch size running on a profile tuned for it."),
    (True, 1.03, "The two profiles are within noise of one (1.03×): on this workload they buy no throughput, and hold "
                 "a second context's memory.")], ids=["buy throughput", "within noise"])
def test_step_9_says_what_two_profiles_buy_against_one(tmp_path, no_nsys, within_noise, speedup, verdict):
    one = {"engine": "engines/resnet18_fp16.torch.pt", "profiles": [[1, 128, 128]], **run_figures_of(2.8, 4.0, 9.0),
           "within_noise": within_noise, "speedup": speedup}
    report.main(["--reports", str(lesson_run(tmp_path, **{"9_multi_profiles": {"one_profile": one}}))])
    page = (tmp_path / "README.md").read_text()
    assert ("The same mixed workload through the same pipeline on a one-profile engine (engines/resnet18_fp16.torch.pt, "
            "profile 1:128:128), right after 9_multi_profiles in the same process: 2.80 ms per batch (2.74–2.86), "
            "45,714 images/s, batch latency p50 / p99 9.00 / 13.50 ms; 9_multi_profiles: 2.02 ms per batch "
            f"(2.00–2.04), 64,000 images/s, p50 / p99 6.00 / 8.00 ms. {verdict}") in page


# ---------------------------------------------------------------------------------------------------
# Step 13 (INT8), a step beyond the ladder like step 12


INT8_FIELDS = {"builds_on": "8_multi_context", "precision": "int8",
               "accuracy": {"top1_agreement": 0.9921875, "top5_agreement": 0.998, "rel_err": 0.0312,
                            "tolerance": {"min_top1": 0.97, "max_rel_err": 0.05}, "passed": True},
               "int8": {"quantizer": "modelopt INT8 Q/DQ, entropy calibration", "calibration_batches": 8,
                        "calibration_batch_size": 32, "calibration_seed": 1, "speed_is_int8": False,
                        "note": "the stand-in runs INT8's numerics in fp16/fp32 kernels."}}


def test_step_13_is_a_row_after_the_ladder_with_its_accuracy_and_not_int8_s_speed(tmp_path, no_nsys):
    write_result(tmp_path, 8, "8_multi_context", 9.0, windows_ms_per_batch=[3.0, 3.1], images_per_s=128 / 3.05e-3)
    write_result(tmp_path, 13, "13_int8", 9.0, windows_ms_per_batch=[2.9, 3.0], images_per_s=128 / 2.95e-3,
                 latency_p50_ms=15.0, latency_p99_ms=18.0, **INT8_FIELDS)
    report.main(["--reports", str(tmp_path)])
    for page in ("summary.md", "README.md"):
        text = (tmp_path / page).read_text()
        rungs = table_rows(text, "| step | what changed | ms per batch | range")
        assert [row[0] for row in rungs] == ["8_multi_context"]
        [row] = table_rows(text, "| step | what changed | ms per batch | range (ms) | images/s | vs its rung")
        assert row[0] == "13_int8" and row[2] == "2.95 (not INT8's speed)" and row[3] == "2.90–3.00"
        assert row[5] == "1.03× step 8 (within noise) (not INT8's speed)"
        assert row[6:8] == ["15.00 / 18.00", "99.22% / 99.80% / 3.1e-02 (pass)"]
    page = (tmp_path / "README.md").read_text()
    assert "### 13_int8: accuracy against fp32 (on 8_multi_context)" in page
    assert ("- Quantizer: modelopt INT8 Q/DQ, entropy calibration; 8 calibration batches of 32 images (seed 1).\n"
            "- Against the fp32 reference: top-1 agreement 99.22%, top-5 agreement 99.80%, relative error 3.1e-02; it "
            "passes its tolerance (min_top1 0.97, max_rel_err 0.05).\n"
            "- Its time is **not INT8's speed**: the stand-in runs INT8's numerics in fp16/fp32 kernels.") in page


def test_step_13_s_time_is_unmarked_when_it_is_int8_s_speed(tmp_path, no_nsys):
    write_result(tmp_path, 8, "8_multi_context", 9.0)
    fields = {**INT8_FIELDS, "int8": {**INT8_FIELDS["int8"], "speed_is_int8": True}}
    fields["accuracy"] = {**fields["accuracy"], "passed": False}
    del fields["accuracy"]["top5_agreement"]
    write_result(tmp_path, 13, "13_int8", 6.0, **fields)
    report.main(["--reports", str(tmp_path)])
    page = (tmp_path / "README.md").read_text()
    assert "not INT8's speed" not in page
    [row] = table_rows(page, "| step | what changed | ms per batch | range (ms) | images/s | vs its rung")
    assert row[2] == "2.00" and row[7] == "99.22% / not measured / 3.1e-02 (**FAIL**)"
    assert "it **fails** its tolerance" in page and "- Its time is INT8's speed" in page


# ---------------------------------------------------------------------------------------------------
# Step 2 in the trace: the pageable copies moved more than the lesson saved


def copy_result(stem, directory):
    shutil.copy(COURSE_FIXTURES / f"{stem}.json", directory)
    shutil.copy(course_trace(stem), directory)


def test_step_2_in_the_trace_says_its_pageable_copies_took_longer_than_the_saving(tmp_path, no_nsys):
    for stem in ("1_baseline", "2_reuse_buffers"):
        copy_result(stem, tmp_path)
    report.main(["--reports", str(tmp_path)])
    page = (tmp_path / "README.md").read_text()
    first, second = course_figures("1_*"), course_figures("2_*")
    saving, change = first.alloc_free_ms - second.alloc_free_ms, second.h2d_ms - first.h2d_ms
    assert change > saving > 0  # the committed traces: 10.515 ms of H2D in step 1, 12.124 in step 2; 0.726 saved
    section = page.split("### Step 2 in the trace\n\n", 1)[1].split("\n\n", 1)[0]
    assert section.endswith(
        f"But its H2D copies from pageable memory, which the lesson leaves as they are, took {second.h2d_ms:.3f} ms per "
        f"batch in step 2's trace against {first.h2d_ms:.3f} in step 1's (+{change:.3f} ms), more than the "
        f"{saving:.3f} ms per batch that reusing buffers saved: a pageable copy's cost moves from one process to the "
        "next, so the wall clock cannot show the saving.")


def without_phases(database, names):
    db = sqlite3.connect(database)
    db.executemany("DELETE FROM NVTX_EVENTS WHERE text = ?", [(name,) for name in names])
    db.commit()
    db.close()
    return database


@pytest.mark.parametrize("second, says", [
    # step 2: the same copies without alloc/free: H2D equal, 1 ms per batch saved
    (lambda path: without_phases(make_phases_export(path, 80), ("alloc", "free")), None),
    # step 2: 2 ms of H2D per batch against step 1's 3.333, more than the 1 ms saved
    (lambda path: make_old_layout_export(path),
     "But its H2D copies from pageable memory, which the lesson leaves as they are, took 2.000 ms per batch in step 2's "
     "trace against 3.333 in step 1's (−1.333 ms), more than the 1.000 ms per batch that reusing buffers saved: a "
     "pageable copy's cost moves from one process to the next, so part of step 2's gain in this run is the copy's, not "
     "the lesson's.")], ids=["copies alike", "copies shorter in step 2"])
def test_step_2_in_the_trace_names_the_copies_only_where_they_moved_more_than_the_saving(tmp_path, no_nsys, second,
                                                                                        says):
    write_result(tmp_path, 1, "1_baseline", 30.0)
    write_result(tmp_path, 2, "2_reuse_buffers", 20.0)
    make_phases_export(tmp_path / "1_baseline.sqlite", 80)  # 1 ms of alloc + free and 3.333 ms of H2D per batch
    second(tmp_path / "2_reuse_buffers.sqlite")
    report.main(["--reports", str(tmp_path)])
    section = (tmp_path / "README.md").read_text().split("### Step 2 in the trace\n\n", 1)[1].split("\n\n", 1)[0]
    assert "1.000 ms per batch in \"alloc\" and \"free\"" in section
    assert ("But its H2D" not in section) if says is None else section.endswith(says)


# ---------------------------------------------------------------------------------------------------
# The results page: where its figures come from, steps 10 to 12 from their JSONs, the pictures


def test_the_page_starts_with_the_device_backend_date_and_commands(tmp_path, no_nsys):
    label = "compiled PyTorch stand-in (Inductor, torch 2.11.0+cu130), not TensorRT"
    for step, stem in ((1, "1_baseline"), (2, "2_reuse_buffers"), (3, "3_use_pin_memory")):
        write_result(tmp_path, step, stem, 30.0 / step, backend_label=label, under_nsys=step < 3,
                     command=f"python {stem}.py --reports reports/profiled --repeats 2",
                     date=f"2026-12-02T10:0{step}:00+00:00")
    report.main(["--reports", str(tmp_path)])
    lines = (tmp_path / "README.md").read_text().splitlines()
    assert lines[:8] == [
        f"# Results: NVIDIA H100 80GB HBM3, {label}", "",
        "- Device: NVIDIA H100 80GB HBM3", f"- Backend: {label}",
        "- Date: 2026-12-02T10:01:00+00:00 to 2026-12-02T10:03:00+00:00", "- Commands:",
        "  - `python <step>.py --reports reports/profiled --repeats 2` under nsys: steps 1, 2",
        "  - `python <step>.py --reports reports/profiled --repeats 2`: step 3"]


def test_the_short_summary_is_the_timings_table_and_a_link_to_the_page(tmp_path, no_nsys):
    report.main(["--reports", str(memory_run(tmp_path))])
    summary, page = ((tmp_path / name).read_text() for name in ("summary.md", "README.md"))
    assert table_rows(summary, "| step | what changed") == table_rows(page, "| step | what changed")
    assert "[README.md](README.md)" in summary
    assert "## GPU memory" not in summary and "## How far from the floor" not in summary
    assert "## GPU memory" in page and "## How far from the floor" in page


def beyond_run(directory):
    """The committed H100 results of steps 7, 8, 10, 11 and 12, with their traces."""
    for stem in ("7_cuda_graph", "8_multi_context", "10_batch_size_sweep", "11_dynamic_batching",
                 "12_gpu_preprocessing"):
        shutil.copy(EXAMPLE_RESULTS / f"{stem}.json", directory)
        if (EXAMPLE_RESULTS / f"{stem}.sqlite").exists():
            shutil.copy(EXAMPLE_RESULTS / f"{stem}.sqlite", directory)
    return {stem: json.loads((directory / f"{stem}.json").read_text()) for stem in (
        "10_batch_size_sweep", "11_dynamic_batching", "12_gpu_preprocessing")}


def test_the_page_states_step_10_s_sweep_from_its_json(tmp_path, no_nsys):
    results = beyond_run(tmp_path)
    report.main(["--reports", str(tmp_path)])
    page = (tmp_path / "README.md").read_text()
    sweep = results["10_batch_size_sweep"]["sweeps"][0]
    rows = {row["batch_size"]: row for row in sweep["rows"]}
    table = table_rows(page, "| batch | PyTorch stand-in")
    assert [int(row[0]) for row in table] == sorted(rows)
    knee, best = rows[sweep["knee"]], rows[sweep["peak"]]
    assert [row[2] for row in table if row[0] == str(sweep["knee"])] == [
        f"{knee['images_per_s']:,.0f} ({knee['spread_pct']:.1f}), knee"]
    below = rows[max(size for size in rows if size < sweep["knee"])]
    assert (f"{sweep['label']}: the knee is batch {sweep['knee']} "
            f"({100 * knee['images_per_s'] / best['images_per_s']:.1f}% of the peak): batch {below['batch_size']} reaches "
            f"{100 * below['images_per_s'] / best['images_per_s']:.1f}% and its fastest run "
            f"{100 * max(below['throughput_runs']) / best['images_per_s']:.1f}%, below the 95% threshold; the peak (batch "
            f"{sweep['peak']}) adds +{100 * (best['images_per_s'] / knee['images_per_s'] - 1):.1f}% throughput for "
            f"{best['latency_ms'] / knee['latency_ms']:.1f}× the knee's latency.") in page
    eager = {row["batch_size"]: row for row in results["10_batch_size_sweep"]["sweeps"][1]["rows"]}
    assert f"{rows[1]['images_per_s'] / eager[1]['images_per_s']:.1f}× at batch 1, " in page
    assert "![batch-size sweep](10_batch_size_sweep.png)" in page


def test_the_page_states_step_11_s_runs_from_its_json(tmp_path, no_nsys):
    runs = beyond_run(tmp_path)["11_dynamic_batching"]["runs"]
    report.main(["--reports", str(tmp_path)])
    page = (tmp_path / "README.md").read_text()
    assert len(table_rows(page, "| setting | offered/s")) == len(runs)
    alone = max((run for run in runs if run["max_batch_size"] == 1), key=lambda run: run["served_per_s"])
    batched = max((run for run in runs if run["max_batch_size"] > 1), key=lambda run: run["served_per_s"])
    assert (f"- One request at a time serves at most {alone['served_per_s']:,.0f} requests/s (at "
            f"{alone['offered_per_s']:,.0f} offered)") in page
    assert (f"- Batching serves up to {batched['served_per_s']:,.0f} requests/s "
            f"({batched['served_per_s'] / alone['served_per_s']:.1f}× as many)") in page
    assert f"- Over the {len(runs)} runs: 0 requests lost, 0 served twice." in page
    assert "![dynamic batching](11_dynamic_batching.png)" in page


def test_the_page_states_step_12_s_figures_from_its_json_and_traces(tmp_path, no_nsys):
    step12 = beyond_run(tmp_path)["12_gpu_preprocessing"]
    report.main(["--reports", str(tmp_path)])
    page = (tmp_path / "README.md").read_text()
    rows = {(row["batch_size"], row["input"]): row for row in step12["latency_alone"]["rows"]}
    table = table_rows(page, "| batch | float32 input")
    assert table[-1] == ["32", *(f"{rows[(32, name)][key]:.3f}" for name in ("float32", "uint8")
                                  for key in ("latency_ms", "h2d_ms"))]
    old, new = rows[(32, "float32")]["latency_ms"], rows[(32, "uint8")]["latency_ms"]
    assert f"{new - old:+.3f} ms ({100 * (new / old - 1):+.0f}%) at batch 32.".replace("-", "−") in page
    mine, theirs = course_figures("12_*"), course_figures("8_*")
    assert (f"- 12_gpu_preprocessing in its trace: H2D {mine.h2d_ms:.3f} ms per batch against {theirs.h2d_ms:.3f} in "
            f"8_multi_context's, {theirs.h2d_ms / mine.h2d_ms:.1f}× shorter") in page
    assert "[12_gpu_preprocessing](timeline_12_gpu_preprocessing.png)" in page


def test_the_page_links_pictures_relative_to_itself(tmp_path, monkeypatch, no_nsys):
    source = tmp_path / "results" / "h100-torch"
    probe_reports(source)
    shutil.copy(EXAMPLE_RESULTS / "10_batch_size_sweep.json", source)
    monkeypatch.chdir(tmp_path)
    report.main(["--examples", "results/h100-torch"])
    page = (tmp_path / "reports" / "README.md").read_text()
    assert "![batch-size sweep](../results/h100-torch/10_batch_size_sweep.png)" in page  # beside its JSON
    assert "[7_cuda_graph](timeline_7_cuda_graph.png)" in page and "![ladder](ladder.png)" in page  # drawn here
    for link in re.findall(r"\]\(([^)]+\.png)\)", page):
        assert (tmp_path / "reports" / link).exists() or link.startswith("../results/"), link



"""Tests of the timeline pictures: the window they draw (nsys_trace.read_timeline, middle_window), their row of CUDA
API calls per host thread (nsys_trace.api_kind), their lanes (every stream and host thread that drives the GPU:
plots.stream_lanes_of, plots.thread_lanes_of) and what tools/trim_nsys_sqlite.py keeps of them.

The traces are the real, trimmed Nsight Systems exports of the course's steps made on the lent H100 and H200
(tests/fixtures/h100-eager/<stem>.sqlite with <stem>.json; tests/fixtures/nsys_memory/) and the probe traces of
tests/fixtures/nsys_probe/, which predate the NVTX range "all batches".
"""
import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from common.report import nsys_trace, plots, summary as report
from tools import trim_nsys_sqlite

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE_RESULTS = REPO / "tests" / "fixtures" / "h100-eager"
PROBE_FIXTURES = FIXTURES / "nsys_probe"
MEMORY_FIXTURES = FIXTURES / "nsys_memory"
MS = 1_000_000  # ns


def step_trace(pattern, directory=EXAMPLE_RESULTS):
    """A course step's trace (a stem pattern such as '7_*'), or a skip that names the missing file."""
    found = sorted(directory.glob(f"{pattern}.sqlite"))
    if not found:
        pytest.skip(f"missing real fixture {directory.relative_to(REPO)}/{pattern}.sqlite "
                    "(make profile-all on a GPU, then tools/trim_nsys_sqlite.py)")
    return found[0]


def run_batches(database):
    """The step's batches × repeats, from its JSON result beside the trace."""
    result = json.loads(database.with_suffix(".json").read_text())
    return result["batches"] * result.get("repeats", 1)


def timeline(pattern, directory=EXAMPLE_RESULTS):
    database = step_trace(pattern, directory)
    return nsys_trace.read_timeline(database, run_batches(database))


def run_range(database):
    with sqlite3.connect(database) as connection:
        return nsys_trace.find_window(connection, database, nsys_trace.RUN_RANGE)


def course_traces():
    paths = sorted(EXAMPLE_RESULTS.glob("*.sqlite")) + sorted(MEMORY_FIXTURES.glob("*.sqlite"))
    return paths or [pytest.param(None, marks=pytest.mark.skip(reason="missing real fixtures <stem>.sqlite"))]


def api_kinds_by_thread(trace):
    return {thread: {nsys_trace.api_kind(call.name) for call in calls} for thread, calls, _ in
            plots.thread_lanes_of(trace)}


def phases_of(thread, trace):
    return {r.name for r in trace.ranges if r.thread == thread}


# ---------------------------------------------------------------------------------------------------
# The window


def test_middle_window_is_three_batches_around_the_middle_on_batch_starts():
    run = (0, 200 * MS)  # 20 batches of 10 ms
    starts = [5 * MS + 10 * MS * k for k in range(20)]
    assert nsys_trace.middle_window(run, 20, starts) == (85 * MS, 115 * MS)  # the middle is 100 ms
    assert nsys_trace.middle_window(run, 20) == (85 * MS, 115 * MS)  # no batch starts: the same span, unanchored
    jittered = [start + (MS if k % 2 else -MS) for k, start in enumerate(starts)]  # 84, 96, 104, 116 ms...
    assert nsys_trace.middle_window(run, 20, jittered) == (84 * MS, 116 * MS)  # each end on the nearest start
    far = [0, 190 * MS]  # no batch start within half a batch of either end: they stay where the run puts them
    assert nsys_trace.middle_window(run, 20, far) == (85 * MS, 115 * MS)
    # 40 batches of 5 ms: 15 ms from 92.5 opens on the start at 95; none within 2.5 ms of 110 to close on
    assert nsys_trace.middle_window(run, 40, starts) == (95 * MS, 110 * MS)
    assert nsys_trace.middle_window(run, 3, starts) == run  # a run of three batches is drawn whole


def trace_id(path):
    return f"{path.parent.name}/{path.stem}" if path else ""


@pytest.mark.parametrize("database", course_traces(), ids=trace_id)
def test_the_timeline_draws_the_middle_of_the_run(database):
    run, batches = run_range(database), run_batches(database)
    trace = nsys_trace.read_timeline(database, batches)
    length, batch_ns = run[1] - run[0], (run[1] - run[0]) / batches
    start, end = trace.window
    assert run[0] + 0.3 * length < start < end < run[1] - 0.3 * length, (trace.window, run)  # away from both ends
    assert 2 * batch_ns <= end - start <= 4 * batch_ns  # about three batches
    assert nsys_trace.WINDOW_RANGE not in trace.window_label and "middle" in trace.window_label
    assert trace.axis_range == (nsys_trace.RUN_RANGE, *run)
    with sqlite3.connect(database) as connection:  # it opens on a batch's "infer" where one is near
        starts = nsys_trace.batch_starts(connection, run)
    assert len(starts) == batches  # one "infer" per batch: what the batch count defaults to
    assert nsys_trace.read_timeline(database).window == trace.window
    if start in starts:
        assert f"the {nsys_trace.ordinal(starts.index(start) + 1)} batch's \"infer\" starts" in trace.window_label


def test_a_trace_without_the_run_range_is_drawn_over_the_last_3_batches():
    for database in sorted(PROBE_FIXTURES.glob("*.sqlite")):
        trace = nsys_trace.read_timeline(database, batches=10)
        assert trace.window == nsys_trace.read_trace(database).window
        assert trace.window_label.startswith('the NVTX range "last 3 batches"'), trace.window_label
        assert 'has no NVTX range "all batches"' in trace.window_label


def trim_to_the_end(source, target, margin_ns=10 * MS):
    """What the trimmer kept before the timelines drew the middle: the rows near "last 3 batches" only."""
    shutil.copy(source, target)
    with sqlite3.connect(target) as connection:
        keep_from, keep_to = nsys_trace.find_window(connection, target)
        keep_from, keep_to = keep_from - margin_ns, keep_to + margin_ns
        for table in trim_nsys_sqlite.TIMED_TABLES:
            connection.execute(f"DELETE FROM {table} WHERE NOT (start < ? AND end > ?)", (keep_to, keep_from))
        connection.execute("DELETE FROM NVTX_EVENTS WHERE end IS NOT NULL AND NOT (start < ? AND end > ?)",
                           (keep_to, keep_from))
    return target


def test_a_trace_that_holds_only_the_end_of_the_run_is_drawn_over_the_last_3_batches(tmp_path):
    source = step_trace("7_*")
    trimmed = trim_to_the_end(source, tmp_path / "7_cuda_graph.sqlite")
    assert run_range(trimmed) == run_range(source)  # "all batches" is still there: it overlaps the end
    trace = nsys_trace.read_timeline(trimmed, run_batches(source))
    assert trace.window == nsys_trace.read_trace(source).window
    assert 'holds no rows from the middle of "all batches"' in trace.window_label
    assert nsys_trace.read_timeline(source, run_batches(source)).window != trace.window


# ---------------------------------------------------------------------------------------------------
# The CUDA API row


def test_api_calls_are_classified_by_kind():
    kinds = {name: nsys_trace.api_kind(nsys_trace.api_base_name(name)) for name in (
        "cudaLaunchKernel_v7000", "cudaLaunchKernelExC_v11060", "cuLaunchKernel", "cuLaunchKernelEx",
        "cudaGraphLaunch_v10000", "cudaMemcpyAsync_v3020", "cudaMemcpy_v3020", "cudaStreamSynchronize_v3020",
        "cudaEventSynchronize_v3020", "cudaDeviceSynchronize_v3020", "cudaStreamWaitEvent_v3020",
        "cudaEventRecord_v3020", "cuKernelGetName", "cudaMemsetAsync_v3020")}
    assert kinds == {
        "cudaLaunchKernel_v7000": "kernel launch", "cudaLaunchKernelExC_v11060": "kernel launch",
        "cuLaunchKernel": "kernel launch", "cuLaunchKernelEx": "kernel launch",
        "cudaGraphLaunch_v10000": "graph launch", "cudaMemcpyAsync_v3020": "copy", "cudaMemcpy_v3020": "copy",
        "cudaStreamSynchronize_v3020": "synchronization", "cudaEventSynchronize_v3020": "synchronization",
        "cudaDeviceSynchronize_v3020": "synchronization", "cudaStreamWaitEvent_v3020": "synchronization",
        "cudaEventRecord_v3020": "other", "cuKernelGetName": "other", "cudaMemsetAsync_v3020": "other"}


def test_step_7_s_api_row_holds_one_graph_launch_per_batch_and_no_kernel_launch():
    trace = timeline("7_*")
    kinds = api_kinds_by_thread(trace)
    enqueuing = [thread for thread in kinds if "infer" in phases_of(thread, trace)]
    assert len(enqueuing) == 1 and "graph launch" in kinds[enqueuing[0]]
    assert not any("kernel launch" in found for found in kinds.values())
    launches = [call for call in trace.api_calls if nsys_trace.api_kind(call.name) == "graph launch"]
    infers = [r for r in trace.ranges if r.name == "infer"]
    assert 2 <= len(launches) <= 4 and len(launches) == len(infers)  # about three batches, one launch in each
    assert all(any(r.start <= call.start and call.end <= r.end for r in infers) for call in launches)


def test_step_4_s_api_row_holds_the_kernel_launches_and_the_synchronizations():
    trace = timeline("4_*")
    (thread, calls, _), = plots.thread_lanes_of(trace)  # one host thread drives the GPU
    counted = {kind: sum(nsys_trace.api_kind(call.name) == kind for call in calls) for kind in nsys_trace.API_KINDS}
    assert counted["kernel launch"] >= 2 * 100 and counted["graph launch"] == 0  # 119 launches a batch
    assert counted["synchronization"] >= 2 and counted["copy"] >= 2 * 3  # a synchronize and 3 copies a batch
    assert plots.is_main_thread(thread)


# ---------------------------------------------------------------------------------------------------
# The lanes: every stream and host thread that drives the GPU


def test_step_8_shows_both_contexts_streams_and_threads():
    trace = timeline("8_*")
    roles = [plots.stream_role(stream, trace) for stream, _ in plots.stream_lanes_of(trace)]
    assert sorted(roles) == ["compute", "compute", "copy", "copy"]
    for stream, ops in plots.stream_lanes_of(trace):  # in the middle of the run, every stream has work
        assert ops, plots.stream_label(stream, trace)
    copies = {op.stream for op in trace.gpu_ops if op.kind == "H2D"}
    assert len(copies) == 2  # both copy streams copy in the window: the pipeline is full
    lanes = plots.thread_lanes_of(trace)
    contexts = [thread for thread, _, _ in lanes if {"h2d", "infer", "d2h"} <= phases_of(thread, trace)]
    outputs = [thread for thread, _, _ in lanes if phases_of(thread, trace) == {"output"}]
    assert len(contexts) == 2 and len(outputs) == 2
    kinds = api_kinds_by_thread(trace)
    assert all("graph launch" in kinds[thread] and "copy" in kinds[thread] for thread in contexts)
    assert all(kinds[thread] == {"synchronization"} for thread in outputs)  # waiting for the D2H
    for thread in contexts:
        assert plots.thread_label(thread, trace).endswith("(worker)\nh2d, infer, d2h")


def test_a_stream_idle_in_the_window_keeps_its_lane():
    trace = timeline("8_*")
    copy_stream = min(op.stream for op in trace.gpu_ops if op.kind == "H2D")
    idle = dataclasses.replace(trace, gpu_ops=[op for op in trace.gpu_ops if op.stream != copy_stream])
    lanes = dict(plots.stream_lanes_of(idle))
    assert lanes[copy_stream] == [] and len(lanes) == 4
    assert plots.stream_label(copy_stream, idle).startswith(f"GPU stream {copy_stream} (copy)\nH2D")


def test_a_thread_with_api_calls_and_no_ranges_gets_a_lane():
    trace = timeline("7_*")
    silent = 0x7FFF << 24 | 0x7FFF  # another process's main thread, say
    extra = nsys_trace.ApiCall("cudaStreamSynchronize", silent, trace.window[0] + MS, trace.window[0] + 2 * MS)
    lanes = plots.thread_lanes_of(dataclasses.replace(trace, api_calls=trace.api_calls + [extra]))
    assert (silent, [extra], []) in lanes
    assert plots.thread_label(silent, trace).endswith("\nCUDA API calls only")


# ---------------------------------------------------------------------------------------------------
# The picture


def drawn_figure(monkeypatch, trace, path):
    """Draw the timeline, keeping its figure: (lanes' tick labels, title, the x label)."""
    kept = []
    monkeypatch.setattr(plots.plt, "close", kept.append)
    plots.plot_timeline(path, trace, "title")
    axes = kept[0].axes[0]
    return [label.get_text() for label in axes.get_yticklabels()], axes.get_title(), kept[0].axes[-1].get_xlabel()


@pytest.mark.parametrize("pattern", ["4_*", "7_*", "8_*"])
def test_the_picture_is_written_with_its_lanes_and_says_which_window(tmp_path, monkeypatch, pattern):
    trace = timeline(pattern)
    path = tmp_path / "timeline.png"
    labels, title, xlabel = drawn_figure(monkeypatch, trace, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    lanes = plots.thread_lanes_of(trace)
    assert labels.count(plots.API_ROW_LABEL) == len(lanes)  # a CUDA API row per thread (each with ranges here)
    assert sum(label.startswith("GPU stream") for label in labels) == len(trace.stream_kinds)
    assert sum(label.startswith("host thread") for label in labels) == len(lanes)
    assert title == f"title\nwindow: {trace.window_label}"
    opens_ms = (trace.window[0] - trace.axis_range[1]) / 1e6
    assert xlabel.endswith(f"{opens_ms:.1f} ms into the NVTX range \"all batches\"")


def test_the_legend_names_the_api_kinds_in_the_picture():
    trace = timeline("7_*")
    labels = [entry.get_label() for entry in plots.legend_entries(trace, plots.thread_lanes_of(trace))]
    assert "CUDA API: graph launch" in labels and "CUDA API: synchronization" in labels
    assert "CUDA API: kernel launch" not in labels


def test_the_report_draws_the_middle_of_each_profiled_run(tmp_path, monkeypatch):
    for stem in ("7_cuda_graph", "8_multi_context"):
        for suffix in (".json", ".sqlite"):
            shutil.copy(step_trace(stem).with_suffix(suffix), tmp_path)
    drawn = {}
    monkeypatch.setattr(plots, "plot_timeline", lambda path, trace, title: drawn.update({path.name: trace}))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no nsys: the exports are read as they are
    report.main(["--reports", str(tmp_path)])
    assert sorted(drawn) == ["timeline_7_cuda_graph.png", "timeline_8_multi_context.png"]
    for name, trace in drawn.items():
        stem = name.removeprefix("timeline_").removesuffix(".png")
        assert trace.window == timeline(stem).window and "middle" in trace.window_label


# ---------------------------------------------------------------------------------------------------
# The trimmer keeps what the pictures draw


def test_trimming_keeps_the_timeline_window(tmp_path, capsys):
    source = step_trace("8_*")
    target = tmp_path / "trimmed.sqlite"
    trim_nsys_sqlite.main([str(source), str(target), "--margin-ms", "0"])
    assert "same figures and timeline" in capsys.readouterr().out
    before, after = (nsys_trace.read_timeline(path, run_batches(source)) for path in (source, target))
    assert before.window == after.window and before.window_label == after.window_label
    assert before.stream_kinds == after.stream_kinds and sorted(before.ranges, key=dataclasses.astuple) == sorted(
        after.ranges, key=dataclasses.astuple)
    assert trim_nsys_sqlite.kept_windows(source)[-1] == before.window


def test_trimming_refuses_a_copy_without_the_timeline_window(tmp_path, monkeypatch):
    source = step_trace("7_*")
    with sqlite3.connect(source) as connection:
        last_3 = nsys_trace.find_window(connection, source)
    monkeypatch.setattr(trim_nsys_sqlite, "kept_windows", lambda path: [last_3])  # the trimmer as it was
    monkeypatch.setattr(trim_nsys_sqlite, "trace_figures", lambda trace: None)  # the figures: not compared here
    with pytest.raises(SystemExit, match="changed the report's timeline"):
        trim_nsys_sqlite.main([str(source), str(tmp_path / "trimmed.sqlite")])
    assert not (tmp_path / "trimmed.sqlite").exists()

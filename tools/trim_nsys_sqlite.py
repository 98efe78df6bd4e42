"""Shrink an nsys SQLite export to what common/report/nsys_trace.py reads, so it can be committed as a test fixture.

    python tools/trim_nsys_sqlite.py reports/1_baseline.sqlite tests/fixtures/nsys/1_baseline.sqlite

A full export of one step is about 100 MB (GPU metrics, backtraces, OS runtime calls). This keeps the
tables the report reads (plus the enumeration tables the tests use to check it independently), keeps
only the rows near what the report reads: the NVTX range "all batches" (the figures), the window of the
timeline picture (nsys_trace.read_timeline: about three batches from the middle of "all batches", inside it)
and "last 3 batches" (in traces made before "all batches" existed, the figures' and the picture's window),
drops unreferenced strings and compacts the file. Of the device memory allocations and frees
(CUDA_GPU_MEMORY_USAGE_EVENTS, a few rows per step) it keeps every row up to the range's end: the memory in
use is a running sum from the start of the trace.
It then reads both files with the report and refuses to write a trimmed copy whose figures or timeline differ.
"""
import argparse
import dataclasses
import shutil
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo

from common.report.nsys_trace import (MEMORY_ENUM_TABLES, MEMORY_TABLE, RUN_RANGE, WINDOW_RANGE,  # noqa: E402
                                      TraceUnavailable, find_range, find_window, read_timeline, read_trace,
                                      trace_figures)

KEPT_TABLES = {
    # read by common/report/nsys_trace.py
    "NVTX_EVENTS", "StringIds", "CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY",
    "CUPTI_ACTIVITY_KIND_MEMSET", "CUPTI_ACTIVITY_KIND_RUNTIME", "ThreadNames", "TARGET_INFO_CUDA_CONTEXT_INFO",
    "META_DATA_EXPORT", MEMORY_TABLE, *MEMORY_ENUM_TABLES,
    # small tables the tests use to check the report's reading (names of copy kinds, event types, the GPU)
    "ENUM_CUDA_MEMCPY_OPER", "ENUM_NSYS_EVENT_TYPE", "ENUM_NSYS_EVENT_CLASS", "TARGET_INFO_CUDA_STREAM",
    "TARGET_INFO_GPU",
}
TIMED_TABLES = ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
                "CUPTI_ACTIVITY_KIND_RUNTIME")
STRING_COLUMNS = {  # the columns of kept tables that refer to StringIds(id)
    "NVTX_EVENTS": ("textId",), "CUPTI_ACTIVITY_KIND_RUNTIME": ("nameId",), "ThreadNames": ("nameId",),
    "CUPTI_ACTIVITY_KIND_KERNEL": ("shortName", "demangledName", "mangledName"),
}


def trim(source, target, margin_ns):
    """Write a trimmed copy of `source` to `target`."""
    kept = kept_windows(source)
    shutil.copyfile(source, target)
    connection = sqlite3.connect(target)
    try:
        keep_from, keep_to = min(start for start, _ in kept) - margin_ns, max(end for _, end in kept) + margin_ns
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in sorted(tables - KEPT_TABLES - {"sqlite_sequence"}):
            connection.execute(f'DROP TABLE "{table}"')
        for table in tables & set(TIMED_TABLES):
            connection.execute(f"DELETE FROM {table} WHERE NOT (start < ? AND end > ?)", (keep_to, keep_from))
        if MEMORY_TABLE in tables:  # every allocation and free up to the range's end: the sum starts with the trace
            connection.execute(f"DELETE FROM {MEMORY_TABLE} WHERE start > ?", (keep_to,))
        # NVTX events without an end (marks, domain names) are few and name the domains: keep them.
        connection.execute("DELETE FROM NVTX_EVENTS WHERE end IS NOT NULL AND NOT (start < ? AND end > ?)",
                           (keep_to, keep_from))
        if "ThreadNames" in tables:
            connection.execute(
                "DELETE FROM ThreadNames WHERE globalTid NOT IN (SELECT globalTid FROM NVTX_EVENTS "
                "UNION SELECT globalTid FROM CUPTI_ACTIVITY_KIND_RUNTIME)")
        drop_unused_strings(connection, tables)
        connection.commit()
        connection.execute("VACUUM")
    finally:
        connection.close()


def kept_windows(source):
    """The (start, end) spans in ns whose rows the report reads: "all batches" where the trace has it, the
    timeline's window and "last 3 batches" where it has them. None of them: TraceUnavailable, naming the range."""
    connection = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        spans = [span for span in (find_range(connection, RUN_RANGE), find_range(connection, WINDOW_RANGE)) if span]
        if not spans:
            find_window(connection, source)  # raises, naming the range the report looks for
    finally:
        connection.close()
    return [*spans, read_timeline(source).window]


def drop_unused_strings(connection, tables):
    used = []
    for table, string_columns in STRING_COLUMNS.items():
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")} if table in tables else set()
        used += [f"SELECT {column} FROM {table}" for column in string_columns if column in present]
    connection.execute(f"DELETE FROM StringIds WHERE id NOT IN ({' UNION '.join(used)})")


def figures_of(database):
    """The report's figures over both ranges it reads (the run range only where the trace has it), and what its
    timeline picture draws (the window, what is in it, the streams of the run)."""
    figures = [trace_figures(read_trace(database))]
    try:
        figures.append(trace_figures(read_trace(database, RUN_RANGE)))
    except TraceUnavailable:
        pass
    timeline = read_timeline(database)
    threads = {item.thread for item in timeline.ranges + timeline.api_calls}  # their lanes' labels name them
    return figures + [(timeline.window, timeline.window_label, *(sorted(items, key=dataclasses.astuple) for items in (
        timeline.gpu_ops, timeline.ranges, timeline.api_calls)), timeline.stream_kinds,
        {thread: timeline.thread_names.get(thread) for thread in threads})]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("source", type=Path, help="an nsys SQLite export (nsys export --type sqlite)")
    parser.add_argument("target", type=Path, help="where the trimmed copy goes")
    parser.add_argument("--margin-ms", type=float, default=10.0,
                        help="also keep rows this close to the window, for context (default 10)")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        sys.exit(f"error: {args.source} is not a file")
    if args.source.resolve() == args.target.resolve():
        sys.exit("error: the target must differ from the source (the source is checked against it)")
    try:
        trim(args.source, args.target, int(args.margin_ms * 1e6))
        before, after = figures_of(args.source), figures_of(args.target)
    except (TraceUnavailable, sqlite3.Error) as error:
        args.target.unlink(missing_ok=True)
        sys.exit(f"error: {error}")
    if before != after:
        args.target.unlink()
        timeline = before[:-1] == after[:-1]  # the figures are the same: the timeline differs
        what, was, now = ("timeline", before[-1][:2], after[-1][:2]) if timeline else ("figures", before, after)
        sys.exit(f"error: trimming changed the report's {what} ({was} became {now}); nothing written")
    print(f"{args.target}: {args.source.stat().st_size / 1e6:.1f} MB -> {args.target.stat().st_size / 1e6:.2f} MB, "
          "same figures and timeline")


if __name__ == "__main__":
    main()

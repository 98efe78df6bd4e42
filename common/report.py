"""Turn the steps' results into what a reader looks at: a summary table, the ladder chart, timelines.

    python -m common.report [--reports DIR] [--examples DIR] [--nsys PATH]

Reads DIR/<stem>.json (one per step) and, where the step was profiled, DIR/<stem>.nsys-rep; writes
    DIR/summary.md           one row per step: timings, speedups, output check, and figures from the trace
    DIR/ladder.png           ms per batch of every step, with its speedup over the baseline
    DIR/timeline_<stem>.png  the last three batches of a profiled step: GPU streams and host threads
If DIR holds no step results (a fresh clone, a machine without a GPU), it reports the committed example
results in results/h100-torch/ instead, says so, and still writes to DIR.

Trace reading lives in common/nsys_trace.py and the pictures in common/plots.py; this module reads the step
results, writes the summary and is the command line.
"""
import argparse
import json
import re
import shutil
from pathlib import Path

from common import cli, nsys_trace, plots
from common.errors import CourseError
from common.nsys_trace import BATCHES_IN_WINDOW, RUN_RANGE, WINDOW_RANGE

DEFAULT_REPORTS = Path("reports")
DEFAULT_EXAMPLES = Path("results/h100-torch")

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


def draw_ladder(path, ladder):
    """The ladder chart: ms per batch of every step, labelled with its speedup over the baseline."""
    notes = [f"{times(over_baseline)} baseline images/s" if over_baseline else "" for over_baseline, _ in speedups(ladder)]
    plots.plot_ladder(path, [step_label(r) for r in ladder], [r["last3_ms"] / BATCHES_IN_WINDOW for r in ladder], notes,
                      f"time per batch (ms), mean of the last {BATCHES_IN_WINDOW} batches; shorter is faster",
                      f"Inference ladder\n{ladder_subtitle(ladder)}")


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
        raise CourseError(f"no step result in {source}/ has a timed window (\"last3_ms\")")
    output.mkdir(parents=True, exist_ok=True)
    traces, figures = {}, {}
    for result in ladder:
        try:
            database = nsys_trace.sqlite_for(source, result["stem"], nsys)
            traces[result["stem"]] = nsys_trace.read_trace(database)
            figures[result["stem"]] = run_figures(database, result, traces[result["stem"]])
        except nsys_trace.TraceUnavailable as reason:
            notes.append(f"{result['stem']}: no trace figures: {reason}")
    write_summary(output / "summary.md", ladder, traces, figures, notes, source_line)
    draw_ladder(output / "ladder.png", ladder)
    for result in ladder:
        if result["stem"] in traces:
            title = f"{result['stem']}: {result.get('lesson', '')}"
            plots.plot_timeline(output / f"timeline_{result['stem']}.png", traces[result["stem"]], title)
    return notes, len(traces)


def run_figures(database, result, window_trace):
    """Per-batch figures over the "all batches" range; over the last-3 window for traces made before it existed."""
    try:
        return nsys_trace.trace_figures(nsys_trace.read_trace(database, RUN_RANGE), result["batches"]), RUN_RANGE
    except nsys_trace.TraceUnavailable:
        return nsys_trace.trace_figures(window_trace), WINDOW_RANGE


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m common.report",
        description="Summarise the steps' results: reports/summary.md, reports/ladder.png and a timeline picture "
                    "per profiled step.")
    parser.add_argument("--reports", type=Path, default=DEFAULT_REPORTS,
                        help=f"where the steps wrote <stem>.json and <stem>.nsys-rep; the report is written here "
                             f"too (default: {DEFAULT_REPORTS}/)")
    parser.add_argument("--examples", type=Path, default=DEFAULT_EXAMPLES,
                        help="committed results to report when the reports directory holds none "
                             f"(default: {DEFAULT_EXAMPLES}/)")
    parser.add_argument("--nsys", help="the nsys executable that exports .nsys-rep files (default: nsys on PATH)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_arguments(argv)
    source, source_line = choose_source(args.reports, args.examples)
    notes, timelines = build_report(source, args.reports, args.nsys or shutil.which("nsys"), source_line)
    for note in notes:
        print(f"report: {note}")
    print(f"report: wrote summary.md, ladder.png and {timelines} timeline picture(s) to {args.reports}/")


if __name__ == "__main__":
    cli.run(main)

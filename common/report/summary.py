"""Turn the steps' results into what a reader looks at: a summary table, the ladder chart, timelines.

    python -m common.report [--reports DIR] [--examples DIR] [--nsys PATH] [--compare OTHER_DIR]

Reads DIR/<stem>.json (one per step) and, where the step was profiled, DIR/<stem>.nsys-rep; writes
    DIR/summary.md           one row per step: steady-state timings with their noise, the floor, the output
                             check, the GPU memory it holds, and what the trace shows (per-batch figures, what
                             limits the step, device memory in use)
    DIR/ladder.png           ms per batch of every step (median, windows' range), its speedup, the floor, and
                             (where the results have them) each step's GPU memory
    DIR/timeline_<stem>.png  the last three batches of a profiled step: GPU streams and host threads
If DIR holds no step results (a fresh clone, a machine without a GPU), it reports the committed example
results in results/h100-torch/ instead, says so, and still writes to DIR. With --compare, the summary also
says which steps' figures reproduce in another run's results (common/report/reproduce.py; `make reproduce`).
The results are read by common/report/ladder.py, the traces by common/report/nsys_trace.py, and drawn by
common/report/plots.py; this module writes the summary and is the command line (common/report/__main__.py).
"""
import argparse
import shutil
import textwrap
from pathlib import Path

from common import cli, stats
from common.report import nsys_trace, plots, reproduce
from common.errors import CourseError
from common.report.ladder import (activations_mib, compare, comparison_text, draw_ladder, floor_ms, has_timed_window,
                           images_per_second, lesson_comparisons, load_results, memory_of, ms_per_batch,
                           profiling_note, rung_of, rungs_and_beyond, speedups, stand_in_name, step_label,
                           step_number, taken, times, versus_text, windows)
from common.report.nsys_trace import RUN_RANGE, WINDOW_RANGE

DEFAULT_REPORTS = Path("reports")
DEFAULT_EXAMPLES = Path("results/h100-torch")

# ---------------------------------------------------------------------------------------------------
# The summary


def write_summary(path, ladder, beyond, figures, nsys_versions, notes, source_line, between_runs=()):
    """reports/summary.md: what the runs were, the timings with their noise, the floor, the traces, the notes."""
    lines = ["# Results of the inference ladder", ""]
    lines += stand_in_banner(ladder + beyond)
    lines += describe_runs(ladder, source_line)
    lines += timings_table(ladder, speedups(ladder))
    lines += floor_table(ladder + beyond, figures)
    lines += memory_section(ladder, beyond, figures)
    if figures:
        lines += trace_tables(ladder + beyond, figures, nsys_versions)
        lines += step_2_in_the_trace(ladder, figures)
    if beyond:
        lines += beyond_the_ladder(beyond, ladder, figures)
    lines += between_runs
    if notes:
        lines += ["", "## What could not be read", ""] + [f"- {note}" for note in notes]
    lines += ["", "## Commands", ""]
    lines += [f"- {step_label(r)}: `{r.get('command', 'command unknown')}` ({r.get('date', 'date unknown')})"
              for r in ladder + beyond]
    path.write_text("\n".join(lines) + "\n")


def stand_in_banner(results):
    """Above everything, where a PyTorch stand-in made the figures: which one, and what its figures can show."""
    stems = {}
    for result in results:
        if result.get("backend") == "torch":
            stems.setdefault(stand_in_name(result), []).append(step_label(result))
    if not stems:
        return []
    which = next(iter(stems)) if len(stems) == 1 else "; ".join(
        f"{name} for {', '.join(names)}" for name, names in stems.items())
    text = (f"**PyTorch stand-in backend: not TensorRT numbers.** These runs used the course's {which} behind "
            "TensorRT's interface (no TensorRT on that machine): the kernel times are PyTorch's, not TensorRT's. How "
            "much a lesson gains with TensorRT depends on the engine's kernels (how many there are and how fast they "
            "run), so the stand-in's figures show each lesson's mechanism, not TensorRT's gain.")
    lines = textwrap.wrap(text, width=110, break_on_hyphens=False, break_long_words=False)
    return [f"> {line}" for line in lines] + [""]


def describe_runs(ladder, source_line):
    """The lines above the tables: where the numbers come from."""
    def distinct(key, default="unknown"):
        values = sorted({str(result[key]) for result in ladder if result.get(key) is not None})
        return "; ".join(values) if values else default

    when = taken(ladder) or "unknown"
    nsys = profiling_note(ladder)
    return [f"- Device: {distinct('device')}",
            f"- Backend: {distinct('backend_label')}",
            f"- Workload: {distinct('repeats', '1')} timed window(s) of {distinct('batches')} batches of "
            f"{distinct('batch_size')} images, back to back after a warm-up. A window's figure is the time to produce "
            "its results after its first, per result (the steady state, without the pipeline's filling); a step's "
            "figure is the median over its windows",
            f"- Taken: {when} (commands at the end){nsys}: tracing adds to every CUDA call's host time, so "
            "launch-bound steps look slower than in `make run-all`" if nsys
            else f"- Taken: {when} (commands at the end)",
            f"- Source: {source_line}. Absolute times move between runs and machines: compare steps of one session"]


def timings_table(ladder, speedups):
    lines = ["", "## Steady-state timings (host clock, from the step results)", "",
             f"ms per batch: the median over the windows; range: the slowest and fastest window; spread: their "
             f"difference over the median (above {stats.SPREAD_WARNING_PCT:g}% the run was not steady, marked ⚠). A "
             "step whose windows overlap the previous step's is **within noise** of it: neither a gain nor a loss. "
             "Speedups are ratios of images/s. Batch latency: from a batch's start to its result processed.", "",
             "| step | what changed | ms per batch | range (ms) | spread (%) | images/s | × baseline | vs previous "
             "| batch latency p50 / p99 (ms) | output check |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for result, (over_baseline, over_previous) in zip(ladder, speedups):
        spans = windows(result)
        spread = "–"
        if len(spans) > 1:
            spread = f"{stats.spread_pct(spans):.1f}" + (" ⚠" if stats.is_noisy(spans) else "")
        latency = (f"{result['latency_p50_ms']:.2f} / {result['latency_p99_ms']:.2f}"
                   if "latency_p50_ms" in result else "–")
        lines.append(
            f"| {step_label(result)} | {cell(result.get('lesson', ''))} | {ms_per_batch(result):.2f} "
            f"| {min(spans):.2f}–{max(spans):.2f} | {spread} | {count_text(images_per_second(result))} "
            f"| {times(over_baseline[1]) if over_baseline else '–'} | {comparison_text(over_previous)} | {latency} "
            f"| {cell(check_text(result.get('check')))} |")
    return lines


def floor_table(results, figures):
    measured = [r for r in results if floor_ms(r)]
    if not measured:
        return []
    lines = ["", "## How far from the floor, and what limits each step", "",
             "The floor: the larger of the GPU time per batch of H2D copies from pinned memory and of inferences, each "
             "on its own, batches queued back to back on one stream, the inference as a CUDA graph (CUDA events, after "
             "the step's timed run, on the step's own engine). A pipeline with one stream of each kind produces "
             "batches no faster; two contexts (steps 8 and 12) run two inferences at once and can go below it. "
             "Output processing: the host time of "
             "the step's post-processing of one batch (softmax and top-5 of every image). Limited by: from the trace "
             "(below), for profiled steps.", "",
             "| step | H2D (ms) | inference (ms) | floor (ms) | × floor | output processing (ms per batch) "
             "| limited by |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for result in measured:
        floor = result["floor"]
        limit = figures[result["stem"]][0].limited_by if result["stem"] in figures else "– (not profiled)"
        output = f"{result['output_ms_per_batch']:.2f}" if "output_ms_per_batch" in result else "–"
        lines.append(f"| {step_label(result)} | {floor['h2d_ms']:.2f} | {floor['inference_ms']:.2f} "
                     f"| {floor_ms(result):.2f} | {ms_per_batch(result) / floor_ms(result):.2f}× "
                     f"| {output} | {limit} |")
    earlier = [step_label(r) for r in measured if "floor_method" not in r]  # recorded since the graph
    uncaptured = [step_label(r) for r in measured if "could not be captured" in r.get("floor_method", "")]
    if earlier:
        lines += ["", f"The floors of {', '.join(earlier)} were measured by an earlier version of common/floor.py (one "
                      "batch alone, or without the graph): their inference time carries the host's kernel launches."]
    if uncaptured:
        lines += ["", f"The engines of {', '.join(uncaptured)} could not be captured into a CUDA graph: their floor's "
                      "inference time carries the host's kernel launches."]
    return lines


def memory_section(ladder, beyond, figures):
    """What each step holds on the GPU (its result's "memory") beside the device memory in use in its trace."""
    results = ladder + beyond
    trace_peaks = {stem: f.memory_peak_mib for stem, (f, _) in figures.items() if f.memory_peak_mib is not None}
    lines = ["", "## GPU memory (MiB)", ""]
    if not any(memory_of(r) for r in results) and not trace_peaks:
        traces = (f", and none of their traces holds the device memory record ({nsys_trace.MEMORY_TABLE}: profiled "
                  "without `--cuda-memory-usage=true`, or trimmed by a tools/trim_nsys_sqlite.py that did not keep it)"
                  if figures else "")
        return lines + ["Not recorded: these step results predate memory figures (no \"memory\" in their "
                        f"JSON){traces}."]
    lines += ["What each step holds on the GPU, from its result: the engine's weights; the activation (scratch) "
              "memory of each execution context (contexts × MiB each); the step's own device buffers (inputs, "
              "outputs); the driver's device memory in use at its highest during the step, less its value once the "
              "step's CUDA context was created; and the page-locked host memory the step holds. Peak in use, "
              "trace: the highest device memory allocated less freed in the step's process, from the start of its "
              f"Nsight Systems trace to the end of the range \"{RUN_RANGE}\" ({nsys_trace.MEMORY_TABLE}; – where "
              "the trace has no such record). The trace sees the calls into the CUDA allocator: PyTorch's caching "
              "allocator reserves segments with cudaMalloc and keeps them, so for the stand-in it counts segments "
              "reserved, not tensors, and neither counts the CUDA context nor the driver's own memory, which the "
              "step's own peak does.", "",
              "| step | weights | activations (contexts × MiB) | buffers | peak in use | peak in use, trace "
              "| pinned host |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [memory_row(result, trace_peaks.get(result["stem"])) for result in results]
    return lines + memory_notes(results) + memory_comparisons(ladder)


def memory_row(result, trace_peak):
    memory = memory_of(result) or {}
    cells = [mib(memory.get("weights_mib")), activations_text(activations_mib(memory)), mib(memory.get("buffers_mib")),
             mib(memory.get("peak_in_use_mib")), mib(trace_peak), mib(memory.get("pinned_host_mib"))]
    return f"| {step_label(result)} | {' | '.join(cells)} |"


def mib(value):
    return f"{value:.1f}" if is_figure(value) else "–"


def is_figure(value):
    """A number in a result, as opposed to a figure not recorded (None, missing)."""
    return isinstance(value, (int, float))


def activations_text(activations):
    """'2 × 38.5' (equal contexts), '12.0 + 38.5' (unequal), '–' (none recorded)."""
    if not activations:
        return "–"
    sizes = {mib(size) for size in activations}
    return f"{len(activations)} × {mib(activations[0])}" if len(sizes) == 1 else " + ".join(map(mib, activations))


def memory_notes(results):
    """How each column is measured (once, from the first result that says), each step's caveat on its peak, and
    which results predate memory figures."""
    recorded = [r for r in results if memory_of(r)]
    how = next((memory_of(r)["how"] for r in recorded if isinstance(memory_of(r).get("how"), dict)), {})
    columns = {"weights": "weights", "activations": "activations", "buffers": "buffers",
               "peak_in_use": "peak in use", "pinned_host": "pinned host"}
    measured = [f"- {column}: {cell(how[key])}" for key, column in columns.items() if how.get(key)]
    notes = [f"- {step_label(r)}: {cell(memory_of(r)['peak_note'])}" for r in recorded if memory_of(r).get("peak_note")]
    lines = []
    if measured:
        lines += ["", "How the columns are measured:", "", *measured]
    if notes:
        lines += ["", "On the peak in use:", "", *notes]
    older = [step_label(r) for r in results if not memory_of(r)]
    if older:
        lines += ["", f"The results of {', '.join(older)} predate memory figures (no \"memory\" in their JSON): "
                  "their rows show –."]
    return lines


def memory_comparisons(ladder):
    """What the lessons change in memory, from the figures: FP16 against fp32, a second context, two profiles."""
    rungs = {step_number(r): r for r in ladder if memory_of(r)}
    sentences = [fp16_against_fp32(rungs.get(3), rungs.get(4)), second_context(rungs.get(7), rungs.get(8)),
                 two_profiles(rungs.get(9))]
    sentences = [sentence for sentence in sentences if sentence]
    return ["", " ".join(sentences)] if sentences else []


# The figures compared between the fp32 and the FP16 engine: memory_figure's key, and what the sentence calls it.
PRECISION_FIGURES = (("weights_mib", "weights"), ("activations", "activations"),
                     ("peak_in_use_mib", "device memory in use at its peak"))


def fp16_against_fp32(fp32, fp16):
    """'Against the fp32 engine of step 3, FP16 (step 4) holds X MiB of weights against Y (−Z%), ...'."""
    if not (fp32 and fp16):
        return None
    parts = [against(memory_figure(fp16, key), memory_figure(fp32, key), what) for key, what in PRECISION_FIGURES]
    parts = [part for part in parts if part]
    if not parts:
        return None
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return (f"Against the {fp32.get('precision', 'fp32')} engine of {step_label(fp32)}, "
            f"{fp16.get('precision', 'fp16').upper()} ({step_label(fp16)}) holds {listed}.")


def second_context(one, two):
    """What step 8's contexts add over step 7's: activations and the peak in use."""
    before, after = (activations_mib(memory_of(r)) if r else [] for r in (one, two))
    if not (before and after):
        return None
    contexts = "a second context" if len(after) == len(before) + 1 else f"{len(after)} contexts against {len(before)}"
    sentence = (f"With {contexts}, {step_label(two)}'s activations change by {signed(sum(after) - sum(before))} MiB "
                f"({activations_text(after)} against {activations_text(before)} in {step_label(one)})")
    peaks = [memory_figure(r, "peak_in_use_mib") for r in (two, one)]
    if all(map(is_figure, peaks)):
        sentence += f" and its peak in use by {signed(peaks[0] - peaks[1])} MiB ({peaks[0]:.1f} against {peaks[1]:.1f})"
    return sentence + "."


def two_profiles(step):
    """What step 9's contexts, one per optimization profile, hold."""
    activations = activations_mib(memory_of(step)) if step else []
    if not activations:
        return None
    contexts = f"{len(activations)} context{'s' if len(activations) != 1 else ''}"
    return (f"The {contexts} of {step_label(step)}, one per optimization profile, hold {activations_text(activations)} "
            f"MiB of activations ({sum(activations):.1f} MiB together).")


def memory_figure(result, key):
    """A step's memory figure: one of result["memory"]'s numbers, or "activations", all its contexts' together."""
    memory = memory_of(result)
    if key == "activations":
        return sum(activations_mib(memory)) if activations_mib(memory) else None
    return memory.get(key)


def against(new, old, what):
    """'22.4 MiB of weights against 44.7 (−50%)'; None where either is not recorded."""
    if not (is_figure(new) and is_figure(old)):
        return None
    change = f" ({signed(100 * (new - old) / old, 0)}%)" if old else ""
    return f"{new:.1f} MiB of {what} against {old:.1f}{change}"


def signed(value, decimals=1):
    """'+38.5', '−3.0' (a minus sign, not a hyphen)."""
    return f"{value:+.{decimals}f}".replace("-", "−")


def trace_tables(results, figures, nsys_versions):
    ranges = sorted({range_name for _, range_name in figures.values()})
    lines = ["", f"## From the Nsight Systems traces (per batch, over the NVTX range \"{'/'.join(ranges)}\")", "",
             "H2D, kernel and D2H: summed GPU time of the operations that overlap the range, divided by its number "
             "of batches. GPU idle: share of the range with no kernel, copy or memset running. Launches: API calls "
             "per batch. Overlap: share of the copy time during which a kernel also ran. Alloc + free: host time in "
             "the NVTX phases \"alloc\" and \"free\"; allocations: cudaMalloc and cudaFree calls.", "",
             "| step | H2D (ms) | kernels (ms) | D2H (ms) | GPU idle (%) | kernel launches | graph launches "
             "| copy overlapped with compute (%) | alloc + free (ms) | allocations |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [figures_row(result, figures[result["stem"]][0]) for result in results if result["stem"] in figures]
    lines += ["", "### What limits each step", "",
              "Busy shares of the range: GPU compute and H2D, the time a kernel or a host-to-device copy ran; host "
              "enqueue, the time a host thread spent queuing GPU work (the phases h2d, infer and d2h, less the time "
              "blocked in a synchronize or a synchronous copy); host output, the time in the phase output. A resource "
              f"busy at least {nsys_trace.LIMIT_BUSY_PCT:g}% of the range holds the critical path and limits the "
              "step; where none is, the step is limited by **synchronization**: its phases wait for one another (the "
              "host for the GPU, the GPU for the host), which is what the next lessons remove.", "",
              "| step | GPU compute (%) | H2D (%) | host enqueue (%) | host output (%) | limited by |",
              "| --- | ---: | ---: | ---: | ---: | --- |"]
    for result in results:
        if result["stem"] in figures:
            f = figures[result["stem"]][0]
            shares = " | ".join(f"{f.busy_pct[resource]:.1f}" for resource in ("GPU compute", "H2D", "host enqueue",
                                                                                "host output"))
            lines.append(f"| {step_label(result)} | {shares} | {f.limited_by} |")
    lines += ["", f"Traces exported by Nsight Systems {', '.join(nsys_versions)}."]
    return lines


def step_2_in_the_trace(ladder, figures):
    """Step 2's saving is smaller than the noise of pageable copies: show it from the trace."""
    first, second = (next((r for r in ladder if step_number(r) == n and r["stem"] in figures), None)
                     for n in (1, 2))
    if not (first and second):
        return []
    verdict, _ = compare(second, first)
    before, after = figures[first["stem"]][0], figures[second["stem"]][0]
    return ["", "### Step 2 in the trace", "",
            f"Wall clock: {ms_per_batch(first):.2f} ms per batch in step 1, {ms_per_batch(second):.2f} in "
            f"step 2: {verdict}. The trace shows what reusing buffers removed: {before.alloc_free_ms:.3f} ms per batch "
            f"in \"alloc\" and \"free\" and {count(before.allocation_calls)} cudaMalloc/cudaFree calls per batch in "
            f"step 1, {after.alloc_free_ms:.3f} ms and {count(after.allocation_calls)} in step 2."]


def beyond_the_ladder(beyond, ladder, figures):
    lines = ["", "## Beyond the ladder (same workload, compared with the rung it builds on)", "",
             "| step | what changed | ms per batch | range (ms) | images/s | vs its rung | H2D per batch (ms, trace) "
             "| limited by | output check |", "| --- | --- | ---: | ---: | ---: | --- | ---: | --- | --- |"]
    lessons = lesson_comparisons(ladder, beyond)
    for result in beyond:
        lesson = lessons[result["stem"]]
        versus = versus_text(lesson, rung_of(result)) if lesson else "–"
        spans = windows(result)
        trace = figures.get(result["stem"], (None,))[0]
        lines.append(
            f"| {step_label(result)} | {cell(result.get('lesson', ''))} | {ms_per_batch(result):.2f} "
            f"| {min(spans):.2f}–{max(spans):.2f} | {count_text(images_per_second(result))} | {versus} "
            f"| {f'{trace.h2d_ms:.3f}' if trace else '–'} | {trace.limited_by if trace else '–'} "
            f"| {cell(check_text(result.get('check')))} |")
    return lines


def cell(text):
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def count_text(value):
    return f"{value:,.0f}" if value else "–"


def check_text(check):
    if not isinstance(check, dict) or "passed" not in check:
        return "not checked"
    verdict = "pass" if check["passed"] else "**FAIL**"
    return f"{verdict}: {check['summary']}" if check.get("summary") else verdict


def figures_row(result, f):
    overlap = f"{f.copy_overlap_pct:.1f}" if f.copy_overlap_pct is not None else "no copies"
    return (f"| {step_label(result)} | {f.h2d_ms:.3f} | {f.kernel_ms:.3f} | {f.d2h_ms:.3f} | {f.gpu_idle_pct:.1f} "
            f"| {count(f.kernel_launches)} | {count(f.graph_launches)} | {overlap} | {f.alloc_free_ms:.3f} "
            f"| {count(f.allocation_calls)} |")


def count(per_batch):
    return f"{per_batch:.0f}" if per_batch == int(per_batch) else f"{per_batch:.1f}"


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


def build_report(source, output, nsys, source_line, other_run=None):
    """Read every step in `source`, write the summary and pictures to `output`; `other_run`: (results, where
    they come from) of another run to compare with, or None.

    Returns the notes (one line per thing that could not be read), the number of timelines drawn and, with
    another run, the verdict on each step's figure between the runs.
    """
    results, notes = load_results(source)
    ladder, beyond = rungs_and_beyond(results)
    notes += [f"{r['stem']}: not a ladder step (kind {r.get('kind', 'unknown')!r}), not in the table"
              for r in results if not has_timed_window(r)]
    if not ladder:
        raise CourseError(f"no step result in {source}/ has a timed window (\"last3_ms\"): run the steps "
                          "(`make run-all`) first")
    output.mkdir(parents=True, exist_ok=True)
    traces, figures, trace_notes = read_traces(source, ladder + beyond, nsys)
    notes += trace_notes
    between_runs, verdicts = reproduce.comparison(results, *other_run) if other_run else ([], {})
    write_summary(output / "summary.md", ladder, beyond, figures,
                  sorted({trace.nsys_version for trace in traces.values()}), notes, source_line, between_runs)
    draw_ladder(output / "ladder.png", ladder)
    for result in ladder + beyond:
        if result["stem"] in traces:
            title = f"{result['stem']}: {result.get('lesson', '')}"
            plots.plot_timeline(output / f"timeline_{result['stem']}.png", traces[result["stem"]], title)
    return notes, len(traces), verdicts


def read_other_run(directory, source):
    """--compare: the step results of another run and a line that names it, or a one-line error saying what to pass."""
    advice = "pass --compare the reports directory of another run of the steps (`make reproduce` makes two)"
    if not directory.is_dir():
        raise CourseError(f"--compare {directory} is not a directory: {advice}")
    if directory.resolve() == source.resolve():
        raise CourseError(f"--compare {directory} is the run being reported: {advice}")
    results, _ = load_results(directory)
    if not any(has_timed_window(result) for result in results):
        raise CourseError(f"--compare {directory} holds no timed step result: {advice}")
    return results, f"{directory}/"


def read_traces(source, results, nsys):
    """Each profiled step's timeline trace and figures, and a note per trace that could not be read: one note
    for all when no step was profiled."""
    traces, figures, notes = {}, {}, []
    for result in results:
        try:
            database = nsys_trace.sqlite_for(source, result["stem"], nsys)
            traces[result["stem"]] = nsys_trace.read_trace(database)
            figures[result["stem"]] = run_figures(database, result, traces[result["stem"]])
        except nsys_trace.TraceUnavailable as reason:
            notes.append(f"{result['stem']}: no trace figures: {reason}")
    if not figures and not any(source.glob("*.nsys-rep")) and not any(source.glob("*.sqlite")):
        notes = [f"no step was profiled (no .nsys-rep in {source}/): `make profile-all` adds the trace figures"]
    return traces, figures, notes


def run_figures(database, result, window_trace):
    """Per-batch figures over the "all batches" range; over the last-3 window for traces made before it existed."""
    batches = result["batches"] * result.get("repeats", 1)
    try:
        return nsys_trace.trace_figures(nsys_trace.read_trace(database, RUN_RANGE), batches), RUN_RANGE
    except nsys_trace.TraceUnavailable:
        return nsys_trace.trace_figures(window_trace), WINDOW_RANGE


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
    parser.add_argument("--compare", type=cli.non_empty_path, metavar="OTHER_DIR",
                        help="another run's reports directory: the summary then says which steps' figures "
                             "reproduce between the two runs, and why the others do not")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_arguments(argv)
    cli.check_writable_directory(args.reports, "--reports")  # before any work, and before naming a source
    source, source_line = choose_source(args.reports, args.examples)
    other_run = read_other_run(args.compare, source) if args.compare else None
    try:
        notes, timelines, verdicts = build_report(source, args.reports, args.nsys or shutil.which("nsys"),
                                                  source_line, other_run)
    except OSError as error:  # what it reads is read with care; this is a write that failed after the check
        raise CourseError(f"could not write the report to {args.reports}/ ({error}): pass --reports a directory "
                          "you can write to") from None
    for note in notes:
        print(f"report: {note}")
    if other_run:
        print(f"report: against {args.compare}/: {reproduce.reproduced_line(verdicts)}")
    print(f"report: wrote summary.md, ladder.png and {timelines} timeline picture(s) to {args.reports}/")


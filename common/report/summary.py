"""Turn the steps' results into what a reader looks at: the results page, a short summary, the ladder chart, timelines.

    python -m common.report [--reports DIR] [--examples DIR] [--nsys PATH] [--compare OTHER_DIR]

Reads DIR/<stem>.json (one per step) and, where the step was profiled, DIR/<stem>.nsys-rep; writes
    DIR/README.md            the full results page, the one a reader opens in results/<device>/: where the figures come
                             from (device, backend, date, commands); the timings with their noise and batch latency;
                             the ladder chart; the floor and what limits each step; what the lessons' own measurements
                             show (steps 3, 8, 9); GPU memory; the trace figures; the steps beyond the ladder (10 to
                             13); with --compare, the two runs compared; links to every picture
    DIR/summary.md           the short version: the timings table (and the steps beyond the ladder that run its
                             workload), and a link to README.md for the rest. Both are written from the same functions,
                             so the table they share cannot differ
    DIR/ladder.png           ms per batch of every rung (median, windows' range), its speedup and its distance from its
                             own floor; a rung of another workload (step 9) apart, below a divider; and (where the
                             results have them) each step's GPU memory
    DIR/timeline_<stem>.png  about three batches from the middle of a profiled step's timed run ("all batches"; in
                             traces without it, "last 3 batches"; the title says which): every GPU stream, and
                             every host thread's CUDA API calls and NVTX phases
If DIR holds no step results (a fresh clone, a machine without a GPU), it reports the committed example results
(results/h100-torch/) instead, says so, and still writes to
DIR. With --compare, the page also says which steps' figures reproduce in another run's results
(common/report/reproduce.py; `make reproduce`). The results are read by common/report/ladder.py, the traces by
common/report/nsys_trace.py, and drawn by common/report/plots.py; this module writes the pages and is the command
line (common/report/__main__.py). Every figure in the pages is computed from the results, never written by hand.
"""
import argparse
import dataclasses
import os
import shutil
import textwrap
from pathlib import Path

from common import cli, stats
from common.report import nsys_trace, plots, reproduce
from common.errors import CourseError
from common.report.ladder import (APART_NOTE, activations_mib, another_workload, compare, comparison_text, draw_ladder,
                                  floor_ms, has_timed_window, images_per_second, lesson_comparisons, load_results,
                                  memory_of, ms_per_batch, profiling_note, rung_numbered, rung_of, rungs_and_beyond,
                                  speedups, stand_in_name, step_label, step_number, taken, times, versus_text,
                                  windows)
from common.report.nsys_trace import RUN_RANGE, WINDOW_RANGE

DEFAULT_REPORTS = Path("reports")
DEFAULT_EXAMPLES = Path("results/h100-torch")  # the committed example results
NOT_MEASURED = "not measured"  # a figure a result does not hold (a result from before it was recorded)
# Results without the ladder's timed windows that the results page reports, by their "kind".
PAGE_KINDS = {"sweep": "10_batch_size_sweep", "dynamic_batching": "11_dynamic_batching"}


@dataclasses.dataclass
class Report:
    """What the pages are written from: one run's results, their trace figures, and what could not be read."""
    ladder: list  # the rungs, in step order
    beyond: list  # steps beyond the ladder that run its workload (12, 13), each compared with the rung it builds on
    others: list  # results of another kind that the page reports (step 10's sweep, step 11's runs)
    figures: dict  # stem -> (nsys_trace.TraceFigures, the NVTX range they cover)
    nsys_versions: list
    notes: list
    source_line: str
    source: Path  # where the results were read
    output: Path  # where the pages are written: links to pictures are relative to it
    between_runs: list = dataclasses.field(default_factory=list)  # the --compare section's lines

    @property
    def timed(self):
        return self.ladder + self.beyond

    @property
    def everything(self):
        return self.ladder + self.beyond + self.others

    def other(self, kind):
        return next((result for result in self.others if result.get("kind") == kind), None)


# ---------------------------------------------------------------------------------------------------
# The two pages


def write_summary(path, report):
    """DIR/summary.md: the short version, the timings table with its noise and latency, and where the rest is."""
    lines = ["# Summary of the inference ladder", ""]
    lines += stand_in_banner(report.everything)
    lines += header_lines(report) + workload_lines(report)
    lines += timings_section(report.ladder)
    if report.beyond:
        lines += ["", "## Beyond the ladder (same workload, compared with the rung it builds on)", ""]
        lines += beyond_table(report)
    lines += ["", "The full results (the ladder chart, the floor and what limits each step, the lessons' own "
                  "measurements, GPU memory, the traces, the steps beyond the ladder, what could not be read, the "
                  "commands): [README.md](README.md)."]
    path.write_text("\n".join(lines) + "\n")


def write_results_page(path, report):
    """DIR/README.md: every figure of the run, with its noise, and links to the pictures."""
    results = report.everything
    lines = [f"# Results: {distinct(results, 'device')}, {distinct(results, 'backend_label')}", ""]
    lines += header_lines(report) + command_lines(results)
    lines += [""] + stand_in_banner(results)
    lines += workload_lines(report)
    lines += timings_section(report.ladder)
    lines += ladder_chart_section(report.ladder)
    lines += floor_table(report)
    lines += lessons_section(report.ladder)
    lines += memory_section(report.ladder, report.beyond, report.figures)
    if report.figures:
        lines += trace_tables(report.timed, report.figures, report.nsys_versions)
        lines += step_2_in_the_trace(report.ladder, report.figures)
        lines += timeline_links(report)
    lines += beyond_section(report)
    lines += report.between_runs
    if report.notes:
        lines += ["", "## What could not be read", ""] + [f"- {note}" for note in report.notes]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------
# Where the figures come from


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


def distinct(results, key, default="unknown"):
    """Every value the results give `key`, joined: one for a run made in one session on one machine."""
    values = sorted({str(result[key]) for result in results if result.get(key) is not None})
    return "; ".join(values) if values else default


def header_lines(report):
    """Device, backend and date, read from the results."""
    results = report.everything
    return [f"- Device: {distinct(results, 'device')}", f"- Backend: {distinct(results, 'backend_label')}",
            f"- Date: {taken(results) or 'unknown'}"]


def command_lines(results):
    """The commands that made the results: one line per command line the steps share, with the step's own script
    written <step>.py, and the steps that ran it."""
    groups = {}
    for result in results:
        command = str(result.get("command") or "unknown").replace(f"{step_label(result)}.py", "<step>.py")
        groups.setdefault((command, bool(result.get("under_nsys"))), []).append(result)
    return ["- Commands:"] + [f"  - `{command}`{' under nsys' if under_nsys else ''}: {steps_text(ran)}"
                              for (command, under_nsys), ran in groups.items()]


def steps_text(results):
    """'steps 1 to 9, 12': the step numbers, consecutive ones joined; the stems of results without a number."""
    numbered = [result for result in results if has_step_number(result)]
    runs = []
    for number in sorted({step_number(result) for result in numbered}):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    named = ", ".join(f"{first}" if first == last else f"{first}, {last}" if last == first + 1 else f"{first} to {last}"
                      for first, last in runs)
    listed = [f"step{'s' if len(numbered) > 1 else ''} {named}"] if named else []
    return ", ".join(listed + [step_label(result) for result in results if not has_step_number(result)])


def has_step_number(result):
    return isinstance(result.get("step"), int) or step_label(result)[:1].isdigit()


def workload_lines(report):
    """The lines under the header: the workload and its timing, tracing's cost where there was some, the source."""
    ladder = report.ladder
    nsys = profiling_note(ladder).removeprefix("; ")
    lines = [f"- Workload: {distinct(ladder, 'repeats', '1')} timed window(s) of {distinct(ladder, 'batches')} "
             f"batches of {distinct(ladder, 'batch_size')} images, back to back after a warm-up. A window's figure is "
             "the time to produce its results after its first, per result (the steady state, without the pipeline's "
             "filling); a step's figure is the median over its windows"]
    if nsys:
        lines.append(f"- {nsys[0].upper()}{nsys[1:]}: tracing adds to every CUDA call's host time, so launch-bound "
                     "steps look slower than in `make run-all`")
    lines.append(f"- Source: {report.source_line}. Absolute times move between runs and machines: compare steps of "
                 "one session")
    return lines


# ---------------------------------------------------------------------------------------------------
# The timings, their noise and the batches' latency


def timings_section(ladder):
    return timings_table(ladder, speedups(ladder)) + latency_lines(ladder)


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
        lines.append(
            f"| {step_label(result)} | {cell(result.get('lesson', ''))} | {ms_per_batch(result):.2f} "
            f"| {range_text(windows(result))} | {spread_text(windows(result))} "
            f"| {count_text(images_per_second(result))} | {times(over_baseline[1]) if over_baseline else '–'} "
            f"| {comparison_text(over_previous)} | {latency_text(result)} | {cell(check_text(result.get('check')))} |")
    return lines


def range_text(spans):
    return f"{min(spans):.2f}–{max(spans):.2f}"


def spread_text(spans):
    """'7.9', '20.8 ⚠' (not steady), '–' (one window: no spread)."""
    if len(spans) < 2:
        return "–"
    return f"{stats.spread_pct(spans):.1f}" + (" ⚠" if stats.is_noisy(spans) else "")


def latency_text(result):
    """'21.43 / 23.36': p50 / p99 of a batch's latency (ms), 'not measured' in a result from before they were."""
    return f"{number(result.get('latency_p50_ms'))} / {number(result.get('latency_p99_ms'))}" \
        if is_figure(result.get("latency_p50_ms")) or is_figure(result.get("latency_p99_ms")) else NOT_MEASURED


# Why a batch's latency changes where the pipeline deepens (steps 5 to 8), each against the step before.
DEEPER_PIPELINE = {
    5: "step 5 overlaps the next batch's copy with this batch's inference, so a batch waits behind the one in flight",
    6: "step 6 moves output processing to a thread, so a batch's result waits in a queue of two host buffers",
    7: "step 7 keeps step 6's pipeline, its queue of results with it, and launches each inference as one graph",
    8: "step 8 runs two batches at once on two contexts: each batch shares the GPU with another, so it takes longer "
       "while throughput rises",
}


def latency_lines(ladder):
    """A sentence per step that deepens the pipeline: its p50 latency against the step before's, and why."""
    pairs = [(rung_numbered(ladder, step), rung_numbered(ladder, step - 1), why)
             for step, why in DEEPER_PIPELINE.items()]
    sentences = [f"- {latency_sentence(step, before)}: {why}." for step, before, why in pairs if step and before]
    if not sentences:
        return []
    return ["", "Batch latency as the pipeline deepens: a pipeline that holds more batches in flight makes each batch "
                "wait longer, even while more batches finish per second (batches in flight = latency × throughput, "
                "here p50 latency over ms per batch).", "", *sentences]


def latency_sentence(step, before):
    """'p50 latency 11.27 ms at step 7 against 6.73 at step 6 (+67%; p99 13.05 against 8.65), 3.5 batches in
    flight against 1.5'; 'not measured' for a figure a result does not hold."""
    new, old = step.get("latency_p50_ms"), before.get("latency_p50_ms")
    text = (f"p50 latency {number(new, unit=' ms')} at step {step_number(step)} against {number(old)} at step "
            f"{step_number(before)}")
    if not (is_figure(new) and is_figure(old)):
        return text
    p99 = f"; p99 {number(step.get('latency_p99_ms'))} against {number(before.get('latency_p99_ms'))}"
    return (f"{text} ({signed(100 * (new / old - 1), 0)}%{p99}), {new / ms_per_batch(step):.1f} batches in flight "
            f"against {old / ms_per_batch(before):.1f}")


# ---------------------------------------------------------------------------------------------------
# The ladder chart and the floor


def ladder_chart_section(ladder):
    """The chart, and what it draws: each rung against its own floor, a rung of another workload apart."""
    floored = [r for r in ladder if floor_ms(r) and not another_workload(r, ladder)]
    by_precision = {}
    for result in floored:
        by_precision.setdefault(str(result.get("precision", "precision unknown")), []).append(step_label(result))
    engines = "; ".join(f"{precision} for {', '.join(stems)}" for precision, stems in by_precision.items())
    apart = [step_label(r) for r in ladder if another_workload(r, ladder)]
    text = ("Each rung's median ms per batch, its bar from the fastest to the slowest window, its speedup over the "
            "baseline and, as a dashed mark across its bar, its own floor: the larger of H2D and inference per batch "
            "on one stream, measured on the step's own engine")
    text += f" ({engines})." if engines else "; no result here holds a floor."
    if apart:
        text += (f" {', '.join(apart)} run{'s' if len(apart) == 1 else ''} another workload (its batches' mean size "
                 f"differs from {step_label(ladder[0])}'s) and {'is' if len(apart) == 1 else 'are'} drawn apart, below "
                 f"a divider ({APART_NOTE}), without a floor: the floor is measured on the ladder's batches.")
    if any(memory_of(r) for r in ladder):
        text += " Right: the GPU memory each step holds (weights, activations, buffers) and its peak in use."
    return ["", "## The ladder chart", "", "![ladder](ladder.png)", "", text]


def floor_table(report):
    measured = [r for r in report.timed if floor_ms(r)]
    if not measured:
        return []
    lines = ["", "## How far from the floor, and what limits each step", "",
             "The floor: the larger of the GPU time per batch of H2D copies from pinned memory and of inferences, each "
             "on its own, batches queued back to back on one stream, the inference as a CUDA graph (CUDA events, after "
             "the step's timed run, on the step's own engine). A pipeline with one stream of each kind produces "
             "batches no faster; two contexts (steps 8 and 12) run two inferences at once and can go below it. "
             "A step of another workload is not set against it (its floor is of the ladder's batches). "
             "Output processing: the host time of "
             "the step's post-processing of one batch (softmax and top-5 of every image). Limited by: from the trace "
             "(below), for profiled steps.", "",
             "| step | H2D (ms) | inference (ms) | floor (ms) | × floor | output processing (ms per batch) "
             "| limited by |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for result in measured:
        floor = result["floor"]
        figures = report.figures.get(result["stem"])
        limit = figures[0].limited_by if figures else "– (not profiled)"
        distance = ("– (another workload)" if another_workload(result, report.ladder)
                    else f"{ms_per_batch(result) / floor_ms(result):.2f}×")
        output = number(result.get("output_ms_per_batch"), empty="–")
        lines.append(f"| {step_label(result)} | {number(floor.get('h2d_ms'))} | {number(floor.get('inference_ms'))} "
                     f"| {floor_ms(result):.2f} | {distance} | {output} | {limit} |")
    earlier = [step_label(r) for r in measured if "floor_method" not in r]  # recorded since the graph
    uncaptured = [step_label(r) for r in measured if "could not be captured" in r.get("floor_method", "")]
    if earlier:
        lines += ["", f"The floors of {', '.join(earlier)} were measured by an earlier version of common/floor.py (one "
                      "batch alone, or without the graph): their inference time carries the host's kernel launches."]
    if uncaptured:
        lines += ["", f"The engines of {', '.join(uncaptured)} could not be captured into a CUDA graph: their floor's "
                      "inference time carries the host's kernel launches."]
    return lines


# ---------------------------------------------------------------------------------------------------
# What the lessons' own measurements show: steps 3, 8 and 9 each measure the alternative to their lesson


def lessons_section(ladder):
    parts = [staging_lines(ladder), contexts_lines(ladder), one_profile_lines(ladder)]
    parts = [lines for lines in parts if lines]
    if not parts:
        return []
    lines = ["", "## What the lessons' own measurements show", "",
             "Steps 3, 8 and 9 also measure, in the same process, what their lesson costs or leaves out: the copy into "
             "pinned memory a real pipeline pays, one context against two, one optimization profile against two."]
    for part in parts:
        lines += part
    return lines


def staging_lines(ladder):
    """Step 3's saving against step 2, beside what staging a batch into pinned memory costs (its "staging")."""
    step3, step2 = rung_numbered(ladder, 3), rung_numbered(ladder, 2)
    if step3 is None:
        return []
    lines = ["", f"### Pinned memory ({step_label(step3)}), and what staging into it costs", ""]
    saving = ms_per_batch(step2) - ms_per_batch(step3) if step2 else None
    saved = (f"{step_label(step3)} saves {saving:.2f} ms per batch against {step_label(step2)} "
             f"({comparison_text(compare(step3, step2))})" if step2 else
             f"{step_label(step3)}'s saving: not measured (step 2 is not in this run)")
    staging = step3.get("staging") if isinstance(step3.get("staging"), dict) else {}
    cost = staging.get("ms_per_batch")
    if not is_figure(cost):
        return lines + [f"{saved}; staging a batch into pinned memory: {NOT_MEASURED} (no \"staging\" in its "
                        "result)."]
    spans = [value for value in staging.get("windows_ms") or [] if is_figure(value)]
    spread = f"; windows {range_text(spans)} ms" if spans else ""
    text = (f"{saved}; staging the batch into pinned memory costs {cost:.2f} ms per batch "
            f"({number(staging.get('per_image_us'), '.1f')} us per image{spread}), which a pipeline pays unless its "
            "loader writes pinned memory (DataLoader(pin_memory=True) or a decoder writing there).")
    if saving is not None:
        text += (f" Paid per batch, it consumes the saving ({cost:.2f} ms ≥ {saving:.2f}): a pipeline that stages "
                 "its batches gains nothing from pinned memory." if cost >= saving else
                 f" The saving outlives it: {saving - cost:.2f} ms per batch remain after staging.")
    if staging.get("how"):
        text += f" How it is measured: {str(staging['how']).rstrip('.')}."
    return lines + [text]


def contexts_lines(ladder):
    """Step 8's one context against two at the same batch sizes (its "contexts_compared"): a row per batch size."""
    step8 = rung_numbered(ladder, 8)
    if step8 is None:
        return []
    lines = ["", f"### One context against two ({step_label(step8)})", ""]
    compared = step8.get("contexts_compared") if isinstance(step8.get("contexts_compared"), dict) else {}
    rows = [row for row in compared.get("rows") or [] if isinstance(row, dict)]
    if not rows:
        return lines + [f"Two contexts against one at the same batch size: {NOT_MEASURED} (no \"contexts_compared\" in "
                        f"{step_label(step8)}'s result)."]
    if compared.get("how"):
        lines += [f"How: {compared['how']}", ""]
    lines += ["| batch | one context: ms per batch (spread %) | two contexts: ms per batch (spread %) | speedup "
              "| images/s: one / two | p50 latency (ms): one / two | p99 latency (ms): one / two | verdict |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        one, two = (row.get(key) if isinstance(row.get(key), dict) else {} for key in ("one_context", "two_contexts"))
        lines.append(f"| {row.get('batch_size', '?')} | {median_spread(one)} | {median_spread(two)} "
                     f"| {number(row.get('speedup'), unit='×')} | {pair(one, two, 'images_per_s', ',.0f')} "
                     f"| {pair(one, two, 'latency_p50_ms')} | {pair(one, two, 'latency_p99_ms')} "
                     f"| {contexts_verdict(row)} |")
    return lines + [""] + [f"- {contexts_sentence(row, step8)}" for row in rows]


def median_spread(figures):
    """'3.08 (7.9)': a run's median ms per batch and its windows' spread."""
    return f"{number(figures.get('median_ms_per_batch'))} ({number(figures.get('spread_pct'), '.1f')})"


def pair(one, two, key, spec=".2f"):
    return f"{number(one.get(key), spec)} / {number(two.get(key), spec)}"


def contexts_verdict(row):
    speedup = row.get("speedup")
    if row.get("within_noise") is True:
        return "within noise"
    if not is_figure(speedup):
        return NOT_MEASURED
    return "two contexts pay" if speedup > 1 else "two contexts are slower"


def contexts_sentence(row, step8):
    """Where two contexts pay (a speedup outside the noise) and where they only add memory and latency."""
    one, two = (row.get(key) if isinstance(row.get(key), dict) else {} for key in ("one_context", "two_contexts"))
    batch, speedup, verdict = row.get("batch_size", "?"), row.get("speedup"), contexts_verdict(row)
    latency = (f"p50 latency {number(two.get('latency_p50_ms'), unit=' ms')} against "
               f"{number(one.get('latency_p50_ms'))} with one")
    if verdict == "within noise":
        pools = activations_mib(memory_of(step8) or {})
        memory = f" (a second activation pool, {pools[-1]:.1f} MiB)" if len(pools) > 1 else ""
        return (f"At batch {batch}, two contexts are within noise of one ({number(speedup)}×): they only add "
                f"memory{memory} and latency ({latency}).")
    if verdict == "two contexts pay":
        return (f"At batch {batch}, two contexts pay: {speedup:.2f}× one context's throughput "
                f"({number(two.get('median_ms_per_batch'))} ms per batch against "
                f"{number(one.get('median_ms_per_batch'))}), at {latency}.")
    return f"At batch {batch}, two contexts against one: {verdict} ({number(speedup, unit='×')}), at {latency}."


def one_profile_lines(ladder):
    """Step 9's mixed workload on a one-profile engine, right after step 9 in its process (its "one_profile")."""
    step9 = rung_numbered(ladder, 9)
    if step9 is None:
        return []
    lines = ["", f"### Two optimization profiles against one ({step_label(step9)})", ""]
    one = step9.get("one_profile") if isinstance(step9.get("one_profile"), dict) else {}
    if not is_figure(one.get("median_ms_per_batch")):
        return lines + [f"The same workload on a one-profile engine: {NOT_MEASURED} (no \"one_profile\" in "
                        f"{step_label(step9)}'s result)."]
    spans = [value for value in one.get("windows_ms_per_batch") or [] if is_figure(value)]
    profiles = ", ".join(":".join(map(str, profile)) for profile in one.get("profiles") or []) or "not recorded"
    engine = one.get("engine", "engine not recorded")
    ranged = f" ({range_text(spans)})" if spans else ""
    text = (f"The same mixed workload through the same pipeline on a one-profile engine ({engine}, profile "
            f"{profiles}), right after {step_label(step9)} in the same process: {one['median_ms_per_batch']:.2f} ms "
            f"per batch{ranged}, {count_text(one.get('images_per_s'))} images/s, batch latency p50 / p99 "
            f"{latency_text(one)} ms; {step_label(step9)}: {ms_per_batch(step9):.2f} ms per batch "
            f"({range_text(windows(step9))}), {count_text(images_per_second(step9))} images/s, p50 / p99 "
            f"{latency_text(step9)} ms. ")
    speedup = one.get("speedup")
    if one.get("within_noise") is True:
        text += (f"The two profiles are within noise of one ({number(speedup)}×): on this workload they buy no "
                 "throughput, and hold a second context's memory.")
    elif is_figure(speedup) and speedup > 1:
        text += (f"The two profiles buy {speedup:.2f}× the throughput of one (one profile's median over "
                 f"{step_label(step9)}'s), each batch size running on a profile tuned for it.")
    elif is_figure(speedup):
        text += f"One profile is faster here: two profiles run at {speedup:.2f}× its throughput."
    else:
        text += f"Their ratio: {NOT_MEASURED}."
    return lines + [text]


# ---------------------------------------------------------------------------------------------------
# GPU memory


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


# ---------------------------------------------------------------------------------------------------
# The traces


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
    """Step 2's saving is smaller than the noise of pageable copies: show it from the trace, and say where the
    pageable copies moved by more than the saving between the two steps' processes."""
    first, second = (next((r for r in ladder if step_number(r) == n and r["stem"] in figures), None)
                     for n in (1, 2))
    if not (first and second):
        return []
    verdict, _ = compare(second, first)
    before, after = figures[first["stem"]][0], figures[second["stem"]][0]
    text = (f"Wall clock: {ms_per_batch(first):.2f} ms per batch in step 1, {ms_per_batch(second):.2f} in "
            f"step 2: {verdict}. The trace shows what reusing buffers removed: {before.alloc_free_ms:.3f} ms per batch "
            f"in \"alloc\" and \"free\" and {count(before.allocation_calls)} cudaMalloc/cudaFree calls per batch in "
            f"step 1, {after.alloc_free_ms:.3f} ms and {count(after.allocation_calls)} in step 2.")
    moved = pageable_copies_moved(before, after, verdict)
    return ["", "### Step 2 in the trace", "", text + (f" {moved}" if moved else "")]


def pageable_copies_moved(before, after, verdict):
    """Where the two steps' H2D per batch differ by more than what reusing buffers saved, that difference, from the
    two traces' own figures: it, not the lesson, sets step 2's wall clock against step 1's. None where it does not."""
    saving, change = before.alloc_free_ms - after.alloc_free_ms, after.h2d_ms - before.h2d_ms
    if abs(change) <= saving:
        return None
    text = (f"But its H2D copies from pageable memory, which the lesson leaves as they are, took {after.h2d_ms:.3f} ms "
            f"per batch in step 2's trace against {before.h2d_ms:.3f} in step 1's ({signed(change, 3)} ms), more than "
            f"the {saving:.3f} ms per batch that reusing buffers saved: a pageable copy's cost moves from one process "
            "to the next")
    if change > 0:
        why = ", which is why step 2 is slower" if verdict == "slower" else ", so the wall clock cannot show the saving"
        return f"{text}{why}."
    return f"{text}, so part of step 2's gain in this run is the copy's, not the lesson's."


def timeline_links(report):
    """The timeline picture of each profiled step, relative to the page."""
    stems = [step_label(r) for r in report.timed if r["stem"] in report.figures]
    links = [f"[{stem}](timeline_{stem}.png)" for stem in stems]
    return ["", f"Timelines of about three batches from the middle of the timed run (the NVTX range \"{RUN_RANGE}\"; "
                f"\"{WINDOW_RANGE}\" in a trace without its middle; each picture's title says which window it draws): "
                f"every GPU stream, and every host thread's CUDA API calls and NVTX phases: {', '.join(links)}."]


# ---------------------------------------------------------------------------------------------------
# Beyond the ladder: steps that run the ladder's workload (12, 13), the batch-size sweep (10), dynamic batching (11)


def beyond_section(report):
    sweep, arrivals = report.other("sweep"), report.other("dynamic_batching")
    if not (report.beyond or sweep or arrivals):
        return []
    lines = ["", "## Beyond the ladder", ""]
    if report.beyond:
        lines += ["### Same workload as the ladder, compared with the rung each builds on", ""]
        lines += beyond_table(report) + beyond_traces(report)
        for result in report.beyond:
            lines += accuracy_lines(result) + latency_alone_lines(result)
    if sweep:
        lines += sweep_lines(sweep, report)
    if arrivals:
        lines += arrivals_lines(arrivals, sweep, report)
    return lines


def beyond_table(report):
    lines = ["| step | what changed | ms per batch | range (ms) | images/s | vs its rung "
             "| batch latency p50 / p99 (ms) | accuracy: top-1 / top-5 / rel. error | H2D per batch (ms, trace) "
             "| limited by | output check |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | --- | ---: | --- | --- |"]
    lessons = lesson_comparisons(report.ladder, report.beyond)
    for result in report.beyond:
        lesson = lessons[result["stem"]]
        versus = versus_text(lesson, rung_of(result)) if lesson else "–"
        trace = report.figures.get(result["stem"], (None,))[0]
        speed = " (not INT8's speed)" if not_int8_speed(result) else ""
        lines.append(
            f"| {step_label(result)} | {cell(result.get('lesson', ''))} | {ms_per_batch(result):.2f}{speed} "
            f"| {range_text(windows(result))} | {count_text(images_per_second(result))} | {versus}{speed} "
            f"| {latency_text(result)} | {accuracy_text(result)} | {f'{trace.h2d_ms:.3f}' if trace else '–'} "
            f"| {trace.limited_by if trace else '–'} | {cell(check_text(result.get('check')))} |")
    return lines


def not_int8_speed(result):
    """A stand-in for INT8 runs INT8's numerics in fp16/fp32 kernels: its time is not INT8's ("speed_is_int8")."""
    int8 = result.get("int8")
    return isinstance(int8, dict) and int8.get("speed_is_int8") is False


def accuracy_text(result):
    """'99.22% / 99.90% / 1.2e-02 (pass)' from a result's "accuracy" against fp32; '–' for a step without one."""
    accuracy = result.get("accuracy")
    if not isinstance(accuracy, dict):
        return "–"
    verdict = {True: " (pass)", False: " (**FAIL**)"}.get(accuracy.get("passed"), "")
    return (f"{percent(accuracy.get('top1_agreement'))} / {percent(accuracy.get('top5_agreement'))} / "
            f"{number(accuracy.get('rel_err'), '.1e')}{verdict}")


def percent(fraction):
    return f"{100 * fraction:.2f}%" if is_figure(fraction) else NOT_MEASURED


def accuracy_lines(result):
    """A step that changes the numerics (INT8): how it was quantized, its accuracy against fp32, and whether its time
    is the new precision's speed."""
    int8, accuracy = result.get("int8"), result.get("accuracy")
    if not (isinstance(int8, dict) or isinstance(accuracy, dict)):
        return []
    int8 = int8 if isinstance(int8, dict) else {}
    lines = ["", f"### {step_label(result)}: accuracy against fp32 (on {result.get('builds_on', 'its rung')})", ""]
    if int8:
        size = f" of {int8['calibration_batch_size']} images" if int8.get("calibration_batch_size") else ""
        lines.append(f"- Quantizer: {int8.get('quantizer', NOT_MEASURED)}; {int8.get('calibration_batches', '?')} "
                     f"calibration batches{size} (seed {int8.get('calibration_seed', '?')}).")
    if isinstance(accuracy, dict):
        tolerance = accuracy.get("tolerance") if isinstance(accuracy.get("tolerance"), dict) else {}
        limits = ", ".join(f"{key} {value:g}" if is_figure(value) else f"{key} {value}"
                           for key, value in tolerance.items())
        verdict = {True: "passes", False: "**fails**"}.get(accuracy.get("passed"), "was not judged against")
        lines.append(f"- Against the fp32 reference: top-1 agreement {percent(accuracy.get('top1_agreement'))}, top-5 "
                     f"agreement {percent(accuracy.get('top5_agreement'))}, relative error "
                     f"{number(accuracy.get('rel_err'), '.1e')}; it {verdict} its tolerance"
                     f"{f' ({limits})' if limits else ''}.")
    else:
        lines.append(f"- Accuracy against fp32: {NOT_MEASURED}.")
    if not_int8_speed(result):
        note = f": {str(int8['note']).rstrip('.')}" if int8.get("note") else ""
        lines.append(f"- Its time is **not INT8's speed**{note}.")
    elif int8.get("speed_is_int8") is True:
        lines.append("- Its time is INT8's speed: the engine runs INT8 kernels.")
    return lines


def beyond_traces(report):
    """Each profiled step beyond the ladder against its rung's trace: the copy and the kernels per batch."""
    lines = []
    for result in report.beyond:
        rung = rung_numbered(report.ladder, rung_of(result))
        mine, theirs = (report.figures.get(r["stem"], (None,))[0] if r else None for r in (result, rung))
        if not (mine and theirs):
            continue
        ratio = f", {theirs.h2d_ms / mine.h2d_ms:.1f}× shorter" if mine.h2d_ms and mine.h2d_ms < theirs.h2d_ms else ""
        lines.append(f"- {step_label(result)} in its trace: H2D {mine.h2d_ms:.3f} ms per batch against "
                     f"{theirs.h2d_ms:.3f} in {step_label(rung)}'s{ratio}; kernels {mine.kernel_ms:.3f} ms per batch "
                     f"against {theirs.kernel_ms:.3f}; limited by {mine.limited_by} ({step_label(rung)}: "
                     f"{theirs.limited_by}).")
    return [""] + lines if lines else []


def latency_alone_lines(result):
    """Step 12's one batch alone, fp32 input against uint8 (its "latency_alone"): nothing overlaps the copy there."""
    alone = result.get("latency_alone") if isinstance(result.get("latency_alone"), dict) else {}
    rows = [row for row in alone.get("rows") or [] if isinstance(row, dict)]
    if not rows:
        return []
    inputs = list(dict.fromkeys(str(row.get("input")) for row in rows))
    by_batch = {}
    for row in rows:
        by_batch.setdefault(row.get("batch_size"), {})[str(row.get("input"))] = row
    lines = ["", f"### {step_label(result)}: one batch alone (median of {alone.get('runs', '?')} runs; H2D by CUDA "
                 "events), where nothing overlaps the copy", "",
             "| batch | " + " | ".join(f"{name} input: latency (ms) | its H2D (ms)" for name in inputs) + " |",
             "| ---: |" + " ---: | ---: |" * len(inputs)]
    for batch, row in by_batch.items():
        cells = [f"{number(row.get(name, {}).get('latency_ms'), '.3f')} "
                 f"| {number(row.get(name, {}).get('h2d_ms'), '.3f')}" for name in inputs]
        lines.append(f"| {batch} | {' | '.join(cells)} |")
    if len(inputs) == 2:
        first, second = inputs
        changes = [f"{signed(new - old, 3)} ms ({signed(100 * (new / old - 1), 0)}%) at batch {batch}"
                   for batch, row in by_batch.items()
                   for old, new in [(row.get(first, {}).get("latency_ms"), row.get(second, {}).get("latency_ms"))]
                   if is_figure(old) and is_figure(new) and old]
        if changes:
            lines += ["", f"{second} input against {first}, one batch's latency: {', '.join(changes)}."]
    return lines


def sweep_lines(sweep, report):
    """Step 10: latency and throughput at each batch size, the knee, and the engine against eager PyTorch."""
    lines = ["", f"### {step_label(sweep)}: which batch size", ""]
    sweeps = [s for s in sweep.get("sweeps") or [] if isinstance(s, dict) and s.get("rows")]
    if not sweeps:
        return lines + [f"Its rows: {NOT_MEASURED} (no \"sweeps\" in {step_label(sweep)}'s result)."]
    within = sweep.get("knee_within")
    profile = ":".join(map(str, sweep.get("profile") or [])) or "not recorded"
    lines += [f"Engine {sweep.get('engine', 'not recorded')} (profile {profile}); latency: one batch alone, median of "
              f"{sweep.get('runs_per_figure', '?')} runs; images/s: batches back to back, the median of "
              f"{sweep.get('throughput_repeats', '?')} runs, spread their range over it; the knee: the smallest batch "
              f"within {number(100 * within if is_figure(within) else None, 'g')}% of the peak, named only where the "
              "runs separate it from the batch below.", ""]
    lines += sweep_table(sweeps) + [""]
    lines += [f"- {sentence}" for s in sweeps for sentence in knee_sentences(s, within)]
    lines += [f"- {sentence}" for sentence in against_eager(sweeps)]
    return lines + picture_link(sweep, report, "batch-size sweep")


def sweep_rows(one_sweep):
    return {row["batch_size"]: row for row in one_sweep["rows"] if isinstance(row, dict) and "batch_size" in row}


def is_measured(row):
    return (bool(row) and not row.get("failure") and is_figure(row.get("latency_ms"))
            and is_figure(row.get("images_per_s")))


def sweep_table(sweeps):
    """A row per batch size: latency and images/s (spread, knee, peak) of each sweep, side by side."""
    names = [s.get("label") or s.get("name", "?") for s in sweeps]
    lines = ["| batch | " + " | ".join(f"{cell(name)}: latency (ms) | images/s (spread %)" for name in names) + " |",
             "| ---: |" + " ---: | ---: |" * len(sweeps)]
    batches = sorted({batch for s in sweeps for batch in sweep_rows(s)})
    for batch in batches:
        cells = [sweep_cells(sweep_rows(s).get(batch)) for s in sweeps]
        lines.append(f"| {batch} | {' | '.join(cells)} |")
    return lines


# The marks of common/batching.marks that say where a batch stands; the others (trade-off, dominated) are left out.
SHOWN_MARKS = ("knee", "knee?", "peak")


def sweep_cells(row):
    if not row:
        return "– | –"
    if not is_measured(row):
        return f"{cell(row.get('failure') or NOT_MEASURED)} | –"
    marks = [mark for mark in row.get("marks") or [] if mark in SHOWN_MARKS]
    return (f"{row['latency_ms']:.3f} | {row['images_per_s']:,.0f} ({number(row.get('spread_pct'), '.1f')})"
            + (f", {', '.join(marks)}" if marks else ""))


def knee_sentences(one_sweep, within):
    """Where the knee is and why (the batch below it against the threshold), what the peak adds, what did not fit."""
    rows, name = sweep_rows(one_sweep), one_sweep.get("label") or one_sweep.get("name", "?")
    best = rows.get(one_sweep.get("peak"))
    knee = rows.get(one_sweep.get("knee"))
    sentences = []
    if not is_measured(best):
        return [f"{name}: no batch size was measured."]

    def share(row):
        return 100 * row["images_per_s"] / best["images_per_s"]  # percent of the peak
    threshold = f"the {100 * (1 - within):g}% threshold" if is_figure(within) else "the threshold"
    if knee and is_measured(knee):
        text = f"{name}: the knee is batch {knee['batch_size']} ({share(knee):.1f}% of the peak)"
        below = [row for batch, row in rows.items() if batch < knee["batch_size"] and is_measured(row)]
        if below:
            runs = [value for value in below[-1].get("throughput_runs") or [] if is_figure(value)]
            fastest = f" and its fastest run {100 * max(runs) / best['images_per_s']:.1f}%" if runs else ""
            text += f": batch {below[-1]['batch_size']} reaches {share(below[-1]):.1f}%{fastest}, below {threshold}"
        if knee is best:
            text += "; the knee is the peak"
        else:
            gain = 100 * (best["images_per_s"] / knee["images_per_s"] - 1)
            text += (f"; the peak (batch {best['batch_size']}) adds {signed(gain)}% throughput for "
                     f"{best['latency_ms'] / knee['latency_ms']:.1f}× the knee's latency")
        sentences.append(text + ".")
    else:
        candidates = ", ".join(map(str, one_sweep.get("knee_candidates") or [])) or NOT_MEASURED
        sentences.append(f"{name}: no knee named: the runs cannot tell batches {candidates} apart at {threshold}.")
    if one_sweep.get("out_of_memory"):
        fits = one_sweep.get("largest_that_fits")
        sentences.append(f"{name}: batches {', '.join(map(str, one_sweep['out_of_memory']))} ran out of memory"
                         + (f"; the largest that fits is {fits} ({one_sweep.get('fits_until', '')})" if fits else "")
                         + ".")
    for budget, batch in (one_sweep.get("within_budget") or {}).items():
        sentences.append(f"{name}: within a latency budget of {budget} ms, "
                         + (f"batch {batch} does the most." if batch else "no batch size fits."))
    return sentences


def against_eager(sweeps):
    """The engine's images/s over the other sweeps' (eager PyTorch) at the smallest and largest batch both ran."""
    engine, others = sweeps[0], sweeps[1:]
    sentences = []
    for other in others:
        mine, theirs = sweep_rows(engine), sweep_rows(other)
        both = [batch for batch in sorted(mine) if is_measured(mine[batch]) and is_measured(theirs.get(batch))]
        if not both:
            continue
        ratios = [f"{mine[batch]['images_per_s'] / theirs[batch]['images_per_s']:.1f}× at batch {batch}"
                  for batch in dict.fromkeys([both[0], both[-1]])]
        spreads = [theirs[batch].get("spread_pct") for batch in both if is_figure(theirs[batch].get("spread_pct"))]
        noise = f"; {other.get('label', other.get('name'))}'s runs spread up to {max(spreads):.1f}%" if spreads else ""
        sentences.append(f"{engine.get('label', engine.get('name'))} against {other.get('label', other.get('name'))}: "
                         f"{', '.join(ratios)} the images/s{noise}.")
    return sentences


def arrivals_lines(arrivals, sweep, report):
    """Step 11: every run's latency and throughput, where one request at a time saturates, what batching serves."""
    lines = ["", f"### {step_label(arrivals)}: batching requests as they arrive", ""]
    runs = [run for run in arrivals.get("runs") or [] if isinstance(run, dict)]
    if not runs:
        return lines + [f"Its runs: {NOT_MEASURED} (no \"runs\" in {step_label(arrivals)}'s result)."]
    lines += [f"Single-image requests arriving as a Poisson process (seed {arrivals.get('seed', '?')}), "
              f"{number(arrivals.get('duration_s'), 'g')} s per run; engine {arrivals.get('engine', 'not recorded')}. "
              f"{cell(check_text(arrivals.get('check')))}.", "",
              "| setting | offered/s | served/s | p50 (ms) | p90 (ms) | p99 (ms) | mean batch |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in runs:
        overloaded = " (overloaded)" if run.get("overloaded") else ""
        lines.append(f"| {cell(run.get('setting', '?'))} | {number(run.get('offered_per_s'), ',.0f')} "
                     f"| {number(run.get('served_per_s'), ',.0f')} | {number(run.get('p50_ms'))} "
                     f"| {number(run.get('p90_ms'))} | {number(run.get('p99_ms'))} "
                     f"| {number(run.get('mean_batch'), '.1f')}{overloaded} |")
    lines += [""] + [f"- {sentence}" for sentence in arrivals_sentences(runs, sweep)]
    return lines + picture_link(arrivals, report, "dynamic batching")


def arrivals_sentences(runs, sweep):
    def served(group):  # the run of the group that served the most
        return max((run for run in group if is_figure(run.get("served_per_s"))), key=lambda run: run["served_per_s"],
                   default=None)
    alone = [run for run in runs if run.get("max_batch_size") == 1]
    batched = [run for run in runs if is_figure(run.get("max_batch_size")) and run["max_batch_size"] > 1]
    sentences = []
    one, most = served(alone), served(batched)
    if one:
        text = (f"One request at a time serves at most {one['served_per_s']:,.0f} requests/s (at "
                f"{number(one.get('offered_per_s'), ',.0f')} offered)")
        batch_1 = sweep_rows(sweep["sweeps"][0]).get(1) if sweep and sweep.get("sweeps") else None
        if is_measured(batch_1):
            text += (f"; one batch of 1 alone takes {batch_1['latency_ms']:.3f} ms in step 10, "
                     f"{1e3 / batch_1['latency_ms']:,.0f} batches/s")
        sentences.append(text + ".")
    if most:
        times_as_many = f" ({most['served_per_s'] / one['served_per_s']:.1f}× as many)" if one else ""
        overloaded = ", overloaded" if most.get("overloaded") else ""
        sentences.append(f"Batching serves up to {most['served_per_s']:,.0f} requests/s{times_as_many}, with "
                         f"{most.get('setting', '?')} at {number(most.get('offered_per_s'), ',.0f')} offered (p50 "
                         f"{number(most.get('p50_ms'))} ms, mean batch {number(most.get('mean_batch'), '.1f')}"
                         f"{overloaded}).")
    for setting in dict.fromkeys(run.get("setting") for run in runs):
        steady = [run for run in runs if run.get("setting") == setting and not run.get("overloaded")
                  and is_figure(run.get("offered_per_s"))]
        if steady:
            top = max(steady, key=lambda run: run["offered_per_s"])
            sentences.append(f"{setting}: up to {top['offered_per_s']:,.0f} requests/s offered without overload, p50 "
                             f"{number(top.get('p50_ms'))} ms, p99 {number(top.get('p99_ms'))} ms, mean batch "
                             f"{number(top.get('mean_batch'), '.1f')}.")
    lost = sum(run.get("lost") or 0 for run in runs)
    duplicated = sum(run.get("duplicated") or 0 for run in runs)
    sentences.append(f"Over the {len(runs)} runs: {lost} requests lost, {duplicated} served twice.")
    return sentences


def picture_link(result, report, what):
    """A step's own picture (its "plot", written beside its JSON), linked relative to the page."""
    if not result.get("plot"):
        return []
    picture = Path(os.path.relpath(report.source / Path(str(result["plot"])).name, report.output))
    return ["", f"![{what}]({picture.as_posix()})"]


# ---------------------------------------------------------------------------------------------------
# Formatting


def cell(text):
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def number(value, spec=".2f", unit="", empty=NOT_MEASURED):
    """A figure of a result as text ('7.87', '7.87 ms'), or `empty` where the result does not hold it."""
    return f"{value:{spec}}{unit}" if is_figure(value) else empty


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
    """Read every step in `source`, write the pages and pictures to `output`; `other_run`: (results, where they
    come from) of another run to compare with, or None.

    Returns the notes (one line per thing that could not be read), the number of timelines drawn and, with
    another run, the verdict on each step's figure between the runs.
    """
    results, notes = load_results(source)
    ladder, beyond = rungs_and_beyond(results)
    others = [r for r in results if not has_timed_window(r) and r.get("kind") in PAGE_KINDS]
    notes += [f"{r['stem']}: not a ladder step (kind {r.get('kind', 'unknown')!r}), not in the table"
              for r in results if not has_timed_window(r) and r.get("kind") not in PAGE_KINDS]
    if not ladder:
        raise CourseError(f"no step result in {source}/ has a timed window (\"last3_ms\"): run the steps "
                          "(`make run-all`) first")
    output.mkdir(parents=True, exist_ok=True)
    traces, figures, trace_notes = read_traces(source, ladder + beyond, nsys)
    notes += trace_notes
    between_runs, verdicts = reproduce.comparison(results, *other_run) if other_run else ([], {})
    report = Report(ladder, beyond, others, figures, sorted({trace.nsys_version for trace in traces.values()}), notes,
                    source_line, source, output, between_runs)
    write_summary(output / "summary.md", report)
    write_results_page(output / "README.md", report)
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
            traces[result["stem"]] = nsys_trace.read_timeline(database, result["batches"] * result.get("repeats", 1))
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
        description="Report the steps' results: reports/README.md (the full results page), reports/summary.md (its "
                    "timings table), reports/ladder.png and a timeline picture per profiled step.")
    parser.add_argument("--reports", type=cli.non_empty_path, default=DEFAULT_REPORTS,
                        help=f"where the steps wrote <stem>.json and <stem>.nsys-rep; the report is written here "
                             f"too (default: {DEFAULT_REPORTS}/)")
    parser.add_argument("--examples", type=cli.non_empty_path, default=DEFAULT_EXAMPLES,
                        help="committed results to report when the reports directory holds none "
                             f"(default: {DEFAULT_EXAMPLES}/)")
    parser.add_argument("--nsys", help="the nsys executable that exports .nsys-rep files (default: nsys on PATH)")
    parser.add_argument("--compare", type=cli.non_empty_path, metavar="OTHER_DIR",
                        help="another run's reports directory: the results page then says which steps' figures "
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
    print(f"report: wrote README.md, summary.md, ladder.png and {timelines} timeline picture(s) to {args.reports}/")

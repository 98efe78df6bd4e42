"""The steps' results as the report compares them: the JSONs, their steady-state figures, noise, the ladder chart.

A result is what common/results.py wrote: reports/<stem>.json. Results from before the course timed
several windows hold only the source tutorial's figure ("last3_ms"); they count as one window. Results from
before the course measured GPU memory hold no "memory"; those from before it named its PyTorch stand-in hold
no "stand_in".
"""
import json
import re

from common import stats
from common.report import plots

TUTORIAL_BATCHES = 3  # results.TIMED_BATCHES, the source tutorial's window (results imports the GPU stack)


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


def has_timed_window(result):
    """Results of the ladder's workload; others (a batch-size sweep, say) are reported elsewhere."""
    return isinstance(result.get("last3_ms"), (int, float)) and result["last3_ms"] > 0


def is_ladder_step(result):
    """A rung: a timed ladder workload, not a step beyond the ladder (whose result names the rung it builds on)."""
    return has_timed_window(result) and "builds_on" not in result


def rung_of(result):
    """The step number of the rung a step beyond the ladder builds on ("8_multi_context" -> 8)."""
    return step_number({"stem": result["builds_on"]})


def rungs_and_beyond(results):
    """The timed results split into the ladder's rungs and the steps beyond it; others (a sweep) in neither."""
    return ([result for result in results if is_ladder_step(result)],
            [result for result in results if has_timed_window(result) and not is_ladder_step(result)])


def taken(results):
    """When the results were taken: 'first date to last date', one date, or None where none has a date."""
    dates = sorted({str(result["date"]) for result in results if result.get("date")})
    return " to ".join(dict.fromkeys([dates[0], dates[-1]])) if dates else None


def windows(result):
    """ms per batch of each timed window; a result from before windows existed is one window."""
    return result.get("windows_ms_per_batch") or [result["last3_ms"] / TUTORIAL_BATCHES]


def ms_per_batch(result):
    """The figure the course ranks steps by: the median over the windows."""
    return stats.median(windows(result))


def images_per_batch(result):
    """Mean images per batch of the step's workload (step 9 mixes two sizes)."""
    if result.get("images_per_s"):
        return result["images_per_s"] * ms_per_batch(result) / 1e3
    return result.get("batch_size")


def images_per_second(result):
    if isinstance(result.get("images_per_s"), (int, float)):
        return result["images_per_s"]
    batch_size = result.get("batch_size")
    return batch_size / ms_per_batch(result) * 1e3 if isinstance(batch_size, int) else None


def same_workload(result, other):
    return round(images_per_batch(result) or 0, 3) == round(images_per_batch(other) or 0, 3)


def compare(result, other):
    """How `result` compares with `other`: ("within noise" | "faster" | "slower" | "other workload", factor).

    The factor is the ratio of throughputs (images/s), so steps with other batch sizes still compare; two
    results whose windows overlap are "within noise" whatever the ratio of their medians.
    """
    factor = images_per_second(result) / images_per_second(other)
    if not same_workload(result, other):
        return "other workload", factor
    if stats.within_noise(windows(result), windows(other)):
        return "within noise", factor
    return ("faster" if factor > 1 else "slower"), factor


def speedups(ladder):
    """Every step against the baseline (step 1) and against the step before it: compare() pairs, or None."""
    baseline = next((r for r in ladder if step_number(r) == 1), None)
    pairs, previous = [], None
    for result in ladder:
        pairs.append((compare(result, baseline) if baseline else None,
                      compare(result, previous) if previous else None))
        previous = result
    return pairs


def lesson_comparisons(ladder, beyond):
    """Each step's lesson as a compare() pair: a rung against the rung before it, a step beyond the ladder
    against the rung it builds on; None for the first rung, or when that rung is not in the run."""
    lessons = {result["stem"]: previous for result, (_, previous) in zip(ladder, speedups(ladder))}
    for result in beyond:
        rung = next((r for r in ladder if step_number(r) == rung_of(result)), None)
        lessons[result["stem"]] = compare(result, rung) if rung else None
    return lessons


def step_label(result):
    return str(result.get("stem", "?"))


def times(factor):
    return f"{factor:.2f}×" if factor else "–"


def comparison_text(comparison):
    """'1.93× faster', '0.95× slower', 'within noise (1.02×)', 'other workload (0.61×)' or '–'."""
    if comparison is None:
        return "–"
    verdict, factor = comparison
    if verdict in ("faster", "slower"):
        return f"{factor:.2f}× {verdict}"
    return f"{verdict} ({factor:.2f}×)"


def versus_text(comparison, step):
    """'1.04× step 8 (faster)', '1.01× step 8 (within noise)'."""
    verdict, factor = comparison
    return f"{factor:.2f}× step {step} ({verdict})"


# What result["stand_in"] names (None for TensorRT), as the summary calls it.
STAND_INS = {"compiled": "compiled PyTorch stand-in (Inductor)", "eager": "eager PyTorch stand-in"}
UNNAMED_STAND_IN = "PyTorch stand-in (whether compiled or eager was not recorded)"


def stand_in_name(result):
    """Which PyTorch stand-in made a result: its "stand_in", else the word its backend label starts with."""
    kind = result.get("stand_in")
    if kind not in STAND_INS:
        label = str(result.get("backend_label", ""))
        kind = next((name for name in STAND_INS if label.startswith(name)), None)
    return STAND_INS.get(kind, UNNAMED_STAND_IN)


def memory_of(result):
    """The step's GPU memory figures (MiB), or None for a result from before they were recorded."""
    memory = result.get("memory")
    return memory if isinstance(memory, dict) else None


def activations_mib(memory):
    """The activation memory of each execution context the step holds (MiB)."""
    return [value for value in memory.get("activations_mib") or [] if isinstance(value, (int, float))]


def floor_ms(result):
    """The larger of the step's H2D and inference per batch (common/floor.py); None for results without it."""
    floor = result.get("floor")
    parts = [floor.get(key) for key in ("h2d_ms", "inference_ms")] if isinstance(floor, dict) else []
    parts = [part for part in parts if isinstance(part, (int, float))]
    return max(parts) if parts else None


def another_workload(result, ladder):
    """Whether a rung runs another workload than the ladder's first rung (step 9 mixes batches of 128 and 16): its
    time per batch is not comparable with the rungs', so the chart draws it apart and the tables say so."""
    return bool(ladder) and not same_workload(result, ladder[0])


def rung_numbered(ladder, number):
    """The rung of that step number, or None where it is not in the run."""
    return next((result for result in ladder if step_number(result) == number), None)


# ---------------------------------------------------------------------------------------------------
# The ladder chart (common/report/plots.py draws it)

APART_NOTE = "another workload: not a rung"


def draw_ladder(path, ladder):
    """The ladder chart: every rung's median ms per batch with its windows' range, its speedup and its distance
    from its own floor (fp32 steps against the fp32 engine's floor, FP16 steps against FP16's); a rung of another
    workload (step 9) below a divider, apart from the rungs."""
    bars = [ladder_bar(result, over_baseline, over_previous, another_workload(result, ladder))
            for result, (over_baseline, over_previous) in zip(ladder, speedups(ladder))]
    order = sorted(range(len(bars)), key=lambda index: bars[index].apart)  # the rungs first, in step order
    memory = memory_bars(ladder)
    plots.plot_ladder(path, [bars[index] for index in order],
                      "time per batch (ms): median over the timed windows, bars from the fastest to the slowest "
                      "window; shorter is faster",
                      f"Inference ladder\n{ladder_subtitle(ladder)}",
                      [memory[index] for index in order] if memory else None)


def ladder_bar(result, over_baseline, over_previous, apart):
    """One step's bar: its figure, its windows' range, its own floor (None for a step of another workload, whose
    floor, of the ladder's batches, is not its own workload's) and its note."""
    spans = windows(result)
    if apart:
        return plots.LadderBar(step_label(result), ms_per_batch(result), min(spans), max(spans), APART_NOTE,
                               floor_ms=None, apart=True)
    note = [f"{times(over_baseline[1])} baseline" if over_baseline else ""]
    if over_previous and over_previous[0] == "within noise":
        note.append("within noise vs previous")
    return plots.LadderBar(step_label(result), ms_per_batch(result), min(spans), max(spans),
                           ", ".join(filter(None, note)), floor_ms=floor_ms(result))


def memory_bars(ladder):
    """The memory panel's bars, one per step (None where its result has no memory figures); None when no step
    has them, and then the chart has no memory panel."""
    if not any(memory_of(result) for result in ladder):
        return None
    return [memory_bar(memory_of(result)) if memory_of(result) else None for result in ladder]


def memory_bar(memory):
    return plots.MemoryBar(memory.get("weights_mib") or 0, sum(activations_mib(memory)), memory.get("buffers_mib") or 0,
                           memory.get("peak_in_use_mib"))


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

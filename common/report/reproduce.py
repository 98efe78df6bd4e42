"""Do the figures reproduce? Two runs of the same steps, each in processes of its own, compared step by step.

A run's windows show the noise inside one process. They cannot show a cost that stays put for the life of
a process but differs from one process to the next (what a fresh device allocation costs, say): only a
second run can. `make reproduce` runs every step twice, and the second run's report compares the two
here. A step's figure reproduces when the two medians are within REPRODUCE_PCT of each other; where
they are not, the difference is one of three kinds:
- within noise: the two runs' windows overlap, so the runs cannot be told apart;
- not steady: a run's windows spread more than stats.SPREAD_WARNING_PCT (that run's own table flags it);
- between processes: each run's windows agree with each other, the two runs do not.
A lesson reproduces when its verdict against the step it builds on (faster, slower, within noise) is
the same in both runs.
"""
from common import stats
from common.report import ladder

REPRODUCE_PCT = 5.0


def difference_pct(result, other):
    """How far this run's median lies from the other run's, in percent of the other's."""
    return (ladder.ms_per_batch(result) / ladder.ms_per_batch(other) - 1) * 100


def run_verdict(result, other):
    """Whether a step's figure reproduced in the other run and, if not, what kind of difference it was."""
    if not ladder.same_workload(result, other):
        return "other workload: not compared"
    if abs(difference_pct(result, other)) <= REPRODUCE_PCT:
        return "reproduces"
    mine, theirs = ladder.windows(result), ladder.windows(other)
    if stats.within_noise(mine, theirs):
        return "within noise"
    unsteady = [run for run, spans in (("this run", mine), ("the other run", theirs)) if stats.is_noisy(spans)]
    if unsteady:
        return f"not steady in {' and '.join(unsteady)}"
    return "differs between processes"


def lesson_verdict(here, there):
    """Both runs' verdicts on a lesson, marked ⚠ where they differ ('1.18× faster / within noise (1.01×) ⚠')."""
    if here is None and there is None:
        return "–"
    text = f"{ladder.comparison_text(here)} / {ladder.comparison_text(there)}"
    return text if here and there and here[0] == there[0] else f"{text} ⚠"


def comparison(results, other_results, other_source):
    """The summary's section on the other run: a row per step, then what did not reproduce, and why."""
    ladder_here, beyond_here = ladder.rungs_and_beyond(results)
    ladder_there, beyond_there = ladder.rungs_and_beyond(other_results)
    lessons_here = ladder.lesson_comparisons(ladder_here, beyond_here)
    lessons_there = ladder.lesson_comparisons(ladder_there, beyond_there)
    others = {result["stem"]: result for result in ladder_there + beyond_there}
    when = ladder.taken(ladder_there + beyond_there) or "date unknown"
    lines = ["", "## Between two runs: do the figures reproduce?", "",
             f"This run against {other_source} (taken {when}), each step in a process "
             "of its own in both. A run's windows show the noise inside one process; only a second run shows what "
             f"changes from one process to the next. A step **reproduces** when the two medians are within "
             f"{REPRODUCE_PCT:g}%. Where they are not: **within noise** when the runs' windows overlap; **not "
             f"steady** when a run's windows spread more than {stats.SPREAD_WARNING_PCT:g}%; **differs between "
             "processes** when each run's windows agree but the runs do not: a cost that is fixed for the life of "
             "a process and differs between processes, which no number of windows in one run can show. A lesson's "
             "verdict (against the step before it, or the rung a step beyond the ladder builds on) is marked ⚠ "
             "where the two runs disagree.", "",
             "| step | ms per batch, this run (range) | ms per batch, other run (range) | difference (%) "
             "| between the runs | lesson: this run / other run |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    verdicts, flipped = {}, []
    for result in ladder_here + beyond_here:
        stem, other = result["stem"], others.get(result["stem"])
        if other is None:
            lines.append(f"| {ladder.step_label(result)} | {median_range(result)} | – | – | not in the other run "
                         "| – |")
            continue
        verdicts[stem] = run_verdict(result, other)
        lesson = lesson_verdict(lessons_here[stem], lessons_there.get(stem))
        if lesson.endswith("⚠"):
            flipped.append(stem)
        lines.append(f"| {ladder.step_label(result)} | {median_range(result)} | {median_range(other)} "
                     f"| {difference_pct(result, other):+.1f} | {verdicts[stem]} | {lesson} |")
    lines += ["", reproduced_line(verdicts)]
    if flipped:
        lines += ["", f"Lessons whose verdict differs between the runs (⚠): {', '.join(flipped)}. Such a lesson's "
                      "gain is no larger than what moves between runs: read it in the trace, or compare it within "
                      "one run."]
    return lines, verdicts


def median_range(result):
    spans = ladder.windows(result)
    return f"{ladder.ms_per_batch(result):.2f} ({min(spans):.2f}–{max(spans):.2f})"


def reproduced_line(verdicts):
    """'8 of 10 steps reproduce within 5%; the others: 1_baseline (differs between processes), ...'."""
    others = [f"{stem} ({verdict})" for stem, verdict in verdicts.items() if verdict != "reproduces"]
    line = f"{len(verdicts) - len(others)} of {len(verdicts)} steps reproduce within {REPRODUCE_PCT:g}%"
    return f"{line}; the others: {', '.join(others)}." if others else f"{line}."

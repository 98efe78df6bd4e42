"""Batching without a GPU: the batch-size sweep's figures and the dynamic batcher's policy.

Steps 10 and 11 put the GPU work around what is here: pure functions over (batch size, latency,
throughput) rows, a seeded arrival process, and a thread-safe batcher. Keeping them apart from the GPU
lets the tests check them anywhere, with synthetic timings and a fake clock.
"""
import collections
import dataclasses
import math
import threading
import time

import numpy as np

from common import stats
from common.errors import CourseError

OUT_OF_MEMORY = "out of memory"
# What the course's errors say when GPU memory runs out: common/cuda.py's check (a failed cudaMalloc)
# and the stand-in (PyTorch's allocator) both; so does step 10's plain PyTorch sweep.
OUT_OF_MEMORY_MESSAGE = "out of GPU memory"


# ---------------------------------------------------------------------------------------------------
# The batch-size sweep

@dataclasses.dataclass(frozen=True)
class SweepRow:
    """One batch size: the latency of a batch run alone and the throughput of batches back to back,
    or, where it could not run, why (`failure`, e.g. OUT_OF_MEMORY)."""
    batch_size: int
    latency_ms: float | None = None
    images_per_s: float | None = None
    failure: str | None = None
    check: dict | None = None  # the batch's outputs against the reference (results.check_outputs)
    throughput_runs: tuple = ()  # images/s of each repeated measurement; images_per_s is their median
    activations_mib: float | None = None  # the context's activation memory at this batch size (common/memory.py)
    peak_in_use_mib: float | None = None  # the driver's device memory in use at this size, over the process's start

    @property
    def measured(self):
        return self.failure is None and self.latency_ms is not None and self.images_per_s is not None

    @property
    def runs(self):
        """The throughput measurements: the repeated runs, or the one figure where there were none."""
        return self.throughput_runs or (self.images_per_s,)


def sweep_batch_sizes(smallest, largest):
    """The powers of two from `smallest` to `largest`, and both ends (a profile's limits need not be powers of two)."""
    if not 1 <= smallest <= largest:
        raise ValueError(f"need 1 <= smallest <= largest, not {smallest}, {largest}")
    powers = {2 ** exponent for exponent in range(largest.bit_length()) if smallest <= 2 ** exponent <= largest}
    return sorted(powers | {smallest, largest})


def is_out_of_memory(error):
    return OUT_OF_MEMORY_MESSAGE in str(error)


def run_sweep(batch_sizes, measure, on_row=None):
    """measure(batch_size) -> SweepRow for each size in turn; a size that runs out of memory is recorded as
    such and the sweep goes on (a larger size may still fit on another run, and the smaller ones are the
    answer anyway). Any other error stops the sweep. `on_row` sees each row as soon as it exists.
    """
    rows = []
    for batch_size in batch_sizes:
        try:
            row = measure(batch_size)
        except CourseError as error:
            if not is_out_of_memory(error):
                raise
            row = SweepRow(batch_size, failure=OUT_OF_MEMORY)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def largest_that_fits(rows):
    """(the largest batch size that ran, why the sweep stopped there): the first size that ran out of memory, or
    the end of the sweep, which is the engine's largest batch (or --batch-size)."""
    ran = measured(rows)
    if not ran:
        return None, "no batch size ran"
    first_failure = next((row for row in rows if row.failure == OUT_OF_MEMORY), None)
    if first_failure and first_failure.batch_size > ran[-1].batch_size:
        return ran[-1].batch_size, f"batch {first_failure.batch_size} ran out of memory"
    return ran[-1].batch_size, "the largest batch swept"


def measured(rows):
    """The rows with figures, by batch size; rows of batches that did not run are left out."""
    return sorted((row for row in rows if row.measured), key=lambda row: row.batch_size)


def peak(rows):
    """The row of highest throughput (the smaller batch on a tie); None where nothing was measured."""
    candidates = measured(rows)
    return max(candidates, key=lambda row: (row.images_per_s, -row.batch_size)) if candidates else None


def find_knee(rows, within=0.05):
    """The smallest batch whose throughput is within `within` (a fraction: 0.05 is 5%) of the peak.

    Past the knee, a larger batch buys at most that much more throughput for a proportionally longer
    latency. A flat curve has its knee at the smallest batch; a curve that falls after its peak still
    has its knee at or before the peak.
    """
    if not 0 <= within < 1:
        raise ValueError(f"within is a fraction in [0, 1), not {within}")
    best = peak(rows)
    if best is None:
        return None
    floor = (1 - within) * best.images_per_s
    return next(row for row in measured(rows) if row.images_per_s >= floor)


def knee_candidates(rows, within=0.05):
    """The batch sizes the knee could be, given the noise: from the smallest whose fastest run reaches the
    threshold ((1 - within) x the peak's median) to the smallest whose slowest run does (or the peak). One
    size: the knee is named; several: the measurements cannot tell them apart, and none is named.
    """
    best = peak(rows)
    if best is None:
        return []
    threshold = (1 - within) * best.images_per_s
    sizes = measured(rows)
    could = next(row for row in sizes if max(row.runs) >= threshold)  # exists: the peak's median reaches it
    surely = next((row for row in sizes if min(row.runs) >= threshold), best)  # never smaller than `could`
    return [row.batch_size for row in sizes if could.batch_size <= row.batch_size <= surely.batch_size]


def knee_within_noise(rows, within=0.05):
    """The knee where the noise allows naming one (a single candidate), else None."""
    candidates = knee_candidates(rows, within)
    return find_knee(rows, within) if len(candidates) == 1 else None


def trade_offs(rows):
    """The rows no other row beats on both counts (lower or equal latency and higher or equal throughput,
    better on one): the batches worth considering; any other batch is slower AND does less work than one
    of these. Typically every batch from the smallest up to the peak, and none past it.
    """
    candidates = measured(rows)

    def dominated(row):
        return any(other.latency_ms <= row.latency_ms and other.images_per_s >= row.images_per_s
                   and (other.latency_ms < row.latency_ms or other.images_per_s > row.images_per_s)
                   for other in candidates)
    return [row for row in candidates if not dominated(row)]


def best_within_latency(rows, budget_ms):
    """The highest-throughput row whose latency fits the budget; None where no batch fits."""
    fitting = [row for row in measured(rows) if row.latency_ms <= budget_ms]
    return max(fitting, key=lambda row: (row.images_per_s, -row.batch_size)) if fitting else None


def marks(rows, within=0.05):
    """A short note per batch size for the sweep's table: knee (or a knee candidate, where the noise leaves
    several), peak, trade-off, dominated, within noise of the batch below, out of memory."""
    candidates, best = knee_candidates(rows, within), peak(rows)
    frontier = {row.batch_size for row in trade_offs(rows)}
    notes, below = {}, None
    for row in rows:
        if not row.measured:
            notes[row.batch_size] = [row.failure or "not measured"]
            continue
        note = []
        if row.batch_size in candidates:
            note.append("knee" if len(candidates) == 1 else "knee?")
        if row.batch_size == best.batch_size:
            note.append("peak")
        note.append("trade-off" if row.batch_size in frontier else "dominated")
        if below is not None and stats.within_noise(row.runs, below.runs) and len(row.runs) > 1:
            note.append(f"within noise of {below.batch_size}")
        notes[row.batch_size] = note
        below = row
    return notes


# ---------------------------------------------------------------------------------------------------
# Dynamic batching

def poisson_arrivals(rate_per_s, count, seed):
    """`count` arrival times in seconds from 0 of a Poisson process at `rate_per_s`: independent,
    exponentially distributed gaps (the arrivals of many independent clients). The same seed gives the
    same times, and times for another rate are the same gaps rescaled, so settings compare on equal terms.
    """
    if rate_per_s <= 0 or count < 0:
        raise ValueError(f"need a positive rate and a count >= 0, not {rate_per_s}, {count}")
    gaps = np.random.default_rng(seed).exponential(1.0, size=count) / rate_per_s
    return np.cumsum(gaps)


class BatcherClosed(RuntimeError):
    """submit() after close(): the batcher takes no new requests once it is shut down."""


class Batcher:
    """Groups requests into batches: a batch is due when `max_batch_size` requests are waiting, or when the
    oldest has waited `max_wait_s` (measured from its submission), whichever comes first.

    Thread-safe: any number of threads may submit while consumers take batches with next_batch().
    Requests leave in the order they arrived (FIFO), each exactly once. close() refuses new requests
    and makes everything still pending due at once, so consumers drain it, in batches of at most
    `max_batch_size`, before next_batch() returns None.
    `clock` is injectable so the policy can be tested with a fake one (see poll()).
    """

    def __init__(self, max_batch_size, max_wait_s, clock=time.perf_counter):
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"need max_batch_size >= 1 and max_wait_s >= 0, not {max_batch_size}, {max_wait_s}")
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self._clock = clock
        self._pending = collections.deque()  # (submitted at, request), oldest first
        self._condition = threading.Condition()
        self._closed = False

    def submit(self, request):
        with self._condition:
            if self._closed:
                raise BatcherClosed("the batcher is shut down and takes no new requests")
            self._pending.append((self._clock(), request))
            self._condition.notify()

    def close(self):
        """Refuse new requests; whatever is pending becomes due now."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def closed(self):
        return self._closed

    def __len__(self):
        with self._condition:
            return len(self._pending)

    def poll(self):
        """The batch due now, or None; never blocks."""
        with self._condition:
            return self._take_due(self._clock())

    def next_batch(self):
        """Block until a batch is due and return it (a list of requests, oldest first); None once the
        batcher is closed and empty."""
        with self._condition:
            while True:
                now = self._clock()
                batch = self._take_due(now)
                if batch is not None:
                    return batch
                if self._closed:
                    return None
                self._condition.wait(self._time_to_deadline(now))

    def _take_due(self, now):
        if not self._pending:
            return None
        oldest_waited = now - self._pending[0][0]
        if not (self._closed or len(self._pending) >= self.max_batch_size or oldest_waited >= self.max_wait_s):
            return None
        batch = [self._pending.popleft()[1] for _ in range(min(len(self._pending), self.max_batch_size))]
        if self._pending:
            self._condition.notify()  # more may be due: wake another consumer, if there is one
        return batch

    def _time_to_deadline(self, now):
        """How long until the oldest request's wait runs out; None (wait for a submit) when none is pending."""
        if not self._pending:
            return None
        return max(0.0, self._pending[0][0] + self.max_wait_s - now)


def delivery_problems(submitted_ids, delivered_ids):
    """(lost, duplicated): ids submitted but never delivered, and ids delivered more than once (or never submitted)."""
    submitted, counts = set(submitted_ids), collections.Counter(delivered_ids)
    lost = sorted(submitted - counts.keys())
    duplicated = sorted(i for i, n in counts.items() if n > 1 or i not in submitted)
    return lost, duplicated


def latency_summary(arrivals_s, completions_s, batch_sizes, offered_rate):
    """The figures of one serving run: latency percentiles (arrival to result) in ms, the mean batch size,
    and two rates: requests arrived per second (over the arrivals: a random sample of the offered rate) and
    served per second (first arrival to last result). Served well below arrived means the queue grew
    during the run: overloaded."""
    arrivals, completions = np.asarray(arrivals_s, float), np.asarray(completions_s, float)
    count = len(arrivals)
    if count == 0:
        raise ValueError("no request was served")
    latencies_ms = (completions - arrivals) * 1e3
    p50, p90, p99 = np.percentile(latencies_ms, (50, 90, 99))
    arrival_span, serving_span = arrivals.max() - arrivals.min(), completions.max() - arrivals.min()
    return {
        "offered_per_s": offered_rate, "requests": count,
        "arrived_per_s": float((count - 1) / arrival_span) if arrival_span > 0 else math.nan,
        "served_per_s": float(count / serving_span) if serving_span > 0 else math.nan,
        "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(latencies_ms.max()),
        "batches": len(batch_sizes), "mean_batch": float(np.mean(batch_sizes)) if batch_sizes else math.nan,
        "largest_batch": int(max(batch_sizes)) if batch_sizes else 0,
    }


def rows_not_their_own(outputs, reference, max_rel_err=0.1):
    """Indices of output rows that are not their own input's result: relative error against their own
    reference row far above any precision's (fp16 is about 1e-3); a mixed-up or stale row is about 1."""
    outputs, reference = np.asarray(outputs), np.asarray(reference)
    errors = np.linalg.norm(outputs - reference, axis=1) / np.maximum(np.linalg.norm(reference, axis=1), 1e-12)
    return [int(i) for i in np.flatnonzero(~(errors <= max_rel_err))]  # NaN counts as wrong

"""Timing, the output check against the PyTorch reference, and each step's JSON result."""
import datetime
import gc
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from common import floor, memory, nvtx, stats
from common.errors import CourseError

PROCESS_STARTED = time.perf_counter()  # the step imports this module first: its start-up is measured from here
TIMED_BATCHES = 3  # the source tutorial times the last three batches: its figure, and the timelines' window
OUTPUT_COST_RUNS = 20

# Pass criteria per engine precision: relative L2 error of all logits, top-1 agreement with the fp32 reference
# and, where given, top-5 agreement (the reference's top class among the engine's five best). fp32 allows TF32
# tensor-core math (TensorRT's and PyTorch's default for fp32 convolutions). INT8 rounds every convolution's input
# and weights to 256 levels: on the course's weights its logits differ from fp32's by about 2% (1.8% measured on
# the CPU over 1,280 images, calibrated on 256, with every top class kept), and a rounding that flips moves a
# value by a whole INT8 step, so small differences of the fp32 arithmetic around it (TF32, another convolution
# algorithm) grow through the network's 20 layers. The limits leave room for that, and still fail a broken
# calibration (one wrong scale saturates or zeroes a layer: errors of the order of the logits themselves).
TOLERANCES = {
    "fp32": {"max_rel_err": 5e-3, "min_top1": 0.99},
    "fp16": {"max_rel_err": 2e-2, "min_top1": 0.97},
    "int8": {"max_rel_err": 1e-1, "min_top1": 0.95, "min_top5": 0.99},
}


class Timer:
    """Host wall time of the timed run: several windows of batches, back to back, as trtexec times iterations.

    The run is `windows` passes over the same `batches` batches. A window's figure is the time it takes to
    produce its results after its first one, divided by their number (batches - 1): the steady-state time
    per batch, without the pipeline's filling. In a step that handles one batch at a time that is simply
    the time of a batch; in a pipelined step, where the next batches are already in flight when a result
    is done, a time taken from a batch's *start* would also hold the work queued before it, and so penalize
    the pipeline for its depth. The figure the course ranks by is the median over the windows.
    The NVTX range "last 3 batches" marks the source tutorial's window (the last three results) and "all
    batches" the whole timed run. Safe to call from several threads. A timer with `traced=False` (a step's side
    measurement after its timed run) marks no NVTX range and takes no memory sample: those are the timed run's.
    """

    def __init__(self, batches, windows, traced=True):
        self.batches_per_window, self.windows, self.traced = batches, windows, traced
        self._lock = threading.Lock()
        self._started = None
        self.startup_s = None
        self._window_range = self._run_range = None
        self._batch_starts, self._batch_ends, self._done_at = {}, [], {}
        # A full garbage collection walks every object with all threads stopped: with PyTorch loaded it took
        # 20 to 150 ms on the H100 machine. Frozen objects are skipped, so none of that lands in a window.
        gc.collect()
        gc.freeze()

    @property
    def total_batches(self):
        return self.batches_per_window * self.windows

    def start_batch(self, index):
        with self._lock:
            now = time.perf_counter()
            if self._started is None:
                self._started = now
                self.startup_s = now - PROCESS_STARTED  # loading, compiling, buffers, warm-up: all before this
                if self.traced:
                    memory.driver.sample()  # everything is allocated and warmed up
                    self._run_range = nvtx.start("all batches")  # per-batch trace figures are read over this
            self._batch_starts[index] = now

    def batch_done(self, index):
        """Call once batch `index`'s output has been processed, from whichever thread processed it."""
        with self._lock:
            now = time.perf_counter()
            self._batch_ends.append(now)
            self._done_at[index] = now
            if not self.traced:
                return
            if len(self._batch_ends) == self.total_batches - TIMED_BATCHES:
                self._window_range = nvtx.start(f"last {TIMED_BATCHES} batches")
            elif len(self._batch_ends) == self.total_batches:
                nvtx.end(self._window_range)
                nvtx.end(self._run_range)
                memory.driver.sample()

    @property
    def windows_ms_per_batch(self):
        """Each window's steady-state ms per batch: its first to its last result, over the results in between."""
        size = self.batches_per_window
        return [(self._batch_ends[end] - self._batch_ends[start]) * 1e3 / (size - 1)
                for start, end in ((k * size, (k + 1) * size - 1) for k in range(self.windows))]

    @property
    def last3_ms(self):
        """The source tutorial's figure: the time to produce the last three results."""
        return (self._batch_ends[-1] - self._batch_ends[-1 - TIMED_BATCHES]) * 1e3

    @property
    def total_ms(self):
        return (self._batch_ends[-1] - self._started) * 1e3

    def latencies_ms(self):
        """Every batch's latency: from its start to its result processed."""
        return [(self._done_at[index] - start) * 1e3 for index, start in self._batch_starts.items()]

    def timeline_ms(self):
        """When each batch started and when each result was done, in ms after the first start."""
        def relative(stamps):
            return [round((stamp - self._started) * 1e3, 3) for stamp in stamps]
        return relative(self._batch_starts[index] for index in sorted(self._batch_starts)), relative(self._batch_ends)


def describe_predictions(logits, top=5):
    """Output processing: softmax and the top classes of every image; returns a line for the first image.

    A partial sort: argpartition finds each image's `top` classes in linear time, and only those are
    ordered (a full argsort of 1000 classes per image cost about 2 ms per batch of 128).
    """
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    best = top_classes(probabilities, top)
    first = ", ".join(f"{label} ({probabilities[0, label]:.3f})" for label in best[0])
    return f"{len(logits)} images; first image's top-{top}: {first}"


def top_classes(probabilities, top):
    """Each row's `top` best classes, best first."""
    best = np.argpartition(probabilities, -top, axis=1)[:, -top:]
    order = np.argsort(-np.take_along_axis(probabilities, best, axis=1), axis=1)
    return np.take_along_axis(best, order, axis=1)


def output_cost_ms(logits):
    """Host time of describe_predictions on one batch's logits: median of a few runs."""
    durations = []
    for _ in range(OUTPUT_COST_RUNS):
        started = time.perf_counter()
        describe_predictions(logits)
        durations.append((time.perf_counter() - started) * 1e3)
    return stats.median(durations)


def check_outputs(outputs, reference, precision):
    """Compare every batch's logits with the fp32 PyTorch reference; returns a dict with the verdict."""
    got, want = np.concatenate(outputs), np.concatenate(reference)
    tolerance = TOLERANCES[precision]
    max_abs_err = float(np.abs(got - want).max())
    rel_err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    top1 = float((got.argmax(axis=1) == want.argmax(axis=1)).mean())
    top5 = float((top_classes(got, 5) == want.argmax(axis=1)[:, None]).any(axis=1).mean())
    passed = bool(np.isfinite(got).all() and rel_err <= tolerance["max_rel_err"] and top1 >= tolerance["min_top1"]
                  and top5 >= tolerance.get("min_top5", 0))
    summary = (f"relative error {rel_err:.1e} (limit {tolerance['max_rel_err']:.0e}), max abs error "
               f"{max_abs_err:.1e}, top-1 agreement {top1:.2%} (limit {tolerance['min_top1']:.0%}), top-5 agreement "
               f"{top5:.2%}" + (f" (limit {tolerance['min_top5']:.0%})" if "min_top5" in tolerance else ""))
    return {"passed": passed, "max_abs_err": max_abs_err, "rel_err": rel_err, "top1_agreement": top1,
            "top5_agreement": top5, "tolerance": tolerance, "summary": summary}


def finish(docstring, args, run, timer, outputs, extra=None, held=None):
    """Check the outputs, measure the floor, print the step's figures, write reports/<step>.json; fail if the
    check failed. `extra`: fields a step beyond the ladder adds to its result (step 12's latency side); `held`:
    the GPU memory the timed run held (common/memory.py), where the step measured it before doing more."""
    loaded, device = run.loaded, run.device
    check = check_outputs(outputs, run.reference, loaded.metadata["precision"])
    held = held or memory.held(loaded)  # before the floor, which makes a context and buffers of its own
    floor_figures, floor_method = floor.measure(run, args.batch_size)
    result = {**step_record(docstring, loaded, device), "batches": args.batches, "repeats": args.repeats,
              "batch_size": args.batch_size, **timings(timer, run),
              "output_ms_per_batch": output_cost_ms(outputs[-1]), "floor": floor_figures,
              "floor_method": floor_method, "memory": held,
              "check": check, **(extra or {}), **run_record()}
    save(args.reports, result["stem"], result)
    print_result(result, timer)
    if not check["passed"]:
        raise CourseError(f"{result['stem']}'s outputs differ from the PyTorch reference ({check['summary']})")
    return result


def timings(timer, run):
    """The timed run's figures, as the JSON keeps them."""
    batch_starts_ms, results_done_ms = timer.timeline_ms()
    images_per_batch = sum(len(images) for images in run.batches) / len(run.batches)
    return {
        **steady_figures(timer, images_per_batch),
        "last3_ms": timer.last3_ms, "total_ms": timer.total_ms, "startup_s": timer.startup_s,
        "batch_starts_ms": batch_starts_ms, "results_done_ms": results_done_ms,
    }


def steady_figures(timer, images_per_batch):
    """A timed run's steady-state figures: each window's ms per batch, their median and spread, images/s, and
    the batches' latency percentiles. What a step's side measurement records of each of its runs."""
    windows, latencies = timer.windows_ms_per_batch, timer.latencies_ms()
    return {
        "windows_ms_per_batch": windows, "median_ms_per_batch": stats.median(windows),
        "spread_pct": stats.spread_pct(windows), "images_per_s": images_per_batch / stats.median(windows) * 1e3,
        "latency_p50_ms": stats.percentile(latencies, 50), "latency_p99_ms": stats.percentile(latencies, 99),
    }


def versus(figures, baseline):
    """How `figures` (steady_figures) compare with `baseline`'s: the speedup of their medians, and whether the
    windows' ranges overlap (then the difference is within noise, neither a gain nor a loss)."""
    return {"speedup": baseline["median_ms_per_batch"] / figures["median_ms_per_batch"],
            "within_noise": stats.within_noise(figures["windows_ms_per_batch"], baseline["windows_ms_per_batch"])}


def print_result(result, timer):
    windows, floor = result["windows_ms_per_batch"], result["floor"]
    print(f"{result['stem']} [{result['backend_label']}, {result['device']}]\n"
          f"  {timer.windows} windows of {timer.batches_per_window} batches: {result['median_ms_per_batch']:.2f} ms "
          f"per batch (median; windows {min(windows):.2f} to {max(windows):.2f}, spread {result['spread_pct']:.1f}%), "
          f"{result['images_per_s']:,.0f} images/s\n"
          f"  batch latency p50 {result['latency_p50_ms']:.2f} ms, p99 {result['latency_p99_ms']:.2f} ms; last "
          f"{TIMED_BATCHES} batches {result['last3_ms']:.2f} ms (the source tutorial's figure); start-up "
          f"{result['startup_s']:.1f} s (of which loading the engine {result['load_s']:.1f} s; then buffers, "
          "warm-up)\n"
          f"  floor (each on its own, batches back to back on one stream, CUDA events): H2D {floor['h2d_ms']:.2f} ms, "
          f"inference {floor['inference_ms']:.2f} ms per batch; this step takes "
          f"{result['median_ms_per_batch'] / max(floor.values()):.2f}x the larger\n"
          f"  output processing: {result['output_ms_per_batch']:.2f} ms of host time per batch\n"
          f"  {memory.line(result['memory'])}\n"
          f"  outputs vs reference: {'match' if result['check']['passed'] else 'DIFFER'}: {result['check']['summary']}")
    warning = stats.spread_warning("the windows", result["windows_ms_per_batch"])
    if warning:
        print(warning)


def step_record(docstring, loaded, device):
    """What a result is of, recorded by every step: the step (its script's name and docstring), the engine, the GPU."""
    stem = Path(sys.argv[0]).stem
    title, _, lesson = docstring.strip().splitlines()[0].partition(": ")
    return {
        "step": int(stem.split("_")[0]), "stem": stem, "title": title, "lesson": lesson,
        "backend": loaded.backend, "backend_label": loaded.label, "stand_in": loaded.stand_in,
        "engine": str(loaded.path), "load_s": loaded.load_s,
        "precision": loaded.metadata["precision"], "device": device[0],
    }


def run_record():
    """How a result was made, recorded by every step: the command, when, whether under nsys, the versions."""
    return {
        "under_nsys": os.environ.get("COURSE_UNDER_NSYS") == "1",
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }


def save(reports, stem, result):
    """Write reports/<stem>.json."""
    path = Path(reports, f"{stem}.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as error:  # checked before the run, but a disk can fill up or a directory go away since
        raise CourseError(f"could not write {path} ({error.strerror}): pass --reports a directory you can "
                          "write to") from None


def versions():
    versions = {"python": platform.python_version()}
    for module in ("torch", "tensorrt", "numpy"):
        versions[module] = getattr(sys.modules.get(module), "__version__", None)
    try:
        from cuda import bindings
        versions["cuda_bindings"] = bindings.__version__
    except (ImportError, AttributeError):
        versions["cuda_bindings"] = None
    return versions

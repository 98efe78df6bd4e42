"""Timing, the output check against the PyTorch reference, and each step's JSON result."""
import datetime
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from common import nvtx
from common.errors import CourseError

TIMED_BATCHES = 3  # the source tutorial times the last three batches: warm-up effects are over by then

# Pass criteria per engine precision: relative L2 error of all logits, and top-1 agreement with the fp32
# reference. fp32 allows TF32 tensor-core math (TensorRT's and PyTorch's default for fp32 convolutions).
TOLERANCES = {
    "fp32": {"max_rel_err": 5e-3, "min_top1": 0.99},
    "fp16": {"max_rel_err": 2e-2, "min_top1": 0.97},
}


class Timer:
    """Host wall time of all batches and of the last three, with an NVTX range around the timed window.

    The timed window is the time it takes to produce the last three results: it opens when the result
    before them is done and closes when the last one is. In a step that handles one batch at a time,
    that is the time of the last three batches, as in the source tutorial. In a pipelined step, where
    the next batches are already in flight when a result is done, a window opened when a batch *starts*
    would also hold the work queued before it, and so penalize the pipeline for its depth.
    Safe to call from several threads.
    """

    def __init__(self, batches):
        self._batches = batches
        self._lock = threading.Lock()
        self._started = self._window_started = self._stopped = None
        self._window_range = self._run_range = None
        self._batch_starts, self._batch_ends, self._done_order = {}, [], []

    def start_batch(self, index):
        with self._lock:
            now = time.perf_counter()
            if self._started is None:
                self._started = now
                self._run_range = nvtx.start("all batches")  # per-batch trace figures are read over this
            self._batch_starts[index] = now

    def batch_done(self, index):
        """Call once batch `index`'s output has been processed, from whichever thread processed it."""
        with self._lock:
            now = time.perf_counter()
            self._batch_ends.append(now)
            self._done_order.append(index)
            if len(self._batch_ends) == self._batches - TIMED_BATCHES:
                self._window_started = now
                self._window_range = nvtx.start(f"last {TIMED_BATCHES} batches")
            elif len(self._batch_ends) == self._batches:
                self._stopped = now
                nvtx.end(self._window_range)
                nvtx.end(self._run_range)

    @property
    def timed_batches(self):
        """The indices of the batches whose results the window holds (in a step with several threads, these
        need not be the last three batches of the list)."""
        return self._done_order[-TIMED_BATCHES:]

    @property
    def last3_ms(self):
        return (self._stopped - self._window_started) * 1e3

    @property
    def total_ms(self):
        return (self._stopped - self._started) * 1e3

    def timeline_ms(self):
        """When each batch started and when each result was done, in ms after the first start."""
        def relative(stamps):
            return [round((stamp - self._started) * 1e3, 3) for stamp in stamps]
        return relative(self._batch_starts[index] for index in sorted(self._batch_starts)), relative(self._batch_ends)


def describe_predictions(logits, top=5):
    """Output processing: softmax and the top classes of every image; returns a line for the first image."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    best = np.argsort(-probabilities, axis=1)[:, :top]
    first = ", ".join(f"{label} ({probabilities[0, label]:.3f})" for label in best[0])
    return f"{len(logits)} images; first image's top-{top}: {first}"


def check_outputs(outputs, reference, precision):
    """Compare every batch's logits with the fp32 PyTorch reference; returns a dict with the verdict."""
    got, want = np.concatenate(outputs), np.concatenate(reference)
    tolerance = TOLERANCES[precision]
    max_abs_err = float(np.abs(got - want).max())
    rel_err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    top1 = float((got.argmax(axis=1) == want.argmax(axis=1)).mean())
    passed = bool(np.isfinite(got).all() and rel_err <= tolerance["max_rel_err"] and top1 >= tolerance["min_top1"])
    summary = (f"relative error {rel_err:.1e} (limit {tolerance['max_rel_err']:.0e}), max abs error "
               f"{max_abs_err:.1e}, top-1 agreement {top1:.2%} (limit {tolerance['min_top1']:.0%})")
    return {"passed": passed, "max_abs_err": max_abs_err, "rel_err": rel_err, "top1_agreement": top1,
            "tolerance": tolerance, "summary": summary}


def finish(docstring, args, run, timer, outputs):
    """Check the outputs, print the step's figures, write reports/<step>.json; fail if the check failed."""
    images = sum(len(run.batches[index]) for index in timer.timed_batches)
    loaded, device = run.loaded, run.device
    batch_starts_ms, results_done_ms = timer.timeline_ms()
    check = check_outputs(outputs, run.reference, loaded.metadata["precision"])
    result = {
        **step_record(docstring, loaded, device), "batches": args.batches, "batch_size": args.batch_size, "last3_ms": timer.last3_ms, "total_ms": timer.total_ms,
        "batch_starts_ms": batch_starts_ms, "results_done_ms": results_done_ms,
        "images_per_s": images / timer.last3_ms * 1e3, "check": check, **run_record(),
    }
    stem = result["stem"]
    save(args.reports, stem, result)
    print(f"{stem} [{loaded.label}, {device[0]}]\n"
          f"  last {TIMED_BATCHES} batches: {timer.last3_ms:.2f} ms ({timer.last3_ms / TIMED_BATCHES:.2f} ms per batch, "
          f"{result['images_per_s']:.0f} images/s); all {args.batches} batches: {timer.total_ms:.2f} ms\n"
          f"  outputs vs reference: {'match' if check['passed'] else 'DIFFER'}: {check['summary']}")
    if not check["passed"]:
        raise CourseError(f"{stem}'s outputs differ from the PyTorch reference ({check['summary']})")
    return result


def step_record(docstring, loaded, device):
    """What a result is of, recorded by every step: the step (its script's name and docstring), the engine, the GPU."""
    stem = Path(sys.argv[0]).stem
    title, _, lesson = docstring.strip().splitlines()[0].partition(": ")
    return {
        "step": int(stem.split("_")[0]), "stem": stem, "title": title, "lesson": lesson,
        "backend": loaded.backend, "backend_label": loaded.label, "engine": str(loaded.path),
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

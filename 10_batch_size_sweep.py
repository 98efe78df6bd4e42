"""Batch-size sweep: throughput climbs with the batch size until the GPU is full; latency keeps climbing.

Not a rung of the ladder: it measures step 7's pipeline (pinned memory, a copy stream and a compute stream
ordered by events, a CUDA graph per batch size) at the powers of two (and both ends) from the profile's
smallest batch to its largest (or --batch-size), on an engine built with a wide dynamic batch range. It
answers "which batch size?".
The sweep builds on step 7's pipeline, imported from 7_cuda_graph.py: its input slots, the H2D on the copy
stream, the inference and the D2H on the compute stream, and its CUDA graphs. Added here: buffers for
one batch size at a time, freed after it, and graphs captured before each batch size is timed and
destroyed with its buffers.
Why the curve has this shape: every batch pays fixed costs (kernel launches and the host's work per
call, kernels too small to fill the GPU's SMs), which a larger batch spreads over more images, so
images/s climbs. Once the GPU is busy, a batch twice as large takes about twice as long: throughput
flattens, or even falls (activations that no longer fit in the L2 cache, kernels tuned for another
shape), while the latency of a batch keeps growing with its size. "Larger is better" ends at the knee:
the smallest batch within --knee-within percent (default 5) of the peak throughput. Past the knee you
pay much more latency for a few percent of throughput; past the peak you lose both. The table marks
the trade-offs (batches that no other batch beats on both latency and throughput) and, with
--latency-budget-ms, the best batch that meets a latency budget. Where the knee lies depends on the
model, the GPU and the precision: measure it, do not guess.
- Latency: one batch alone (H2D, inference, D2H), host clock around it, median of --batches runs.
- Throughput: batches back to back, the next batch's H2D overlapping this batch's inference (step 5),
  at least --batches of them and about 0.1 s of them (counted from the latency of a batch alone); images
  per second, measured --repeats times
  (default 5): the figure is their median, and their range its noise. There is no output thread: the
  logits are checked once per batch size instead of being processed per batch.
- Noise: a batch whose runs overlap those of the batch below is marked "within noise" of it. The knee is
  named only where the noise allows: if a smaller batch's fastest run also reaches the threshold, or the
  knee's slowest run does not, the batches that could be the knee are listed instead ("knee?").
- A batch that does not fit in GPU memory is reported as "out of memory" and the sweep goes on. (On
  TensorRT, a context reserves the activation memory of its profile's largest batch when it is created,
  so there the failure comes at the start: build a narrower profile.)
- For comparison, the same sweep of plain eager PyTorch in fp16 (same copies, streams and timing, no
  CUDA graph, default memory layout): what you would run without TensorRT. On the stand-in
  (BACKEND=torch) both sweeps are PyTorch, and the gap is what the CUDA graph and channels-last layout
  are worth, not what TensorRT's kernels are.

What to look for (the table, and reports/10_batch_size_sweep.png):
- images/s rising steeply at small batches, then flat: the knee is where "flat" starts;
- latency nearly constant at small batches (the GPU is not full), then proportional to the batch;
- eager PyTorch far behind at small batches, where launching kernels one by one is the bottleneck,
  and closer at large ones, where the GPU's work dominates.

Run: python 0_build.py --precision fp16 --profile 1:256:1024 --name resnet18_fp16_wide
     python 10_batch_size_sweep.py (--help for the options)
"""
import argparse
import contextlib
import dataclasses
import math
import statistics
import sys
import time
import typing
from pathlib import Path

import numpy as np
import torch

from common import batching, build, cli, cuda, data, engine as engines, memory, nvtx, plots, results, stats, steps
from common.errors import CourseError

step7 = steps.load("7_cuda_graph")  # the pipeline the sweep measures

ENGINE = "resnet18_fp16_wide"
PRECISION = "fp16"
MIN_SECONDS = 0.1  # each throughput run: long enough that the host clock's jitter does not matter
MAX_RUNS = 1000  # --batches: runs per figure; the default 10 already gives a stable median
REFERENCE_CHUNK = 128  # the fp32 reference is computed in chunks: a 1024-image fp32 batch may not fit


def parse_args():
    shared = cli.parser(__doc__)
    # The shared options, with --batch-size and --batches given this step's meaning ("resolve" lets a redefinition win).
    parser = argparse.ArgumentParser(description=shared.description, parents=[shared], conflict_handler="resolve")
    parser.add_argument("--batch-size", type=cli.whole_number(1),
                        help="the largest batch size to try (default: the largest the engine's profile takes)")
    parser.add_argument("--batches", type=cli.whole_number(3, MAX_RUNS), default=10,
                        help="runs timed per batch size for each figure (default 10; small batches run more, "
                             f"to last at least {MIN_SECONDS} s)")
    parser.add_argument("--repeats", type=cli.whole_number(1, MAX_RUNS), default=5,
                        help="throughput measurements per batch size (default 5): the figure is their median, their "
                             "range decides whether the knee can be named")
    parser.add_argument("--knee-within", type=cli.number(0, 100, low_allowed=True), default=5.0, metavar="PERCENT",
                        help="the knee is the smallest batch within this many percent of the peak throughput "
                             "(default 5)")
    parser.add_argument("--latency-budget-ms", type=cli.number(0), action="append", metavar="MS",
                        help="also name the best batch whose latency fits this budget (repeatable)")
    parser.add_argument("--no-pytorch", action="store_true", help="skip the plain PyTorch sweep")
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------------
# The pipeline, per batch size

class Buffers(typing.NamedTuple):
    """One batch size's device buffers: two input slots (double buffering) and the output. A tuple laid out as
    step 7's allocate() returns its buffers, so that step 7's infer() finds the output address in it."""
    slots: list
    output_address: int
    batch_size: int


class Pipeline:
    """Step 7's streams, events and copies, with buffers for one batch size at a time; a subclass says how the
    inference itself is queued, with a launch(slot, batch_size) like that of step 7's InferenceGraphs."""

    def __init__(self, input_spec, output_spec, largest):
        self.input, self.output = input_spec, output_spec
        self.copy_stream, self.compute_stream = cuda.create_stream(), cuda.create_stream()
        self.events = [(cuda.create_event(), cuda.create_event()) for _ in range(2)]
        self.host_output = step7.HostOutput(cuda.pinned_empty(output_spec.shape_for(largest), output_spec.dtype),
                                            cuda.create_event())

    @contextlib.contextmanager
    def buffers(self, batch_size):
        """This batch size's device buffers, freed afterwards, also when one of them does not fit."""
        addresses = []
        try:
            for nbytes in (self.input.nbytes(batch_size),) * 2 + (self.output.nbytes(batch_size),):
                addresses.append(cuda.malloc(nbytes))
            slots = [step7.InputSlot(address, *events) for address, events in zip(addresses, self.events)]
            yield Buffers(slots, addresses[2], batch_size)
        finally:
            for stream in (self.copy_stream, self.compute_stream):  # nothing may still use them
                cuda.synchronize(stream)
            for address in addresses:
                cuda.free(address)

    def copy_in(self, slot, images):
        step7.copy_in(self.copy_stream, slot, images)

    def infer(self, buffers, slot):
        """Step 7's inference and D2H, with this pipeline's launch() in the place of its graphs."""
        step7.infer(self, self.compute_stream, buffers, slot, self.host_output, buffers.batch_size)

    def prepare(self, buffers):
        """Whatever must happen once per batch size before timing (bind buffers, capture graphs)."""

    def launch(self, slot, batch_size):
        raise NotImplementedError

    def release(self):
        """Drop what prepare() made for the batch size just measured."""

    def activation_bytes(self):
        """The activation memory the inference holds at the batch size just run."""
        raise NotImplementedError


class OutOfMemoryWhileCapturing(Exception):
    """Carries an out-of-memory error past step 7's launch(), which would take any CourseError while capturing
    for an engine that cannot be captured; here it means a batch size too large (hence not a CourseError)."""


class SweepGraphs(step7.InferenceGraphs):
    """Step 7's CUDA graphs, captured before a batch size is timed and destroyed with its buffers."""

    def capture_before_timing(self, slots, batch_size):
        """Each slot's graph now: step 7's launch() captures it (and runs it once) on first use."""
        try:
            for slot in slots:
                self.launch(slot, batch_size)
        except OutOfMemoryWhileCapturing as carrier:
            raise carrier.__cause__ from None  # the CourseError again: the sweep records the size as out of memory
        cuda.synchronize(self.stream)  # those runs are over before the warm-up's H2D overwrites a slot

    def capture(self, slot, batch_size):
        """Step 7's capture; an out-of-memory in it leaves step 7's launch() as OutOfMemoryWhileCapturing."""
        try:
            return super().capture(slot, batch_size)
        except CourseError as error:
            if batching.is_out_of_memory(error):
                raise OutOfMemoryWhileCapturing() from error
            raise

    def release(self):
        """A graph replays fixed addresses: once this batch size's buffers are freed, its graphs must go too."""
        cuda.synchronize(self.stream)
        for graph in self.graphs.values():
            cuda.destroy_graph(graph)
        self.graphs.clear()


class EnginePipeline(Pipeline):
    """The engine behind step 7's CUDA graphs: one graph per input slot, captured for each batch size."""
    name = "engine"

    def __init__(self, loaded, largest):
        super().__init__(loaded.input, loaded.output, largest)
        self.label, self.loaded = loaded.label, loaded
        self.context = loaded.engine.create_execution_context()  # out of memory for it: one line (engine.py)
        self.graphs = SweepGraphs(self.context, self.compute_stream, loaded)

    def prepare(self, buffers):
        engines.accepted(self.context.set_tensor_address(self.output.name, buffers.output_address), "the output's address")
        self.graphs.capture_before_timing(buffers.slots, buffers.batch_size)

    def launch(self, slot, batch_size):
        self.graphs.launch(slot, batch_size)

    def release(self):
        self.graphs.release()

    def activation_bytes(self):
        return memory.context_activation_bytes(self.loaded, self.context)


class DeviceArray:
    """Raw device memory presented to PyTorch (CUDA Array Interface), so eager PyTorch uses the same buffers."""

    def __init__(self, address, shape, dtype):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": np.dtype(dtype).str,
                                         "data": (address, False), "version": 3, "strides": None, "stream": None}


class EagerPyTorch(Pipeline):
    """Plain eager PyTorch in fp16, kernel by kernel, with the same buffers, copies and streams."""
    name = "pytorch"

    def __init__(self, input_spec, output_spec, largest):
        super().__init__(input_spec, output_spec, largest)
        self.label = f"eager PyTorch {torch.__version__}, fp16"
        self.model = data.Fp16Compute(data.load_model(build.WEIGHTS_PATH)).cuda().eval()
        self.torch_stream = torch.cuda.ExternalStream(self.compute_stream)
        self.inputs, self.logits = {}, None  # tensors on this batch size's buffers, by slot address

    def prepare(self, buffers):
        def view(address, spec):
            return torch.as_tensor(DeviceArray(address, spec.shape_for(buffers.batch_size), spec.dtype), device="cuda")
        self.inputs = {slot.address: view(slot.address, self.input) for slot in buffers.slots}
        self.logits = view(buffers.output_address, self.output)

    def launch(self, slot, batch_size):
        try:
            with torch.cuda.stream(self.torch_stream), torch.inference_mode():
                self.logits.copy_(self.model(self.inputs[slot.address]))
        except torch.cuda.OutOfMemoryError:
            raise CourseError(f"out of GPU memory running a batch of {batch_size} in PyTorch") from None

    def release(self):
        cuda.synchronize(self.compute_stream)
        self.inputs, self.logits = {}, None
        torch.cuda.empty_cache()  # give back what this size cached, so the next size has the memory

    def activation_bytes(self):
        """What PyTorch's allocator has reserved: this size's activations (release() gave back the last size's)."""
        return torch.cuda.memory_reserved()


# ---------------------------------------------------------------------------------------------------
# Measuring

def run_alone(pipeline, buffers, images):
    """One batch with nothing else in flight, from its H2D to its logits on the host: its latency in ms."""
    started = time.perf_counter()
    pipeline.copy_in(buffers.slots[0], images)
    pipeline.infer(buffers, buffers.slots[0])
    cuda.event_synchronize(pipeline.host_output.ready)
    return (time.perf_counter() - started) * 1e3


def run_back_to_back(pipeline, buffers, images, count):
    """`count` batches as step 5 queues them (the next H2D overlapping this inference): images per second."""
    started = time.perf_counter()
    pipeline.copy_in(buffers.slots[0], images)
    for index in range(count):
        if index + 1 < count:  # prefetch first: the copy runs while this batch's inference is queued and runs
            pipeline.copy_in(buffers.slots[(index + 1) % 2], images)
        pipeline.infer(buffers, buffers.slots[index % 2])
    cuda.synchronize(pipeline.compute_stream)
    return count * len(images) / (time.perf_counter() - started)


def measure(pipeline, images, reference, batch_size, runs, repeats):
    """One batch size's row: latency, throughput (`repeats` measurements), and its logits checked against the
    reference."""
    batch = images[:batch_size]
    range_id = nvtx.start(f"{pipeline.name}: batch size {batch_size}")
    try:
        with pipeline.buffers(batch_size) as buffers:
            try:
                pipeline.prepare(buffers)
                with nvtx.phase("warm-up"):  # first runs pay one-off costs; keep them out of the figures
                    for _ in range(2):
                        run_alone(pipeline, buffers, batch)
                latency_ms = statistics.median(run_alone(pipeline, buffers, batch) for _ in range(runs))
                count = max(runs, math.ceil(MIN_SECONDS * 1e3 / latency_ms))
                throughput_runs = tuple(run_back_to_back(pipeline, buffers, batch, count) for _ in range(repeats))
                logits = pipeline.host_output.logits[:batch_size].copy()
                activations, in_use = pipeline.activation_bytes(), memory.driver.over_start()
            finally:
                pipeline.release()
    finally:
        nvtx.end(range_id)
    check = results.check_outputs([logits], [reference[:batch_size]], PRECISION)
    return batching.SweepRow(batch_size, latency_ms, statistics.median(throughput_runs), check=check,
                             throughput_runs=throughput_runs, activations_mib=activations / memory.MIB,
                             peak_in_use_mib=None if in_use is None else in_use / memory.MIB)


def sweep(pipeline, batch_sizes, images, reference, runs, repeats):
    print(f"{pipeline.name}: {pipeline.label}")
    print(f"  {'batch':>6} {'latency ms':>11} {'ms/image':>9} {'images/s':>10} {'spread %':>8}  check")

    def show(row):
        if row.measured:
            verdict = "pass" if row.check["passed"] else f"FAIL: {row.check['summary']}"
            print(f"  {row.batch_size:>6} {row.latency_ms:>11.3f} {row.latency_ms / row.batch_size:>9.4f} "
                  f"{row.images_per_s:>10,.0f} {stats.spread_pct(row.runs):>8.1f}  {verdict}", flush=True)
        else:
            print(f"  {row.batch_size:>6} {row.failure}: the sweep goes on", flush=True)
    return batching.run_sweep(batch_sizes, lambda size: measure(pipeline, images, reference, size, runs, repeats),
                              show)


# ---------------------------------------------------------------------------------------------------
# What the figures say

def summarize(name, label, rows, within, budgets):
    """The sweep's rows with their marks, and the knee, peak and trade-offs, as the JSON keeps them."""
    knee, best = batching.knee_within_noise(rows, within), batching.peak(rows)
    notes = batching.marks(rows, within)
    fits, stopped = batching.largest_that_fits(rows)
    return {
        "name": name, "label": label,
        "rows": [{**dataclasses.asdict(row), "spread_pct": stats.spread_pct(row.runs) if row.measured else None,
                  "marks": notes[row.batch_size]} for row in rows],
        "knee": knee.batch_size if knee else None, "knee_candidates": batching.knee_candidates(rows, within),
        "peak": best.batch_size if best else None,
        "trade_offs": [row.batch_size for row in batching.trade_offs(rows)],
        "out_of_memory": [row.batch_size for row in rows if row.failure == batching.OUT_OF_MEMORY],
        "largest_that_fits": fits, "fits_until": stopped,
        "within_budget": {f"{budget:g}": getattr(batching.best_within_latency(rows, budget), "batch_size", None)
                          for budget in budgets},
    }


def print_table(summary, within):
    """The sweep with its marks, then what they mean for choosing a batch size."""
    rows = {row["batch_size"]: row for row in summary["rows"]}
    best = rows[summary["peak"]] if summary["peak"] else None
    print(f"\n{summary['name']}: {summary['label']}")
    print(f"  {'batch':>6} {'latency ms':>11} {'ms/image':>9} {'images/s':>10} {'spread %':>8} {'% of peak':>9} "
          f"{'activ. MiB':>10} {'in use MiB':>10}  marks")
    for size, row in rows.items():
        if row["failure"]:
            print(f"  {size:>6} {row['failure']:>11}")
            continue
        share = row["images_per_s"] / best["images_per_s"] * 100
        activations, in_use = (f"{row[key]:>10,.1f}" if row[key] is not None else f"{'–':>10}"
                               for key in ("activations_mib", "peak_in_use_mib"))
        print(f"  {size:>6} {row['latency_ms']:>11.3f} {row['latency_ms'] / size:>9.4f} {row['images_per_s']:>10,.0f} "
              f"{row['spread_pct']:>8.1f} {share:>9.1f} {activations} {in_use}  {', '.join(row['marks'])}")
    if best is None:
        print("  no batch size could be measured")
        return
    print(f"  largest batch that fits on this GPU: {summary['largest_that_fits']} ({summary['fits_until']})")
    if summary["knee"] is None:
        print(f"  knee: one of batches {summary['knee_candidates']}: within the noise of the runs, they cannot be told "
              f"apart from the {within:.0%} threshold (more --repeats, or a quieter machine, may separate them)")
        return print_choices(summary, rows)
    knee = rows[summary["knee"]]
    print(f"  knee: batch {knee['batch_size']}, the smallest within {within:.0%} of the peak "
          f"({knee['images_per_s']:,.0f} images/s at {knee['latency_ms']:.2f} ms per batch), outside the noise of "
          "the batch below")
    if best is knee:
        print("  peak: the knee itself (no larger batch does more)")
    else:
        print(f"  peak: batch {best['batch_size']} ({best['images_per_s']:,.0f} images/s at "
              f"{best['latency_ms']:.2f} ms): "
              f"{best['images_per_s'] / knee['images_per_s'] - 1:+.1%} throughput for "
              f"{best['latency_ms'] / knee['latency_ms']:.1f}x the knee's latency")
    print_choices(summary, rows)


def print_choices(summary, rows):
    """The trade-offs, and the best batch within each latency budget."""
    print(f"  trade-offs (no other batch is both faster and does more): {summary['trade_offs']}")
    for budget, size in summary["within_budget"].items():
        choice = f"batch {size} ({rows[size]['images_per_s']:,.0f} images/s)" if size else "no batch size fits"
        print(f"  latency budget {budget} ms: {choice}")


def print_comparison(engine_summary, pytorch_summary):
    """Engine over eager PyTorch, batch size by batch size, in throughput."""
    eager = {row["batch_size"]: row for row in pytorch_summary["rows"]}
    print(f"\n{engine_summary['name']} vs {pytorch_summary['name']} (images/s ratio):")
    for row in engine_summary["rows"]:
        other = eager.get(row["batch_size"])
        if row["failure"] or not other or other["failure"]:
            continue
        print(f"  batch {row['batch_size']:>5}: {row['images_per_s'] / other['images_per_s']:.2f}x")


# ---------------------------------------------------------------------------------------------------

def prepare(args):
    """The engine, its batch range, the images (one batch of the largest size, pinned) and their reference."""
    backend = engines.resolve_backend(args.backend)
    # What needs no GPU is checked first, as in the ladder's steps (workload.prepare).
    engine_file = engines.check_file(backend, args.engine or build.engine_path(ENGINE, backend), PRECISION)
    cli.check_writable_directory(args.reports, "--reports")
    smallest, _, largest_allowed = engine_file.profiles[0]  # the sweep runs on one context, on the first profile
    largest = args.batch_size or largest_allowed
    if not smallest <= largest <= largest_allowed:
        raise CourseError(f"--batch-size {largest} is outside the first profile of {engine_file.path} "
                          f"(batch {smallest}..{largest_allowed}): use a batch size in range or rebuild with "
                          "0_build.py --profile MIN:OPT:MAX")
    device = cuda.require_gpu()
    memory.driver.begin()  # each batch size's memory in use is measured from here
    loaded = engines.load(backend, engine_file.path, PRECISION, device, checked=engine_file)
    images = data.make_batches(1, largest, args.seed)[0]
    chunks = [images[start:start + REFERENCE_CHUNK] for start in range(0, largest, REFERENCE_CHUNK)]
    reference = np.concatenate(data.reference_logits(build.WEIGHTS_PATH, chunks, build.ENGINE_DIR / "cache"))
    return loaded, device, batching.sweep_batch_sizes(smallest, largest), cuda.pinned_copy(images), reference


def write_result(args, loaded, device, summaries, figure_path):
    checks = [row["check"] for summary in summaries for row in summary["rows"] if row["check"]]
    failed = [f"{summary['name']} batch {row['batch_size']}" for summary in summaries for row in summary["rows"]
              if row["check"] and not row["check"]["passed"]]
    result = {
        **results.step_record(__doc__, loaded, device), "kind": "sweep", "profile": list(loaded.profiles[0]),
        "runs_per_figure": args.batches, "throughput_repeats": args.repeats, "knee_within": args.knee_within / 100, "sweeps": summaries,
        "check": {"passed": not failed and bool(checks),
                  "summary": f"{len(checks) - len(failed)} of {len(checks)} batch sizes match the reference"
                             + (f"; differ: {', '.join(failed)}" if failed else "")},
        "plot": str(figure_path), **results.run_record(),
    }
    results.save(args.reports, result["stem"], result)
    return result


def main():
    args = parse_args()
    within, budgets = args.knee_within / 100, args.latency_budget_ms or []
    loaded, device, batch_sizes, images, reference = prepare(args)
    print(f"sweeping batch sizes {batch_sizes} [{loaded.label}, {device[0]}]")
    pipelines = [lambda: EnginePipeline(loaded, batch_sizes[-1])]
    if not args.no_pytorch:
        pipelines.append(lambda: EagerPyTorch(loaded.input, loaded.output, batch_sizes[-1]))
    summaries = []
    for make_pipeline in pipelines:
        pipeline = make_pipeline()
        rows = sweep(pipeline, batch_sizes, images, reference, args.batches, args.repeats)
        summaries.append(summarize(pipeline.name, pipeline.label, rows, within, budgets))
        del pipeline  # the engine's context and its memory go before eager PyTorch needs the GPU
    for summary in summaries:
        print_table(summary, within)
    if len(summaries) == 2:
        print_comparison(*summaries)
    Path(args.reports).mkdir(parents=True, exist_ok=True)
    figure_path = Path(args.reports, f"{Path(sys.argv[0]).stem}.png")
    plots.plot_sweep(figure_path, summaries, within, f"Batch-size sweep of ResNet-18 fp16 on {device[0]}: {loaded.label}")
    result = write_result(args, loaded, device, summaries, figure_path)
    print(f"\nwrote {args.reports}/{Path(sys.argv[0]).stem}.json and {figure_path}")
    if not result["check"]["passed"]:
        raise CourseError(f"outputs differ from the PyTorch reference: {result['check']['summary']}")


if __name__ == "__main__":
    cli.run(main)

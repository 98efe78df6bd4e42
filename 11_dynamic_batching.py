"""Dynamic batching: single-image requests grouped on the fly, a little latency for much more throughput.

Not a rung of the ladder: a small inference server. Requests of one image each arrive at random times
(a Poisson process, the arrivals of many independent clients, seeded by --seed so that every setting
sees the same arrivals) at each of --rates requests per second. A batcher (common/batching.py) queues them and
hands the GPU a batch when --batch-size requests are waiting or when the oldest has waited
--max-wait-ms, whichever comes first, and a server runs the batches.
The server builds on step 7's pipeline, imported from 7_cuda_graph.py: its input slots and buffers, the
copy stream and the compute stream ordered by events, a CUDA graph per batch size, and its output
thread. Added here: a pinned staging buffer per input slot that the requests' images are gathered into,
a graph captured for every batch size before the runs, and an output thread that hands each request
its logits.
Why: step 10 showed that the GPU does many more images per second in batches, but a server receives
images one by one. Served one at a time, every request pays a whole batch's fixed cost, and once
requests arrive faster than one batch of 1 takes, the queue grows without bound and so does latency.
A batcher lets the batch size follow the load: at a low rate batches stay small and a request waits at
most the max wait; at a high rate batches fill up and throughput climbs toward step 10's curve.
- A max wait of 0 is "greedy": take whatever is queued when the server is free. Batches still form
  under load, because requests pile up while the GPU is busy.
- A longer max wait helps only where the rate fills a batch within it; below that it is latency spent
  for nothing.
Latency runs from a request's arrival (its scheduled time, so a late load generator cannot hide
queueing) to its logits on the host: p50, p90, p99. Throughput is requests served per second. Every
request's logits are checked against the reference of its own image, and none may be lost or served
twice, at shutdown too: the batcher then refuses new requests and flushes everything pending.
The host side is Python (one thread each for the arrivals, the server and the outputs), and host work
that grows with the batch matters here as much as GPU work: gathering the images into the pinned staging
buffer is one row copy per image, 602 KB of fp32 pixels each. Under nsys on the H100 machine that copy
took 76 to 100 us per image and 92% of the server thread's time at 16,000 requests/s: it, not the GPU,
is what saturates first. Going further means copying fewer bytes per image: images that land in
pinned memory once, or 8-bit pixels normalized on the GPU.

What to look for (the table, and reports/11_dynamic_batching.png):
- one request at a time: fine at low rates; past about 1 / (latency of a batch of 1) it is overloaded:
  it serves fewer requests per second than arrive and its p99 grows with the length of the run;
- with batching, the mean batch grows with the rate, and p99 stays low at rates where one request
  at a time is already overloaded, until the server is full at the largest batch (the gather, above);
- a longer max wait: higher latency at low rates (requests wait for company that does not come),
  larger batches at high ones;
- in the plot, latency against throughput: a curve per setting; lower and further right is better.

Run: python 11_dynamic_batching.py (--help for the options); it uses step 4's engine (resnet18_fp16).
"""
import argparse
import dataclasses
import gc
import math
import sys
import threading
import time
from pathlib import Path

import numpy as np

from common import batching, build, cli, cuda, data, engine as engines, nvtx, plots, results, steps
from common.errors import CourseError

step7 = steps.load("7_cuda_graph")  # the pipeline the server runs

ENGINE = "resnet18_fp16"
PRECISION = "fp16"
POOL_SIZE = 256  # distinct images the requests cycle through; each has its reference logits
MAX_REQUESTS = 1_000_000  # per run: each is an object made before the run (16,000 at the default rates)
MAX_WAIT_MS = 60_000  # a batcher that waits longer than a run lasts only ever flushes at shutdown
OVERLOADED = 0.9  # serving less than this share of the arrival rate: the queue grew during the run


def numbers(minimum, allow_minimum, below=None):
    """A comma-separated list of numbers, each above `minimum` (or equal to it, where allowed) and below `below`."""
    def parse(text):
        try:
            values = [float(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
        if not all(math.isfinite(v) and (v > minimum or (allow_minimum and v == minimum))
                   and (below is None or v < below) for v in values):
            raise argparse.ArgumentTypeError(f"each must be {'at least' if allow_minimum else 'above'} {minimum:g}"
                                             + (f" and below {below:g}" if below else "") + f", not {text}")
        return values
    return parse


def parse_args():
    shared = cli.parser(__doc__)
    # The shared options, with --batch-size given this step's meaning ("resolve" lets a redefinition win).
    parser = argparse.ArgumentParser(description=shared.description, parents=[shared], conflict_handler="resolve")
    parser.add_argument("--batch-size", type=cli.whole_number(1), default=32,
                        help="the largest batch the batcher forms (default 32)")
    # Shared, but requests are what count here: a value would be silently ignored, so it is refused.
    parser.add_argument("--batches", type=not_an_option_here("step 11 has no --batches: its load is --rates and "
                                                              "--duration-s"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=not_an_option_here("step 11 has no --repeats: its runs are one per "
                                                              "rate and setting"), help=argparse.SUPPRESS)
    parser.add_argument("--rates", type=numbers(0, False), default=[500, 1000, 2000, 4000, 8000, 16000],
                        metavar="R,R,...", help="arrival rates to try, requests per second "
                                                "(default 500,1000,2000,4000,8000,16000)")
    parser.add_argument("--max-wait-ms", type=numbers(0, True, below=MAX_WAIT_MS), default=[0, 2, 5],
                        metavar="MS,MS,...",
                        help="the batcher's max waits to try, each with --batch-size (default 0,2,5); one "
                             "request at a time is always run too")
    parser.add_argument("--duration-s", type=cli.number(0), default=1.0, metavar="S",
                        help="how long requests arrive in each run, seconds (default 1)")
    args = parser.parse_args()
    for rate in args.rates:  # the requests of a run are made before it: their number must make sense
        requests = rate * args.duration_s
        if not 1 <= requests <= MAX_REQUESTS:
            parser.error(f"--rates {rate:g} for --duration-s {args.duration_s:g} is {requests:g} requests per run: "
                         f"a run needs 1 to {MAX_REQUESTS:,} (change the rate or the duration)")
    return args


def not_an_option_here(message):
    """An argparse type that refuses any value, for a shared option this step has no use for."""
    def parse(text):
        raise argparse.ArgumentTypeError(message)
    return parse


# ---------------------------------------------------------------------------------------------------
# Requests and the load

@dataclasses.dataclass
class Request:
    """One image to classify: which image, when it arrives (perf_counter seconds), when its result was ready."""
    id: int
    image: int
    arrival: float
    completed: float = None


@dataclasses.dataclass(frozen=True)
class Setting:
    """A batcher policy: one request at a time is max batch 1 (its max wait then does not matter)."""
    max_batch_size: int
    max_wait_ms: float

    @property
    def name(self):
        if self.max_batch_size == 1:
            return "one request at a time"
        return f"batches of up to {self.max_batch_size}, wait up to {self.max_wait_ms:g} ms"


class LoadGenerator(threading.Thread):
    """Submits each request at its arrival time, then shuts the batcher down (the server drains it)."""

    def __init__(self, batcher, requests):
        super().__init__(name="arrivals", daemon=True)
        self.batcher, self.requests = batcher, requests
        self.error = None

    def run(self):
        try:
            for request in self.requests:
                delay = request.arrival - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                self.batcher.submit(request)
        except Exception as error:
            self.error = error
        finally:
            self.batcher.close()

    def raise_error(self):
        if self.error is not None:
            raise CourseError(f"the load generator failed: {self.error}")


# ---------------------------------------------------------------------------------------------------
# The server: step 7's pipeline, fed by the batcher

class InputSlot(step7.InputSlot):
    """Step 7's input slot with a pinned staging buffer, which the batch's images are gathered into."""

    def __init__(self, address, staging, copied, consumed):
        super().__init__(address, copied, consumed)
        self.staging = staging  # free again once `copied` has fired: the H2D has read it

    @classmethod
    def with_staging(cls, slot, input_spec, batch_size):
        """Step 7's `slot`, with a staging buffer for up to `batch_size` images."""
        staging = cuda.pinned_empty(input_spec.shape_for(batch_size), input_spec.dtype)
        return cls(slot.address, staging, slot.copied, slot.consumed)


class Server:
    """Runs batches of requests: gathers their images, then step 7's H2D, graph and D2H, and hands them to the
    output thread."""

    def __init__(self, loaded, pool, max_batch_size):
        self.pool = pool
        context = loaded.engine.create_execution_context()
        self.copy_stream, self.compute_stream = cuda.create_stream(), cuda.create_stream()
        # Everything sized for the largest batch, allocated once.
        slots, self.output_address, self.host_outputs = step7.allocate(context, loaded, max_batch_size)
        with nvtx.phase("alloc"):  # what step 7 lacks: a staging buffer per slot
            self.slots = [InputSlot.with_staging(slot, loaded.input, max_batch_size) for slot in slots]
        self.graphs = step7.InferenceGraphs(context, self.compute_stream, loaded)
        with nvtx.phase("warm-up"):  # a graph per batch size and slot now, not in the middle of a run
            for batch_size in range(1, max_batch_size + 1):
                for slot in self.slots:
                    self.graphs.launch(slot, batch_size)
            cuda.synchronize(self.compute_stream)

    def serve(self, batcher, output_thread):
        """Until the batcher is shut down and drained; returns the size of every batch it ran."""
        buffers = (self.slots, self.output_address, self.host_outputs)  # as step 7's allocate() returns them
        sizes = []
        while (batch := batcher.next_batch()) is not None:
            slot = self.slots[len(sizes) % 2]
            staging = self.gather(slot, batch)
            host_output = output_thread.take_free_buffer()
            step7.copy_in(self.copy_stream, slot, staging)
            step7.infer(self.graphs, self.compute_stream, buffers, slot, host_output, len(batch))
            output_thread.pending.put((batch, host_output))  # the thread waits for the logits, not us
            sizes.append(len(batch))
        return sizes

    def gather(self, slot, batch):
        """The batch's images in the slot's staging rows, once its last H2D has read them."""
        with nvtx.phase("gather"):
            cuda.event_synchronize(slot.copied)
            staging = slot.staging[:len(batch)]
            # One row copy per image (numpy releases the interpreter lock for each). Not np.take(out=...):
            # on the H100 machine it gathered at about 0.2 ms per image and capped the server near 2,500/s.
            for row, request in enumerate(batch):
                staging[row] = self.pool[request.image]
        return staging


class OutputThread(step7.OutputThread):
    """Step 7's output thread, giving every request its row of the batch's logits instead of printing the batch."""

    def __init__(self, host_outputs):
        super().__init__(host_outputs, outputs=None, timer=None)  # neither is used: run() below replaces step 7's
        self.delivered = []  # request ids, once per delivery: a duplicate would show here
        self.logits = {}

    def run(self):
        """Takes (requests, HostOutput) from `pending` until None."""
        try:
            while (item := self.pending.get()) is not None:
                batch, host_output = item
                cuda.event_synchronize(host_output.ready)
                completed = time.perf_counter()
                rows = host_output.logits[:len(batch)].copy()
                self.free.put(host_output)
                with nvtx.phase("output"):
                    for request, row in zip(batch, rows):
                        request.completed = completed
                        self.delivered.append(request.id)
                        self.logits.setdefault(request.id, row)
        except Exception as error:
            self.error = error
            self.free.put(None)  # wakes the server if it is waiting for a buffer


# ---------------------------------------------------------------------------------------------------
# One run: a rate and a setting

def serve_run(server, setting, rate, duration_s, seed, reference):
    """Serve one arrival process with one batcher setting; returns the run's figures and checks."""
    count = max(1, math.ceil(rate * duration_s))
    offsets = batching.poisson_arrivals(rate, count, seed)
    batcher = batching.Batcher(setting.max_batch_size, setting.max_wait_ms / 1e3)
    output_thread = OutputThread(server.host_outputs)
    start = time.perf_counter() + 0.01  # the threads are up before the first arrival
    requests = [Request(index, index % len(reference), start + offset) for index, offset in enumerate(offsets)]
    generator = LoadGenerator(batcher, requests)
    range_id = nvtx.start(f"{setting.name}, {rate:g} requests/s")
    output_thread.start()
    generator.start()
    try:
        sizes = server.serve(batcher, output_thread)
    finally:
        batcher.close()  # an error above must not leave the generator submitting
        output_thread.pending.put(None)
        output_thread.join()
        generator.join()
        nvtx.end(range_id)
    output_thread.raise_error()
    generator.raise_error()
    return summarize_run(setting, rate, requests, sizes, output_thread, reference)


def summarize_run(setting, rate, requests, sizes, output_thread, reference):
    lost, duplicated = batching.delivery_problems([r.id for r in requests], output_thread.delivered)
    served = [r for r in requests if r.id in output_thread.logits]
    outputs = np.stack([output_thread.logits[r.id] for r in served])
    expected = reference[[r.image for r in served]]
    check = results.check_outputs([outputs], [expected], PRECISION)
    not_their_own = batching.rows_not_their_own(outputs, expected)
    check["passed"] = check["passed"] and not (lost or duplicated or not_their_own)
    check["summary"] = (f"{len(served)} of {len(requests)} requests served, {len(lost)} lost, {len(duplicated)} "
                        f"duplicated, {len(not_their_own)} not their own image's result; {check['summary']}")
    figures = batching.latency_summary([r.arrival for r in served], [r.completed for r in served], sizes, rate)
    return {"setting": setting.name, "max_batch_size": setting.max_batch_size, "max_wait_ms": setting.max_wait_ms,
            **figures, "overloaded": figures["served_per_s"] < OVERLOADED * figures["arrived_per_s"],
            "lost": len(lost), "duplicated": len(duplicated), "check": check}


# ---------------------------------------------------------------------------------------------------
# Reporting

def print_row(run):
    verdict = "pass" if run["check"]["passed"] else f"FAIL: {run['check']['summary']}"
    note = "  overloaded" if run["overloaded"] else ""
    rates = f"{run['offered_per_s']:>9,.0f} {run['arrived_per_s']:>9,.0f} {run['served_per_s']:>9,.0f}"
    latencies = f"{run['p50_ms']:>8.2f} {run['p90_ms']:>8.2f} {run['p99_ms']:>8.2f}"
    print(f"  {run['setting']:<38} {rates} {latencies} {run['mean_batch']:>6.1f}  {verdict}{note}", flush=True)


def print_header():
    print(f"  {'setting':<38} {'offered/s':>9} {'arrived/s':>9} {'served/s':>9} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'p99 ms':>8} {'batch':>6}  check")
    print("  (offered: the rate asked for; arrived: that run's random sample of it; batch: the mean batch size)")


def write_result(args, loaded, device, settings, runs, figure_path):
    failed = [f"{run['setting']} at {run['offered_per_s']:g}/s" for run in runs if not run["check"]["passed"]]
    result = {
        **results.step_record(__doc__, loaded, device), "kind": "dynamic_batching", "rates": args.rates, "duration_s": args.duration_s,
        "seed": args.seed, "settings": [dataclasses.asdict(setting) | {"name": setting.name} for setting in settings],
        "runs": runs,
        "check": {"passed": not failed and bool(runs),
                  "summary": f"{len(runs) - len(failed)} of {len(runs)} runs served every request once, with its own "
                             "image's result" + (f"; failed: {', '.join(failed)}" if failed else "")},
        "plot": str(figure_path), **results.run_record(),
    }
    results.save(args.reports, result["stem"], result)
    return result


def prepare(args):
    """The engine (checked against the largest batch), the pool of images and their reference logits."""
    backend = engines.resolve_backend(args.backend)
    # What needs no GPU is checked first, as in the ladder's steps (workload.prepare).
    engine_file = engines.check_file(backend, args.engine or build.engine_path(ENGINE, backend), PRECISION)
    cli.check_writable_directory(args.reports, "--reports")
    for batch_size in (1, args.batch_size):
        if engine_file.profile_for(batch_size) != 0:  # one context, on the first profile
            raise CourseError(f"batch sizes 1..{args.batch_size} must all fit the first profile of {engine_file.path} "
                              f"({build.format_profiles(engine_file.profiles[:1])}): use a smaller --batch-size")
    device = cuda.require_gpu()
    loaded = engines.load(backend, engine_file.path, PRECISION, device, checked=engine_file)
    pool = data.make_batches(1, POOL_SIZE, args.seed)[0]
    reference = np.concatenate(data.reference_logits(build.WEIGHTS_PATH, [pool], build.ENGINE_DIR / "cache"))
    return loaded, device, pool, reference


def main():
    args = parse_args()
    loaded, device, pool, reference = prepare(args)
    settings = [Setting(1, 0.0)] + [Setting(args.batch_size, wait) for wait in args.max_wait_ms]
    print(f"capturing CUDA graphs for batch sizes 1..{args.batch_size} [{loaded.label}, {device[0]}] ...")
    server = Server(loaded, pool, args.batch_size)
    # A full garbage collection walks every object alive (about 340,000 here, PyTorch's among them) with every
    # thread stopped: one took 226 ms in the middle of a run on the H100 machine. Frozen objects are skipped
    # (2 ms): freeze what start-up made, as a latency-sensitive Python server should.
    gc.freeze()
    print_header()
    runs = []
    for setting in settings:
        for rate in args.rates:
            runs.append(serve_run(server, setting, rate, args.duration_s, args.seed, reference))
            print_row(runs[-1])
    Path(args.reports).mkdir(parents=True, exist_ok=True)
    figure_path = Path(args.reports, f"{Path(sys.argv[0]).stem}.png")
    plots.plot_dynamic_batching(figure_path, runs, f"Dynamic batching of single-image requests (Poisson arrivals), ResNet-18 fp16 on "
                            f"{device[0]}: {loaded.label}")
    result = write_result(args, loaded, device, settings, runs, figure_path)
    print(f"wrote {args.reports}/{Path(sys.argv[0]).stem}.json and {figure_path}")
    if not result["check"]["passed"]:
        raise CourseError(f"dynamic batching lost, duplicated or mixed up results: {result['check']['summary']}")


if __name__ == "__main__":
    cli.run(main)

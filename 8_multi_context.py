"""Multiple contexts: two execution contexts of one engine, each driven by its own thread, share the batches.

Changed from step 7: two `ContextPipeline`s instead of one, each run by its own thread, taking the next
unclaimed batch from a shared queue.
- What a context owns: its activation (scratch) memory on the device, its input shapes, tensor
  addresses and CUDA graphs. Here each pipeline also owns its streams, buffers and output thread.
- What the contexts share: the engine, i.e. the weights and the compiled kernels, loaded once.
- One context runs one inference at a time; two let the GPU run two batches at once, so kernels that
  do not fill the GPU (or the gaps between them) are filled by the other context's work.
- TensorRT 10 and 11 let several contexts use the same optimization profile at once with nothing
  special at build time. (TensorRT 8.6 needed the PROFILE_SHARING_0806 preview feature, which 10.0
  made the default and 11 removed; docs/tensorrt-notes.md section 5 has the sources, and one 10.x
  header comment that still says otherwise.)
Both pipelines are set up and warmed up before the timed run starts.
When it pays: where one context leaves the GPU idle, i.e. small batches, whose kernels are short and
do not fill the GPU. Where one context already keeps the GPU busy (large batches), a second only adds
its memory (a second set of activations and buffers) and latency (each batch shares the GPU with
another). After the timed run the step measures exactly that, in the NVTX range "contexts compared":
one context (step 7's pipeline) against two, at --batch-size and at a small batch
(--small-batch-size), the same images each time, back to back; the result's "contexts_compared".
With the compiled stand-in on an H100 (make reproduce at 5e66087, 2026-12-07), batch 128 was within noise
in both runs (run 1: 1.98 against 1.99 ms per batch, p50 latency 6.8 -> 11.6 ms), while batch 16 paid in
run 1 (1.31x, 0.38 -> 0.29 ms) and not in run 2 (0.41 against 0.44 ms, within noise); under nsys, which
adds host time to every CUDA call, two contexts were slower at 16 (0.82x). Earlier runs gave 1.30x at 16
(an H200 at ed512ba, an H100 at 24015e5). So at small batches a second context can pay, but by how much
moves from one process to the next: compare one against two within one run, as this step does.

What to look for in the timeline (reports/8_multi_context.nsys-rep):
- two compute streams whose kernels run at the same time, fed by two host threads.

Run: python 8_multi_context.py (--help for the options)
"""
import concurrent.futures
import dataclasses
import queue
import threading

import numpy as np

from common import cli, cuda, engine as engines, memory, nvtx, results, workload
from common.errors import CourseError

ENGINE = "resnet18_fp16"
CONTEXTS = 2


@dataclasses.dataclass
class InputSlot:
    """A device input buffer for one batch in flight, and the two events that guard it."""
    address: int
    copied: object  # on the copy stream, after the H2D: the inference may read the buffer
    consumed: object  # on the compute stream, after the inference: the next H2D may overwrite it


@dataclasses.dataclass
class HostOutput:
    """A pinned buffer for one batch's logits, and the event recorded after the D2H into it."""
    logits: object
    ready: object


def allocate(context, run, batch_size):
    """Two input slots (double buffering), one output buffer bound once, two pinned host output buffers."""
    with nvtx.phase("alloc"):
        slots = [InputSlot(cuda.malloc(run.input.nbytes(batch_size)), cuda.create_event(), cuda.create_event())
                 for _ in range(2)]
        output_address = cuda.malloc(run.output.nbytes(batch_size))
        host_outputs = [HostOutput(cuda.pinned_empty(run.output.shape_for(batch_size), run.output.dtype),
                                   cuda.create_event()) for _ in range(2)]
    engines.accepted(context.set_tensor_address(run.output.name, output_address), "the output's address")
    return slots, output_address, host_outputs


def copy_in(copy_stream, slot, images):
    """Queue a batch's H2D on the copy stream, after the slot's previous inference has consumed it."""
    with nvtx.phase("h2d"):
        cuda.wait(copy_stream, slot.consumed)
        cuda.memcpy_htod_async(slot.address, images, copy_stream)
        cuda.record(slot.copied, copy_stream)


class InferenceGraphs:
    """One CUDA graph of the inference per (input slot, batch size), captured on first use.

    A graph belongs to the execution context's state at its capture: TensorRT's developer guide calls a replay after
    the context's input shapes or addresses changed undefined. Each capture changes them (another slot, another
    size), so before every replay they are set back to the graph's own: two host calls, no GPU work.
    """

    def __init__(self, context, stream, run):
        self.context, self.stream, self.run = context, stream, run
        self.graphs = {}
        self.capturable = True

    def launch(self, slot, batch_size):
        key = (slot.address, batch_size)
        if key not in self.graphs and self.capturable:
            with cuda.capture_lock:  # one first enqueue or capture at a time in the process (common/cuda.py: why)
                self.enqueue(slot, batch_size)  # outside the capture: finishes the shape's lazy set-up
                cuda.synchronize(self.stream)
                try:
                    self.graphs[key] = self.capture(slot, batch_size)
                except CourseError as error:
                    print(f"note: this engine cannot be captured into a CUDA graph ({error}); running it without one")
                    self.capturable = False
        if key in self.graphs:
            self.bind(slot, batch_size)  # the context's state at this graph's capture (see above)
            cuda.launch_graph(self.graphs[key], self.stream)
        else:
            self.enqueue(slot, batch_size)

    def bind(self, slot, batch_size):
        shape = self.run.input.shape_for(batch_size)
        engines.accepted(self.context.set_input_shape(self.run.input.name, shape), f"the input shape {shape}")
        engines.accepted(self.context.set_tensor_address(self.run.input.name, slot.address), "the input's address")

    def enqueue(self, slot, batch_size):
        self.bind(slot, batch_size)
        if not self.context.execute_async_v3(self.stream):
            raise CourseError("execute_async_v3 failed: see the engine's log above")

    def capture(self, slot, batch_size):
        with nvtx.phase("capture"):
            cuda.begin_capture(self.stream)
            try:
                self.enqueue(slot, batch_size)
            finally:
                graph = cuda.end_capture(self.stream)  # always end it, or the stream stays capturing
        return graph


def infer(graphs, compute_stream, buffers, slot, host_output, batch_size):
    """Queue the inference (after the slot's H2D) and the D2H on the compute stream; no waiting here."""
    output_address = buffers[1]
    with nvtx.phase("infer"):
        cuda.wait(compute_stream, slot.copied)
        graphs.launch(slot, batch_size)
        cuda.record(slot.consumed, compute_stream)
    with nvtx.phase("d2h"):
        cuda.memcpy_dtoh_async(host_output.logits[:batch_size], output_address, compute_stream)
        cuda.record(host_output.ready, compute_stream)


def process_output(index, logits):
    with nvtx.phase("output"):
        print(f"batch {index}: {results.describe_predictions(logits)}")


class OutputThread(threading.Thread):
    """Waits for each batch's logits, in order, processes them, and returns their host buffer."""

    def __init__(self, host_outputs, outputs, timer):
        super().__init__(name="output", daemon=True)
        self.pending = queue.Queue()  # (batch index, batch size, HostOutput), then None to stop
        self.free = queue.Queue()  # host buffers the main thread may copy into
        for host_output in host_outputs:
            self.free.put(host_output)
        self.outputs, self.timer = outputs, timer
        self.error = None

    def run(self):
        try:
            while (item := self.pending.get()) is not None:
                index, batch_size, host_output = item
                cuda.event_synchronize(host_output.ready)
                logits = host_output.logits[:batch_size].copy()
                self.free.put(host_output)
                process_output(index, logits)
                self.outputs[index] = logits
                self.timer.batch_done(index)
        except Exception as error:
            self.error = error
            self.free.put(None)  # wakes the main thread if it is waiting for a buffer

    def take_free_buffer(self):
        """Blocks while both buffers hold unread logits (back-pressure)."""
        host_output = self.free.get()
        self.raise_error()
        return host_output

    def raise_error(self):
        if self.error is not None:
            raise CourseError(f"the output thread failed: {self.error}")


class ContextPipeline:
    """The pipeline of one execution context: its streams, buffers, CUDA graphs and output thread."""

    def __init__(self, run, batches, outputs, timer):
        self.run, self.batches = run, batches
        self.context = run.engine.create_execution_context()
        self.copy_stream, self.compute_stream = cuda.create_stream(), cuda.create_stream()
        self.buffers = allocate(self.context, run, max(len(images) for images in batches))
        self.graphs = InferenceGraphs(self.context, self.compute_stream, run)
        self.timer = timer
        self.output_thread = OutputThread(self.buffers[2], outputs, timer)

    def warm_up(self):
        with nvtx.phase("warm-up"):  # first runs pay one-off costs (here: the captures); keep them out of the timing
            for slot in self.buffers[0]:
                copy_in(self.copy_stream, slot, self.batches[0])
                infer(self.graphs, self.compute_stream, self.buffers, slot, self.buffers[2][0], len(self.batches[0]))
            cuda.synchronize(self.compute_stream)

    def drive(self, claim_next):
        """The batch loop over the batch indices `claim_next()` returns, until it returns None."""
        slots, output_thread = self.buffers[0], self.output_thread
        output_thread.start()
        index, count = claim_next(), 0
        if index is not None:
            copy_in(self.copy_stream, slots[0], self.batches[index])
        while index is not None:
            self.timer.start_batch(index)
            host_output = output_thread.take_free_buffer()
            batch_size = len(self.batches[index])
            following = claim_next()
            if following is not None:  # prefetch first: the copy runs while this batch's inference is queued and runs
                copy_in(self.copy_stream, slots[(count + 1) % 2], self.batches[following])
            infer(self.graphs, self.compute_stream, self.buffers, slots[count % 2], host_output, batch_size)
            output_thread.pending.put((index, batch_size, host_output))  # the thread waits, not us
            index, count = following, count + 1
        output_thread.pending.put(None)
        output_thread.join()
        output_thread.raise_error()


def batch_queue(indices):
    """A thread-safe source of batch indices; `claim_next()` returns None once all are claimed."""
    unclaimed = queue.SimpleQueue()
    for index in indices:
        unclaimed.put(index)

    def claim_next():
        try:
            return unclaimed.get_nowait()
        except queue.Empty:
            return None
    return claim_next


def run_contexts(run, batches, outputs, timer, contexts):
    """The timed run: `contexts` pipelines, warmed up first, each on its own thread, sharing one batch queue."""
    pipelines = [ContextPipeline(run, batches, outputs, timer) for _ in range(contexts)]
    for pipeline in pipelines:
        pipeline.warm_up()

    claim_next = batch_queue(range(len(batches)))
    with concurrent.futures.ThreadPoolExecutor(contexts, thread_name_prefix="context") as pool:
        for done in [pool.submit(pipeline.drive, claim_next) for pipeline in pipelines]:
            done.result()  # re-raises a pipeline thread's exception here
    return pipelines  # their contexts hold the memory the step reports: keep them until it is measured


# ---------------------------------------------------------------------------------------------------
# Where a second context pays: one context against two, at a large and a small batch

def rebatched(arrays, batch_size):
    """The same images (or their reference logits) cut into batches of batch_size; a remainder is left out."""
    joined = np.concatenate(arrays)
    return [joined[start:start + batch_size] for start in range(0, len(joined) - batch_size + 1, batch_size)]


def compare_contexts(args, run):
    """One context against two at each batch size, on the images of one window, --repeats windows each."""
    images, reference = run.batches[:args.batches], run.reference[:args.batches]
    rows = []
    with nvtx.phase("contexts compared"):
        for batch_size in dict.fromkeys([args.batch_size, args.small_batch_size]):
            batches = cuda.pinned_copies(rebatched(images, batch_size))
            figures = {}
            for contexts in (1, CONTEXTS):
                outputs = [None] * (len(batches) * args.repeats)
                timer = results.Timer(len(batches), args.repeats, traced=False)
                run_contexts(run, batches * args.repeats, outputs, timer, contexts)
                figures[contexts] = {**results.steady_figures(timer, batch_size), "check": results.check_outputs(
                    outputs, rebatched(reference, batch_size) * args.repeats, "fp16")}
            rows.append({"batch_size": batch_size, "one_context": figures[1], "two_contexts": figures[CONTEXTS],
                         **results.versus(figures[CONTEXTS], figures[1])})
    return rows


def print_comparison(rows):
    print("one context (step 7's pipeline) against two, the same images, back to back:")
    for row in rows:
        one, two = row["one_context"], row["two_contexts"]
        verdict = "within noise" if row["within_noise"] else f"{row['speedup']:.2f}x"
        print(f"  batch {row['batch_size']:>4}: one {one['median_ms_per_batch']:.3f} ms, two "
              f"{two['median_ms_per_batch']:.3f} ms per batch ({verdict}); latency p50 "
              f"{one['latency_p50_ms']:.2f} -> {two['latency_p50_ms']:.2f} ms")


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("--small-batch-size", type=cli.whole_number(1), default=16,
                        help="the small batch of the contexts comparison (default 16)")
    args = parser.parse_args()
    run = workload.prepare(args, ENGINE, precision="fp16", later_batch_sizes=[args.small_batch_size])
    batches = cuda.pinned_copies(run.batches)  # as if the data were loaded there
    outputs = [None] * len(batches)
    timer = results.Timer(args.batches, args.repeats)
    pipelines = run_contexts(run, batches, outputs, timer, CONTEXTS)

    held = memory.held(run.loaded)  # the timed run's; the comparison adds contexts of its own
    del pipelines
    compared = compare_contexts(args, run)
    print_comparison(compared)
    results.finish(__doc__, args, run, timer, outputs, held=held, extra={"contexts_compared": {
        "how": "the same images, --repeats windows each, one context then two, after the timed run",
        "rows": compared}})
    differ = [f"batch {row['batch_size']}" for row in compared
              if not (row["one_context"]["check"]["passed"] and row["two_contexts"]["check"]["passed"])]
    if differ:
        raise CourseError(f"the contexts comparison's outputs differ from the PyTorch reference: {', '.join(differ)}")


if __name__ == "__main__":
    cli.run(main)

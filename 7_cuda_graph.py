"""CUDA graph: each batch's inference is one graph launch instead of many kernel launches.

Changed from step 6: the inference is captured once into a CUDA graph and replayed. Launching a
kernel costs the host a few microseconds, and a ResNet-18 is dozens of kernels: with small or fast
kernels the GPU waits for the host. A graph is the recorded sequence, launched with one call.
- Capture after one ordinary enqueue: the first enqueue of a shape finishes lazy set-up (allocations,
  kernel loading) that is not allowed while a stream is capturing. The source tutorial captured its
  first enqueue and failed with "operation not permitted when stream is capturing".
- Thread-local capture mode: when a new batch size arrives mid-run, the main thread captures while the
  output thread keeps calling CUDA; in that mode only the capturing thread's own calls can invalidate
  the capture.
- A graph replays fixed addresses and shapes, so there is one graph per input slot and batch size,
  captured again whenever a new batch size arrives. A graph also belongs to the execution context's
  state at its capture (TensorRT's developer guide: replaying after the context's shapes or addresses
  changed is undefined), so each replay first sets the context's input shape and address back to the
  graph's own.
- The copies stay outside the graph: the H2D must be on the copy stream to overlap the previous
  inference, and putting the D2H inside saved about 15 us of host time per 3.2 ms batch on an H100
  (tools/graph_copies.py), not worth a graph per input slot and host buffer.
- An engine that cannot be captured (data-dependent shapes, some plugins) runs without a graph, with a
  one-line note.
The pipeline (streams, buffers, graphs, output thread, batch loop) is now one object, `ContextPipeline`,
around one execution context: step 8 runs two of them.

What to look for in the timeline (reports/7_cuda_graph.nsys-rep):
- one cudaGraphLaunch per batch in the CUDA API lane instead of a launch call per kernel;
- the kernels of one batch packed closer together on the compute stream.

Run: python 7_cuda_graph.py (--help for the options)
"""
import dataclasses
import queue
import threading

from common import cli, cuda, engine as engines, nvtx, results, workload
from common.errors import CourseError

ENGINE = "resnet18_fp16"


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


def main():
    args = cli.parser(__doc__).parse_args()
    run = workload.prepare(args, ENGINE, precision="fp16")
    batches = cuda.pinned_copies(run.batches)  # as if the data were loaded there
    outputs = [None] * len(batches)
    timer = results.Timer(args.batches, args.repeats)
    pipeline = ContextPipeline(run, batches, outputs, timer)
    pipeline.warm_up()

    indices = iter(range(len(batches)))
    pipeline.drive(lambda: next(indices, None))
    results.finish(__doc__, args, run, timer, outputs)


if __name__ == "__main__":
    cli.run(main)

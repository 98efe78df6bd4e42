"""Output thread: output processing moves to a worker thread, so the main thread keeps the GPU fed.

Changed from step 5: the main thread no longer waits for a batch's logits. It queues the batch's work
and hands the batch to an output thread, which waits for the logits (a CUDA event), processes them
and gives their pinned buffer back. Two host output buffers let the D2H of one batch proceed while
the thread reads the other; a queue of free buffers is the back-pressure that stops the main thread
from overwriting logits the thread has not read yet. One thread and a FIFO queue keep the output in
batch order. An exception in the thread is handed to the main thread, which stops with its message.
Python threads share one interpreter lock, but waiting on CUDA and printing release it for long
enough: the point is that the GPU no longer idles while the host prints.

What to look for in the timeline (reports/6_multi_threads.nsys-rep):
- an "output" range on a second thread, under the next batch's GPU work;
- the gaps between batches on the compute stream mostly gone.

Run: python 6_multi_threads.py (--help for the options)
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


def infer(context, compute_stream, run, buffers, slot, host_output, batch_size):
    """Queue the inference (after the slot's H2D) and the D2H on the compute stream; no waiting here."""
    output_address = buffers[1]
    with nvtx.phase("infer"):
        cuda.wait(compute_stream, slot.copied)
        engines.accepted(context.set_input_shape(run.input.name, run.input.shape_for(batch_size)), "the input shape")
        engines.accepted(context.set_tensor_address(run.input.name, slot.address), "the input's address")
        if not context.execute_async_v3(compute_stream):
            raise CourseError("execute_async_v3 failed: see the engine's log above")
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


def main():
    args = cli.parser(__doc__).parse_args()
    run = workload.prepare(args, ENGINE, precision="fp16")
    context = run.engine.create_execution_context()
    copy_stream, compute_stream = cuda.create_stream(), cuda.create_stream()
    buffers = allocate(context, run, args.batch_size)
    slots = buffers[0]
    batches = cuda.pinned_copies(run.batches)  # as if the data were loaded there
    with nvtx.phase("warm-up"):  # first runs pay one-off costs; keep them out of the timing
        for slot in slots:
            copy_in(copy_stream, slot, batches[0])
            infer(context, compute_stream, run, buffers, slot, buffers[2][0], len(batches[0]))
        cuda.synchronize(compute_stream)

    timer = results.Timer(args.batches, args.repeats)
    outputs = [None] * len(batches)
    output_thread = OutputThread(buffers[2], outputs, timer)
    output_thread.start()
    copy_in(copy_stream, slots[0], batches[0])
    for index, images in enumerate(batches):
        timer.start_batch(index)
        host_output = output_thread.take_free_buffer()
        if index + 1 < len(batches):  # prefetch first: the copy runs while this batch's inference is queued and runs
            copy_in(copy_stream, slots[(index + 1) % 2], batches[index + 1])
        infer(context, compute_stream, run, buffers, slots[index % 2], host_output, len(images))
        output_thread.pending.put((index, len(images), host_output))  # the thread waits, not us
    output_thread.pending.put(None)
    output_thread.join()
    output_thread.raise_error()
    results.finish(__doc__, args, run, timer, outputs)


if __name__ == "__main__":
    cli.run(main)

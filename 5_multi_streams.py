"""Two streams: the next batch's H2D copy overlaps this batch's inference.

Changed from step 4: copies in go on a copy stream, inference and the copy out on a compute stream,
and CUDA events order the two on the GPU without the host waiting:
- `copied` (recorded on the copy stream after a batch's H2D): the compute stream waits for it before
  the inference reads that input buffer;
- `consumed` (recorded on the compute stream after the inference): the copy stream waits for it before
  the H2D overwrites that input buffer with a later batch.
While batch i runs, batch i+1 is copied in, so two device input buffers are needed (double buffering):
one being read by the inference, one being written by the copy. The output needs no second buffer:
the copy out and the next inference are on the same stream, which keeps them in order.
The copy of batch i+1 is queued before the inference of batch i, not after: queuing an inference
costs the host a launch per kernel, and a copy queued behind those launches starts when the GPU has
nearly finished the batch. (The first version of this step did that, and nsys showed no overlap.)
The host still waits for each batch's logits before it prints them; the next step removes that wait.

What to look for in the timeline (reports/5_multi_streams.nsys-rep):
- two CUDA stream lanes: "Memcpy HtoD" of batch i+1 on one, under the kernels of batch i on the other;
- a gap remains between batches where the host waits ("sync") and prints ("output").

Run: python 5_multi_streams.py (--help for the options)
"""
import dataclasses

from common import cli, cuda, engine as engines, nvtx, results, workload
from common.errors import CourseError

ENGINE = "resnet18_fp16"


@dataclasses.dataclass
class InputSlot:
    """A device input buffer for one batch in flight, and the two events that guard it."""
    address: int
    copied: object  # on the copy stream, after the H2D: the inference may read the buffer
    consumed: object  # on the compute stream, after the inference: the next H2D may overwrite it


def allocate(context, run, batch_size):
    """Two input slots (double buffering), one output buffer bound once, a pinned host buffer for the logits."""
    with nvtx.phase("alloc"):
        slots = [InputSlot(cuda.malloc(run.input.nbytes(batch_size)), cuda.create_event(), cuda.create_event())
                 for _ in range(2)]
        output_address = cuda.malloc(run.output.nbytes(batch_size))
        host_output = cuda.pinned_empty(run.output.shape_for(batch_size), run.output.dtype)
    engines.accepted(context.set_tensor_address(run.output.name, output_address), "the output's address")
    return slots, output_address, host_output


def copy_in(copy_stream, slot, images):
    """Queue a batch's H2D on the copy stream, after the slot's previous inference has consumed it."""
    with nvtx.phase("h2d"):
        cuda.wait(copy_stream, slot.consumed)
        cuda.memcpy_htod_async(slot.address, images, copy_stream)
        cuda.record(slot.copied, copy_stream)


def infer(context, compute_stream, run, buffers, slot, batch_size):
    """Queue the inference (after the slot's H2D) and the D2H on the compute stream; no waiting here."""
    _, output_address, host_output = buffers
    with nvtx.phase("infer"):
        cuda.wait(compute_stream, slot.copied)
        engines.accepted(context.set_input_shape(run.input.name, run.input.shape_for(batch_size)), "the input shape")
        engines.accepted(context.set_tensor_address(run.input.name, slot.address), "the input's address")
        if not context.execute_async_v3(compute_stream):
            raise CourseError("execute_async_v3 failed: see the engine's log above")
        cuda.record(slot.consumed, compute_stream)
    logits = host_output[:batch_size]
    with nvtx.phase("d2h"):
        cuda.memcpy_dtoh_async(logits, output_address, compute_stream)
    return logits


def process_output(index, logits):
    with nvtx.phase("output"):
        print(f"batch {index}: {results.describe_predictions(logits)}")


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
            infer(context, compute_stream, run, buffers, slot, len(batches[0]))
        cuda.synchronize(compute_stream)

    timer = results.Timer(args.batches, args.repeats)
    outputs = []
    copy_in(copy_stream, slots[0], batches[0])
    for index, images in enumerate(batches):
        timer.start_batch(index)
        if index + 1 < len(batches):  # prefetch first: the copy runs while this batch's inference is queued and runs
            copy_in(copy_stream, slots[(index + 1) % 2], batches[index + 1])
        logits = infer(context, compute_stream, run, buffers, slots[index % 2], len(images))
        with nvtx.phase("sync"):
            cuda.synchronize(compute_stream)
        logits = logits.copy()  # the pinned buffer is reused by the next batch
        process_output(index, logits)
        outputs.append(logits)
        timer.batch_done(index)
    results.finish(__doc__, args, run, timer, outputs)


if __name__ == "__main__":
    cli.run(main)

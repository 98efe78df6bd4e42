"""Pinned memory: page-locked host buffers and asynchronous copies, with one synchronization per batch.

Changed from step 2: the images and the logits live in page-locked (pinned) host memory, and the
copies are cudaMemcpyAsync calls on the inference stream. The GPU's copy engines can read and write
pinned memory directly (DMA); pageable memory must first be staged by the driver through a pinned
buffer of its own, chunk by chunk, which roughly halves the bandwidth or worse. Async copies also let
the copy, the inference and the copy back be queued on the stream in one go: the host waits once per
batch instead of after each of them.

What to look for in the timeline (reports/3_use_pin_memory.nsys-rep):
- the "Memcpy HtoD" on the GPU is several times shorter than in step 2, at full PCIe/NVLink speed;
- the host's "h2d", "infer" and "d2h" ranges are now short (they only enqueue); the wait is in "sync".

Run: python 3_use_pin_memory.py [--backend auto|tensorrt|torch] (--help for the rest)
"""
from common import cli, cuda, nvtx, results, workload
from common.errors import CourseError

ENGINE = "resnet18_fp32"


def allocate(context, run, batch_size):
    """Device buffers for the largest batch, bound to the context once, and a pinned host buffer for the logits."""
    with nvtx.phase("alloc"):
        input_address = cuda.malloc(run.input.nbytes(batch_size))
        output_address = cuda.malloc(run.output.nbytes(batch_size))
        host_output = cuda.pinned_empty(run.output.shape_for(batch_size), run.output.dtype)
    context.set_tensor_address(run.input.name, input_address)
    context.set_tensor_address(run.output.name, output_address)
    return input_address, output_address, host_output


def infer(context, stream, run, buffers, images):
    """One batch, queued on the stream in order (copy in, run, copy out), then one wait."""
    input_address, output_address, host_output = buffers
    with nvtx.phase("h2d"):
        cuda.memcpy_htod_async(input_address, images, stream)
    with nvtx.phase("infer"):
        context.set_input_shape(run.input.name, images.shape)
        if not context.execute_async_v3(stream):
            raise CourseError("execute_async_v3 failed: see the engine's log above")
    logits = host_output[:len(images)]
    with nvtx.phase("d2h"):
        cuda.memcpy_dtoh_async(logits, output_address, stream)
    with nvtx.phase("sync"):
        cuda.synchronize(stream)
    return logits.copy()  # the pinned buffer is reused by the next batch


def process_output(index, logits):
    with nvtx.phase("output"):
        print(f"batch {index}: {results.describe_predictions(logits)}")


def main():
    args = cli.parser(__doc__).parse_args()
    run = workload.prepare(args, ENGINE, precision="fp32")
    context = run.engine.create_execution_context()
    stream = cuda.create_stream()
    buffers = allocate(context, run, args.batch_size)
    batches = cuda.pinned_copies(run.batches)  # as if the data were loaded there
    with nvtx.phase("warm-up"):  # the first run of a shape pays one-off costs; keep them out of the timing
        infer(context, stream, run, buffers, batches[0])

    timer = results.Timer(args.batches, args.repeats)
    outputs = []
    for index, images in enumerate(batches):
        timer.start_batch(index)
        logits = infer(context, stream, run, buffers, images)
        process_output(index, logits)
        outputs.append(logits)
        timer.batch_done(index)
    results.finish(__doc__, args, run, timer, outputs)


if __name__ == "__main__":
    cli.run(main)

"""Reuse buffers: device memory allocated once, before the first batch, and reused by every batch.

Changed from step 1: `allocate` runs once, sized from the engine's I/O description for the largest
batch, and `infer` only fills and reads the same two device buffers. cudaMalloc and cudaFree are
expensive (they can synchronize the device and take locks in the driver), and a batch loop never needs
them: the sizes do not change from one batch to the next. The tensor addresses stay the same too.

What to look for in the timeline (reports/2_reuse_buffers.nsys-rep):
- the "alloc" and "free" ranges and their cudaMalloc/cudaFree calls are gone from the batch loop;
- everything else is as in step 1: the long pageable "h2d" copy and the idle GPU while the host prints.

Run: python 2_reuse_buffers.py [--backend auto|tensorrt|torch] (--help for the rest)
"""
import numpy as np

from common import cli, cuda, engine as engines, nvtx, results, workload
from common.errors import CourseError

ENGINE = "resnet18_fp32"


def allocate(context, run, batch_size):
    """Device buffers for the largest batch, bound to the context once: their addresses never change."""
    with nvtx.phase("alloc"):
        input_address = cuda.malloc(run.input.nbytes(batch_size))
        output_address = cuda.malloc(run.output.nbytes(batch_size))
    engines.accepted(context.set_tensor_address(run.input.name, input_address), "the input's address")
    engines.accepted(context.set_tensor_address(run.output.name, output_address), "the output's address")
    return input_address, output_address


def infer(context, stream, run, buffers, images):
    """One batch through the reused buffers: copy in, run, copy out."""
    input_address, output_address = buffers
    with nvtx.phase("h2d"):
        cuda.memcpy_htod(input_address, images, stream)
    with nvtx.phase("infer"):
        engines.accepted(context.set_input_shape(run.input.name, images.shape), "the input shape")
        if not context.execute_async_v3(stream):
            raise CourseError("execute_async_v3 failed: see the engine's log above")
        cuda.synchronize(stream)
    logits = np.empty(run.output.shape_for(len(images)), run.output.dtype)
    with nvtx.phase("d2h"):
        cuda.memcpy_dtoh(logits, output_address, stream)
    return logits


def process_output(index, logits):
    with nvtx.phase("output"):
        print(f"batch {index}: {results.describe_predictions(logits)}")


def main():
    args = cli.parser(__doc__).parse_args()
    run = workload.prepare(args, ENGINE, precision="fp32")
    context = run.engine.create_execution_context()
    stream = cuda.create_stream()
    buffers = allocate(context, run, args.batch_size)
    with nvtx.phase("warm-up"):  # the first run of a shape pays one-off costs; keep them out of the timing
        infer(context, stream, run, buffers, run.batches[0])

    timer = results.Timer(args.batches, args.repeats)
    outputs = []
    for index, images in enumerate(run.batches):
        timer.start_batch(index)
        logits = infer(context, stream, run, buffers, images)
        process_output(index, logits)
        outputs.append(logits)
        timer.batch_done(index)
    results.finish(__doc__, args, run, timer, outputs)


if __name__ == "__main__":
    cli.run(main)

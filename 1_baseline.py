"""Baseline: device memory allocated per batch, pageable host memory, synchronous copies, results printed inline.

The starting point, written the way a first working version usually is. For every batch it allocates
device memory for the input and the output, copies the images from ordinary (pageable) host memory,
runs the engine, waits, copies the logits back, frees the memory, and prints the predictions before
it starts the next batch. Everything happens one thing at a time.

What to look for in the timeline (reports/1_baseline.nsys-rep):
- cudaMalloc/cudaFree in every batch (the NVTX ranges "alloc" and "free");
- a long "h2d" range: pageable memory is staged through a driver buffer, in chunks;
- the GPU idle while the host copies, allocates and prints (gaps between the kernels of two batches).

Run: python 1_baseline.py [--backend auto|tensorrt|torch] (python 1_baseline.py --help for the rest)
"""
import numpy as np

from common import cli, cuda, engine as engines, nvtx, results, workload
from common.errors import CourseError

ENGINE = "resnet18_fp32"


def infer(context, stream, run, images):
    """One batch, start to finish: allocate, copy in, run, copy out, free."""
    with nvtx.phase("alloc"):
        input_address = cuda.malloc(run.input.nbytes(len(images)))
        output_address = cuda.malloc(run.output.nbytes(len(images)))
    with nvtx.phase("h2d"):
        cuda.memcpy_htod(input_address, images, stream)
    with nvtx.phase("infer"):
        engines.accepted(context.set_input_shape(run.input.name, images.shape), "the input shape")
        engines.accepted(context.set_tensor_address(run.input.name, input_address), "the input's address")
        engines.accepted(context.set_tensor_address(run.output.name, output_address), "the output's address")
        if not context.execute_async_v3(stream):
            raise CourseError("execute_async_v3 failed: see the engine's log above")
        cuda.synchronize(stream)
    logits = np.empty(run.output.shape_for(len(images)), run.output.dtype)
    with nvtx.phase("d2h"):
        cuda.memcpy_dtoh(logits, output_address, stream)
    with nvtx.phase("free"):
        cuda.free(input_address)
        cuda.free(output_address)
    return logits


def process_output(index, logits):
    with nvtx.phase("output"):
        print(f"batch {index}: {results.describe_predictions(logits)}")


def main():
    args = cli.parser(__doc__).parse_args()
    run = workload.prepare(args, ENGINE, precision="fp32")
    context = run.engine.create_execution_context()
    stream = cuda.create_stream()
    with nvtx.phase("warm-up"):  # the first run of a shape pays one-off costs; keep them out of the timing
        infer(context, stream, run, run.batches[0])

    timer = results.Timer(args.batches, args.repeats)
    outputs = []
    for index, images in enumerate(run.batches):
        timer.start_batch(index)
        logits = infer(context, stream, run, images)
        process_output(index, logits)
        outputs.append(logits)
        timer.batch_done(index)
    results.finish(__doc__, args, run, timer, outputs)


if __name__ == "__main__":
    cli.run(main)

"""FP16: the same host code on an engine built in FP16 (strongly typed, TensorRT 10 and 11).

Changed from step 3: the engine. `python 0_build.py --precision fp16` exports the model with fp16
weights and fp16 compute, casting its fp32 input to fp16 and its logits back to fp32 inside the graph,
and TensorRT builds it as a strongly typed network, which keeps those types. (TensorRT 10's FP16
builder flag, which let the builder choose precisions itself, is gone in TensorRT 11.) Half the bytes
per weight and activation, and tensor-core kernels, make inference faster; because the engine's inputs
and outputs are still fp32, not a line of the host code changes. The price is accuracy: the check
against the fp32 reference uses FP16's tolerance and prints the error it measured.

What to look for in the timeline (reports/4_use_fp16.nsys-rep):
- the kernels of "infer" are much shorter than in step 3, and the GPU memory in use is smaller;
- the copies now take a larger share of each batch: the next step overlaps them with compute.

Run: python 0_build.py --precision fp16 && python 4_use_fp16.py (--help for the rest)
"""
from common import cli, cuda, engine as engines, nvtx, results, workload
from common.errors import CourseError

ENGINE = "resnet18_fp16"


def allocate(context, run, batch_size):
    """Device buffers for the largest batch, bound to the context once, and a pinned host buffer for the logits."""
    with nvtx.phase("alloc"):
        input_address = cuda.malloc(run.input.nbytes(batch_size))
        output_address = cuda.malloc(run.output.nbytes(batch_size))
        host_output = cuda.pinned_empty(run.output.shape_for(batch_size), run.output.dtype)
    engines.accepted(context.set_tensor_address(run.input.name, input_address), "the input's address")
    engines.accepted(context.set_tensor_address(run.output.name, output_address), "the output's address")
    return input_address, output_address, host_output


def infer(context, stream, run, buffers, images):
    """One batch, queued on the stream in order (copy in, run, copy out), then one wait."""
    input_address, output_address, host_output = buffers
    with nvtx.phase("h2d"):
        cuda.memcpy_htod_async(input_address, images, stream)
    with nvtx.phase("infer"):
        engines.accepted(context.set_input_shape(run.input.name, images.shape), "the input shape")
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
    run = workload.prepare(args, ENGINE, precision="fp16")
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

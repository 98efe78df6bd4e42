"""Pinned memory: page-locked host buffers and asynchronous copies, with one synchronization per batch.

Changed from step 2: the images and the logits live in page-locked (pinned) host memory, and the copies,
still on the inference stream, no longer wait for the data to arrive. The copy engines can read and
write pinned memory directly (DMA); pageable memory must first be staged by the driver through a pinned
buffer of its own, chunk by chunk, which roughly halves the bandwidth or worse. Copies that do not wait
also let the copy, the inference and the copy back be queued on the stream in one go: the host waits
once per batch instead of after each of them. The two changes come together: from pageable memory even
cudaMemcpyAsync may hold the host while the driver stages the data (CUDA's "API synchronization
behavior"), so only pinned buffers make the copies truly asynchronous.

Where the pinned images come from: the step copies its batches into pinned memory before the timing,
as a pipeline does whose loader writes its images there (`DataLoader(pin_memory=True)`, a decoder
writing into pinned buffers). A pipeline whose images land in pageable memory pays a host copy into
pinned memory per batch instead: measured after the timed run, in the NVTX range "staging" (the
result's "staging"), to set beside what the lesson saves.

What to look for in the timeline (reports/3_use_pin_memory.nsys-rep):
- the "Memcpy HtoD" on the GPU is several times shorter than in step 2, at full PCIe/NVLink speed;
- the host's "h2d", "infer" and "d2h" ranges are now short (they only enqueue); the wait is in "sync".

Run: python 3_use_pin_memory.py [--backend auto|tensorrt|torch] (--help for the rest)
"""
import time

from common import cli, cuda, engine as engines, nvtx, results, stats, workload
from common.errors import CourseError

ENGINE = "resnet18_fp32"


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


def measure_staging(images_of_a_window, windows):
    """A host copy of each batch from pageable into pinned memory, what a loader without pinned output costs a
    pipeline: per window, the mean over its batches (host clock); the median over the windows."""
    staging = cuda.pinned_empty(images_of_a_window[0].shape, images_of_a_window[0].dtype)
    windows_ms = []
    with nvtx.phase("staging"):
        for _ in range(windows):
            started = time.perf_counter()
            for images in images_of_a_window:
                staging[:len(images)] = images
            windows_ms.append((time.perf_counter() - started) * 1e3 / len(images_of_a_window))
    cuda.free_host(staging)  # not the step's: its memory figures are the timed run's
    images_per_batch = sum(map(len, images_of_a_window)) / len(images_of_a_window)
    return {"how": "numpy copy of each pageable batch into one pinned buffer, after the timed run, host clock",
            "ms_per_batch": stats.median(windows_ms), "per_image_us": stats.median(windows_ms) * 1e3 / images_per_batch,
            "windows_ms": windows_ms}


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
    staging = measure_staging(run.batches[:args.batches], args.repeats)
    print(f"staging a pageable batch into pinned memory: {staging['ms_per_batch']:.2f} ms per batch "
          f"({staging['per_image_us']:.0f} us per image), not in the figures above")
    results.finish(__doc__, args, run, timer, outputs, extra={"staging": staging})


if __name__ == "__main__":
    cli.run(main)

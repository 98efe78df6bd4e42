"""The floor of a step: the GPU time per batch of H2D copies from pinned memory, and of inferences, each on its own.

A pipeline on one stream of each kind produces batches no faster than the larger of the two: with the copy
and the inference overlapped on two streams (step 5 on), the larger one is the wall the later lessons
approach. (Two contexts, steps 8 and 12, run two inferences at once and can go below it.) Each step
measures it once, after its timed run, on an execution context of its own: CUDA events around a few
batches queued back to back on one stream, the inference as a CUDA graph where it can be captured, so that
the GPU never waits for the host between them or between kernels (one inference timed alone would also
time the host's kernel launches), after a warm-up; the median of a few such rounds, divided by the batches
in a round.
"""
from common import cuda, engine as engines, nvtx, stats
from common.errors import CourseError

# Recorded with each result (from its last commit on): floors measured before, one batch alone or without the
# graph, carry the host's kernel launches in their inference time, and the report says so where it is missing.
METHOD = "back to back on one stream, inference as a CUDA graph"
UNCAPTURED = "back to back on one stream, inference enqueued (the engine could not be captured)"
WARM_UP_RUNS = 2
ROUNDS = 5
BATCHES_PER_ROUND = 5


def measure(run, batch_size):
    """({"h2d_ms": ..., "inference_ms": ...}, how the inference was timed) for batches of `batch_size` of this
    step's engine. What it makes is released before it returns (the context with the last reference to it)."""
    context = run.engine.create_execution_context()
    stream = cuda.create_stream()
    profile = run.loaded.profile_for(batch_size)
    if profile:
        context.set_optimization_profile_async(profile, stream)
    images = cuda.pinned_empty(run.input.shape_for(batch_size), run.input.dtype)
    input_address, output_address = cuda.malloc(images.nbytes), cuda.malloc(run.output.nbytes(batch_size))
    graph = None
    try:
        engines.accepted(context.set_input_shape(run.input.name, images.shape), "the input shape")
        engines.accepted(context.set_tensor_address(run.input.name, input_address), "the input's address")
        engines.accepted(context.set_tensor_address(run.output.name, output_address), "the output's address")

        def infer():
            if not context.execute_async_v3(stream):
                raise CourseError("execute_async_v3 failed: see the engine's log above")

        with nvtx.phase("floor"):
            h2d_ms = gpu_time_ms(lambda: cuda.memcpy_htod_async(input_address, images, stream), stream)
            graph = capture(infer, stream)
            launch = (lambda: cuda.launch_graph(graph, stream)) if graph else infer
            figures = {"h2d_ms": h2d_ms, "inference_ms": gpu_time_ms(launch, stream)}
        return figures, METHOD if graph else UNCAPTURED
    finally:
        cuda.synchronize(stream)  # nothing may still use what is freed below
        if graph:
            cuda.destroy_graph(graph)
        cuda.free(input_address)
        cuda.free(output_address)
        cuda.free_host(images)
        cuda.destroy_stream(stream)


def capture(enqueue, stream):
    """The inference as an executable CUDA graph, so that its GPU time carries none of the host's kernel
    launches (as in step 7, the first enqueue outside the capture); None, with a note, where it cannot be."""
    with cuda.capture_lock:
        enqueue()
        cuda.synchronize(stream)
        try:
            cuda.begin_capture(stream)
            try:
                enqueue()
            finally:
                graph = cuda.end_capture(stream)  # always end it, or the stream stays capturing
        except CourseError as error:
            print(f"note: the floor's inference is timed without a CUDA graph ({error}): it includes the kernel "
                  "launches")
            return None
    return graph


def gpu_time_ms(enqueue, stream):
    """GPU time per call of the work `enqueue()` queues on `stream`: calls back to back between two timing
    events, the median over a few rounds."""
    start, end = cuda.create_timing_event(), cuda.create_timing_event()
    try:
        for _ in range(WARM_UP_RUNS):
            enqueue()
        durations = []
        for _ in range(ROUNDS):
            cuda.synchronize(stream)  # the round starts with nothing queued before it
            cuda.record(start, stream)
            for _ in range(BATCHES_PER_ROUND):
                enqueue()
            cuda.record(end, stream)
            cuda.event_synchronize(end)
            durations.append(cuda.elapsed_ms(start, end) / BATCHES_PER_ROUND)
        return stats.median(durations)
    finally:
        cuda.synchronize(stream)
        cuda.destroy_event(start)
        cuda.destroy_event(end)

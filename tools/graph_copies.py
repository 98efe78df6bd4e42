"""Should step 7's copies go inside the CUDA graph? Measures the D2H inside and outside the graph.

Runs the inference graph of step 7 and the logits' copy back two ways on one stream, many times:
  outside: cudaGraphLaunch(inference) + cudaMemcpyAsync(D2H)   (what 7_cuda_graph.py does)
  inside:  cudaGraphLaunch(inference + D2H)                     (the copy captured into the graph)
and prints the GPU time per batch (CUDA events) and the host time per batch (the calls' own cost).
The H2D is not a candidate: it runs on the copy stream to overlap the previous batch's inference.

Run after `make build`: python tools/graph_copies.py [--backend torch] [--batch-size 128] [--repeats 200]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cuda.bindings import runtime as cudart  # noqa: E402

from common import build, cli, cuda, data, engine as engines  # noqa: E402
from common.errors import CourseError  # noqa: E402

HOST_TIMED_LAUNCHES = 10


def capture(stream, work):
    """`work()` captured after one ordinary run (the first enqueue of a shape must not be captured)."""
    work()
    cuda.synchronize(stream)
    cuda.begin_capture(stream)
    try:
        work()
    finally:
        graph = cuda.end_capture(stream)
    return graph


def measure(stream, launch, repeats):
    """(GPU ms, host us) per launch: CUDA events around a long loop; the host clock around a short one, started
    on an idle stream (a long loop fills the launch queue and the host then waits for the GPU)."""
    start, stop = cuda.check(cudart.cudaEventCreate()), cuda.check(cudart.cudaEventCreate())
    launch()
    cuda.synchronize(stream)
    cuda.record(start, stream)
    for _ in range(repeats):
        launch()
    cuda.record(stop, stream)
    cuda.event_synchronize(stop)
    gpu_ms = cuda.check(cudart.cudaEventElapsedTime(start, stop)) / repeats
    host_started = time.perf_counter()
    for _ in range(HOST_TIMED_LAUNCHES):
        launch()
    host_us = (time.perf_counter() - host_started) * 1e6 / HOST_TIMED_LAUNCHES
    cuda.synchronize(stream)
    return gpu_ms, host_us


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_backend_option(parser)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    backend = engines.resolve_backend(args.backend)
    loaded = engines.load(backend, build.engine_path("resnet18_fp16", backend), "fp16", cuda.require_gpu())
    context, stream = loaded.engine.create_execution_context(), cuda.create_stream()
    images = cuda.pinned_copy(data.make_batches(1, args.batch_size, seed=0)[0])
    logits = cuda.pinned_empty(loaded.output.shape_for(args.batch_size), loaded.output.dtype)
    input_address, output_address = cuda.malloc(images.nbytes), cuda.malloc(logits.nbytes)
    cuda.memcpy_htod(input_address, images, stream)
    context.set_input_shape(loaded.input.name, images.shape)
    context.set_tensor_address(loaded.input.name, input_address)
    context.set_tensor_address(loaded.output.name, output_address)

    def infer():
        if not context.execute_async_v3(stream):
            raise CourseError("execute_async_v3 failed")

    def infer_and_copy():
        infer()
        cuda.memcpy_dtoh_async(logits, output_address, stream)

    inference_only, with_copy = capture(stream, infer), capture(stream, infer_and_copy)
    variants = {
        "outside: graph + cudaMemcpyAsync": lambda: (cuda.launch_graph(inference_only, stream),
                                                     cuda.memcpy_dtoh_async(logits, output_address, stream)),
        "inside: one graph with the D2H": lambda: cuda.launch_graph(with_copy, stream),
    }
    print(f"{loaded.label}, batch {args.batch_size}, {args.repeats} repeats, {cuda.require_gpu()[0]}")
    for _ in range(2):  # twice: the spread between the two rounds is the noise
        for name, launch in variants.items():
            gpu_ms, host_us = measure(stream, launch, args.repeats)
            print(f"  {name:36s} GPU {gpu_ms:7.3f} ms/batch   host {host_us:7.1f} us/batch")


if __name__ == "__main__":
    cli.run(main)

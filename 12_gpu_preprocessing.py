"""GPU preprocessing: uint8 images cross PCIe and are normalized on the GPU, a quarter of the bytes per batch.

Not a rung of the ladder: it builds on step 8, whose pipeline it imports (two execution contexts, each
with a copy stream, CUDA graphs and an output thread), and it is compared with step 8.

Changed from step 8: what crosses PCIe. The ladder ships every image normalized, as fp32 NCHW: 602 KB
an image, 77 MB a batch of 128. A decoder produces uint8 HWC images, 150 KB each: a quarter of that.
`python 0_build.py --precision fp16 --input uint8` exports a model that takes them as they are (uint8
NHWC) and does in its graph what the host did: the cast to float, the layout change to NCHW and
ImageNet's normalization, then step 4's fp16 ResNet-18 with fp32 logits. TensorRT builds it as a strongly
typed network; it takes UINT8 only as a network input or output, cast to float before any other layer
(docs/tensorrt-notes.md). The host code is step 8's: only the engine and the batches (uint8 now) differ.
The normalization costs the GPU an elementwise pass or a few over the batch; the copy it saves is 58 MB.
Why it matters: once TensorRT's fp16 kernels make the inference short, the H2D copy of fp32 images is
expected to take as long as the inference or longer, so after step 8 the copy is the next wall.

What to look for in the timeline (reports/12_gpu_preprocessing.nsys-rep), beside step 8's:
- an H2D lane about four times shorter (a pinned copy of 128 images took 1.41 ms as fp32 and 0.42 ms
  as uint8 on an H100);
- the normalization: short elementwise kernels at the start of each inference (TensorRT may fuse them);
- images/s against step 8: the gain is large only where the copy was the limit. On the PyTorch
  stand-in, whose kernels are PyTorch's, the kernels may remain the limit and the gain small.

The latency side (--latency-batch-sizes, after the timed run, in the NVTX range "latency alone"): one batch alone,
from its H2D to its logits on the host, through step 8's pipeline on one context, for this engine and
for step 4's engine (resnet18_fp16, fp32 input); the median of 20 runs on the host clock, and the H2D's
time by CUDA events. Nothing overlaps the copy there: it is part of every request's latency.

Run: python 0_build.py --precision fp16 && python 0_build.py --precision fp16 --input uint8
     python 12_gpu_preprocessing.py (--help for the options)
"""
import statistics
import time

from common import build, cli, cuda, data, engine as engines, memory, nvtx, results, steps, workload
from common.errors import CourseError

step8 = steps.load("8_multi_context")

ENGINE = "resnet18_fp16_uint8"
FP32_INPUT_ENGINE = "resnet18_fp16"  # step 4's: the same model, taking the host's normalized fp32 images
LATENCY_WARM_UP = 3  # the first run of a batch size captures its CUDA graph
LATENCY_RUNS = 20


def batch_sizes(text):
    """argparse type: comma-separated batch sizes, e.g. 1,8,32."""
    return [cli.whole_number(1)(part) for part in text.split(",")]


def parse_args():
    parser = cli.parser(__doc__)
    parser.add_argument("--latency-batch-sizes", type=batch_sizes, default=[1, 8, 32], metavar="N,N,...",
                        help="batch sizes of the latency side, one batch alone (default 1,8,32)")
    parser.add_argument("--fp32-input-engine", type=cli.non_empty_path,
                        help="the engine the latency side compares with (default: "
                        f"{FP32_INPUT_ENGINE} under engines/)")
    return parser.parse_args()


def check_fp32_input_engine(args):
    """Step 4's engine file, checked before the GPU like this step's: both must take every latency batch size."""
    backend = engines.resolve_backend(args.backend)
    path = args.fp32_input_engine or build.engine_path(FP32_INPUT_ENGINE, backend)
    engine_file = engines.check_file(backend, path, "fp16")
    own = engines.check_file(backend, args.engine or build.engine_path(ENGINE, backend), "fp16", "uint8")
    for checked in (own, engine_file):
        for batch_size in args.latency_batch_sizes:
            checked.check_batch(batch_size, profile=0)
    return engine_file


# ---------------------------------------------------------------------------------------------------
# The latency side: one batch alone

def run_alone(pipeline, images, h2d_events):
    """One batch through step 8's pipeline with nothing else in flight.

    Returns the host time from its H2D to its logits on the host (ms), the H2D's GPU time (ms), the logits.
    """
    slot, host_output = pipeline.buffers[0][0], pipeline.buffers[2][0]
    started = time.perf_counter()
    cuda.record(h2d_events[0], pipeline.copy_stream)
    step8.copy_in(pipeline.copy_stream, slot, images)
    cuda.record(h2d_events[1], pipeline.copy_stream)
    step8.infer(pipeline.graphs, pipeline.compute_stream, pipeline.buffers, slot, host_output, len(images))
    cuda.event_synchronize(host_output.ready)
    latency_ms = (time.perf_counter() - started) * 1e3
    cuda.event_synchronize(h2d_events[1])  # on the copy stream, which the logits' event does not wait for
    return latency_ms, cuda.elapsed_ms(*h2d_events), host_output.logits[:len(images)].copy()


def latency_alone(loaded, images, reference, batch_sizes):
    """One engine's rows: median latency and H2D time of one batch alone at each batch size, outputs checked."""
    pipeline = step8.ContextPipeline(loaded, [images], outputs=None, timer=None)
    h2d_events = cuda.create_timing_event(), cuda.create_timing_event()
    rows = []
    for batch_size in batch_sizes:
        batch = images[:batch_size]
        for _ in range(LATENCY_WARM_UP):
            run_alone(pipeline, batch, h2d_events)
        runs = [run_alone(pipeline, batch, h2d_events) for _ in range(LATENCY_RUNS)]
        latency_ms = statistics.median(latency for latency, _, _ in runs)
        h2d_ms = statistics.median(h2d for _, h2d, _ in runs)
        check = results.check_outputs([runs[-1][2]], [reference[:batch_size]], "fp16")
        rows.append({"batch_size": batch_size, "input": str(loaded.input.dtype), "engine": str(loaded.path),
                     "latency_ms": latency_ms, "h2d_ms": h2d_ms, "h2d_share": h2d_ms / latency_ms, "check": check})
    return rows


def measure_latency(args, run, fp32_input):
    """Both engines on the same images: fp32 normalized on the host, and uint8 as decoded."""
    images = data.make_uint8_batches(1, max(args.latency_batch_sizes), args.seed)[0]
    reference = data.reference_logits(build.WEIGHTS_PATH, [images], build.ENGINE_DIR / "cache")[0]
    with nvtx.phase("latency alone"):
        rows = latency_alone(fp32_input, cuda.pinned_copy(data.normalize(images)), reference, args.latency_batch_sizes)
        rows += latency_alone(run.loaded, cuda.pinned_copy(images), reference, args.latency_batch_sizes)
    return sorted(rows, key=lambda row: row["batch_size"])  # stable: fp32 before uint8 at each size


def print_latency(rows):
    print(f"one batch alone (H2D + inference + D2H, host clock, median of {LATENCY_RUNS} runs; H2D by CUDA events):")
    print(f"  {'batch':>5}  {'input':<7}  {'latency ms':>10}  {'H2D ms':>7}  {'H2D share':>9}  check")
    for row in rows:
        print(f"  {row['batch_size']:>5}  {row['input']:<7}  {row['latency_ms']:>10.3f}  {row['h2d_ms']:>7.3f}  "
              f"{row['h2d_share']:>9.1%}  {'match' if row['check']['passed'] else 'DIFFER'}")


def main():
    args = parse_args()
    fp32_input_file = check_fp32_input_engine(args)
    run = workload.prepare(args, ENGINE, precision="fp16", input_dtype="uint8")
    fp32_input = engines.load(run.loaded.backend, fp32_input_file.path, "fp16", run.device, checked=fp32_input_file)
    batches = cuda.pinned_copies(run.batches)  # as if the decoder had written them there
    outputs = [None] * len(batches)
    timer = results.Timer(args.batches, args.repeats)
    pipelines = step8.run_contexts(run, batches, outputs, timer, step8.CONTEXTS)

    held = memory.held(run.loaded)  # the timed run's; the latency side adds contexts of its own
    del pipelines
    latency = measure_latency(args, run, fp32_input)
    print_latency(latency)
    results.finish(__doc__, args, run, timer, outputs, held=held, extra={
        "builds_on": "8_multi_context", "latency_alone": {"runs": LATENCY_RUNS, "rows": latency}})
    differ = [f"batch {row['batch_size']} ({row['input']} input)" for row in latency if not row["check"]["passed"]]
    if differ:
        raise CourseError(f"the latency side's outputs differ from the PyTorch reference: {', '.join(differ)}")


if __name__ == "__main__":
    cli.run(main)

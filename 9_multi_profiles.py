"""Multiple profiles: an engine with a small-batch and a large-batch optimization profile, one context per profile.

Changed from step 8: the engine is built with two optimization profiles (0_build.py --profile 1:16:32
--profile 33:128:128), and the workload mixes small and large batches. TensorRT tunes its kernels for
each profile's OPT shape, so a profile as wide as 1..128 runs small batches with kernels chosen for 128;
two narrower profiles give each size range its own kernels. Each context selects its profile once,
with the asynchronous profile setter on its own stream, before any input shape is set; each batch
goes to the context whose profile holds its size, so no context ever switches profile and no buffer is
reallocated (each context's buffers are sized for its profile's largest batch). A batch that fits no
profile is refused with a clear error before anything runs.
The workload differs from steps 1 to 8 (every other batch is small), so its time per batch is not
comparable with theirs. What the profiles buy is measured after the timed run, in the NVTX range "one
profile": the same mixed workload through the same pipelines (two contexts, one for the large batches
and one for the small), on step 4's engine, whose one profile (1:128:128) takes every batch (the
result's "one_profile"; --one-profile-engine). With TensorRT, which tunes each profile's kernels for its
opt shape, that is what the profiles buy. The PyTorch stand-in does the same in its own way: it compiles
a graph per profile at the profile's opt shape, so the small batches run a graph compiled at 16 on this
engine and one compiled at 128 on step 4's. Measured with the compiled stand-in on an H100 (make reproduce
at 5e66087, 2026-12-07), two profiles are within noise of one in both runs: 0.95 against 0.98 ms per batch
in run 2; under nsys 1.22 against 1.23. On the stand-in the graph compiled at 16 bought nothing measurable
in this workload; with TensorRT what a profile buys depends on the tactics it picks for each opt shape.
The windows spread widely (120% in run 2), and not from noise: windows are cut from the results in the
order they finish, the small batches' context finishes its share first, and the last window holds only
large batches (about 2 ms apart, one context's time per batch of 128 in step 8). The median is a middle
window's.

What to look for in the timeline (reports/9_multi_profiles.nsys-rep):
- two compute streams, one running the small batches and one the large ones;
- in the kernels' details (Nsight Systems' "Description"), different shapes on the two streams.

Run: python 0_build.py --precision fp16 --profile 1:16:32 --profile 33:128:128 --name resnet18_fp16_2profiles
     python 9_multi_profiles.py (--help for the options)
"""
import concurrent.futures
import dataclasses
import queue
import threading

from common import build, cli, cuda, data, engine as engines, memory, nvtx, results, workload
from common.errors import CourseError

ENGINE = "resnet18_fp16_2profiles"
ONE_PROFILE_ENGINE = "resnet18_fp16"  # step 4's: one profile, 1:128:128


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


class InferenceGraphs:
    """One CUDA graph of the inference per (input slot, batch size), captured on first use.

    A graph belongs to the execution context's state at its capture: TensorRT's developer guide calls a replay after
    the context's input shapes or addresses changed undefined. Each capture changes them (another slot, another
    size), so before every replay they are set back to the graph's own: two host calls, no GPU work.
    """

    def __init__(self, context, stream, run):
        self.context, self.stream, self.run = context, stream, run
        self.graphs = {}
        self.capturable = True

    def launch(self, slot, batch_size):
        key = (slot.address, batch_size)
        if key not in self.graphs and self.capturable:
            with cuda.capture_lock:  # one first enqueue or capture at a time in the process (common/cuda.py: why)
                self.enqueue(slot, batch_size)  # outside the capture: finishes the shape's lazy set-up
                cuda.synchronize(self.stream)
                try:
                    self.graphs[key] = self.capture(slot, batch_size)
                except CourseError as error:
                    print(f"note: this engine cannot be captured into a CUDA graph ({error}); running it without one")
                    self.capturable = False
        if key in self.graphs:
            self.bind(slot, batch_size)  # the context's state at this graph's capture (see above)
            cuda.launch_graph(self.graphs[key], self.stream)
        else:
            self.enqueue(slot, batch_size)

    def bind(self, slot, batch_size):
        shape = self.run.input.shape_for(batch_size)
        engines.accepted(self.context.set_input_shape(self.run.input.name, shape), f"the input shape {shape}")
        engines.accepted(self.context.set_tensor_address(self.run.input.name, slot.address), "the input's address")

    def enqueue(self, slot, batch_size):
        self.bind(slot, batch_size)
        if not self.context.execute_async_v3(self.stream):
            raise CourseError("execute_async_v3 failed: see the engine's log above")

    def capture(self, slot, batch_size):
        with nvtx.phase("capture"):
            cuda.begin_capture(self.stream)
            try:
                self.enqueue(slot, batch_size)
            finally:
                graph = cuda.end_capture(self.stream)  # always end it, or the stream stays capturing
        return graph


def infer(graphs, compute_stream, buffers, slot, host_output, batch_size):
    """Queue the inference (after the slot's H2D) and the D2H on the compute stream; no waiting here."""
    output_address = buffers[1]
    with nvtx.phase("infer"):
        cuda.wait(compute_stream, slot.copied)
        graphs.launch(slot, batch_size)
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


class ContextPipeline:
    """The pipeline of one execution context on one optimization profile, for the batches it is given."""

    def __init__(self, run, batches, outputs, timer, profile, batch_indices):
        self.run, self.batches, self.batch_indices = run, batches, batch_indices
        self.context = run.engine.create_execution_context()
        self.copy_stream, self.compute_stream = cuda.create_stream(), cuda.create_stream()
        # Select the profile first: input shapes and addresses are set for the active profile.
        try:  # TensorRT's Python binding raises on failure rather than returning False
            self.context.set_optimization_profile_async(profile, self.compute_stream)
        except RuntimeError as error:
            raise CourseError(f"could not select optimization profile {profile}: {error}") from None
        self.buffers = allocate(self.context, run, max(len(batches[index]) for index in batch_indices))
        self.graphs = InferenceGraphs(self.context, self.compute_stream, run)
        self.timer = timer
        self.output_thread = OutputThread(self.buffers[2], outputs, timer)

    def warm_up(self):
        with nvtx.phase("warm-up"):  # first runs pay one-off costs (here: the captures); keep them out of the timing
            first = self.batches[self.batch_indices[0]]
            for slot in self.buffers[0]:
                copy_in(self.copy_stream, slot, first)
                infer(self.graphs, self.compute_stream, self.buffers, slot, self.buffers[2][0], len(first))
            cuda.synchronize(self.compute_stream)

    def drive(self, claim_next):
        """The batch loop over the batch indices `claim_next()` returns, until it returns None."""
        slots, output_thread = self.buffers[0], self.output_thread
        output_thread.start()
        index, count = claim_next(), 0
        if index is not None:
            copy_in(self.copy_stream, slots[0], self.batches[index])
        while index is not None:
            self.timer.start_batch(index)
            host_output = output_thread.take_free_buffer()
            batch_size = len(self.batches[index])
            following = claim_next()
            if following is not None:  # prefetch first: the copy runs while this batch's inference is queued and runs
                copy_in(self.copy_stream, slots[(count + 1) % 2], self.batches[following])
            infer(self.graphs, self.compute_stream, self.buffers, slots[count % 2], host_output, batch_size)
            output_thread.pending.put((index, batch_size, host_output))  # the thread waits, not us
            index, count = following, count + 1
        output_thread.pending.put(None)
        output_thread.join()
        output_thread.raise_error()


def batch_queue(indices):
    """A thread-safe source of batch indices; `claim_next()` returns None once all are claimed."""
    unclaimed = queue.SimpleQueue()
    for index in indices:
        unclaimed.put(index)

    def claim_next():
        try:
            return unclaimed.get_nowait()
        except queue.Empty:
            return None
    return claim_next


def routes(loaded, batches):
    """(profile, its batches' indices) for every profile some batch goes to: the profile that holds its size."""
    by_profile = {}
    for index, images in enumerate(batches):
        by_profile.setdefault(loaded.profile_for(len(images)), []).append(index)
    return sorted(by_profile.items())


def run_pipelines(run, batches, outputs, timer, profile_routes):
    """The timed run: a pipeline per (profile, batch indices), warmed up first, each on its own thread."""
    pipelines = [ContextPipeline(run, batches, outputs, timer, profile, indices) for profile, indices in profile_routes]
    for pipeline in pipelines:
        pipeline.warm_up()

    with concurrent.futures.ThreadPoolExecutor(len(pipelines), thread_name_prefix="context") as pool:
        for done in [pool.submit(pipeline.drive, batch_queue(pipeline.batch_indices)) for pipeline in pipelines]:
            done.result()  # re-raises a pipeline thread's exception here
    return pipelines  # their contexts hold the memory the step reports: keep them until it is measured


# ---------------------------------------------------------------------------------------------------
# What the profiles buy: the same workload and pipelines on an engine with one profile

def check_one_profile_engine(args):
    """Step 4's engine file (or --one-profile-engine), checked before the GPU (the batch sizes after this step's
    own engine's: see main)."""
    backend = engines.resolve_backend(args.backend)
    return engines.check_file(backend, args.one_profile_engine or build.engine_path(ONE_PROFILE_ENGINE, backend),
                              "fp16")


def run_on_one_profile(args, run, batches, engine_file, profile_routes, figures):
    """The timed run again, the same batches and pipelines, every context on the one-profile engine's profile 0."""
    one_profile = engines.load(run.loaded.backend, engine_file.path, "fp16", run.device, checked=engine_file)
    outputs = [None] * len(batches)
    timer = results.Timer(args.batches, args.repeats, traced=False)
    with nvtx.phase("one profile"):
        run_pipelines(one_profile, batches, outputs, timer, [(0, indices) for _, indices in profile_routes])
    own = results.steady_figures(timer, sum(map(len, batches)) / len(batches))
    return {"engine": str(engine_file.path), "profiles": [list(p) for p in engine_file.profiles], **own,
            **results.versus(figures, own), "check": results.check_outputs(outputs, run.reference, "fp16")}


def print_one_profile(row, median_ms):
    verdict = "within noise" if row["within_noise"] else f"{row['speedup']:.2f}x"
    print(f"the same workload on one profile ({row['engine']}): {row['median_ms_per_batch']:.3f} ms per batch "
          f"against {median_ms:.3f} with two profiles ({verdict})")


def mixed_sizes(args):
    """Every other batch small: the sizes of args.batches batches alternating --batch-size and --small-batch-size."""
    return [args.batch_size if index % 2 == 0 else args.small_batch_size for index in range(args.batches)]


def mixed_batches(args):
    """The batches of mixed_sizes(args)."""
    large = data.make_batches(args.batches, args.batch_size, args.seed)
    small = data.make_batches(args.batches, args.small_batch_size, args.seed + 1)
    return [large[index] if index % 2 == 0 else small[index] for index in range(args.batches)]


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("--small-batch-size", type=cli.whole_number(1), default=16,
                        help="images per small batch (default 16)")
    parser.add_argument("--one-profile-engine", type=cli.non_empty_path,
                        help=f"the engine the comparison runs (default: {ONE_PROFILE_ENGINE} under engines/)")
    args = parser.parse_args()
    one_profile_file = check_one_profile_engine(args)
    run = workload.prepare(args, ENGINE, precision="fp16", batch_sizes=mixed_sizes(args),
                           make_batches=lambda: mixed_batches(args), profile=None)
    for batch_size in sorted(set(mixed_sizes(args))):  # its one profile must take every batch of the workload
        one_profile_file.check_batch(batch_size, profile=0)
    batches = cuda.pinned_copies(run.batches)  # as if the data were loaded there
    outputs = [None] * len(batches)
    timer = results.Timer(args.batches, args.repeats)
    profile_routes = routes(run.loaded, batches)
    pipelines = run_pipelines(run, batches, outputs, timer, profile_routes)

    held = memory.held(run.loaded)  # the timed run's; the comparison loads an engine of its own
    del pipelines
    figures = results.steady_figures(timer, sum(map(len, batches)) / len(batches))
    one_profile = run_on_one_profile(args, run, batches, one_profile_file, profile_routes, figures)
    print_one_profile(one_profile, figures["median_ms_per_batch"])
    results.finish(__doc__, args, run, timer, outputs, held=held, extra={"one_profile": one_profile})
    if not one_profile["check"]["passed"]:
        raise CourseError(f"the one-profile run's outputs differ from the PyTorch reference: "
                          f"{one_profile['check']['summary']}")


if __name__ == "__main__":
    cli.run(main)

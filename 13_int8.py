"""INT8 by explicit quantization: the convolutions take INT8 inputs and weights, calibrated, at an accuracy cost.

Not a rung of the ladder: it builds on step 8, whose pipeline it imports (two execution contexts, each
with a copy stream, CUDA graphs and an output thread), and it is compared with step 8.

Changed from step 8: the engine, and a second verdict on its outputs. `python 0_build.py --precision int8`
calibrates ResNet-18 and exports it with QuantizeLinear/DequantizeLinear (Q/DQ) nodes on the input and the
weights of every convolution and of the classifier (per channel for weights, per tensor for inputs, zero
point 0), and TensorRT builds that ONNX model as a strongly typed network: the Q/DQ nodes are what makes it
INT8 (explicit quantization). The source tutorial's way, a builder flag and a calibrator object, is gone:
TensorRT 11 removed both, and 10.x deprecates them (docs/tensorrt-notes.md section 18). Inputs and outputs
stay fp32, so the host code is step 8's.

What calibration is, and why it matters: INT8 has 256 levels, and each quantized tensor maps a range
[-amax, amax] onto them (scale = amax / 127). A weight's range is known from the weights. An activation's
depends on the images, so the calibration runs the network on sample images and records each quantized
input's range: here NVIDIA Model Optimizer's INT8 configuration, "max" calibration, the largest magnitude
seen (or, where Model Optimizer is not installed, the same rule in PyTorch; the result says which). Too wide
a range wastes levels, coarse steps for every value; too narrow clips the outliers; a wrong one ruins a
layer. So a production calibration uses a few hundred images like those the model will serve. The course's
images are synthetic: its figures show the mechanism, not a production model's accuracy. The calibration
images (`0_build.py --calibration-batches`, `--calibration-seed`) come from a random stream of their own,
never the timed images, so the accuracy is measured on images the calibration did not see.

The accuracy cost: every timed output against the fp32 PyTorch reference, as each ladder step is checked:
the agreement of the top-1 class, of the top-5 (the reference's class among INT8's five best) and the
relative error of the logits, against INT8's own limits (common/results.py, TOLERANCES["int8"], which say
why: 10% relative error, 95% top-1, 99% top-5). On the course's seeded weights, on a CPU: 1.8% relative
error and every top-1 class kept, over 1,280 images. Built with `0_build.py --weights imagenet` (all
engines: the weights are the course's one file), the same figures are on the real ImageNet weights.

What to look for in a TensorRT timeline (reports/13_int8.nsys-rep), beside step 8's:
- INT8 kernels: TensorRT's kernel names carry their types, e.g. `..._i8i8_i8i32_f32_...` (INT8 inputs and
  weights, INT32 accumulation) or `..._i8f32_...`; `int8` or `imma` in older cuDNN-style names; fp16 ones
  read `f16f16`. A naming habit, not a contract: the engine inspector (ProfilingVerbosity.DETAILED at build)
  lists each layer's types for certain;
- the Q/DQ nodes fused into the convolutions: no quantize kernel of their own, except where fp32 tensors
  enter INT8 (after the network input, around the residual additions, which stay in fp32 here);
- shorter convolution kernels than step 4's fp16 ones where the GPU has INT8 tensor cores.
On the PyTorch stand-in there are none of these: it runs the fake-quantized network, INT8's numbers on fp32
kernels plus the rounding itself, so its time is PyTorch's fake quantization, not INT8's (`speed_is_int8` is
false in the result, and every line that shows it says so). Its accuracy figures are INT8's.

Run: python 0_build.py --precision int8 && python 13_int8.py (--help for the options)
"""
from common import build, cli, cuda, memory, results, steps, workload

step8 = steps.load("8_multi_context")

ENGINE = "resnet18_int8"


def int8_record(loaded):
    """What the result says of the INT8 engine: how it was calibrated, on which weights, and what its time is."""
    calibration = loaded.metadata.get("calibration") or {}
    on_tensorrt = loaded.backend == "tensorrt"
    note = ("TensorRT's INT8 engine: its kernel names in the trace (i8) or its engine inspector say which layers "
            "ran in INT8" if on_tensorrt else
            "the PyTorch stand-in runs the fake-quantized network, INT8's numbers on fp32 kernels: its time is not "
            "INT8's; its accuracy is")
    return {"quantizer": calibration.get("quantizer"), "calibration_batches": calibration.get("batches"),
            "calibration_batch_size": calibration.get("batch_size"), "calibration_seed": calibration.get("seed"),
            "weights": build.weights_source(), "speed_is_int8": on_tensorrt, "note": note}


def main():
    args = cli.parser(__doc__).parse_args()
    run = workload.prepare(args, ENGINE, precision="int8")
    batches = cuda.pinned_copies(run.batches)  # as if the data were loaded there
    outputs = [None] * len(batches)
    timer = results.Timer(args.batches, args.repeats)
    pipelines = step8.run_contexts(run, batches, outputs, timer, step8.CONTEXTS)  # step 8's run, on the INT8 engine
    held = memory.held(run.loaded)  # while the pipelines' contexts are alive
    del pipelines

    # INT8's accuracy: the ladder's check with INT8's limits, over every timed image.
    check = results.check_outputs(outputs, run.reference, "int8")
    accuracy = {key: check[key] for key in ("top1_agreement", "top5_agreement", "rel_err", "tolerance", "passed")}
    int8 = int8_record(run.loaded)
    print(f"INT8: {int8['quantizer']}, {int8['calibration_batches']} batches of {int8['calibration_batch_size']} "
          f"calibration images (seed {int8['calibration_seed']}), {int8['weights']} weights; {int8['note']}")
    results.finish(__doc__, args, run, timer, outputs, held=held,
                   extra={"builds_on": "8_multi_context", "accuracy": accuracy, "int8": int8})


if __name__ == "__main__":
    cli.run(main)

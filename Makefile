# The course's commands. `make profile-all` on a fresh GPU machine does everything: setup, build, run
# every step under Nsight Systems, report. `make test` runs the tests (GPU tests skip without a GPU).
# `make reproduce` runs every step twice and says which figures reproduce between the two runs.
#   BACKEND=auto|tensorrt|torch   auto: TensorRT if it can be imported, else the PyTorch stand-in
#   PYTHON=python3                use an existing environment instead of the course's .venv
#   NSYS_FLAGS=...                override any of nsys's trace options (defaults: the source tutorial's)

BACKEND ?= auto
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
REPORTS ?= reports
STEP_ARGS ?=
COMPARE ?=
# Under nsys two timed windows are enough: the trace is what profile-all is for, and tracing slows every
# CUDA call, so the ranked timings come from make run-all (five windows by default).
PROFILE_ARGS ?= --repeats 2
STEPS := 1_baseline 2_reuse_buffers 3_use_pin_memory 4_use_fp16 5_multi_streams 6_multi_threads \
         7_cuda_graph 8_multi_context 9_multi_profiles
# Beyond the ladder but run and profiled with it: same workload and timing, compared with step 8, not a rung.
AFTER_LADDER := 12_gpu_preprocessing 13_int8
NSYS ?= nsys
# The source tutorial's options; --sample=none --cpuctxsw=none keep nsys from writing gigabytes of
# CPU samples. --gpu-metrics-devices needs permission to read GPU counters: drop it if nsys refuses.
NSYS_FLAGS ?= -t cuda,nvtx,osrt,cudnn,cublas --cuda-memory-usage=true --cudabacktrace=all \
              --cuda-graph-trace=node --gpu-metrics-devices=all --sample=none --cpuctxsw=none -f true

# Only the course's own .venv is set up by make; PYTHON=... means "I have an environment already".
SETUP := $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/.installed,)
RUN := BACKEND=$(BACKEND) $(PYTHON)

# Beyond the ladder: not rungs (their --batch-size means the largest batch), run without nsys.
BATCHING := 10_batch_size_sweep 11_dynamic_batching
BATCHING_ARGS ?=

.PHONY: setup build run-all reproduce profile-all backend-valid nsys-available gpu-available batching report test clean

setup: $(SETUP)

# torch and torchvision must come from the same index as a matching pair: pip's config here may offer a
# CPU-only torch wheel next to a torchvision built for CUDA, which then fails to import. So the install
# ignores pip's local config (find-links, extra indexes) and takes both from the package index.
# TensorRT is installed where a GPU is present and the package can be had; otherwise BACKEND=auto
# uses the stand-in.
$(VENV)/.installed: requirements.txt requirements-stubs.txt
	python3 -m venv $(VENV)
	env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
	    $(VENV)/bin/python -m pip install -q -r requirements.txt
	env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
	    $(VENV)/bin/python -m pip install -q --no-deps --upgrade --target $(VENV)/tensorrt-stubs -r requirements-stubs.txt
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	    $(VENV)/bin/python -m pip install -q 'tensorrt>=10.1,<12' \
	    || echo "notice: TensorRT could not be installed; BACKEND=auto will use the PyTorch stand-in"; fi
	touch $@

# One target per engine, so that `make -j build` builds the stand-in's engines side by side (its compiles are CPU
# work: five took 68 s on an H100, where six had taken 204 to 241 s one after another on the H200). TensorRT times
# kernels on the GPU while it builds and its builds share a timing cache: build TensorRT engines without -j. The first
# build writes the weights that every other reads, so the others wait for it. BACKEND is checked first: a typo must
# not cost the set-up.
ENGINES := fp32 fp16 fp16_2profiles fp16_wide fp16_uint8 int8
ENGINE_ARGS_fp32 := --precision fp32
ENGINE_ARGS_fp16 := --precision fp16
ENGINE_ARGS_fp16_2profiles := --precision fp16 --profile 1:16:32 --profile 33:128:128 --name resnet18_fp16_2profiles
ENGINE_ARGS_fp16_wide := --precision fp16 --profile 1:256:1024 --name resnet18_fp16_wide
ENGINE_ARGS_fp16_uint8 := --precision fp16 --input uint8 --name resnet18_fp16_uint8
ENGINE_ARGS_int8 := --precision int8

# Declared here, not in the .PHONY above: make expands a rule's prerequisites where it reads them.
.PHONY: $(addprefix engine-,$(ENGINES))
build: $(addprefix engine-,$(ENGINES))

engine-fp32: backend-valid $(SETUP)
	$(RUN) 0_build.py $(ENGINE_ARGS_fp32)

$(addprefix engine-,$(filter-out fp32,$(ENGINES))): engine-%: engine-fp32
	$(RUN) 0_build.py $(ENGINE_ARGS_$*)

# The GPU is checked first, as nsys is for profile-all: without one, the build would cost a minute for nothing.
run-all: backend-valid gpu-available
	@$(MAKE) --no-print-directory build
	@set -e; for step in $(STEPS) $(AFTER_LADDER); do echo "== $$step"; $(RUN) $$step.py --reports $(REPORTS) $(STEP_ARGS); done
	$(MAKE) --no-print-directory report

# nsys is checked first: a missing profiler must not cost the set-up and the build before it is reported.
# The build is a sub-make, not a prerequisite, so that `make -j` cannot start it before the check either.
profile-all: nsys-available backend-valid gpu-available
	@$(MAKE) --no-print-directory build
	@mkdir -p $(REPORTS)
	@set -e; for step in $(STEPS) $(AFTER_LADDER); do echo "== $$step (nsys)"; \
	    COURSE_UNDER_NSYS=1 BACKEND=$(BACKEND) $(NSYS) profile $(NSYS_FLAGS) -o $(REPORTS)/$$step \
	        $(PYTHON) $$step.py --reports $(REPORTS) $(PROFILE_ARGS) $(STEP_ARGS); done
	$(MAKE) --no-print-directory report

backend-valid:
	@case "$(BACKEND)" in auto|tensorrt|torch) ;; \
	    *) echo "error: BACKEND=$(BACKEND) is not a backend: set BACKEND to auto, tensorrt or torch"; exit 1;; esac

nsys-available:
	@command -v $(NSYS) >/dev/null 2>&1 || { echo "error: nsys not found: install Nsight Systems (or put it on PATH), or run make run-all"; exit 1; }

# The course's own check (common/cuda.py), so that the message is the one every step would give.
gpu-available: $(SETUP)
	@$(PYTHON) -c "from common import cli, cuda; cli.run(cuda.require_gpu)"

batching: backend-valid gpu-available
	@$(MAKE) --no-print-directory build
	@set -e; for step in $(BATCHING); do echo "== $$step"; $(RUN) $$step.py --reports $(REPORTS) $(BATCHING_ARGS); done

report: $(SETUP)
	$(PYTHON) -m common.report --reports $(REPORTS) $(if $(COMPARE),--compare $(COMPARE))

# One run's windows cannot show a cost that differs from one process to the next: run every step twice, each
# run in processes of its own, and let the second run's report say which figures reproduce.
reproduce:
	@$(MAKE) --no-print-directory run-all REPORTS=$(REPORTS)/run-1
	@$(MAKE) --no-print-directory run-all REPORTS=$(REPORTS)/run-2 COMPARE=$(REPORTS)/run-1

test: $(SETUP)
	$(PYTHON) -m pytest -q tests

clean:
	rm -rf $(REPORTS) engines

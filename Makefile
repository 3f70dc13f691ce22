# Everything sets itself up: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

SHELL := /bin/bash
.PHONY: install lock smoke test-newest demo test gpu-check bench clean slurm-up slurm-down micro-study adapters-study formats-study released-study

# The lock is the only source of versions: requirements-lock.txt pins every package, direct and
# transitive (pip-tools' pip-compile, `make lock`), torch as the CPU build on this machine's disk;
# on a machine with an NVIDIA GPU, install/torch-cuda.txt swaps in the CUDA build of the same torch.
# Force either with `make install TORCH=cpu` or `TORCH=cuda`. uv installs the pins as they are
# (--no-deps: no resolution at install time), bytecode compiled as pip does (this machine sets
# PYTHONDONTWRITEBYTECODE: without it every process compiled torch again). The venv is made anew
# whenever the lock changes, so it never holds a package the lock does not name (checked after
# each install: `pip freeze` == the lock, and `pip check`).
TORCH ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
PIP_QUIET := -qq
TOOLS := .venv-tools
UV := $(TOOLS)/bin/uv
UV_VERSION := 0.13.8
PIP_TOOLS_VERSION := 7.6.2
# where this machine keeps wheels of its own (the CPU torch): pip's setting, handed to uv and pip-compile
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))

install: $(STAMP)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install $(PIP_QUIET) uv==$(UV_VERSION)

$(STAMP): requirements-lock.txt install/torch-cuda.txt pyproject.toml | $(UV)
	@echo "make install: a new venv $(VENV) holding exactly the lock (torch $(TORCH))"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PYTHON) install/lockfile.py requirements $(TORCH) > $(VENV)/requirements.txt
	$(UV) pip install -q --python $(PY) --no-deps --compile-bytecode $(FIND_LINKS) -r $(VENV)/requirements.txt
	$(UV) pip install -q --python $(PY) --no-deps --compile-bytecode --no-build-isolation -e .
	$(PYTHON) install/lockfile.py refs > $(VENV)/refs.txt
	$(UV) pip install -q --python $(PY) --no-deps --compile-bytecode --target $(VENV)/refs -r $(VENV)/refs.txt
	$(PY) -m pip check
	$(PY) install/lockfile.py check $(TORCH)
	touch $(STAMP)

# Moves the lock to the newest versions pyproject.toml allows (torch stays the build named in
# install/torch-cpu.txt), then installs it and trains a few steps. Run it by hand when you mean
# to move (after `make test-newest` passes); CI only ever installs the committed lock.
lock: | $(UV)
	test -x $(TOOLS)/bin/pip-compile || $(TOOLS)/bin/python -m pip install $(PIP_QUIET) pip-tools==$(PIP_TOOLS_VERSION)
	$(TOOLS)/bin/pip-compile -q --upgrade --extra dev --extra refs --strip-extras --allow-unsafe --no-emit-index-url \
	    --no-emit-find-links -c install/torch-cpu.txt -o requirements-lock.txt pyproject.toml
	grep -vE '^(torch|triton)==' requirements-lock.txt | grep -E '^[A-Za-z0-9].*==' > $(TOOLS)/cpu-pins.txt
	sed 's/+cpu//' install/torch-cpu.txt > $(TOOLS)/torch-cuda.in
	# the CUDA torch of the package index, not this machine's CPU wheel: no pip config, no find-links
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(TOOLS)/bin/pip-compile -q --upgrade --allow-unsafe \
	    --no-emit-index-url --no-emit-find-links -c $(TOOLS)/cpu-pins.txt -o $(TOOLS)/cuda-lock.txt \
	    $(TOOLS)/torch-cuda.in
	(echo "# The CUDA build of the locked torch, and what it needs beyond requirements-lock.txt (make lock)."; \
	 $(PYTHON) install/lockfile.py cuda-delta requirements-lock.txt $(TOOLS)/cuda-lock.txt) > install/torch-cuda.txt
	$(MAKE) install
	$(MAKE) smoke

# A few training steps and an evaluation, from the repository root: what a new lock must pass.
smoke: install
	$(PY) -m qlora_lab.train train.max_steps=2 hydra.run.dir=multirun/smoke/$$(date +%s)

# The suite on the newest versions the ranges allow, in a venv of its own (.venv-newest): drift
# seen before a user sees it. Not in CI's path. torch stays the CPU build on this machine's disk.
NEWEST := .venv-newest
test-newest: | $(UV)
	rm -rf $(NEWEST)
	$(PYTHON) -m venv $(NEWEST)
	$(UV) pip install -q --python $(NEWEST)/bin/python --compile-bytecode $(FIND_LINKS) -c install/torch-cpu.txt --upgrade -e '.[dev]'
	printf 'torch\ntransformers\n' > $(NEWEST)/refs-excludes.txt  # the venv's serve the references (hqq asks for torch: the CUDA build)
	$(UV) pip install -q --python $(NEWEST)/bin/python --compile-bytecode --target $(NEWEST)/refs --upgrade \
	    --excludes $(NEWEST)/refs-excludes.txt torchao hqq compressed-tensors
	$(NEWEST)/bin/python -m pip check
	(cd $(NEWEST) && bin/python -m pip freeze --all --exclude-editable | grep -v '^pip==' && \
	 bin/python -m pip freeze --path refs) > $(NEWEST)/freeze.txt
	@echo "make test-newest: where the newest versions differ from the lock (installed = newest):"
	@$(PYTHON) install/lockfile.py drift $(NEWEST)/freeze.txt
	$(NEWEST)/bin/python -m pytest $(PYTEST_ARGS)

# The main job on its embedded defaults: nf4, fp4 x LoRA on all / qv layers of `tiny`.
demo: install
	$(PY) -m qlora_lab.train -m dtype=nf4,fp4 lora.targets=all,qv hydra.sweep.dir=multirun/demo
	$(PY) -m qlora_lab.judge multirun/demo
	$(PY) -m qlora_analysis multirun/demo --out multirun/demo/report

# The micro-study: the paper's data-type and LoRA-target sweeps on a base pretrained here, judged
# and analysed, with fidelity sweeps over the base's checkpoints and blocksizes; writes reports/micro-study/
# (committed). About 39 minutes on 2 cores, pretraining included.
micro-study: install
	$(PY) -m qlora_lab.micro_study

# The adapter study on the same base (LoftQ, PiSSA, DoRA x NF4, Int4, NF3): into the micro-study's
# folder and report, as a section of its own. About 13 minutes on 2 cores, the base built.
adapters-study: install
	$(PY) -m qlora_lab.micro_study --adapters

# The released-weights sweeps alone (part of `make micro-study`): the base's own GGUF Q4_K and NVFP4
# releases fine-tuned as stored against NF4+DQ, 3 seeds: multirun/released-study and
# reports/released-study/report.md, its section "Fine-tuning released weights" (`--sweep-dir
# multirun/micro-study --out reports/micro-study` adds it to the micro-study's folder and report)
released-study: install
	$(PY) -m qlora_lab.micro_study --released

# The 4-bit formats of 2026 on the same base (MXFP4, NVFP4, Q4_0, Q4_K, HQQ against NF4 + DQ: PTQ on
# three checkpoints, a codebook x scale format x block size cross, fine-tuning with 3 seeds):
# multirun/formats-study, reports/formats-study/report.md with its section "The 4-bit formats of 2026"
# (`--sweep-dir multirun/micro-study --out reports/micro-study` adds it to the micro-study's report)
formats-study: install
	$(PY) -m qlora_lab.micro_study --formats

# Two workers, a test file each at a time (a file's fixtures stay in one process), one torch
# thread each: the suite is half waiting (imports, subprocesses, SLURM), so they overlap.
PYTEST_ARGS := -q -n 2 --dist loadfile tests
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# One prepared command that proves the GPU path on a lent GPU (10 minutes at most on an H100/H200):
# codecs bit for bit, decode speed, QLoRA training, the memory estimate, a sweep; one table and
# multirun/gpu-check/gpu_check.json. Without CUDA it runs the codecs under Triton's interpreter
# and says `skipped` for the rest.
gpu-check: install
	$(PY) benchmarks/gpu_check.py

bench: install
	$(PY) benchmarks/train_throughput.py --steps 30 --repeats 3
	$(PY) benchmarks/kernels_cpu.py
	$(PY) benchmarks/mmlu_throughput.py
	$(PY) benchmarks/sweep_overhead.py
	$(PY) benchmarks/analysis_speed.py
	$(PY) benchmarks/kinds_throughput.py --steps 30 --repeats 3

# A real one-node SLURM cluster on this machine (root; Debian's packages, no systemd; a simulated node of
# 8 GPUs and 64 CPUs), to try
# `hydra/launcher=slurm`; tests/integration starts and stops the same one.
slurm-up: install
	python3 tests/integration/slurm_cluster.py install
	python3 tests/integration/slurm_cluster.py up

slurm-down:
	python3 tests/integration/slurm_cluster.py down

clean:
	rm -rf outputs multirun wandb .pytest_cache

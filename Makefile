# Everything sets itself up: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test bench clean slurm-up slurm-down micro-study adapters-study

install: $(STAMP)

# torch first, pinned to the CPU build on this machine's disk; then the project and its deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

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

# Two workers, a test file each at a time (a file's fixtures stay in one process), one torch
# thread each: the suite is half waiting (imports, subprocesses, SLURM), so they overlap.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile tests

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

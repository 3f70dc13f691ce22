"""The rehearsal's parts that need no cluster: what a job saw, a rehearsal run's record, arrays
split at the scheduler's limits, and the launcher composing once per model, not per job."""

from __future__ import annotations

import pytest

from qlora_lab.launch.submitit_launchers import chunks, resource_key
from qlora_lab.resources_seen import seen


def test_what_a_slurm_job_saw_from_its_device_list_and_allocation():
    got = seen({"CUDA_VISIBLE_DEVICES": "2,5", "SLURM_CPUS_PER_TASK": "8", "SLURM_MEM_PER_NODE": "32768"})
    assert (got.gpus_seen, got.cpus_seen, got.cpus_from, got.gpu_ids) == (2, 8, "slurm", "2,5")
    assert got.mem_from in ("cgroup", "slurm") and (got.mem_from == "cgroup" or got.mem_gb_seen == 32.0)
    per_cpu = seen({"CUDA_VISIBLE_DEVICES": "", "SLURM_CPUS_PER_TASK": "4", "SLURM_MEM_PER_CPU": "2048"})
    assert per_cpu.gpus_seen == 0 and (per_cpu.mem_from == "cgroup" or per_cpu.mem_gb_seen == 8.0)
    bare = seen({})
    assert bare.cpus_from == "affinity" and bare.cpus_seen >= 1


@pytest.mark.parametrize("members,max_array,max_jobs,sizes", [
    (list(range(10)), 1001, 10000, [10]), (list(range(10)), 4, 10000, [4, 4, 2]),
    (list(range(2500)), 1001, 10000, [1001, 1001, 498]), (list(range(7)), 1001, 3, [3, 3, 1]),
])
def test_arrays_are_split_at_max_array_size_and_max_job_count(members, max_array, max_jobs, sizes):
    parts = chunks(members, max_array, max_jobs)
    assert [len(p) for p in parts] == sizes and sum(parts, []) == members


def test_jobs_differing_only_in_their_own_groups_share_one_composition():
    a = ["model=llama_7b", "dtype=nf4", "lora.r=8", "train.seed=0", "+sweep=lora_targets"]
    b = ["model=llama_7b", "dtype=bf16", "lora.r=64", "train.seed=4", "+sweep=lora_targets", "eval.loss=false"]
    assert resource_key(a) == resource_key(b) == ("model=llama_7b", "+sweep=lora_targets")
    assert resource_key(["model=llama_13b", "dtype=nf4"]) != resource_key(a)
    assert "model.resources.gpus=2" in resource_key(["model.resources.gpus=2", "dtype=nf4"])
    assert "+variant=qlora_nf4" in resource_key(["+variant=qlora_nf4"])  # a global group may set anything


def test_a_rehearsal_run_loads_nothing_and_checks_the_gpus(tmp_path, monkeypatch):
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from qlora_lab.config import run_config\n"
        "from qlora_lab.run import run\n"
        "from qlora_lab.sweep import CONF_DIR\n"
        "with initialize_config_dir(config_dir=str(CONF_DIR), version_base='1.3'):\n"
        "    cfg = compose(config_name='config', overrides=['model=llama_7b', 'train.rehearsal=true'])\n"
        "outcome = run(run_config(cfg), __import__('pathlib').Path(sys.argv[1]), ['model=llama_7b'])\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules}))\n")
    for gpus, status in (("0,1", "ok"), ("", "failed")):
        folder = tmp_path / f"gpus{len(gpus)}"
        env = {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": gpus, "SLURM_CPUS_PER_TASK": "8"}
        proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1] == '{"torch": false, "transformers": false}'
        record = __import__("json").loads((folder / "record.json").read_text())
        assert record["status"] == status and record["rehearsal"] is True and record["metrics"] == {}
        assert record["resources"]["gpus_seen"] == len([g for g in gpus.split(",") if g])
        assert record["resources"]["cpus_seen"] == 8 and record["memory"]["estimate"]["total_mb"] > 0
        if status == "failed":
            assert record["error"] == "got 0 GPU(s) (CUDA_VISIBLE_DEVICES=); model.resources.gpus asks for 1"

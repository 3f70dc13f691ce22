"""`make gpu-check` (benchmarks/gpu_check.py) on a machine without CUDA: the codecs part runs
under Triton's interpreter, the CUDA parts say skipped with the reason, every part is printed,
and the JSON file of results is written where it says. So the script is proven before a GPU is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytest.importorskip("triton", reason="triton is not installed: the codecs part needs it")


def test_gpu_check_runs_every_part_it_can_and_says_why_it_skips_the_rest(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: run `make gpu-check` itself (10 minutes), not this CPU check")
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for part in ("1 codecs", "2 decode speed", "3 QLoRA training", "4 memory estimate", "5 sweep on one GPU"):
        assert any(line.startswith(part) for line in lines), part
    codecs = next(line for line in lines if line.startswith("1 codecs"))
    assert " ok " in codecs and "under Triton's interpreter" in codecs and "0 mismatches" in codecs
    assert "int4_affine" in codecs  # the affine type too (the kernel once decoded it without its zero point)
    assert "nvfp4" in codecs and "hqq4" in codecs  # and the 2026 formats (HQQ: a zero point before the scale)
    for part in ("2 decode speed", "3 QLoRA training", "4 memory estimate", "5 sweep on one GPU"):
        line = next(line for line in lines if line.startswith(part))
        assert "skipped: no CUDA device" in line, line
    assert f"results: {out}" in lines
    assert lines[-1] == "5 parts: 1 ok, 0 failed, 4 skipped"
    results = json.loads(out.read_text())
    assert results["cuda"] is False and [p["name"] for p in results["parts"]][0] == "1 codecs"
    assert results["parts"][0]["figures"]["cases"] == 114 and results["parts"][0]["figures"]["mismatches"] == []

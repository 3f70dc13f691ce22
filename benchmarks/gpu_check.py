"""`make gpu-check`: one prepared command that proves the GPU path the day a GPU is lent.

Five parts, each run on its own (a failed part is recorded and the next runs), one table on the
terminal and one JSON file of everything measured:

1. codecs: for every 4-bit data type, the Triton decode bit for bit equal to the torch reference,
   and to bitsandbytes' dequantize where bitsandbytes has the type (4096^2, 11008 x 4096 and an
   odd shape on a GPU; small shapes under Triton's interpreter on a CPU);
2. decode speed: GB/s of our Triton decode and of bitsandbytes' for NF4 at 4096^2 and 8192^2,
   against the device's own copy bandwidth (targets: >= 0.85 of copy, >= 1.0x bitsandbytes);
3. QLoRA training: `tiny`, 30 steps, dtype.backend=bnb and lab: every step's loss within 0.1%,
   the paged optimizer really paged, bf16 compute, tokens/s against the plain
   transformers + peft + bitsandbytes script (target >= 1.0x);
4. the memory estimate against the GPU's peak: `micro_60m` and Pythia-1B's shape with random
   weights (nothing downloaded), the error per component (target: within 10% in total);
5. a 4-run `hydra/launcher=local` sweep on one GPU: its summary line, its wall time against the
   same runs one at a time.

Without a CUDA device, part 1 runs under Triton's interpreter and parts 2-5 say `skipped` with
the reason, so the script itself is tested before any GPU exists (tests/test_gpu_check.py).

    python benchmarks/gpu_check.py [--out multirun/gpu-check/gpu_check.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import torch  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA:  # before triton is imported anywhere: its kernels then run on the CPU, interpreted
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = "cuda" if CUDA else "cpu"
NO_CUDA = "skipped: no CUDA device on this machine"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # kernels_gpu.py, memory_estimate_gpu.py beside this file


@dataclass
class Part:
    name: str
    status: str = "ok"  # ok | failed | skipped: REASON
    seconds: float = 0.0
    summary: str = ""  # one line for the table
    figures: dict = field(default_factory=dict)  # everything measured, for the JSON file


def codecs(part: Part) -> None:
    """Triton decode == torch reference (== bitsandbytes' dequantize for nf4 / fp4), bit for bit."""
    import bitsandbytes.functional as bnbf

    from qlora_kernels import dequantize, native, quantize
    from qlora_kernels.codebooks import CODEBOOK_SPECS, codebook
    from qlora_kernels.triton_dequant import dequantize_4bit_triton

    shapes = [(4096, 4096), (11008, 4096), (1001, 333)] if CUDA else [(64, 96), (33, 65), (7,)]
    books = [name for name in CODEBOOK_SPECS if codebook(name).bits == 4 and codebook(name).signed]
    # (codebook, scale format, block size): the absmax ones on every signed 4-bit codebook, then the
    # 2026 formats (MXFP4, NVFP4, Q4_0, Q4_K, HQQ)
    cases = [(book, scale, 64) for book in books for scale in ("fp32", "dq8")] + [
        ("e2m1", "e8m0", 32), ("e2m1", "e4m3", 16), ("int4_grid", "fp16", 32), ("uint4", "q4_k", 32),
        ("uint4", "hqq", 64)]
    torch.manual_seed(0)
    checked, wrong = 0, []
    for book, scale, blocksize in cases:
        double_quant = scale == "dq8"
        for dtype in (torch.bfloat16, torch.float32):
            for shape in shapes:
                weight = torch.randn(shape, dtype=dtype, device=DEVICE) * 0.02
                state = quantize(weight, book, blocksize=blocksize, scale=scale)
                ours = dequantize_4bit_triton(state)
                with native.enabled(False):
                    ref = dequantize(state)
                case = f"{book} {scale}/{blocksize} {str(dtype)[6:]} {'x'.join(map(str, shape))}"
                if not torch.equal(ours, ref):
                    wrong.append(f"{case}: Triton != torch reference")
                if book in ("nf4", "fp4") and blocksize == 64:
                    packed, bnb_state = bnbf.quantize_4bit(weight, blocksize=64, quant_type=book,
                                                           compress_statistics=double_quant)
                    theirs = bnbf.dequantize_4bit(packed, bnb_state).reshape(shape)
                    if not torch.equal(ours, theirs):
                        wrong.append(f"{case}: Triton != bitsandbytes' dequantize")
                checked += 1
    where = "on the GPU" if CUDA else "on the CPU under Triton's interpreter (TRITON_INTERPRET=1), small shapes"
    part.figures = {"cases": checked, "mismatches": wrong, "data_types": [f"{b} {s}/{n}" for b, s, n in cases],
                    "shapes": [list(s) for s in shapes], "where": where}
    part.summary = (f"{checked} cases, {len(wrong)} mismatches ({', '.join(books)} x fp32, dq8; mxfp4, nvfp4, q4_0, "
                    f"q4_k, hqq4), {where}")
    if wrong:
        part.status = "failed"


def decode_speed(part: Part) -> None:
    if not CUDA:
        part.status = NO_CUDA
        return
    import bitsandbytes.functional as bnbf
    from triton.testing import do_bench

    from qlora_kernels import quantize
    from qlora_kernels.triton_dequant import dequantize_4bit_triton

    rows = []
    for size in (4096, 8192):
        weight = torch.randn(size, size, device="cuda", dtype=torch.bfloat16) * 0.02
        ours = quantize(weight, "nf4", blocksize=64, double_quant=True)
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
        src, dst = torch.randn_like(weight), torch.empty_like(weight)
        ours_ms = do_bench(lambda: dequantize_4bit_triton(ours), return_mode="median")
        bnb_ms = do_bench(lambda: bnbf.dequantize_4bit(packed, state), return_mode="median")
        copy_ms = do_bench(lambda: dst.copy_(src), return_mode="median")
        moved = ours.packed.numel() + ours.nested.codes.numel() + ours.nested.absmax.numel() * 4 + dst.numel() * 2
        rows.append({"size": size, "ours_gbs": moved / ours_ms / 1e6, "bnb_gbs": moved / bnb_ms / 1e6,
                     "copy_gbs": 2 * dst.numel() * 2 / copy_ms / 1e6, "ours_ms": ours_ms, "bnb_ms": bnb_ms})
        rows[-1]["of_copy"] = rows[-1]["ours_gbs"] / rows[-1]["copy_gbs"]
        rows[-1]["vs_bnb"] = bnb_ms / ours_ms
    part.figures = {"rows": rows, "targets": {"of_copy": 0.85, "vs_bnb": 1.0}}
    part.summary = "; ".join(f"{r['size']}^2: {r['ours_gbs']:.0f} GB/s = {r['of_copy']:.2f} of copy, "
                             f"{r['vs_bnb']:.2f}x bnb" for r in rows)
    if not all(r["of_copy"] >= 0.85 and r["vs_bnb"] >= 1.0 for r in rows):
        part.summary += " (below target)"


def _train(overrides: list[str], run_dir: Path) -> dict:
    """One run by the ordinary command; its record."""
    proc = subprocess.run([sys.executable, "-m", "qlora_lab.train", *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=REPO, capture_output=True, text=True)
    path = run_dir / "record.json"
    if not path.exists():
        raise RuntimeError(f"no record in {run_dir}: {proc.stderr[-1500:]}")
    record = json.loads(path.read_text())
    if record["status"] != "ok":
        raise RuntimeError(f"{run_dir.name}: {record['error']}")
    return record


def training(part: Part) -> None:
    if not CUDA:
        part.status = NO_CUDA
        return
    steps = 30
    losses, records = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("bnb", "lab"):
            run_dir = Path(tmp) / backend
            records[backend] = _train(["dtype=nf4", f"dtype.backend={backend}", f"train.max_steps={steps}",
                                       f"train.save_steps={steps}", "train.report_to=none", "eval.n_generate=0",
                                       "dtype.compute_dtype=bf16", "train.optimizer=paged_adamw_32bit"], run_dir)
            state = json.loads((run_dir / "checkpoints" / f"checkpoint-{steps}" / "trainer_state.json").read_text())
            losses[backend] = [e["loss"] for e in state["log_history"] if "loss" in e and "step" in e]
    lab_tps, plain = _throughput(steps)
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses["lab"], losses["bnb"]))
    tokens = {b: r["timing"]["tokens_per_s"] for b, r in records.items()}
    part.figures = {"losses": losses, "worst_relative_loss_gap": worst, "tokens_per_s": tokens,
                    "optimizer": {b: r["env"].get("optimizer") for b, r in records.items()},
                    "compute_dtype": {b: r["config"]["dtype"]["compute_dtype"] for b, r in records.items()}}
    paged = all((r["env"].get("optimizer") or {}).get("paged") for r in records.values())
    part.figures["throughput"] = {"qlora_lab_tokens_per_s": lab_tps, "plain_tokens_per_s": plain, "ratio": lab_tps / plain}
    part.summary = (f"loss gap {worst:.2e} (target 1e-3), paged={paged}, bf16, tokens/s qlora_lab {lab_tps:.0f} "
                    f"vs plain script {plain:.0f} ({lab_tps / plain:.2f}x, target 1.0x)")
    if worst > 1e-3 or not paged or len(losses["lab"]) != steps:
        part.status = "failed"


def _throughput(steps: int) -> tuple[float, float]:
    """tokens/s of a default qlora_lab run and of the plain transformers + peft + bitsandbytes
    script on the same examples (benchmarks/train_throughput.py's pair, once each)."""
    from train_throughput import run_lab, run_plain, training_examples

    n_train = steps * 4 * 2
    model_dir, examples = training_examples(n_train)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "examples.json").write_text(json.dumps(examples))
        lab = run_lab(work, steps, n_train, 0)
        plain = run_plain(work, model_dir, work / "examples.json", steps, 0)
    return lab["tokens_per_s"], plain["tokens_per_s"]


def memory_estimate(part: Part) -> None:
    if not CUDA:
        part.status = NO_CUDA
        return
    rows = []
    pythia_1b = ["model=tiny", "model.name=pythia_1b_shape", "model.family=gpt_neox", "model.arch.vocab_size=2048",
                 "model.arch.hidden_size=2048", "model.arch.intermediate_size=8192", "model.arch.num_layers=16",
                 "model.arch.num_heads=8", "model.pretrain.steps=0"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("micro_60m", ["model=micro_60m"]), ("pythia_1b shape", pythia_1b)):
            record = _train([*model, "dtype=nf4", "train.max_steps=5", "train.report_to=none", "eval.n_generate=0",
                             "eval.loss=false"], Path(tmp) / name.split()[0])
            measured, estimate = record["memory"]["peak_gpu_mb"], record["memory"]["estimate"]
            rows.append({"model": name, "n_params": record["model"]["n_params"], "peak_gpu_mb": measured,
                         "estimate": estimate, "error": estimate["total_mb"] / measured - 1})
    part.figures = {"rows": rows, "target_error": 0.10}
    part.summary = "; ".join(f"{r['model']}: estimate {r['estimate']['total_mb']:.0f} MB vs peak "
                             f"{r['peak_gpu_mb']:.0f} MB ({r['error']:+.1%})" for r in rows)
    if any(abs(r["error"]) > 0.10 for r in rows):
        part.status = "failed"


def sweep(part: Part) -> None:
    if not CUDA:
        part.status = NO_CUDA
        return
    args = ["-m", "dtype=nf4,fp4", "lora.targets=all,qv", "train.max_steps=30", "train.report_to=none",
            "eval.n_generate=0"]
    with tempfile.TemporaryDirectory() as tmp:
        timings = {}
        for how, extra in (("local launcher", ["hydra/launcher=local", "hydra.launcher.n_jobs=4"]),
                           ("one at a time", [])):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "qlora_lab.train", *args, *extra,
                                   f"hydra.sweep.dir={Path(tmp) / how.replace(' ', '_')}"], cwd=REPO,
                                  capture_output=True, text=True)
            timings[how] = {"wall_s": time.perf_counter() - start, "summary": proc.stdout.strip().splitlines()[-1:]}
    part.figures = timings
    ratio = timings["one at a time"]["wall_s"] / timings["local launcher"]["wall_s"]
    part.summary = (f"{timings['local launcher']['summary'][0] if timings['local launcher']['summary'] else '?'}; "
                    f"{timings['local launcher']['wall_s']:.0f} s against {timings['one at a time']['wall_s']:.0f} s "
                    f"one at a time ({ratio:.2f}x)")
    if not all(t["summary"] and t["summary"][0] == "4 runs: 4 ok, 0 failed" for t in timings.values()):
        part.status = "failed"


PARTS = (("1 codecs", codecs), ("2 decode speed", decode_speed), ("3 QLoRA training", training),
         ("4 memory estimate", memory_estimate), ("5 sweep on one GPU", sweep))


def run_part(name: str, check) -> Part:
    part = Part(name)
    start = time.perf_counter()
    try:
        check(part)
    except Exception as err:  # the next part still runs
        part.status, part.summary = "failed", f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        part.figures["traceback"] = traceback.format_exc()
    part.seconds = round(time.perf_counter() - start, 1)
    print(f"{part.name:<22} {part.status:<45} {part.seconds:>7.1f} s  {part.summary}", flush=True)
    return part


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "multirun" / "gpu-check" / "gpu_check.json")
    parser.add_argument("--parts", nargs="*", default=[name.split()[0] for name, _ in PARTS],
                        help="part numbers to run (default: all)")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if CUDA else "no CUDA device (CPU)"
    print(f"gpu-check: {device}; torch {torch.__version__}; {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"{'part':<22} {'status':<45} {'time':>9}  figures", flush=True)
    parts = [run_part(name, check) for name, check in PARTS if name.split()[0] in args.parts]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device, "torch": torch.__version__, "cuda": CUDA,
                                    "date": datetime.date.today().isoformat(),
                                    "parts": [asdict(p) for p in parts]}, indent=2, default=str) + "\n")
    failed = [p.name for p in parts if p.status == "failed"]
    print(f"results: {args.out}")
    print(f"{len(parts)} parts: {sum(p.status == 'ok' for p in parts)} ok, {len(failed)} failed, "
          f"{sum(p.status.startswith('skipped') for p in parts)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

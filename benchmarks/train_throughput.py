"""tokens/s, start-up and peak RSS of a qlora_lab run vs a plain Trainer+peft+bitsandbytes script.

Same tiny base, same tokenized examples, same settings (nf4+DQ, LoRA r64 on all linear layers,
paged AdamW, gradient checkpointing, batch 4, the compute dtype `auto` resolves to here). The two alternate, REPEATS times each, in
one invocation, which goes first alternating too (drift on the machine then hits both alike); printed:
the ratio of their medians, each pair's ratio and a 95% interval of the mean log ratio (noise or
overhead: an interval that holds 1.0 cannot tell them apart). `--profile` instead runs each once
under cProfile and prints where a step's time goes, side by side.

    python benchmarks/train_throughput.py [--steps 30] [--repeats 6] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def training_examples(n: int) -> tuple[str, list[dict]]:
    """The tiny base's folder and the first n training examples a default qlora_lab run sees."""
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.data.load import load_splits
    from qlora_lab.data.tokens import encode_pairs
    from qlora_lab.model.build import load_tokenizer, model_path
    from qlora_lab.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = run_config(compose(config_name="config"))
    path = model_path(config.model)
    tc = config.train
    pairs = load_splits(config.dataset).train[:n]
    return path, encode_pairs(pairs, load_tokenizer(path), tc.source_max_len, tc.target_max_len, tc.train_on_source)


def run_lab(work: Path, steps: int, n_train: int, index: int, profile: Path | None = None) -> dict:
    run_dir = work / f"lab{index}"
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
    subprocess.run([sys.executable, *prefix, "-m", "qlora_lab.train", f"train.max_steps={steps}", "train.report_to=none",
                    "train.save_steps=0", "eval.n_generate=0", "eval.loss=false",
                    f"dataset.max_train_samples={n_train}", f"hydra.run.dir={run_dir}"],
                   check=True, capture_output=True, text=True)
    record = json.loads((run_dir / "record.json").read_text())
    return {"tokens_per_s": record["timing"]["tokens_per_s"],
            "process_to_first_step_s": record["timing"]["process_to_first_step_s"],
            "peak_rss_mb": record["memory"]["peak_rss_mb"], "tokens": record["timing"]["tokens"]}


def run_plain(work: Path, model_dir: str, examples: Path, steps: int, index: int, profile: Path | None = None) -> dict:
    return plain_script("plain_qlora.py", model_dir, str(examples), str(work / f"plain{index}"), str(steps),
                        profile=profile)


def plain_script(script: str, *args: str, profile: Path | None = None) -> dict:
    """A baseline script's measurements (its last stdout line, JSON), at the compute dtype
    qlora_lab's `compute_dtype=auto` takes on this machine (its last argument)."""
    from qlora_lab.model.dtypes import native_compute_dtype

    prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
    out = subprocess.run([sys.executable, *prefix, str(HERE / script), *args, native_compute_dtype()],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def benchmark_args(doc: str) -> argparse.Namespace:
    """--steps and --repeats, shared by the side-by-side training benchmarks."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="one run of each under cProfile: where a step goes")
    return parser.parse_args()


# what a training step is made of, by the function that does it (file suffix, name): cumulative seconds
PHASES = {"Trainer.train": ("transformers/trainer.py", "train"),
          "training steps": ("transformers/trainer.py", "training_step"),
          "forward + loss": ("transformers/trainer.py", "compute_loss"),
          "backward": ("accelerate/accelerator.py", "backward"),
          "4-bit matmuls (bitsandbytes)": ("bitsandbytes/autograd/_functions.py", "matmul_4bit"),
          "optimizer step": ("accelerate/optimizer.py", "step"),
          "gradient clipping": ("accelerate/accelerator.py", "clip_grad_norm_"),
          "callbacks at step end": ("transformers/trainer_callback.py", "on_step_end"),
          "callbacks at log": ("transformers/trainer_callback.py", "on_log"),
          "logging, saving": ("transformers/trainer.py", "_maybe_log_save_evaluate")}


def phase_seconds(profile: Path) -> dict[str, tuple[int, float]]:
    import pstats

    stats = pstats.Stats(str(profile)).stats
    found = {}
    for label, (suffix, name) in PHASES.items():
        rows = [(calls, cumulative) for (file, _, fn), (_, calls, _, cumulative, _) in stats.items()
                if fn == name and file.endswith(suffix)]
        found[label] = max(rows, key=lambda r: r[1]) if rows else (0, 0.0)
    return found


def profile_both(work: Path, model_dir: str, examples: Path, steps: int, n_train: int) -> None:
    lab_prof, plain_prof = work / "lab.prof", work / "plain.prof"
    run_lab(work, steps, n_train, 99, profile=lab_prof)
    run_plain(work, model_dir, examples, steps, 99, profile=plain_prof)
    lab, plain = phase_seconds(lab_prof), phase_seconds(plain_prof)
    print(f"{steps} steps under cProfile, cumulative seconds\n{'phase':<32}{'calls':>7}{'qlora_lab':>11}{'plain':>9}"
          f"{'ratio':>8}")
    for label in PHASES:
        (calls, a), (_, b) = lab[label], plain[label]
        print(f"{label:<32}{calls:>7}{a:>11.2f}{b:>9.2f}{(a / b if b else float('nan')):>8.2f}")


def main() -> None:
    args = benchmark_args(__doc__)
    n_train = args.steps * 4 * 2  # more than one pass needs; both see the same first batches
    model_dir, examples = training_examples(n_train)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        examples_path = work / "examples.json"
        examples_path.write_text(json.dumps(examples))
        if args.profile:
            profile_both(work, model_dir, examples_path, args.steps, n_train)
            return
        lab, plain = [], []
        for i in range(args.repeats):  # alternate, and alternate which goes first: drift hits both alike
            runs = [lambda: lab.append(run_lab(work, args.steps, n_train, i)),
                    lambda: plain.append(run_plain(work, model_dir, examples_path, args.steps, i))]
            for run in runs if i % 2 == 0 else runs[::-1]:
                run()
            if lab[-1]["tokens"] != plain[-1]["tokens"]:
                sys.exit(f"not the same work: qlora_lab saw {lab[-1]['tokens']} tokens, plain {plain[-1]['tokens']}")
            print(f"repeat {i} ({'qlora_lab' if i % 2 == 0 else 'plain'} first): qlora_lab {lab[-1]['tokens_per_s']:.0f} "
                  f"tok/s, plain {plain[-1]['tokens_per_s']:.0f} tok/s, ratio "
                  f"{lab[-1]['tokens_per_s'] / plain[-1]['tokens_per_s']:.2f}", flush=True)
    med = lambda runs, key: statistics.median(r[key] for r in runs)
    print(f"\n{'measure':<28}{'qlora_lab':>12}{'plain':>12}{'ratio':>8}")
    for key, label in (("tokens_per_s", "tokens/s"), ("process_to_first_step_s", "start-up to first step (s)"),
                       ("peak_rss_mb", "peak RSS (MB)")):
        a, b = med(lab, key), med(plain, key)
        print(f"{label:<28}{a:>12.1f}{b:>12.1f}{a / b:>8.2f}")
    print(f"\n{args.steps} steps x {args.repeats} repeats each, medians; tokens per run: {lab[0]['tokens']}")
    if args.repeats >= 2:
        low, mean, high = ratio_interval([a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(lab, plain)])
        print(f"tokens/s ratio per pair: geometric mean {mean:.3f}, 95% interval {low:.3f} to {high:.3f} "
              f"({'holds 1.0: no difference told from noise' if low <= 1 <= high else 'excludes 1.0'})")


def ratio_interval(ratios: list[float]) -> tuple[float, float, float]:
    """(low, geometric mean, high): a t interval on the mean log ratio of the pairs."""
    import math

    from scipy.stats import t

    logs = [math.log(r) for r in ratios]
    mean = statistics.mean(logs)
    half = t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean - half), math.exp(mean), math.exp(mean + half)


if __name__ == "__main__":
    main()

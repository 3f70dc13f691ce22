"""tokens/s, start-up and peak RSS of a qlora_lab run vs a plain Trainer+peft+bitsandbytes script.

Same tiny base, same tokenized examples, same settings (nf4+DQ, LoRA r64 on all linear layers,
paged AdamW, gradient checkpointing, batch 4, the compute dtype `auto` resolves to here). The two alternate, REPEATS times each, in
one invocation, and the ratio of their medians is printed:

    python benchmarks/train_throughput.py [--steps 30] [--repeats 3]
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


def run_lab(work: Path, steps: int, n_train: int, index: int) -> dict:
    run_dir = work / f"lab{index}"
    subprocess.run([sys.executable, "-m", "qlora_lab.train", f"train.max_steps={steps}", "train.report_to=none",
                    "train.save_steps=0", "eval.n_generate=0", "eval.loss=false",
                    f"dataset.max_train_samples={n_train}", f"hydra.run.dir={run_dir}"],
                   check=True, capture_output=True, text=True)
    record = json.loads((run_dir / "record.json").read_text())
    return {"tokens_per_s": record["timing"]["tokens_per_s"],
            "process_to_first_step_s": record["timing"]["process_to_first_step_s"],
            "peak_rss_mb": record["memory"]["peak_rss_mb"], "tokens": record["timing"]["tokens"]}


def run_plain(work: Path, model_dir: str, examples: Path, steps: int, index: int) -> dict:
    return plain_script("plain_qlora.py", model_dir, str(examples), str(work / f"plain{index}"), str(steps))


def plain_script(script: str, *args: str) -> dict:
    """A baseline script's measurements (its last stdout line, JSON), at the compute dtype
    qlora_lab's `compute_dtype=auto` takes on this machine (its last argument)."""
    from qlora_lab.model.dtypes import native_compute_dtype

    out = subprocess.run([sys.executable, str(HERE / script), *args, native_compute_dtype()],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def benchmark_args(doc: str) -> argparse.Namespace:
    """--steps and --repeats, shared by the side-by-side training benchmarks."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = benchmark_args(__doc__)
    n_train = args.steps * 4 * 2  # more than one pass needs; both see the same first batches
    model_dir, examples = training_examples(n_train)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        examples_path = work / "examples.json"
        examples_path.write_text(json.dumps(examples))
        lab, plain = [], []
        for i in range(args.repeats):  # alternate, so drift on the machine hits both alike
            lab.append(run_lab(work, args.steps, n_train, i))
            plain.append(run_plain(work, model_dir, examples_path, args.steps, i))
            if lab[-1]["tokens"] != plain[-1]["tokens"]:
                sys.exit(f"not the same work: qlora_lab saw {lab[-1]['tokens']} tokens, plain {plain[-1]['tokens']}")
            print(f"repeat {i}: qlora_lab {lab[-1]['tokens_per_s']:.0f} tok/s, plain {plain[-1]['tokens_per_s']:.0f} tok/s",
                  flush=True)
    med = lambda runs, key: statistics.median(r[key] for r in runs)
    print(f"\n{'measure':<28}{'qlora_lab':>12}{'plain':>12}{'ratio':>8}")
    for key, label in (("tokens_per_s", "tokens/s"), ("process_to_first_step_s", "start-up to first step (s)"),
                       ("peak_rss_mb", "peak RSS (MB)")):
        a, b = med(lab, key), med(plain, key)
        print(f"{label:<28}{a:>12.1f}{b:>12.1f}{a / b:>8.2f}")
    print(f"\n{args.steps} steps x {args.repeats} repeats each, medians; tokens per run: {lab[0]['tokens']}")


if __name__ == "__main__":
    main()

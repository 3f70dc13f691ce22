"""tokens/s of seq2seq (tiny_t5) and classifier (tiny_roberta) QLoRA runs of qlora_lab vs a
plain Trainer+peft+bitsandbytes script of the same kind (plain_kinds.py).

Same built base, same tokenized examples, same settings (nf4+DQ, LoRA r64 on all linear
layers, the classifier's head trained in full, paged AdamW, gradient checkpointing, batch 4,
the compute dtype `auto` resolves to here). The two alternate, REPEATS times each, in one
invocation, and the ratio of their medians is printed per kind:

    python benchmarks/kinds_throughput.py [--steps 30] [--repeats 3]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from train_throughput import benchmark_args, plain_script  # the causal benchmark's helpers, beside this file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KINDS = {  # kind -> the qlora_lab overrides of its run
    "seq2seq": ["model=tiny_t5", "dataset=stdlib"],
    "classifier": ["model=tiny_roberta", "dataset=glue", "dataset.task=sst2",
                   f"dataset.path={REPO / 'tests' / 'fixtures' / 'datasets' / 'glue_sst2.jsonl'}", "dataset.n_eval=8"],
}


def training_examples(kind: str, n: int) -> tuple[str, list[dict]]:
    """The built base's folder and the first n training examples a qlora_lab run of the kind sees."""
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.data.load import load_splits
    from qlora_lab.model.build import load_tokenizer, model_path
    from qlora_lab.model.kinds import KINDS as MODEL_KINDS
    from qlora_lab.run import _classes
    from qlora_lab.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = run_config(compose(config_name="config", overrides=KINDS[kind]))
    path = model_path(config.model)
    pairs = load_splits(config.dataset).train[:n]
    encode = MODEL_KINDS[config.model.kind].encode(config.train, load_tokenizer(path), _classes(config))
    return path, encode(pairs)


def run_lab(kind: str, work: Path, steps: int, n_train: int, index: int) -> dict:
    run_dir = work / f"lab-{kind}{index}"
    subprocess.run([sys.executable, "-m", "qlora_lab.train", *KINDS[kind], f"train.max_steps={steps}",
                    "train.report_to=none", "train.save_steps=0", "eval.n_generate=0", "eval.loss=false",
                    f"dataset.max_train_samples={n_train}", "eval.batch_size=8", f"hydra.run.dir={run_dir}"],
                   check=True, capture_output=True, text=True)
    record = json.loads((run_dir / "record.json").read_text())
    return {"tokens_per_s": record["timing"]["tokens_per_s"], "tokens": record["timing"]["tokens"]}


def run_plain(kind: str, work: Path, model_dir: str, examples: Path, steps: int, index: int) -> dict:
    return plain_script("plain_kinds.py", kind, model_dir, str(examples), str(work / f"plain-{kind}{index}"),
                        str(steps))


def main() -> None:
    args = benchmark_args(__doc__)
    n_train = args.steps * 4 * 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind in KINDS:
            model_dir, examples = training_examples(kind, n_train)
            examples_path = work / f"examples-{kind}.json"
            examples_path.write_text(json.dumps(examples))
            lab, plain = [], []
            for i in range(args.repeats):  # alternate, so drift on the machine hits both alike
                lab.append(run_lab(kind, work, args.steps, n_train, i))
                plain.append(run_plain(kind, work, model_dir, examples_path, args.steps, i))
                if lab[-1]["tokens"] != plain[-1]["tokens"]:
                    sys.exit(f"{kind}: not the same work: qlora_lab saw {lab[-1]['tokens']} tokens, "
                             f"plain {plain[-1]['tokens']}")
                print(f"{kind} repeat {i}: qlora_lab {lab[-1]['tokens_per_s']:.0f} tok/s, "
                      f"plain {plain[-1]['tokens_per_s']:.0f} tok/s", flush=True)
            a = statistics.median(r["tokens_per_s"] for r in lab)
            b = statistics.median(r["tokens_per_s"] for r in plain)
            rows.append((kind, a, b, lab[0]["tokens"]))
    print(f"\n{'kind':<12}{'qlora_lab tok/s':>16}{'plain tok/s':>13}{'ratio':>8}{'tokens/run':>12}")
    for kind, a, b, tokens in rows:
        print(f"{kind:<12}{a:>16.1f}{b:>13.1f}{a / b:>8.2f}{tokens:>12}")
    print(f"\n{args.steps} steps x {args.repeats} repeats each, medians")


if __name__ == "__main__":
    main()

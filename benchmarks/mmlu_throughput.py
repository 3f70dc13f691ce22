"""MMLU examples/s on the `tiny` model (nf4 + DQ, as a run evaluates it): the batched
shared-prefix evaluation against a plain one-question-at-a-time loop, side by side:

    python benchmarks/mmlu_throughput.py [--subjects 4] [--questions 40] [--shots 5]

The questions are generated in MMLU's layout (the real set cannot be downloaded here); both
paths score the same token sequences, and the benchmark checks they pick the same answers.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def synthetic_subjects(n_subjects: int, n_questions: int, seed: int = 0) -> dict:
    from qlora_lab.evaluate.mmlu import Question

    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud".split()
    make = lambda: Question(" ".join(rng.choices(words, k=12)) + "?", tuple(" ".join(rng.choices(words, k=3))
                                                                          for _ in range(4)), rng.choice("ABCD"))
    return {f"subject_{i}": ([make() for _ in range(5)], [make() for _ in range(n_questions)])
            for i in range(n_subjects)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.evaluate import mmlu
    from qlora_lab.model.build import build_model
    from qlora_lab.model.quantize import compute_autocast
    from qlora_lab.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = run_config(compose(config_name="config"))
    built = build_model(config.model, config.dtype, config.lora, seed=0, gradient_checkpointing=False)
    model, tok = built.model.eval(), built.tokenizer
    subjects = synthetic_subjects(args.subjects, args.questions)
    ids = mmlu.choice_token_ids(tok)
    timings = {"batched shared prefix": 0.0, "one at a time": 0.0}
    same = True
    with compute_autocast(config.dtype.compute_dtype):
        for subject, (dev, questions) in subjects.items():
            prefix = tok(tok.bos_token + mmlu.prompt_parts(subject, dev, args.shots), add_special_tokens=False)["input_ids"]
            suffixes = [tok(mmlu.format_question(q, False), add_special_tokens=False)["input_ids"] for q in questions]
            start = time.perf_counter()
            batched = mmlu.choice_logits_batched(model, prefix, suffixes, ids, args.batch_size, tok.pad_token_id)
            timings["batched shared prefix"] += time.perf_counter() - start
            start = time.perf_counter()
            plain = mmlu.choice_logits_one_by_one(model, prefix, suffixes, ids)
            timings["one at a time"] += time.perf_counter() - start
            same &= bool((batched.argmax(1) == plain.argmax(1)).all())
    n = args.subjects * args.questions
    rates = {k: n / v for k, v in timings.items()}
    print(f"{n} questions, {args.shots}-shot, {torch.get_num_threads()} threads; same answers picked: {same}")
    for name, rate in rates.items():
        print(f"{name:<24}{rate:>10.1f} examples/s")
    print(f"{'speed-up':<24}{rates['batched shared prefix'] / rates['one at a time']:>10.2f}x")


if __name__ == "__main__":
    main()

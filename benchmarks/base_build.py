"""The first build of a base, recipe against recipe: seconds and held-out loss, side by side.

Builds `model=tiny` as its config says and with each `--recipe` (pretraining steps, batch, sequence
length, learning rate), each in a fresh cache, in one invocation, through the real build
(`qlora_lab.model.tiny`); reads each build's build.json and prints, against the configured recipe,
the time ratio and the held-out loss (on 32 windows of the modules the base was not pretrained
on). A recipe that costs less and reaches the same held-out loss is a cut of the first build
(issue 28, item 8).

    python benchmarks/base_build.py [--model tiny] [--recipe STEPS,BATCH,SEQ,LR ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

from analysis_speed import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def model_config(name: str):
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return run_config(compose(config_name="config", overrides=[f"model={name}"])).model


def build(model, cache: Path):
    """The build's report, made in an empty cache."""
    from qlora_lab.model.tiny import built_model_dir, read_build_report

    os.environ["QLORA_LAB_CACHE"] = str(cache)
    return read_build_report(built_model_dir(model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--recipe", action="append", help="steps,batch,seq_len,lr (repeatable; default: "
                        "half the tokens two ways, and two thirds at two learning rates)")
    args = parser.parse_args()
    configured = model_config(args.model)
    recipes = {"configured": configured}
    for text in args.recipe or ["150,8,256,3e-3", "300,4,256,3e-3", "200,8,256,3e-3", "200,8,256,1.5e-3"]:
        steps, batch, seq_len, lr = text.split(",")
        recipes[text] = dataclasses.replace(configured, pretrain=dataclasses.replace(
            configured.pretrain, steps=int(steps), batch_size=int(batch), seq_len=int(seq_len),
            learning_rate=float(lr)))
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; model={args.model}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        reports = {label: build(model, Path(tmp) / f"cache{i}") for i, (label, model) in enumerate(recipes.items())}
    base = reports["configured"]
    print(f"\n{'recipe (steps x batch x seq, lr)':<34} {'tokens':>9} {'build s':>8} {'/ configured':>12} "
          f"{'held-out loss':>14} {'- configured':>13}")
    for label, model in recipes.items():
        p, r = model.pretrain, reports[label]
        name = f"{p.steps} x {p.batch_size} x {p.seq_len}, {p.learning_rate:g}" + (" (configured)" if r is base else "")
        print(f"{name:<34} {r.pretrain_tokens:>9,} {r.total_s:>8.1f} {r.total_s / base.total_s:>12.2f} "
              f"{r.heldout_loss:>14.4f} {r.heldout_loss - base.heldout_loss:>+13.4f}")
    print(f"\nheld-out loss: mean over {base.heldout_tokens:,} tokens of modules not pretrained on; the "
          f"tokenizer took {base.tokenizer_s:.1f} s of the configured build's {base.total_s:.1f} s")


if __name__ == "__main__":
    main()

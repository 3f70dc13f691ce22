"""`python -m qlora_lab.export RUN_DIR --merge 16bit|4bit --out DIR` (`qlora-export`): a run's
trained adapter folded into its base, written as an ordinary transformers checkpoint, and what
the merge changed, measured.

- `16bit`: the run's quantized weights dequantized, the adapter merged in by peft, stored in
  bf16 (fp16 where the run computed in fp16).
- `4bit`: that merged model stored again in the run's data type, as the run's own load stores it;
  a run on a released GGUF base gets a GGUF file of the release's block type back, one on an NVFP4
  release a compressed-tensors NVFP4 folder.
  bitsandbytes' types (nf4, fp4) are written in transformers' bitsandbytes format, which
  `from_pretrained` loads as 4-bit; a type transformers cannot store (int4, nf3, ...) is written as
  its dequantized values in float32, the folder's `export.json` says which.

`DIR/export.json` holds the KL of the exported model against the unmerged quantized model +
adapter on held-out text (the run's fidelity text), position by position, and both losses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from qlora_lab.gguf_checkpoint import is_gguf

log = logging.getLogger("qlora_lab.export")

EXPORT_NAME = "export.json"
MERGES = ("16bit", "4bit")


class ExportError(ValueError):
    """A run that cannot be exported, said in one line."""


@dataclass
class ExportReport:
    """export.json: what was written and what the merge changed."""

    run_dir: str
    run_id: str
    merge: str  # 16bit | 4bit
    dtype: str  # the run's data type
    format: str  # what the folder's weights are
    kl_to_unmerged: float  # mean KL(unmerged || exported) over positions, nats
    kl_to_unmerged_ci: list[float]  # 95% interval over text windows
    kl_to_unmerged_p99: float
    top1_agree: float  # share of positions where both pick the same next token
    loss_unmerged: float  # mean next-token loss of the unmerged model on the text, nats
    loss_exported: float  # the exported model's, reloaded from the folder
    tokens: int
    seconds: float


def load_run(run_dir: Path):
    """The run's RunConfig and its built model with the trained adapter loaded."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from qlora_lab.config import ConfigError, run_config
    from qlora_lab.model.build import adapter_dir, build_model
    from qlora_lab.records import RECORD_NAME, RecordError, read_record

    try:
        record = read_record(run_dir / RECORD_NAME)
    except (OSError, ValueError, RecordError) as err:
        raise ExportError(f"{run_dir}: no readable record ({type(err).__name__})") from None
    if record.status != "ok":
        raise ExportError(f"{run_dir}: the run's status is {record.status!r}; only an ok run is exported")
    try:
        config = run_config(record.config)
    except ConfigError as err:
        raise ExportError(f"{run_dir}: {err}") from None
    if config.model.kind != "causal":
        raise ExportError(f"{run_dir}: model.kind={config.model.kind}; export measures next-token KL and needs "
                          f"a causal model")
    weights = adapter_dir(run_dir) / "adapter_model.safetensors"
    if not config.lora.enabled or not weights.exists():
        raise ExportError(f"{run_dir}: no trained LoRA adapter ({weights.relative_to(run_dir)} is missing): "
                          f"nothing to merge")
    built = build_model(config.model, config.dtype, config.lora, seed=config.train.seed, gradient_checkpointing=False)
    set_peft_model_state_dict(built.model, load_file(str(weights)))
    built.model.eval()
    return record, config, built


def export(run_dir: Path, merge: str, out: Path, tokens: int | None = None) -> ExportReport:
    """Merge, write `out` (weights, tokenizer, export.json), measure the change."""
    import torch

    from qlora_lab.data.load import load_splits
    from qlora_lab.evaluate.fidelity import fidelity_windows, reference_base
    from qlora_lab.model.merge import dequantized_into, merged_model

    if merge not in MERGES:
        raise ExportError(f"--merge {merge}: expected one of {', '.join(MERGES)}")
    start = time.perf_counter()
    record, config, built = load_run(run_dir)
    if merge == "4bit" and config.dtype.backend == "none":
        raise ExportError(f"{run_dir}: dtype={config.dtype.name} is not quantized; --merge 4bit has no data type "
                          f"to store it in (use --merge 16bit)")
    reference = reference_base(config, own=True)
    dequantized_into(reference, built.model.get_base_model())
    merged = merged_model(reference, built.model)
    out.mkdir(parents=True, exist_ok=True)
    gguf_file = None  # where the export is a GGUF file: its name in `out`
    if merge == "16bit":
        half = torch.float16 if config.dtype.compute_dtype == "fp16" else torch.bfloat16
        merged.to(half).save_pretrained(out)
        fmt = f"{str(half).removeprefix('torch.')} safetensors"
    elif config.dtype.released and is_gguf(config.model.path):  # back into the release's own format
        fmt, gguf_file = _save_gguf(merged, built.tokenizer, config, out)
    elif config.dtype.released:
        from qlora_lab.model.nvfp4_write import write_nvfp4

        write_nvfp4(merged, out)
        fmt = f"NVFP4, compressed-tensors' nvfp4-pack-quantized (as released: {config.dtype.released})"
    else:
        fmt = _save_requantized(merged, config, out)
    built.tokenizer.save_pretrained(out)
    windows = fidelity_windows(config, built.tokenizer, load_splits(config.dataset).eval, tokens)
    measured = _measure(config, built.model, _reload(out, gguf_file, config), windows)
    report = ExportReport(run_dir=str(run_dir), run_id=record.run_id, merge=merge, dtype=config.dtype.name, format=fmt,
                          seconds=round(time.perf_counter() - start, 1), **measured)
    (out / EXPORT_NAME).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def _save_requantized(merged, config, out: Path) -> str:
    """The merged model stored in the run's data type through the run's own load path."""
    from qlora_lab.model.build import load_base
    from qlora_lab.model.dtypes import DTYPES
    from qlora_lab.model.merge import dequantize_linears

    dtype = config.dtype
    if dtype.backend == "lab" and "bnb" in DTYPES[dtype.name].backends and dtype.blocksize in (None, 64) \
            and not dtype.codebook:  # our codec is bit-exact with bitsandbytes': store in its format
        dtype = dataclasses.replace(dtype, backend="bnb", blocksize=64)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.merged-") as tmp:
        merged.save_pretrained(tmp)
        stored = load_base(tmp, dtype, config.model.kind)
        if dtype.backend == "bnb":
            stored.save_pretrained(out)
            return f"bitsandbytes {config.dtype.name} (transformers' 4-bit format)"
        dequantize_linears(stored)
        stored.float().save_pretrained(out)
        return (f"{config.dtype.name} values dequantized to float32 (transformers has no format for "
                f"dtype={config.dtype.name})")


def _save_gguf(merged, tokenizer, config, out: Path) -> tuple[str, str]:
    """The merged model quantized again into the release's block type, written as a GGUF file."""
    from qlora_lab.model.gguf_write import write_gguf

    name = f"{Path(config.model.path).stem}-merged.gguf"
    write_gguf(merged, tokenizer, out / name, storage=config.dtype.name)
    return f"GGUF {config.dtype.name.upper()} (as released: {config.dtype.released})", name


def _reload(out: Path, gguf_file: str | None = None, config=None):
    """The exported folder as anyone would load it (a 4-bit one kept off bitsandbytes' AVX512-BF16
    repacking, as every qlora-lab load is: with it, this comparison measured a KL of 0.25 nats); a
    GGUF file through transformers' own reader; an NVFP4 folder through ours (transformers' needs
    compressed-tensors, which decodes it to the same values: tests/qlora_lab/model/test_released_nvfp4.py)."""
    from transformers import AutoModelForCausalLM

    from qlora_lab.model.quantize import disable_cpu_weight_repacking

    if config is not None and config.dtype.released and not gguf_file:
        from qlora_lab.model.released_nvfp4 import load_nvfp4_base

        return load_nvfp4_base(str(out), config.dtype)
    extra = {"gguf_file": gguf_file, "dtype": "float32"} if gguf_file else {"dtype": "auto"}
    model = AutoModelForCausalLM.from_pretrained(str(out), device_map="cpu", **extra)
    disable_cpu_weight_repacking(model)
    model.eval()
    return model


def _measure(config, unmerged, exported, windows: list[list[int]]) -> dict:
    """KL(unmerged || exported) and both losses on the windows, in the run's compute precision."""
    from qlora_lab.evaluate.fidelity import compare, targets, window_logprobs
    from qlora_lab.model.quantize import compute_autocast

    with compute_autocast(config.dtype.compute_dtype, "cpu"):
        before = list(window_logprobs(unmerged, windows))
        after = list(window_logprobs(exported, windows))
    fidelity = compare(before, after, targets(windows))
    loss_unmerged = math.log(fidelity.ref_ppl)
    return {"kl_to_unmerged": fidelity.kl_to_base, "kl_to_unmerged_ci": fidelity.kl_to_base_ci,
            "kl_to_unmerged_p99": fidelity.kl_to_base_p99, "top1_agree": fidelity.top1_agree,
            "loss_unmerged": loss_unmerged, "loss_exported": loss_unmerged + math.log(fidelity.ppl_ratio),
            "tokens": fidelity.fidelity_tokens}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qlora_lab.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (its record.json and adapter/)")
    parser.add_argument("--merge", required=True, choices=MERGES)
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (created)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="held-out positions scored (default: the run's eval.fidelity_tokens)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = export(args.run_dir, args.merge, args.out, args.tokens)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"exported {args.run_dir} -> {args.out} ({report.format}): KL to the unmerged model "
          f"{report.kl_to_unmerged:.3g} nats [{report.kl_to_unmerged_ci[0]:.3g}, {report.kl_to_unmerged_ci[1]:.3g}], "
          f"loss {report.loss_unmerged:.4f} -> {report.loss_exported:.4f} over {report.tokens} tokens")


if __name__ == "__main__":
    main()

"""`python -m qlora_lab.release DIR --gguf q4_k --out FILE.gguf` (or `--nvfp4 --out DIR`): a 16-bit
checkpoint folder written as a llama.cpp release, as its converter writes one (a Llama, Mistral or
Qwen2 causal LM), or as an NVFP4 release in compressed-tensors' layout, as llm-compressor's
weight-only NVFP4 scheme saves one (any causal LM); what `model.path=` then fine-tunes as
released. Q4_0 and Q8_0 blocks come from the gguf package's quantizer, Q4_K from ours (gguf has
none), NVFP4 from ours (compressed-tensors' float steps, checked against it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qlora_lab.model.gguf_write import WRITTEN_TYPES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlora_lab.release", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a transformers checkpoint folder (config.json, weights, tokenizer)")
    layout = parser.add_mutually_exclusive_group(required=True)
    layout.add_argument("--gguf", choices=WRITTEN_TYPES, help="a GGUF file, its linear layers in this block type")
    layout.add_argument("--nvfp4", action="store_true", help="a compressed-tensors NVFP4 folder")
    parser.add_argument("--out", type=Path, required=True, help="the .gguf file (--gguf) or the folder (--nvfp4) to write")
    args = parser.parse_args(argv)
    if not (args.folder / "config.json").is_file():
        print(f"error: {args.folder}: no config.json (not a transformers checkpoint folder)", file=sys.stderr)
        return 2
    if args.gguf and args.out.suffix != ".gguf":
        print(f"error: --out {args.out}: expected a .gguf file name", file=sys.stderr)
        return 2
    if args.nvfp4 and (args.out.suffix == ".gguf" or (args.out.exists() and any(args.out.iterdir()))):
        print(f"error: --out {args.out}: expected a new (or empty) folder for the NVFP4 release", file=sys.stderr)
        return 2
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32 if args.gguf else "auto")
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    try:
        if args.gguf:
            from qlora_lab.model.gguf_write import write_gguf

            write_gguf(model, tokenizer, args.out, args.gguf, name=args.folder.name)
            size, what = args.out.stat().st_size, f"GGUF {args.gguf.upper()}"
        else:
            from qlora_lab.model.nvfp4_write import write_nvfp4

            write_nvfp4(model, args.out)
            tokenizer.save_pretrained(args.out)
            size, what = (args.out / "model.safetensors").stat().st_size, "NVFP4 (compressed-tensors)"
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {args.folder.name} as {what} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m qlora_lab.release DIR --gguf q4_k --out FILE.gguf`: a 16-bit checkpoint folder (a
Llama, Mistral or Qwen2 causal LM) written as a llama.cpp release, as its converter writes one;
what `model.path=FILE.gguf` then fine-tunes as released. Q4_0 and Q8_0 blocks come from the gguf
package's quantizer, Q4_K from ours (gguf has none).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qlora_lab.model.gguf_write import WRITTEN_TYPES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlora_lab.release", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a transformers checkpoint folder (config.json, weights, tokenizer)")
    parser.add_argument("--gguf", required=True, choices=WRITTEN_TYPES, help="the block type of the linear layers")
    parser.add_argument("--out", type=Path, required=True, help="the .gguf file to write")
    args = parser.parse_args(argv)
    if not (args.folder / "config.json").is_file():
        print(f"error: {args.folder}: no config.json (not a transformers checkpoint folder)", file=sys.stderr)
        return 2
    if args.out.suffix != ".gguf":
        print(f"error: --out {args.out}: expected a .gguf file name", file=sys.stderr)
        return 2
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_lab.model.gguf_write import write_gguf

    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    try:
        write_gguf(model, tokenizer, args.out, args.gguf, name=args.folder.name)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {args.folder.name} as GGUF {args.gguf.upper()} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

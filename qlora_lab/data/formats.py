"""Registry of dataset formats: each turns one raw row into (source, target) as the paper did.

A format names the fields it needs, so a row missing one is refused with the list of fields.
Adding a format is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Format:
    fields: tuple[str, ...]  # fields every row must have
    to_pair: Callable[[dict], tuple[str, str]]  # row -> (source, target)
    optional: tuple[str, ...] = ()  # fields a row may leave out


# The Alpaca prompt exactly as the paper's code (qlora.py, ALPACA_PROMPT_DICT) wrote it.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response: "
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response: "
)


def alpaca_pair(row: dict) -> tuple[str, str]:
    template = ALPACA_WITH_INPUT if row.get("input") else ALPACA_NO_INPUT
    return template.format(instruction=row["instruction"], input=row.get("input", "")), row["output"]


STDLIB_INSTRUCTION = "Complete this function from the Python standard library module `{module}`.\n\n{prompt}\n"


def stdlib_pair(row: dict) -> tuple[str, str]:
    return STDLIB_INSTRUCTION.format(module=row["module"], prompt=row["prompt"]), row["body"] + "\n"


FORMATS: dict[str, Format] = {
    "alpaca": Format(("instruction", "output"), alpaca_pair, optional=("input",)),
    "stdlib": Format(("module", "prompt", "body"), stdlib_pair),
}

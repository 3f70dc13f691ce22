"""Registry of dataset formats: each turns one raw row into (source, target) as the paper did
(its qlora.py: alpaca, chip2, self-instruct, hh-rlhf, oasst1), or as the hub's layout of the
dataset reads (unnatural, flan_v2, longform, super_natural).

A format names the fields it needs, so a row missing one is refused with the list of fields.
Adding a format is one entry here. GLUE (a layout per task) and the standard library's
pairs (rows shipped with Python) are entries like the others.
"""

from __future__ import annotations

from typing import Callable

from qlora_lab.data.format_spec import Format
from qlora_lab.data.glue import GLUE_TASKS, glue_format


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


def chip2_pair(row: dict) -> tuple[str, str]:
    """OIG unified_chip2: one `<human>: ...\n<bot>: ...` text, split as the paper's code did."""
    text = row["text"]
    if "\n<bot>: " not in text:
        raise ValueError("text has no '\\n<bot>: ' turn")
    return text.split("\n<bot>: ")[0].replace("<human>: ", ""), text.split("\n<bot>: ")[1]


def unnatural_rows(row: dict) -> list[dict]:
    """Unnatural Instructions (core): an instruction with several instances; each is a pair."""
    instances = row.get("instances")
    if not isinstance(instances, list) or not instances:
        raise ValueError("instances is not a non-empty list")
    return [{"instruction_with_input": i.get("instruction_with_input"), "output": i.get("output")} for i in instances]


# Super-NaturalInstructions as Tk-Instruct encoded it (definition, then the example).
SNI_PROMPT = "Definition: {definition}\n\nNow complete the following example -\nInput: {inputs}\nOutput: "


def field_pair(source: str, target: str) -> Callable[[dict], tuple[str, str]]:
    """A format whose source and target are two fields as they are."""
    return lambda row: (row[source], row[target])


def whole_text(field: str) -> Callable[[dict], tuple[str, str]]:
    """Empty source, the whole text the target (hh-rlhf's chosen dialogue, OASST1's threads)."""
    return lambda row: ("", row[field])


def _stdlib_rows() -> list[dict]:
    from qlora_lab.data.stdlib import instruction_rows

    return instruction_rows()


def _per_task(row: dict) -> tuple[str, str]:
    raise ValueError("GLUE's rows are read by its task's format (dataset.task)")


FORMATS: dict[str, Format] = {
    "alpaca": Format(("instruction", "output"), alpaca_pair, optional=("input",)),
    "self_instruct": Format(("prompt", "completion"), field_pair("prompt", "completion")),
    "unnatural": Format(("instruction_with_input", "output"), field_pair("instruction_with_input", "output"),
                        explode=unnatural_rows),
    "flan_v2": Format(("inputs", "targets"), field_pair("inputs", "targets")),
    "longform": Format(("input", "output"), field_pair("input", "output")),
    "chip2": Format(("text",), chip2_pair),
    "hh_rlhf": Format(("chosen",), whole_text("chosen")),
    "oasst1": Format(("text",), whole_text("text")),
    "super_natural": Format(("definition", "inputs", "targets"),
                            lambda row: (SNI_PROMPT.format(**row), row["targets"])),
    "stdlib": Format(("module", "prompt", "body"), stdlib_pair, rows=_stdlib_rows),
    "glue": Format(("label",), _per_task, for_task=glue_format, tasks=tuple(sorted(GLUE_TASKS)), classification=True),
}

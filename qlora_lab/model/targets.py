"""LoRA target names as peft matches them; the families' names themselves are plain data in
qlora_lab.catalog (re-exported here)."""

from __future__ import annotations

from qlora_lab.catalog import LINEAR_SHAPES, MODEL_TYPES, TARGET_GROUPS, target_names  # noqa: F401


def peft_target_pattern(names: list[str]) -> str:
    """The names as one regex for peft's `target_modules` (full match on a module's dotted path):
    each name matches the end of the path, as peft's own list matching does, and a `*` stands
    for one path component (RoBERTa's `layer.*.output.dense`, apart from `attention.output.dense`)."""
    import re

    alternatives = "|".join(re.escape(name).replace(r"\*", r"[^.]+") for name in names)
    return rf"(.*\.)?({alternatives})"

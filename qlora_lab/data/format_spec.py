"""`Format`: how one dataset's rows become (source, target) pairs; the entries of the format
registry (qlora_lab.data.formats) and GLUE's per-task layouts share it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Format:
    fields: tuple[str, ...]  # fields every row must have
    to_pair: Callable[[dict], tuple[str, str]]  # row -> (source, target)
    optional: tuple[str, ...] = ()  # fields a row may leave out
    explode: Callable[[dict], list[dict]] | None = None  # one raw row -> several rows (nested data)
    rows: Callable[[], list[dict]] | None = None  # data shipped here (the stdlib set): no file or hub needed
    for_task: Callable[[str], "Format"] | None = None  # a layout per task (GLUE): `dataset.task` picks it
    tasks: tuple[str, ...] = ()  # the tasks `for_task` knows
    classification: bool = False  # targets are class labels: the data of a classifier model

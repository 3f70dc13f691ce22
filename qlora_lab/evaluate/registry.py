"""The evaluations a run can make, a registry: each evaluation module registers its name, when
it is on, its check before any model loads, its measure (inputs -> metrics) and the numbers it
records. The run is a loop over the enabled ones; the search objectives are derived from here.

Torch-free at import (config validation reads the metric names): the measures import torch
when they run.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class EvalInputs:
    """What a measure gets: the model and tokenizer, the run's config, its held-out pairs and how
    they become the model's examples, its folder, and what its pre-load check returned."""

    model: Any
    tokenizer: Any
    config: Any  # RunConfig
    eval_pairs: list
    encode: Callable[[list], list]
    run_dir: Path
    prepared: Any = None


@dataclass(frozen=True)
class Evaluation:
    name: str
    order: int  # runs in this order within its phase
    enabled: Callable[[Any], bool]  # RunConfig -> on?
    measure: Callable[[EvalInputs], dict]  # -> the record's metrics
    metrics: tuple[str, ...] = ()  # the numbers it records (a search sweeper may maximize or minimize one)
    prepare: Callable[[Any], Any] | None = None  # RunConfig -> anything; a bad input fails here, before any model
    before_training: Callable[[Any], bool] = field(default=lambda config: False)  # measure the quantized base first


EVALUATIONS: dict[str, Evaluation] = {}


def evaluation(name: str, order: int, enabled: Callable[[Any], bool], metrics: tuple[str, ...] = (),
               prepare: Callable[[Any], Any] | None = None,
               before_training: Callable[[Any], bool] | None = None) -> Callable:
    """Decorator for a measure function: registers it under `name`."""

    def register(measure: Callable[[EvalInputs], dict]) -> Callable[[EvalInputs], dict]:
        extra = {"before_training": before_training} if before_training else {}
        EVALUATIONS[name] = Evaluation(name, order, enabled, measure, metrics, prepare, **extra)
        return measure

    return register


def all_evaluations() -> list[Evaluation]:
    """Every registered evaluation, in run order (every module of this package imported once)."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name != "registry":
            importlib.import_module(f"qlora_lab.evaluate.{module.name}")
    return sorted(EVALUATIONS.values(), key=lambda e: e.order)


def enabled_evaluations(config) -> list[Evaluation]:
    return [e for e in all_evaluations() if e.enabled(config)]


def metric_names() -> tuple[str, ...]:
    return tuple(name for e in all_evaluations() for name in e.metrics)


def no_grad(fn: Callable) -> Callable:
    """torch.no_grad() as a decorator that imports torch only when the function runs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper

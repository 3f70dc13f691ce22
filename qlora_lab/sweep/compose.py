"""A sweep's grid and the composition of its runs: the command line's axes and the sweep file's
`hydra.sweeper.params`, expanded as Hydra's basic sweeper does, and composed fast (one Hydra
compose per distinct set of group choices)."""

from __future__ import annotations

import copy
from pathlib import Path


def sweep_grid(overrides: list[str], conf_dir: Path) -> list[list[str]]:
    """Every run's overrides, expanded as Hydra's basic sweeper expands them (the command
    line's axes and the sweep file's `hydra.sweeper.params`, the command line winning)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides) + sweep_file_axes(overrides, conf_dir)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [list(run) for batch in batches for run in batch]


def sweep_file_axes(overrides: list[str], conf_dir: Path) -> list:
    """The axes a sweep file (`+sweep=NAME`) declares in hydra.sweeper.params, so that its
    values are checked like the command line's (the command line's own value wins)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return file_axes_in_context(overrides, compose)


def file_axes_in_context(overrides: list[str], compose) -> list:
    """sweep_file_axes inside an initialized Hydra context (compose: its compose function)."""
    if not any(o.lstrip("+").startswith("sweep=") for o in overrides):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from qlora_lab.sweep.files import sweep_params

    try:
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except HydraException:
        return []  # the per-value checks below name the problem
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    declared = [p for p in sweep_params(cfg) if p.split("=", 1)[0].lstrip("+~") not in given]
    return OverridesParser.create().parse_overrides(declared)


class CachedComposer:
    """Hydra's compose for many runs that differ mostly in plain values: the config groups a run
    chooses are composed once, and its `key=value` overrides set on a copy (a study of 300 runs
    plans in seconds, not minutes). Anything else, or anything the fast path refuses, takes
    Hydra's full compose, so the result and the errors are Hydra's own."""

    def __init__(self, conf_dir: Path, compose) -> None:
        self._compose = compose
        self._groups = {p.name for p in conf_dir.iterdir() if p.is_dir()} | {"sweep"}
        self._cache: dict[tuple[str, ...], object] = {}

    def __call__(self, overrides: list[str]):
        from omegaconf import OmegaConf

        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
        choices = [o.input_line for o in parsed if o.key_or_group.split("/")[0] in self._groups
                   or o.key_or_group.startswith("hydra")]
        values = [o for o in parsed if o.input_line not in choices]
        if any(o.is_delete() or o.is_add() or o.is_force_add() or o.value_type is not None and
               o.is_sweep_override() for o in values):
            return self._compose(config_name="config", overrides=overrides)
        key = tuple(choices)
        if key not in self._cache:
            self._cache[key] = self._compose(config_name="config", overrides=list(choices))
        cfg = copy.deepcopy(self._cache[key])
        try:
            for override in values:
                if OmegaConf.select(cfg, override.key_or_group, default=_MISSING) is _MISSING:
                    raise KeyError(override.key_or_group)
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False)
        except Exception:  # Hydra's compose says what is wrong, in its own words
            return self._compose(config_name="config", overrides=overrides)
        return cfg


_MISSING = object()

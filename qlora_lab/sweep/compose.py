"""A sweep's grid and the composition of its runs: the command line's axes and the sweep file's
`hydra.sweeper.params`, expanded as Hydra's basic sweeper does, and composed fast (one Hydra
compose per distinct set of group choices)."""

from __future__ import annotations

import contextlib
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
        # within shared_config_files(), the composers of one process share their compositions
        self._cache: dict[tuple[str, ...], object] = _SHARED["compositions"] if _SHARED else {}

    def __call__(self, overrides: list[str]):
        from omegaconf import OmegaConf

        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
        choices = list(group_choices(overrides, self._groups))
        values = [o for o in parsed if o.input_line not in choices]
        if any(o.is_delete() or o.is_add() or o.is_force_add() or o.value_type is not None and
               o.is_sweep_override() for o in values):
            return self._compose(config_name="config", overrides=overrides)
        key = tuple(choices)
        if key not in self._cache:
            composed = OmegaConf.to_container(self._compose(config_name="config", overrides=list(choices)),
                                              resolve=False)  # plain: copies fast
            self._cache[key] = (composed, "${" in repr(composed))
        composed, interpolated = self._cache[key]
        tree = copy.deepcopy(composed)
        try:
            for override in values:
                _set_existing(tree, override.key_or_group.split("."), override.value())
        except KeyError:  # an unknown key: Hydra's compose says so, in its own words
            return self._compose(config_name="config", overrides=overrides)
        # interpolations (`${pick:...}`, `${.task}`) resolve on an OmegaConf config as on Hydra's; a
        # config without any is handed on as the plain tree; the value types are checked where a
        # run's are, by qlora_lab.config.run_config
        return OmegaConf.create(tree) if interpolated else tree


def _set_existing(tree: dict, path: list[str], value) -> None:
    """tree[a][b]... = value, where every key on the path exists (else KeyError)."""
    node = tree
    for part in path[:-1]:
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    if not isinstance(node, dict) or path[-1] not in node:
        raise KeyError(path[-1])
    node[path[-1]] = value


_MISSING = object()
_SHARED: dict = {}  # set inside shared_config_files()


@contextlib.contextmanager
def shared_config_files():
    """Hydra's compose deep-copies its config repository and reads and parses every config file
    again each time it is called: 0.1 s a compose, most of planning every study. Within this
    block one cache of the parsed files serves every compose of this process (the files do not
    change while a plan or a launch composes), and every CachedComposer shares its compositions
    (the preflight's and the plan's). A command line that moves the search path
    (`hydra.searchpath=...`) takes Hydra's own path."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_repository import CachingConfigRepository
    from hydra.core.override_parser.overrides_parser import OverridesParser

    original = ConfigLoaderImpl._parse_overrides_and_create_caching_repo
    repos: dict[tuple[int, str | None], CachingConfigRepository] = {}

    def reuse(self, config_name, overrides):
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
        if any(o.get_key_element() == "hydra.searchpath" for o in parsed):
            return original(self, config_name, overrides)
        key = (id(self.repository), config_name)
        if key not in repos:
            repo = CachingConfigRepository(self.repository)
            self._process_config_searchpath(config_name, parsed, repo)
            repos[key] = repo
        return parsed, repos[key]

    ConfigLoaderImpl._parse_overrides_and_create_caching_repo = reuse
    _SHARED["compositions"] = {}
    try:
        yield
    finally:
        ConfigLoaderImpl._parse_overrides_and_create_caching_repo = original
        _SHARED.clear()


def group_choices(overrides, groups: set[str]) -> tuple[str, ...]:
    """The overrides that choose config groups (or set hydra.*): what decides a composition's shape."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return tuple(o.input_line for o in parsed
                 if o.key_or_group.split("/")[0] in groups or o.key_or_group.startswith("hydra"))


@contextlib.contextmanager
def batch_checked_once_per_composition(conf_dir: Path):
    """Hydra's sweeper composes every job of a batch before launching it (0.1-0.5 s each: 320
    jobs, a minute), to fail early. Our preflight has by then composed and validated every value
    of every axis; within this block the sweeper composes one job per distinct set of group
    choices (a different config file could fail to compose; a different plain value could not
    where its axis passed the preflight)."""
    from hydra.plugins.sweeper import Sweeper

    original = Sweeper.validate_batch_is_legal
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()} | {"sweep"}

    def once_per_composition(self, batch):
        firsts: dict[tuple[str, ...], list[str]] = {}
        for overrides in batch:
            firsts.setdefault(group_choices(overrides, groups), list(overrides))
        return original(self, list(firsts.values()))

    Sweeper.validate_batch_is_legal = once_per_composition
    try:
        yield
    finally:
        Sweeper.validate_batch_is_legal = original

"""Check a command line's overrides before anything launches, and say what is wrong in one line.

Hydra reports a missing group option or an unknown key in several lines of its own, and in a
multirun only when it reaches that job. Here every value of every swept axis is composed and
validated up front (one composition per value, not per grid point), so a sweep with a typo
fails at once, naming the key, the value and what is allowed.
"""

from __future__ import annotations

import re
import dataclasses
from pathlib import Path

from qlora_lab.config import GROUPS, ConfigError, run_config

_UNKNOWN_KEY = re.compile(r"Could not (?:override|append to|delete from) '([^']+)'|Key '([^']+)' not in")


def check_command_line(argv: list[str], conf_dir: Path) -> str | None:
    """None when every run the command line describes composes into a valid RunConfig."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_dir or args.config_name:
        return None  # Hydra's own modes: nothing will run
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException as err:
        return f"cannot parse the overrides: {str(err).splitlines()[0]}"
    for override in parsed:
        if override.get_key_element() == "model.name":
            return (f"model.name={override.value()}: the model config's own label (model=NAME chooses a config); "
                    f"to fine-tune your own folder or hub id: model.path=FOLDER_OR_HUB_ID")
    from hydra import compose, initialize_config_dir

    from qlora_lab.sweep.compose import CachedComposer, file_axes_in_context

    # one Hydra context for every check, and one composition per distinct set of group choices
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        composer = CachedComposer(conf_dir, compose)
        file_axes = file_axes_in_context(args.overrides, compose)
        axes = []
        for override in parsed + file_axes:
            if override.is_sweep_override():
                axes.append([f"{override.get_key_element()}={v}" for v in _values(override)])
            else:
                axes.append([override.input_line])
        base = [axis[0] for axis in axes]
        candidates = [base] + [base[:i] + [value] + base[i + 1 :] for i, axis in enumerate(axes) for value in axis[1:]]
        for overrides in candidates:
            problem = _check_one(overrides, conf_dir, composer)
            if problem:
                return _with_sweep_file(problem, overrides, args.overrides, file_axes, conf_dir, composer)
        return _output_folder_problem(base, compose, args.multirun)


def _output_folder_problem(overrides: list[str], compose, multirun: bool) -> str | None:
    """A folder the launch cannot write (read-only, someone else's) is named before anything runs,
    not met as Hydra's traceback on train.log or multirun.yaml."""
    from hydra.errors import HydraException

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        folder = Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir))
    except (HydraException, ValueError, KeyError):
        return None  # composition problems were named above; nothing more to say here
    problem = unwritable(folder)
    return f"{key}={folder}: {problem}; choose another folder with {key}=DIR" if problem else None


def unwritable(folder: Path) -> str | None:
    """Why `folder` (or the nearest existing folder above it) cannot be written, or None. Tried
    for real (a temporary folder made and removed): permissions alone miss read-only mounts."""
    import tempfile

    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        Path(tempfile.mkdtemp(dir=existing, prefix=".qlora-write-check-")).rmdir()
    except OSError as err:
        return f"cannot write in {existing} ({err.strerror})"
    return None


def _with_sweep_file(problem: str, overrides: list[str], given: list[str], file_axes: list, conf_dir: Path,
                     composer) -> str:
    """A problem that the sweep file brings (its axes, its defaults, its values) names the file:
    the same run without the file composes."""
    sweep = next((o.split("=", 1)[1] for o in given if o.lstrip("+").startswith("sweep=")), None)
    if sweep is None or problem.startswith(f"sweep={sweep}:"):  # no such sweep file: nothing to name
        return problem
    from_file = {o.input_line for o in file_axes} | {f"{o.get_key_element()}={v}" for o in file_axes
                                                      if o.is_sweep_override() for v in _values(o)}
    own = [o for o in overrides if o not in from_file and not o.lstrip("+").startswith("sweep=")]
    if _check_one(own, conf_dir, composer) is None:
        return f"sweeps/{sweep}.yaml: {problem}"
    return problem


def _values(override) -> list[str]:
    """The values to check of a swept axis: all of a list, range or choice; an interval's ends."""
    from hydra.core.override_parser.types import IntervalSweep

    if isinstance(override.value(), IntervalSweep):
        interval = override.value()
        return [str(interval.start), str(interval.end)]
    try:
        return list(override.sweep_string_iterator())
    except Exception:  # a glob: Hydra expands it against the config
        return []


def _check_one(overrides: list[str], conf_dir: Path, composer) -> str | None:
    """The problem with one run's overrides (composed by `composer` in an active Hydra context)."""
    from hydra.errors import HydraException, MissingConfigException

    try:
        cfg = composer(overrides)
    except MissingConfigException as err:
        return _missing_option(err, overrides, conf_dir)
    except HydraException as err:
        return _composition_problem(err)
    try:
        run_config(cfg)
    except ConfigError as err:
        return str(err)
    return None


def _missing_option(err, overrides: list[str], conf_dir: Path) -> str:
    """`group=value` as given (a value may hold slashes: `model=/data/my-model`)."""
    missing = err.missing_cfg_file or ""
    given = [o.lstrip("+~").split("=", 1) for o in overrides if "=" in o]
    for key, value in given:
        if missing == f"{key}/{value}":
            options = err.options or sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
            hint = "; to fine-tune your own folder or hub id: model.path=" + value if key == "model" else ""
            return f"{key}={value}: expected one of {', '.join(options)}{hint}"
    return str(err).splitlines()[0]


def _composition_problem(err) -> str:
    text = str(err)
    match = _UNKNOWN_KEY.search(text)
    if match:
        key = match.group(1) or match.group(2)
        group = key.split(".")[0]
        cls = GROUPS.get(group)
        if cls is not None and "." in key:
            allowed = ", ".join(f.name for f in dataclasses.fields(cls))
            return f"{key}: unknown key; expected one of {allowed}"
        return f"{key}: unknown key; expected one of {', '.join(GROUPS)} and their fields"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[:400]

"""Everything about sweeps before and after their runs: the config folder, sweep files, the
grid and its composition, the pre-launch check, the plan, the end-of-launch summary and the
micro-study driver. Nothing here runs a model; the run (`qlora_lab.run`) imports nothing from
here."""

import math
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # Hydra's config root


def hours_to_minutes(hours: float) -> int:
    """A model's expected run time in hours -> whole minutes for a scheduler's time limit."""
    return max(1, int(math.ceil(float(hours) * 60)))


def pick(key, table, *default):
    """One value of a table keyed by another config value: a study's per-size settings, declared
    in its sweep file (`train.learning_rate: ${pick:${model.name},{llama_7b: 2e-4, llama_65b: 1e-4}}`).
    A key the table lacks takes the default, or is an error naming the key and the table's keys."""
    if key in table:
        return table[key]
    if default:
        return default[0]
    raise KeyError(f"pick: {key!r} is not in the table; it has {', '.join(map(str, table))}")


def _register_for_composing() -> None:
    """The resolvers (`${hours_to_min:...}` in the launcher configs, `${pick:...}` in sweep files)
    and each group's schema (`/schema/<group>`), registered on import: every process that
    composes (the launch, the check, the tests: CONF_DIR is here), and every job that unpickles
    `qlora_lab.train`'s task, imports this package first. Not on `import qlora_lab`: Hydra and
    OmegaConf were a third of the analysis's start-up."""
    from omegaconf import OmegaConf

    from qlora_lab.config import register_schemas

    OmegaConf.register_new_resolver("hours_to_min", hours_to_minutes, replace=True)
    OmegaConf.register_new_resolver("pick", pick, replace=True)
    register_schemas()


_register_for_composing()

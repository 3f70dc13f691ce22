"""qlora-lab: QLoRA fine-tuning studies as Hydra sweeps that leave one record per run."""

import logging
import math

from omegaconf import OmegaConf

__version__ = "0.1.0"


class _NoHubKernelsPackage(logging.Filter):
    """bitsandbytes (on AVX512-BF16 CPUs) fetches a CPU kernel from the Hugging Face hub through
    the `kernels` package at import, and warns when it cannot: the package is missing (an older
    transformers does not bring it), or the hub is offline (HF_HUB_OFFLINE=1: runs download
    nothing). bitsandbytes' own CPU path runs then; say nothing. A real failure of a kernel that
    was fetched is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.args[0] if record.args else None
        unreachable = isinstance(err, (ImportError, AttributeError)) or "offline mode" in str(err)
        return not (str(record.msg).startswith("Failed to load CPU gemm_4bit_forward") and unreachable)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoHubKernelsPackage())


def hours_to_minutes(hours: float) -> int:
    """A model's expected run time in hours -> whole minutes for a scheduler's time limit."""
    return max(1, int(math.ceil(float(hours) * 60)))


# `${hours_to_min:${model.resources.hours}}` in the launcher configs; registered on import so
# every process that composes or unpickles a launcher (the sweep's and each job's) has it.
OmegaConf.register_new_resolver("hours_to_min", hours_to_minutes, replace=True)


def pick(key, table, *default):
    """One value of a table keyed by another config value: a study's per-size settings, declared
    in its sweep file (`train.learning_rate: ${pick:${model.name},{llama_7b: 2e-4, llama_65b: 1e-4}}`).
    A key the table lacks takes the default, or is an error naming the key and the table's keys."""
    if key in table:
        return table[key]
    if default:
        return default[0]
    raise KeyError(f"pick: {key!r} is not in the table; it has {', '.join(map(str, table))}")


OmegaConf.register_new_resolver("pick", pick, replace=True)


def _register_schemas() -> None:
    """Every process that composes a config (the launch's, a local worker, a cluster job that
    unpickles its launcher) imports this package first."""
    from qlora_lab.config import register_schemas

    register_schemas()


_register_schemas()

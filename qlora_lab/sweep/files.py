"""Sweep files (`sweeps/NAME.yaml`) as Hydra's `sweep` config group: `-m +sweep=NAME`.

Each file is a `# @package _global_` config with `hydra.sweeper.params`: one question of the
study, declared, with no Python computing its grid. They live at the top of the repository (the
design card's `sweeps/`), so they are registered into Hydra's ConfigStore at start-up.
"""

from __future__ import annotations

from pathlib import Path

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


def register_sweep_files(folder: Path = SWEEPS_DIR) -> list[str]:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    names = []
    for path in sorted(folder.glob("*.yaml")):
        store.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")
        names.append(path.stem)
    return names


def sweep_params(cfg) -> list[str]:
    """A composed config's `hydra.sweeper.params` as override strings (`dtype=nf4,fp4`)."""
    params = cfg.get("hydra", {}).get("sweeper", {}).get("params") or {}
    return [f"{key}={value}" for key, value in params.items()]


LOCAL_SWEEPS = ("smoke", "micro", "adapters", "adapters_init")  # sweeps that run here, beside the paper's studies


def paper_studies(folder: Path = SWEEPS_DIR) -> list[str]:
    """The sweep files of the paper's studies: every file but the local ones (and `micro_*`)."""
    return [p.stem for p in sorted(folder.glob("*.yaml"))
            if p.stem not in LOCAL_SWEEPS and not p.stem.startswith("micro")]

"""Rows from a local file, the hub or the stdlib -> checked (source, target) pairs, split."""

from __future__ import annotations

import hashlib
import json
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qlora_lab.config import DatasetConfig
from qlora_lab.data.formats import FORMATS
from qlora_lab.data.rows import DataError, read_json_rows, read_text_file


@dataclass
class Splits:
    """The pairs a run trains and evaluates on, and what identifies the data they came from."""

    train: list[tuple[str, str]]
    eval: list[tuple[str, str]]
    fingerprint: str  # sha256 of the file (or rows) / hub id + datasets' fingerprint
    eval_split: str = "seeded"  # seeded (n_eval rows split off by split_seed), or the dataset's own split


def load_splits(cfg: DatasetConfig) -> Splits:
    """Train and eval pairs: the dataset's own eval split where it has one (as the paper's code
    did), else n_eval rows split off by split_seed (the paper: 1024, seed 42)."""
    rows, fingerprint, own_eval = _raw_rows(cfg)
    if not rows:
        raise DataError(f"dataset={cfg.name}: {cfg.path or cfg.hub_id or cfg.format} holds no rows")
    pairs = _pairs(cfg, rows)
    if own_eval is not None:
        name, eval_rows = own_eval
        return Splits(train=pairs[: cfg.max_train_samples], eval=_pairs(cfg, eval_rows)[: cfg.max_eval_samples],
                      fingerprint=fingerprint, eval_split=name)
    if len(pairs) < 2:
        raise DataError(f"dataset={cfg.name}: {cfg.path or cfg.hub_id or cfg.format} holds {len(pairs)} example; "
                        f"a run needs at least 2 (one to train on, one to evaluate)")
    n_eval = auto_n_eval(len(pairs)) if cfg.n_eval is None else cfg.n_eval
    if len(pairs) <= n_eval:
        raise DataError(f"dataset.n_eval={n_eval} leaves no training rows: dataset={cfg.name} has {len(pairs)}; "
                        f"use dataset.n_eval={auto_n_eval(len(pairs))} (at most {len(pairs) - 1}), "
                        f"or null for a tenth of the rows")
    order = list(range(len(pairs)))
    random.Random(cfg.split_seed).shuffle(order)
    eval_pairs = [pairs[i] for i in order[:n_eval]][: cfg.max_eval_samples]
    train_pairs = [pairs[i] for i in sorted(order[n_eval:])][: cfg.max_train_samples]
    return Splits(train=train_pairs, eval=eval_pairs, fingerprint=fingerprint)


PAPER_N_EVAL = 1024  # the paper's held-out split of every instruction dataset (seed 42)


def auto_n_eval(n_rows: int) -> int:
    """`dataset.n_eval=null`: the paper's 1024 where the data is large, a tenth of a small file,
    at least one row; so a researcher's 40-row file trains without a flag."""
    return max(1, min(PAPER_N_EVAL, n_rows // 10))


def row_format(cfg: DatasetConfig):
    """The dataset's row -> pair function; GLUE's depends on the task."""
    fmt = FORMATS[cfg.format]
    return fmt.for_task(cfg.task) if fmt.for_task else fmt


def _pairs(cfg: DatasetConfig, rows: list[dict]) -> list[tuple[str, str]]:
    fmt = row_format(cfg)
    pairs = []
    for index, raw in enumerate(rows):
        for row in _exploded(fmt, raw, cfg, index):
            missing = [f for f in fmt.fields if row.get(f) is None]
            if missing:
                raise DataError(f"dataset={cfg.name}: row {index + 1} lacks {', '.join(missing)}; "
                                f"expected fields: {_field_list(fmt)}")
            try:
                pairs.append(fmt.to_pair(row))
            except ValueError as err:
                raise DataError(f"dataset={cfg.name}: row {index + 1}: {err}") from None
    return pairs


def _exploded(fmt, raw: dict, cfg: DatasetConfig, index: int) -> list[dict]:
    if fmt.explode is None:
        return [raw]
    try:
        return fmt.explode(raw)
    except (ValueError, AttributeError) as err:
        raise DataError(f"dataset={cfg.name}: row {index + 1}: {err}") from None


def _field_list(fmt) -> str:
    return ", ".join(list(fmt.fields) + [f"{name} (optional)" for name in fmt.optional])


EVAL_SPLITS = ("eval", "validation", "validation_matched", "test")  # a dataset's own eval split, first found


def _raw_rows(cfg: DatasetConfig) -> tuple[list[dict], str, tuple[str, list[dict]] | None]:
    """(train rows, fingerprint, (name, rows) of the dataset's own eval split or None)."""
    if cfg.path is not None:
        path = Path(cfg.path)
        digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        if path.suffix in (".csv", ".parquet"):
            import datasets

            if path.suffix == ".csv":
                read_text_file(path)  # a binary file named .csv: one line naming it, not pyarrow's error

            table = datasets.load_dataset(path.suffix[1:], data_files=str(path), split="train")
            return list(table), digest, None
        return read_json_rows(path), digest, None
    builtin = FORMATS[cfg.format].rows
    if builtin is not None:
        rows = builtin()
        digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
        return rows, "sha256:" + digest, None
    hub = _load_hub_dataset(cfg)
    own = next((name for name in EVAL_SPLITS if name in hub), None)
    return (list(hub["train"]), f"{cfg.hub_id}@{hub['train']._fingerprint}",
            (own, list(hub[own])) if own else None)


HUB_PROBE_TIMEOUT_S = 3.0  # one quick look before datasets' own retries (about 25 s when unreachable)


def _load_hub_dataset(cfg: DatasetConfig):
    """datasets.load_dataset of the hub id (or a local dataset folder named as hub_id); from the
    local cache alone when the hub cannot be reached. Any failure is one line that names the
    hub id and the way round it: a local file."""
    import datasets

    online = Path(cfg.hub_id).is_dir() or _hub_reachable()
    try:
        with _hub_offline(not online):
            return datasets.load_dataset(cfg.hub_id, cfg.hub_config, data_files=cfg.hub_files)
    except Exception as err:
        where = "" if online else " (the hub is not reachable from here, and the dataset is not in the local cache)"
        raise DataError(f"dataset={cfg.name}: could not load the hub dataset {cfg.hub_id}{where}: "
                        f"{type(err).__name__}; give a local copy with dataset.path=FILE") from None


def _hub_reachable() -> bool:
    """False offline (HF_HUB_OFFLINE) or when the hub's endpoint does not answer in a few seconds."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False
    return True


@contextmanager
def _hub_offline(offline: bool):
    """datasets and huggingface_hub in offline mode for one call: only their local caches."""
    import datasets
    from huggingface_hub import constants

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    if offline:
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved

"""The paper's tables, a registry: each module registers one function `runs, judgments ->
Table | None` (None: the runs give it no support). Adding a table is one small file."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from qlora_analysis.latex import latex_table


@dataclass
class Table:
    """One table: what it shows, its cells, and how many runs and seeds stand behind each."""

    name: str  # file stem: NAME.md, NAME.csv, NAME.tex
    title: str  # e.g. "Table 4: MMLU by data type x dataset x model size"
    frame: pd.DataFrame  # cells as shown ("mean ± sd")
    support: pd.DataFrame  # the same cells: "runs/seeds"
    numbers: pd.DataFrame  # long form: one row per cell with mean, sd, runs, seeds (the CSV)
    note: str = ""  # what the cells are, in one line
    silent: str | None = None  # why the table has nothing to say (every cell 0, every verdict a tie), if so
    _shown: tuple | None = field(default=None, init=False, repr=False, compare=False)  # markdown(), made once

    def markdown(self) -> str:
        """The table as the report shows it (made once: a report writes it twice, its file and report.md)."""
        why = f"**Nothing to tell apart here:** {self.silent}.\n\n" if self.silent else ""
        key = (self.title, why, self.note, id(self.frame), id(self.support))
        if self._shown is None or self._shown[0] != key:
            support = _markdown(readable(self.support)) if not self.support.empty else ""
            self._shown = (key, f"### {self.title}\n\n{why}{self.note}\n\n{_markdown(readable(self.frame))}\n\n"
                                + (f"Runs/seeds behind each cell:\n\n{support}\n" if support else ""))
        return self._shown[1]

    def write(self, out_dir: Path) -> list[Path]:
        """NAME.md, NAME.csv (long form numbers), NAME.tex."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{self.name}.{ext}" for ext in ("md", "csv", "tex")]
        paths[0].write_text(self.markdown(), encoding="utf-8")
        self.numbers.to_csv(paths[1], index=False)
        paths[2].write_text(latex_table(readable(self.frame), self.title, f"tab:{self.name}"), encoding="utf-8")
        return paths


def _markdown(frame: pd.DataFrame) -> str:
    """tabulate's pipe table of the frame's cells as Python objects: tabulate reads the frame's
    values, which pandas makes from Arrow-backed text one cell at a time (a quarter of the time)."""
    return frame.astype(object).to_markdown()


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """Row and column labels as a person reads them: `NF4+DQ · all · r64`, never a Python tuple."""
    frame = frame.copy()
    for axis in ("index", "columns"):
        labels = getattr(frame, axis)
        if isinstance(labels, pd.MultiIndex):
            names = list(labels.names)
            flat = [" · ".join(_level_value(name, v) for name, v in zip(names, values)) for values in labels]
            setattr(frame, axis, pd.Index(flat, name=" · ".join(n for n in names if n) or None))
    return frame


def _level_value(name: str | None, value) -> str:
    return f"r{value}" if name == "lora.r" else str(value)


TableFn = Callable[[pd.DataFrame, pd.DataFrame], "Table | None"]
TABLES: dict[str, TableFn] = {}


def table(name: str) -> Callable[[TableFn], TableFn]:
    def register(fn: TableFn) -> TableFn:
        TABLES[name] = fn
        return fn
    return register


# A report opens with the table that answers its sweep's own question (the grid of a two-axis
# sweep, which only one sweep folder gets), then the verdict on the paper's claims.
FIRST = ("sweep_grid", "claims")


def all_tables(runs: pd.DataFrame, judgments: pd.DataFrame) -> list[Table]:
    """Every registered table the runs support: FIRST first, then in registration order; the
    tables that have nothing to tell apart last, each saying why."""
    _load()
    order = [name for name in FIRST if name in TABLES] + [name for name in TABLES if name not in FIRST]
    made = [t for t in (TABLES[name](runs, judgments) for name in order) if t is not None]
    for t in made:
        t.silent = t.silent or nothing_to_say(t)
    return [t for t in made if not t.silent] + [t for t in made if t.silent]


# where a table's numbers keep the value each cell shows: a summary's mean, an Elo rating, or a
# per-run metric (Figure 2's RougeL per seed)
VALUE_COLUMNS = ("mean", "elo", "rougeL", "mmlu_acc", "accuracy", "zero_shot_mean", "eval_loss", "ppl")


def nothing_to_say(t: Table) -> str | None:
    """Why a table's numbers tell nothing apart: every cell 0 (RougeL after a few steps), or
    every Elo rating the initial 1000 (every verdict a tie)."""
    numbers = t.numbers
    value = next((c for c in VALUE_COLUMNS if c in numbers), None)
    if value is None or numbers.empty:
        return None
    values = pd.to_numeric(numbers[value], errors="coerce").dropna()
    if values.empty or len(values) < 2:
        return None
    if value == "elo" and (values.round(6) == 1000).all():
        return "every rating is the initial 1000: every judged pair was a tie"
    if (values == 0).all():
        return "every cell is 0 (the runs produced nothing this measure counts, e.g. RougeL after a few steps)"
    return None


def _load() -> None:
    for module in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])):
        if not module.startswith("_"):
            importlib.import_module(f"{__name__}.{module}")


def summarize(runs: pd.DataFrame, index: list[str], columns: list[str], metric: str, digits: int = 3) -> Table | None:
    """Mean and spread (sd over seeds) of `metric` per (index, columns) cell; None when no
    run has the metric. Cells show "mean ± sd" (sd only where there are several runs)."""
    have = runs.dropna(subset=[metric]) if metric in runs else runs.iloc[0:0]
    if have.empty:
        return None
    keys = index + columns
    have = have.assign(**{k: have[k].astype(str) for k in keys})
    grouped = have.groupby(keys, sort=True)
    numbers = grouped.agg(mean=(metric, "mean"), sd=(metric, "std"), runs=(metric, "size"),
                          seeds=("train.seed", "nunique")).reset_index()
    numbers["cell"] = [f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if n > 1 else "")
                       for m, s, n in zip(numbers["mean"], numbers["sd"], numbers["runs"])]
    numbers["support"] = [f"{r}/{s}" for r, s in zip(numbers["runs"], numbers["seeds"])]
    frame = numbers.pivot_table(index=index, columns=columns, values="cell", aggfunc="first") if columns else \
        numbers.set_index(index)[["cell"]].rename(columns={"cell": metric})
    support = numbers.pivot_table(index=index, columns=columns, values="support", aggfunc="first") if columns else \
        numbers.set_index(index)[["support"]]
    return Table(name="", title="", frame=frame, support=support, numbers=numbers.drop(columns=["cell", "support"]))

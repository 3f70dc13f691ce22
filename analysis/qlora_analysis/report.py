"""`python -m qlora_analysis DIR... --out REPORT_DIR`: every table the runs support, the
plots, and the runs left out with the reason."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qlora_analysis.collect import ASIDE_MIN, collect, left_out, read_judgments, scan, version_mix
from qlora_analysis.plots import elo_intervals, plots_of_runs, with_elo  # matplotlib: on the first figure
from qlora_analysis.tables import Table, all_tables


@dataclass
class Report:
    """What a report holds, for a notebook to show and the CLI to write."""

    runs: pd.DataFrame
    left_out: pd.DataFrame
    judgments: pd.DataFrame
    tables: list[Table] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


def build_report(dirs: list[str | Path], out: Path, strict: bool = False, rehearsal: bool = False) -> Report:
    """Collect, tables and report in this process; the figures (matplotlib's import included) in
    worker processes beside it, where the platform forks: on two cores the figures cost no wall
    time of their own (10,000 runs: 2.5 s of drawing)."""
    with _aside() as workers:
        scanned = scan(*dirs)
        reader = workers
        if rehearsal or isinstance(workers, _InProcess):
            pass  # a rehearsal's records hold no metric, so no figure; in process: imported on the first figure
        elif len(scanned.records) < ASIDE_MIN:
            workers.submit(_import_for_figures)  # a head start for the figures
        else:  # the worker's third of the records first (this process waits for them), then the import
            reader = _ThenImport(workers)
        runs = collect(*dirs, strict=strict, rehearsal=rehearsal, scanned=scanned, aside=reader)
        judgments = read_judgments(*dirs, scanned=scanned)
        of_runs = workers.submit(plots_of_runs, runs, out / "plots")
        tables = all_tables(runs, judgments)
        elo = next((t.numbers for t in tables if t.name == "elo"), None)
        of_elo = workers.submit(elo_intervals, elo, out / "plots")
        report = Report(runs, left_out(runs), judgments, tables)
        write_tables(report, out)
        write_runs_csv(runs, dirs, out)  # while the worker still draws (written after the wait, it came last)
        report.plots = with_elo(of_runs.result(), of_elo.result())
    write_report(report, dirs, out, tables_written=True, runs_written=True)
    return report


def _import_for_figures() -> None:
    """What a worker's figures import, done while this process still builds the frame; submitted
    after the worker's third of the records, so this process never waits on it for them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


class _ThenImport:
    """The worker pool as `collect` sees it: its task (the last third of the records), then the
    figures' imports as a task of their own, so the records come back before the imports start
    (one task for both kept this process waiting on matplotlib's import: 10,000 records, 0.3 s)."""

    def __init__(self, workers):
        self.workers = workers

    def submit(self, fn, *args):
        future = self.workers.submit(fn, *args)
        self.workers.submit(_import_for_figures)
        return future


class _InProcess:
    """concurrent.futures' interface, run at once in this process (no fork, or one core)."""

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _aside():
    """Two forked workers for the figures; in process where fork is missing or one core is all."""
    if "fork" not in multiprocessing.get_all_start_methods() or (os.cpu_count() or 1) < 2:
        return _InProcess()
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))


def judgment_counts(judgments: pd.DataFrame) -> str:
    """Verdicts and failures apart: "48 judgments" hid that none of them had a verdict."""
    if judgments.empty:
        return "no judgments"
    failed = int(judgments["winner"].isna().sum())
    return f"{len(judgments) - failed} judge verdicts, {failed} pairs that could not be judged"


def missing_elo_reason(judgments: pd.DataFrame) -> str:
    """Why judgments exist but no Elo table does: the most common reason of the failed ones."""
    failed = judgments[judgments["winner"].isna()]
    reasons = failed["reason"].dropna() if "reason" in failed else pd.Series(dtype=str)
    common = reasons.value_counts().index[0] if not reasons.empty else "no reason given"
    return f"none of the {len(judgments)} judgments has a verdict (most common reason: {common})"


def _shown_dirs(dirs: list) -> list[str]:
    """Sweep folders as given, relative to the working folder where they lie under it: a report
    holds no absolute path of the machine it was made on."""
    shown = []
    for folder in map(Path, dirs):
        try:
            shown.append(str(folder.resolve().relative_to(Path.cwd().resolve())))
        except ValueError:
            shown.append(folder.name if folder.is_absolute() else str(folder))
    return shown


def shown_run_dirs(run_dirs: pd.Series, dirs: list) -> pd.Series:
    """Run folders as paths under the sweep folder each was found in, as that folder is shown:
    each sweep folder resolved once, then string operations on the whole column (resolving
    10,000 paths one at a time took 7 s); a folder under none of them is shown by its name."""
    run_dirs = run_dirs.astype(str)
    shown = pd.Series(run_dirs.str.rsplit(os.sep, n=1).str[-1].to_numpy(), index=run_dirs.index, dtype=object)
    placed = pd.Series(False, index=run_dirs.index)
    for folder, as_shown in zip(map(Path, dirs), _shown_dirs(dirs)):
        for prefix in dict.fromkeys((str(folder), str(folder.resolve()))):
            inside = ~placed & run_dirs.str.startswith(prefix + os.sep)
            shown[inside] = as_shown + os.sep + run_dirs[inside].str.slice(len(prefix) + 1)
            same = ~placed & ~inside & (run_dirs == prefix)
            shown[same] = as_shown
            placed |= inside | same
    return shown


def shown_in_text(texts: pd.Series, dirs: list) -> pd.Series:
    """Folders named inside reasons (`duplicate of <folder>`) as the report shows folders: no
    absolute path of this machine."""
    for folder, as_shown in zip(map(Path, dirs), _shown_dirs(dirs)):
        for prefix in {str(folder.resolve()), str(folder)}:
            if os.path.isabs(prefix):  # a relative folder is already shown as given
                texts = texts.str.replace(prefix + os.sep, as_shown + os.sep, regex=False)
    return texts


PATH_KEYS = (".path", "_reference", "prompts", "include_path", "judged_as")  # values that may name files here


def shown_paths(texts: pd.Series, dirs: list) -> pd.Series:
    """Paths in config values as the report shows folders, and the home folder as `~`: a release
    under the sweep folder, the built base in the cache, never this machine's absolute path."""
    return shown_in_text(texts, dirs).str.replace(str(Path.home()) + os.sep, "~" + os.sep, regex=False)


def shown_run_dir(run_dir: str, dirs: list) -> str:
    """One run folder as `shown_run_dirs` shows it."""
    return shown_run_dirs(pd.Series([run_dir]), dirs).iloc[0]


def write_tables(report: Report, out: Path) -> None:
    for t in report.tables:
        t.write(out / "tables")


def write_runs_csv(runs: pd.DataFrame, dirs: list, out: Path) -> Path | None:
    """runs.csv, one row per counted run, its folders and file paths as the report shows them
    (not this machine's paths); None where no run is counted."""
    if runs.empty:
        return None
    out.mkdir(parents=True, exist_ok=True)
    shown = runs.assign(run_dir=shown_run_dirs(runs["run_dir"], dirs))
    for column in [c for c in shown.columns if c.endswith(PATH_KEYS)]:  # config values naming files
        have = shown[column].notna()
        if have.any():
            shown.loc[have, column] = shown_paths(shown.loc[have, column].astype(str), dirs)
    shown.to_csv(out / "runs.csv", index=False)
    return out / "runs.csv"


def write_report(report: Report, dirs: list, out: Path, tables_written: bool = False,
                 runs_written: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if not tables_written:
        write_tables(report, out)
    lines = ["# Sweep report", "", f"From {', '.join(_shown_dirs(dirs))}: {len(report.runs)} runs counted, "
             f"{len(report.left_out)} left out; {judgment_counts(report.judgments)}.", ""]
    mixed = version_mix(report.runs)
    if mixed:
        lines += ["**These runs were made with different versions**, so a difference between them may come from "
                  "the code rather than the config:", ""] + [f"- {line}" for line in mixed] + [""]
    if not report.tables:
        lines += ["No table of the paper is supported by these runs.", ""]
    if not report.judgments.empty and not any(t.name == "elo" for t in report.tables):
        lines += [f"No Elo table: {missing_elo_reason(report.judgments)}.", ""]
    for t in report.tables:
        lines += [t.markdown(), f"Files: tables/{t.name}.md, tables/{t.name}.csv, tables/{t.name}.tex", ""]
    if report.plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in report.plots] + [""]
    lines += ["## Runs left out", ""]
    if report.left_out.empty:
        lines.append("None: every record found is counted.")
    else:
        left = report.left_out
        lines += ("- `" + shown_run_dirs(left["run_dir"], dirs) + "`: " + shown_in_text(left["reason"].astype(str), dirs)).tolist()
    if not report.runs.empty:
        if not runs_written:
            write_runs_csv(report.runs, dirs, out)
        lines += ["", "Every counted run, one row each: runs.csv"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

"""`python -m qlora_analysis DIR... --out REPORT_DIR`: every table the runs support, the
plots, and the runs left out with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qlora_analysis.collect import collect, left_out, read_judgments
from qlora_analysis.plots import all_plots
from qlora_analysis.tables import Table, all_tables


@dataclass
class Report:
    """What a report holds, for a notebook to show and the CLI to write."""

    runs: pd.DataFrame
    left_out: pd.DataFrame
    judgments: pd.DataFrame
    tables: list[Table] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


def build_report(dirs: list[str | Path], out: Path) -> Report:
    runs = collect(*dirs)
    judgments = read_judgments(*dirs)
    tables = all_tables(runs, judgments)
    elo = next((t.numbers for t in tables if t.name == "elo"), None)
    report = Report(runs, left_out(runs), judgments, tables, all_plots(runs, elo, out / "plots"))
    write_report(report, dirs, out)
    return report


def write_report(report: Report, dirs: list, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for t in report.tables:
        t.write(out / "tables")
    lines = ["# Sweep report", "", f"From {', '.join(map(str, dirs))}: {len(report.runs)} runs counted, "
             f"{len(report.left_out)} left out, {len(report.judgments)} judgments.", ""]
    if not report.tables:
        lines += ["No table of the paper is supported by these runs.", ""]
    for t in report.tables:
        lines += [t.markdown(), f"Files: tables/{t.name}.md, tables/{t.name}.csv, tables/{t.name}.tex", ""]
    if report.plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in report.plots] + [""]
    lines += ["## Runs left out", ""]
    if report.left_out.empty:
        lines.append("None: every record found is counted.")
    else:
        lines += [f"- `{row.run_dir}`: {row.reason}" for row in report.left_out.itertuples()]
    if not report.runs.empty:
        report.runs.to_csv(out / "runs.csv", index=False)
        lines += ["", "Every counted run, one row each: runs.csv"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

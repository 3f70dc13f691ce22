"""`python -m qlora_lab.micro_study` (`make micro-study`): the whole micro-study, offline.

Builds (or reuses) the `micro` base and its pretraining checkpoints, runs the sweeps on the local
launcher into one folder (`finetune/`: sweeps/micro.yaml; `ptq/`: sweeps/micro_ptq.yaml, every
data type on every checkpoint, eval-only; `blocksize/`: sweeps/micro_blocksize.yaml; `released_init/`
and `released/`: the base's own GGUF and NVFP4 releases, made into `releases/`, against NF4+DQ,
sweeps/micro_released*.yaml), judges the fine-tuned runs' answers with the offline reference judge,
and writes the report with `qlora_analysis` over all of them, timing each phase; the time split is
appended to the report. Each phase is the project's own command, run as a user would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True, cwd=REPO, env=os.environ.copy())


def build_base(overrides: list[str] = ()) -> Path:
    """The sweeps' base (`micro`, or the `model=` among the overrides) with its checkpoints."""
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.model.tiny import built_model_dir
    from qlora_lab.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        chosen = [o for o in overrides if o.startswith("model=")] or ["model=micro"]
        config = run_config(compose(config_name="config", overrides=chosen))
    return built_model_dir(config.model)


RELEASED_SWEEPS = {"released_init": "micro_released_init", "released": "micro_released"}
SWEEPS = {"finetune": "micro", "ptq": "micro_ptq", "blocksize": "micro_blocksize",
          **RELEASED_SWEEPS}  # folder -> sweep file
# the studies run on their own into the same folder and report: `--adapters` (`make adapters-study`),
# the adapter variants; `--formats` (`make formats-study`), the 4-bit formats of 2026; `--released`,
# the released-weights sweeps alone (part of the micro-study's own run)
ADAPTER_SWEEPS = {"adapters_init": "adapters_init", "adapters": "adapters"}
FORMAT_SWEEPS = {"formats_ptq": "micro_formats", "formats_cross": "micro_formats_cross",
                 "formats_ft": "micro_formats_ft"}
STUDIES = {"adapters": ADAPTER_SWEEPS, "formats": FORMAT_SWEEPS, "released": RELEASED_SWEEPS}
RELEASES = "releases"  # the sweep folder's subfolder of the base's own releases


def make_releases(base: Path, sweep_dir: Path, name: str = "micro") -> list[str]:
    """The base's GGUF Q4_K file and NVFP4 folder, made by `python -m qlora_lab.release`, and the
    overrides that sweep the released sweeps over them and the original (NF4+DQ, quantized here)."""
    out = sweep_dir / RELEASES
    gguf, nvfp4 = out / f"{name}-q4_k.gguf", out / f"{name}-nvfp4"
    shutil.rmtree(nvfp4, ignore_errors=True)
    _run("-m", "qlora_lab.release", str(base), "--gguf", "q4_k", "--out", str(gguf))
    _run("-m", "qlora_lab.release", str(base), "--nvfp4", "--out", str(nvfp4))
    return [f"model.path=null,{gguf},{nvfp4}", f"eval.fidelity_reference={base}"]


def sweep_args(folder: str, releases: list[str] | None) -> list[str]:
    return (releases or []) if folder in RELEASED_SWEEPS else []


def run_times(sweep_dir: Path) -> dict[str, float]:
    """Seconds the runs spent training and evaluating, summed over runs (they overlap in time)."""
    records = [json.loads(p.read_text()) for p in sweep_dir.glob("*/*/record.json")]
    total = lambda key: round(sum(r.get("timing", {}).get(key) or 0.0 for r in records), 1)
    return {"runs": len(records), "ok": sum(r["status"] == "ok" for r in records),
            "train_s_summed": total("train_s"), "eval_s_summed": total("eval_s"), "load_s_summed": total("load_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-dir", type=Path, help="default: multirun/micro-study (--formats: multirun/formats-study, "
                                                       "--released: multirun/released-study)")
    parser.add_argument("--out", type=Path, help="default: reports/micro-study (--formats: reports/formats-study, "
                                                 "--released: reports/released-study)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the report from the sweep folder and the timing of the run that made it")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every sweep (e.g. train.seed=0)")
    parser.add_argument("--adapters", action="store_true",
                        help="run the adapter study (sweeps/adapters_init.yaml, sweeps/adapters.yaml) into the same "
                             "folder and rebuild the report with it; the other sweeps' timing is kept")
    parser.add_argument("--formats", action="store_true",
                        help="run the 2026 formats study (sweeps/micro_formats*.yaml) into the same folder and "
                             "rebuild the report with it; the other sweeps' timing is kept")
    parser.add_argument("--released", action="store_true",
                        help="run only the released-weights sweeps (sweeps/micro_released*.yaml; the micro-study runs "
                             "them too) into multirun/released-study and reports/released-study, or into the folder "
                             "given, rebuilding its report; the other sweeps' timing is kept")
    for folder, sweep in {**SWEEPS, **ADAPTER_SWEEPS, **FORMAT_SWEEPS}.items():
        parser.add_argument(f"--{folder}-args", default="", help=f"extra overrides for sweeps/{sweep}.yaml only")
    args = parser.parse_args()
    # the formats and released studies have reports of their own: run alone, they must not replace
    # the micro-study's report with their sweeps only (given the micro-study's folders, they join them)
    name = "formats-study" if args.formats else "released-study" if args.released else "micro-study"
    args.sweep_dir = args.sweep_dir or REPO / "multirun" / name
    args.out = args.out or REPO / "reports" / name
    timing_file = args.out / "timing.json"
    if args.report_only:  # the figures of the run that made the sweep folder, the report made again
        problem = report_only_problem(args.sweep_dir, timing_file)
        if problem:  # checked before anything is touched: the committed report stays as it is
            print(f"error: --report-only: {problem}", file=sys.stderr)
            sys.exit(2)
        write_report(args.sweep_dir, args.out, json.loads(timing_file.read_text())["phases_s"])
        return
    study = "adapters" if args.adapters else "formats" if args.formats else "released" if args.released else None
    phases: dict[str, float] = {}
    if study and timing_file.exists():  # the other sweeps ran before: their times stay in the report
        phases = {k: v for k, v in json.loads(timing_file.read_text())["phases_s"].items()
                  if not k.startswith((study, "analysis"))}

    start = time.perf_counter()
    base = build_base(args.overrides)
    print(f"base: {base}", flush=True)
    prefix = f"{study}: " if study else ""
    phases[prefix + "pretraining (base build, or cache hit)"] = time.perf_counter() - start
    releases = None
    if study in (None, "released"):
        start = time.perf_counter()
        chosen = [o.split("=", 1)[1] for o in args.overrides if o.startswith("model=")]
        releases = make_releases(base, args.sweep_dir, chosen[0] if chosen else "micro")
        phases[prefix + "releases of the base (python -m qlora_lab.release: GGUF Q4_K, NVFP4)"] = \
            time.perf_counter() - start

    for folder, sweep in (STUDIES[study] if study else SWEEPS).items():
        start = time.perf_counter()
        _run("-m", "qlora_lab.train", "-m", f"+sweep={sweep}", "hydra/launcher=local",
             f"hydra.sweep.dir={args.sweep_dir / folder}", *sweep_args(folder, releases), *args.overrides,
             *shlex.split(getattr(args, f"{folder}_args")))
        phases[f"{prefix}sweep {folder} (sweeps/{sweep}.yaml, wall)"] = time.perf_counter() - start
    if study:
        write_report(args.sweep_dir, args.out, phases)
        return

    start = time.perf_counter()
    _run("-m", "qlora_lab.judge", str(args.sweep_dir / "finetune"))
    phases["judging (reference judge)"] = time.perf_counter() - start
    write_report(args.sweep_dir, args.out, phases)


def report_only_problem(sweep_dir: Path, timing_file: Path) -> str | None:
    """What --report-only lacks, in one line; None when the sweep folder and timing are there."""
    if not sweep_dir.is_dir():
        return f"no sweep folder {sweep_dir} (run `make micro-study` first, or give --sweep-dir)"
    if not timing_file.is_file():
        return f"no {timing_file} (the timing of the run that made the sweep folder)"
    try:
        json.loads(timing_file.read_text())["phases_s"]
    except (ValueError, KeyError) as err:
        return f"{timing_file} is not the timing a micro-study wrote ({type(err).__name__}: {err})"
    return None


def write_report(sweep_dir: Path, out: Path, phases: dict[str, float]) -> None:
    """The analysis, timed, into a new folder beside `out`, with the time split appended to its
    report.md and written to timing.json; swapped in for `out` only when complete, so a failure
    leaves the earlier report as it was (and no file of it is left in the new one)."""
    building = out.with_name(out.name + ".new")
    shutil.rmtree(building, ignore_errors=True)
    write_complete_report(sweep_dir, building, phases)
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        building.rename(out)
        shutil.rmtree(old)
    else:
        building.rename(out)
    print(f"micro-study: report: {out / 'report.md'}")


def write_complete_report(sweep_dir: Path, out: Path, phases: dict[str, float]) -> None:
    start = time.perf_counter()
    _run("-m", "qlora_analysis", str(sweep_dir), "--out", str(out))
    phases = {**phases, "analysis (qlora_analysis)": time.perf_counter() - start}

    summed = run_times(sweep_dir)
    total = sum(phases.values())
    lines = ["", "## Time", "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in phases.items()]
    lines += [f"| **total** | **{total:.1f}** |", "",
              f"Within the sweeps, summed over their {summed['runs']} runs ({summed['ok']} ok), which overlap "
              f"in time on the local launcher: training {summed['train_s_summed']} s, evaluation "
              f"{summed['eval_s_summed']} s, model loading {summed['load_s_summed']} s. The rest of the sweeps' "
              f"wall time is process start-up and the launcher.", ""]
    report = out / "report.md"
    report.write_text(report.read_text() + "\n".join(lines))
    (out / "timing.json").write_text(json.dumps({"phases_s": phases, "total_s": total, **summed}, indent=2) + "\n")
    print(f"micro-study: {total / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()

"""`python -m qlora_lab.judge DIR [options]`: pairwise judging of a sweep's answers.

Reads every run's generations.jsonl under DIR, judges both orders of every pair of runs on
every prompt they both answered, and writes DIR/judgments.jsonl (one line per pair and order).
A rerun judges only what is still missing; lines that could not be judged are retried.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

JUDGMENTS = "judgments.jsonl"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qlora_lab.judge", description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="a sweep folder (its run folders hold generations.jsonl)")
    p.add_argument("--judge", choices=["reference", "openai"], default="reference")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="the judge model's name at that endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--mode", choices=["threeclass", "score"], default="threeclass",
                   help="the paper's three-class verdict (1, 2, tie) or relative 1-10 scores")
    p.add_argument("--prompt", choices=["vicuna", "mtbench"], default="vicuna",
                   help="the judge prompt: the Vicuna / QLoRA layout, or MT-Bench's pairwise one ([[A]]/[[B]]/[[C]])")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    p.add_argument("--retries", type=int, default=2, help="retries of a failed or unparseable request")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--set", dest="answer_set", choices=["prompts", "heldout", "all"], default="all",
                   help="which answers to judge (generations.jsonl's set field)")
    p.add_argument("--label", action="append", default=[], metavar="FOLDER=NAME", help="name a run by its folder")
    p.add_argument("--import", dest="import_csv", type=Path,
                   help="add human judgments from a CSV: prompt_id, model_a, model_b, winner[, score_a, score_b]")
    p.add_argument("--relative-to", metavar="NAME", help="print each model's score as a %% of this one's (score mode)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from qlora_analysis.relative_score import relative_scores
    from qlora_lab.judging.runs import pair_tasks, read_runs

    if not args.dir.is_dir():
        raise ValueError(f"{args.dir}: no such folder")
    if args.concurrency < 1 or args.retries < 0:
        raise ValueError("--concurrency must be >= 1 and --retries >= 0")
    path = args.dir / JUDGMENTS
    existing = read_judgments(path)
    if args.import_csv:
        existing += import_human(args.import_csv)
    labels = dict(_label(text) for text in args.label)
    judge_fn, judge_name = make_judge(args)
    done = {(j["prompt_id"], j["model_a"], j["model_b"]) for j in existing
            if j["winner"] is not None and j["judge"] == judge_name}
    tasks = [t for t in pair_tasks(read_runs(args.dir, labels, args.answer_set)) if t.key not in done]
    new = judge_all(tasks, judge_fn, args.concurrency, path)
    final = _dedupe(existing + new)
    _write_all(path, final)
    failed = [j for j in new if j["winner"] is None]
    print(f"{len(new) - len(failed)} verdicts, {len(failed)} could not be judged (winner null, reason given), "
          f"{len(done)} already judged; {path}")
    if new and len(failed) == len(new):  # nothing judged: say why, and fail the command
        print(f"error: none of the {len(new)} pairs could be judged; first reason: {failed[0]['reason']}",
              file=sys.stderr)
        return 1
    if args.relative_to:
        for score in relative_scores(final, args.relative_to):
            print(f"{score.model}: {score.percent:.1f}% of {score.reference} "
                  f"(95% interval {score.lower:.1f}-{score.upper:.1f}, {score.n_prompts} prompts)")
    return 0


def make_judge(args: argparse.Namespace):
    from qlora_lab.judging.verdicts import JUDGES

    if args.judge == "reference":
        return JUDGES["reference"](), "reference"
    from qlora_lab.judging.openai_judge import openai_judge

    if not args.base_url or not args.model:
        raise ValueError("--judge openai needs --base-url and --model")
    if args.prompt == "mtbench" and args.mode != "threeclass":
        raise ValueError("--prompt mtbench: its verdict is [[A]]/[[B]]/[[C]]; use --mode threeclass")
    key = os.environ.get(args.api_key_env)
    if not key:
        raise ValueError(f"--judge openai needs an API key in the environment variable {args.api_key_env}")
    return (openai_judge(args.base_url, args.model, key, args.mode, args.retries, args.timeout, prompt=args.prompt),
            f"openai:{args.model}")


def judge_all(tasks, judge_fn, concurrency: int, path: Path) -> list[dict]:
    """Concurrently, at most `concurrency` at once; each judgment is appended as it completes,
    so a crash loses none of those already made."""
    from tqdm.auto import tqdm

    lock, results = threading.Lock(), []
    with ThreadPoolExecutor(max_workers=concurrency) as pool, open(path, "a", encoding="utf-8") as out:
        futures = [pool.submit(judge_fn, task) for task in tasks]
        for future in tqdm(as_completed(futures), total=len(futures), desc="judging", unit="pair",
                           disable=not tasks):
            judgment = future.result().to_dict()
            with lock:
                out.write(json.dumps(judgment) + "\n")
                out.flush()
                results.append(judgment)
    return results


def read_judgments(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut off by a crash: judged again
    return rows


def import_human(path: Path) -> list[dict]:
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            missing = [k for k in ("prompt_id", "model_a", "model_b", "winner") if not row.get(k)]
            if missing or row["winner"] not in ("a", "b", "tie"):
                raise ValueError(f"{path}:{number}: expected prompt_id, model_a, model_b and winner a, b or tie")
            score = lambda k: float(row[k]) if row.get(k) not in (None, "") else None
            rows.append({"prompt_id": row["prompt_id"], "model_a": row["model_a"], "model_b": row["model_b"],
                         "winner": row["winner"], "judge": "human", "score_a": score("score_a"),
                         "score_b": score("score_b"), "reason": None})
    return rows


def _label(text: str) -> tuple[str, str]:
    folder, sep, name = text.partition("=")
    if not sep or not folder or not name:
        raise ValueError(f"--label {text}: expected FOLDER=NAME")
    return folder, name


def _dedupe(rows: list[dict]) -> list[dict]:
    """The last line per (prompt, order, judge); a judged line is never replaced by a failed one."""
    kept: dict[tuple, dict] = {}
    for row in rows:
        key = (row["prompt_id"], row["model_a"], row["model_b"], row["judge"])
        if key not in kept or row["winner"] is not None or kept[key]["winner"] is None:
            kept[key] = row
    return list(kept.values())


def _write_all(path: Path, rows: list[dict]) -> None:
    from qlora_lab.cache import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    sys.exit(main())

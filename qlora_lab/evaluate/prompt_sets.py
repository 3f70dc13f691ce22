"""The prompts a run answers for judging (`eval.prompts`): a JSONL file of id, prompt and an
optional reference, or a shipped set by name, or a list of both. Loaded before training, so a
missing file or an unreachable set fails the run before any compute is spent on it."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from qlora_lab.cache import atomic_write_text, build_lock, cache_dir

FETCH_TIMEOUT_S = 60


def first_human_turn(text: str) -> str:
    """The opening question of a '### Human: ...### Assistant: ...' thread."""
    return text.split("### Assistant:")[0].replace("### Human:", "", 1).strip()


# Prompt sets by name.
# - oasst1: the user turns of the test split the paper's Guanaco data carries (the hub).
# - vicuna: the Vicuna benchmark's 80 questions as FastChat publishes them (Apache-2.0), at a
#   pinned commit: {"question_id", "category", "turns": [question]} per line. The QLoRA paper
#   took them from FastChat. A mirror can stand in for the URL: QLORA_LAB_VICUNA_URL.
PROMPT_SETS = {
    "oasst1": {"hub_id": "timdettmers/openassistant-guanaco", "split": "test", "field": "text",
               "to_prompt": first_human_turn},
    "vicuna": {"url": "https://raw.githubusercontent.com/lm-sys/FastChat/589532dcfa83700f950b9aa3983416c543afabc0/"
                      "fastchat/llm_judge/data/vicuna_bench/question.jsonl",
               "url_env": "QLORA_LAB_VICUNA_URL", "rows": 80, "id_field": "question_id",
               "to_prompt": lambda row: row["turns"][0]},
}


def load_prompts(spec: str | list[str]) -> list[dict]:
    """Rows of id, prompt[, reference] from each named set or file, in order; ids must not repeat."""
    rows = []
    for item in [spec] if isinstance(spec, str) else spec:
        rows += named_prompts(item) if item in PROMPT_SETS else read_prompts(Path(item))
    seen = set()
    for row in rows:
        if row["id"] in seen:
            raise ValueError(f"eval.prompts={spec}: prompt id {row['id']!r} appears twice; ids must be unique")
        seen.add(row["id"])
    return rows


def named_prompts(name: str) -> list[dict]:
    spec = PROMPT_SETS[name]
    if "url" in spec:
        rows = _fetched_rows(name, spec)
        return [{"id": f"{name}-{row[spec['id_field']]}", "prompt": spec["to_prompt"](row),
                 **({"category": row["category"]} if "category" in row else {})} for row in rows]
    import datasets

    rows = datasets.load_dataset(spec["hub_id"], split=spec["split"])
    return [{"id": f"{name}-{i}", "prompt": spec["to_prompt"](r[spec["field"]])} for i, r in enumerate(rows)]


def read_prompts(path: Path) -> list[dict]:
    """A prompts JSONL: id, prompt and an optional reference per line."""
    from qlora_lab.data.rows import read_json_rows

    rows = read_json_rows(path)
    for number, row in enumerate(rows, start=1):
        if "id" not in row or "prompt" not in row:
            raise ValueError(f"{path}: row {number} lacks id or prompt; expected fields: id, prompt, "
                             f"reference (optional)")
    return rows


def _fetched_rows(name: str, spec: dict) -> list[dict]:
    """The set's rows, fetched once into the cache (under a lock: parallel jobs fetch once)."""
    url = os.environ.get(spec["url_env"]) or spec["url"]
    key = f"prompts-{name}-{hashlib.sha256(url.encode()).hexdigest()[:12]}.jsonl"
    cached = cache_dir() / key
    with build_lock(key):
        if not cached.exists():
            try:
                with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
                    text = response.read().decode("utf-8")
            except (urllib.error.URLError, OSError) as err:
                raise ValueError(f"eval.prompts={name}: could not fetch {url} ({err}); download it and pass "
                                 f"eval.prompts=FILE, or point {spec['url_env']} at a copy") from err
            _check_rows(name, url, _parse(name, url, text), spec)
            atomic_write_text(cached, text)
    return _parse(name, str(cached), cached.read_text(encoding="utf-8"))


def _parse(name: str, source: str, text: str) -> list[dict]:
    from qlora_lab.data.rows import DataError, parse_jsonl

    try:
        return parse_jsonl(text, source)
    except DataError as err:
        raise ValueError(f"eval.prompts={name}: {err}") from None


def _check_rows(name: str, url: str, rows: list[dict], spec: dict) -> None:
    """What was fetched is the set: its number of rows, each with its id and a question."""
    if len(rows) != spec["rows"]:
        raise ValueError(f"eval.prompts={name}: {url} holds {len(rows)} rows, the set has {spec['rows']}")
    for number, row in enumerate(rows, start=1):
        try:
            prompt = spec["to_prompt"](row)
            row[spec["id_field"]]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"eval.prompts={name}: {url} line {number} is not in the set's layout "
                             f"(missing {err})") from err
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"eval.prompts={name}: {url} line {number} has no question")

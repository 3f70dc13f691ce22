"""Rows of data files, read strictly: JSON arrays or JSONL, a bad line named by its file and line
number. Shared by the datasets (`data.load`) and the prompt sets (`evaluate.prompt_sets`)."""

from __future__ import annotations

import json
from pathlib import Path


class DataError(ValueError):
    """Bad data, said in one line: which file or dataset, where, what was expected."""


def parse_jsonl(text: str, source) -> list:
    """One JSON value per non-blank line; a bad line is named by its source and line number."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{source}:{number}: not valid JSON ({err.msg})") from None
    return rows


def read_text_file(path: Path) -> str:
    """The file as UTF-8 text; a binary file (an archive, a model, a Parquet file under another
    name) is named with the first byte that is not text, not a bare UnicodeDecodeError."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text file (byte {err.start} is 0x{data[err.start]:02x}, not UTF-8); "
                        f"dataset.path takes JSON, JSONL or CSV text, or a .parquet file") from None


def read_json_rows(path: Path) -> list[dict]:
    """A JSON array of objects, or JSONL; a bad line is named by file and line number."""
    text = read_text_file(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    else:
        rows = parse_jsonl(text, path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {number} is a {type(row).__name__}, expected an object")
    return rows

"""Reading candidate rows and writing preference JSONL.

Input rows (JSONL, one object a line): `prompt` (a string, or chat messages whose last user turn
is taken) plus candidates as `responses` (a list of strings) or `response_a` / `response_b`;
without candidates, responses are sampled (see sampling.py). Other fields are kept (a rule judge
receives them, e.g. `answer`). Output rows: {"prompt", "chosen", "rejected", ...}, the
`preference` format the `rm` and `dpo` stages read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jaxtune.errors import UserError


def _prompt_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m.get("content", "") for m in value if m.get("role") == "user"]
        if users:
            return str(users[-1])
    raise UserError(f"{where}: 'prompt' must be a string or chat messages with a user turn.")


def read_rows(path: str | Path, *, need_responses: bool) -> list[dict[str, Any]]:
    """Rows {"prompt": str, "responses": [str, ...], ...} of a JSONL file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--input {path}: no such file.")
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        where = f"{path}, row {i + 1}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not JSON ({e}).") from None
        if "prompt" not in record:
            raise UserError(f"{where}: missing field 'prompt'.")
        row = dict(record)
        row["prompt"] = _prompt_text(record["prompt"], where)
        if "response_a" in record and "response_b" in record:
            row["responses"] = [str(record["response_a"]), str(record["response_b"])]
            del row["response_a"], row["response_b"]
        elif "responses" in record:
            if not isinstance(record["responses"], list):
                raise UserError(f"{where}: 'responses' must be a list of strings.")
            row["responses"] = [str(r) for r in record["responses"]]
        elif need_responses:
            raise UserError(
                f"{where}: no candidates ('responses' or 'response_a'/'response_b'); give them "
                "or pass --policy PATH to sample responses."
            )
        else:
            row["responses"] = []
        rows.append(row)
    if not rows:
        raise UserError(f"--input {path}: no rows.")
    return rows


def write_pairs(path: str | Path, pairs: Iterable[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for pair in pairs:
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
    return path

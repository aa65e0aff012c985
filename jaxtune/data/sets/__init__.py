"""Small datasets written for jaxtune (see README.md here): paths by name."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
SETS = {
    "instruct": "instruct.jsonl",
    "chat": "chat.jsonl",
    "preference": "preference.jsonl",
    "prompts": "prompts.jsonl",
    "text": "text.jsonl",
    "demo_pirate": "demo_pirate.jsonl",
    "demo_pirate_eval": "demo_pirate_eval.jsonl",
    "demo_pirate_pref": "demo_pirate_pref.jsonl",
    "demo_pirate_pref_eval": "demo_pirate_pref_eval.jsonl",
}


def set_path(name: str) -> str:
    """The file of a shipped set, e.g. set_path("demo_pirate")."""
    if name not in SETS:
        from jaxtune.data.errors import DataError

        raise DataError(f"no shipped set {name!r}; one of {sorted(SETS)}")
    return str(HERE / SETS[name])

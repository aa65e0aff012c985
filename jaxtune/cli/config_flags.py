"""`--config=configs/x.py --config.optim.lr=1e-4`: ml_collections config files and overrides.

A config file is a Python file with `get_config()` returning a ConfigDict (recipes start from
`jaxtune.train.config.default_config()`). Overrides are parsed to the type of the key they set
(bool, int, float, str, tuple, dict); a key that does not exist is an error naming the nearest
known key, as ml_collections' `config_flags` does.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxtune.errors import UserError
from jaxtune.train.config import check_keys, default_config, flat_keys, suggest

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Run a config file's `get_config()`; its keys are checked and merged over the defaults."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config={path}: no such file. Recipes live in configs/*.py.")
    spec = importlib.util.spec_from_file_location(f"_jaxtune_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except AttributeError as e:  # a typo on a locked ConfigDict inside the recipe
        raise UserError(f"{path}: {e}") from None
    if not hasattr(module, "get_config"):
        raise UserError(f"{path}: a config file must define get_config().")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    check_keys(config, source=str(path))
    merged = default_config()
    merge_into(merged, config)
    return merged


def merge_into(base: ml_collections.ConfigDict, update: ml_collections.ConfigDict) -> None:
    for key in update:
        value = update[key]
        if isinstance(value, ml_collections.ConfigDict) and isinstance(
            base.get(key), ml_collections.ConfigDict
        ):
            if len(base[key]) == 0:
                base[key] = value
            else:
                merge_into(base[key], value)
        else:
            with base.ignore_type():
                base[key] = value


def parse_value(text: str, current: Any, key: str) -> Any:
    """`text` as the type of `current` (the key's present value)."""
    try:
        if isinstance(current, bool):
            low = text.strip().lower()
            if low in TRUE or low in FALSE:
                return low in TRUE
            raise ValueError("expected true or false")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, tuple | list):
            if text.strip()[:1] in "([":
                value = ast.literal_eval(text)
            else:
                value = [p.strip() for p in text.split(",") if p.strip()]
                kind = type(current[0]) if current else str
                value = [kind(v) for v in value]
            return type(current)(value)
        if isinstance(current, dict | ml_collections.ConfigDict):
            value = ast.literal_eval(text)
            if not isinstance(value, dict):
                raise ValueError("expected a dict like {'a': 1}")
            return ml_collections.ConfigDict(value)
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    except (ValueError, SyntaxError) as e:
        raise UserError(
            f"--config.{key}={text}: cannot read it as {type(current).__name__} ({e})."
        ) from None


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set the dotted `key` of `config` from the command-line `text`."""
    known = flat_keys(config)
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        is_last = i == len(parts) - 1
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise UserError(f"--config.{key}: unknown key.{suggest(key, list(known))}")
        if is_last:
            with node.ignore_type():
                node[part] = parse_value(text, node[part], key)
        else:
            node = node[part]


def parse_config_args(
    argv: Sequence[str], default_file: str | None = None
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """(config, the other arguments) from `--config=FILE` and `--config.KEY=VALUE` flags."""
    file = default_file
    overrides: list[tuple[str, str]] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" or arg.startswith("--config=") or arg.startswith("--config."):
            if "=" in arg:
                name, value = arg.split("=", 1)
            elif i + 1 < len(args):
                name, value = arg, args[i + 1]
                i += 1
            else:
                raise UserError(f"{arg}: give a value ({arg}=VALUE).")
            if name == "--config":
                file = value
            else:
                overrides.append((name[len("--config.") :], value))
        else:
            rest.append(arg)
        i += 1
    config = load_config_file(file) if file else default_config()
    for key, value in overrides:
        apply_override(config, key, value)
    return config, rest


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    return config.to_dict()


def config_from_dict(values: dict) -> ml_collections.ConfigDict:
    """A saved run config (e.g. from a checkpoint) over today's defaults."""
    merged = default_config()
    merge_into(merged, ml_collections.ConfigDict(values))
    return merged


if __name__ == "__main__":  # print a resolved config: python -m jaxtune.cli.config_flags ...
    print(parse_config_args(sys.argv[1:])[0])

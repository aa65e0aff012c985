"""`--config=FILE --config.key=value`: config files, typed overrides, and the command dispatch."""

from __future__ import annotations

import re

import pytest

from jaxtune.cli.config_flags import apply_override, load_config_file, parse_config_args
from jaxtune.cli.main import build_parser, main
from jaxtune.errors import UserError
from jaxtune.train.config import check_keys, default_config
from tests.train_support import ROOT

RECIPES = sorted((ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_files_load_and_open_with_their_command(path):
    first_lines = path.read_text().split('"""')[1]
    if "jaxtune train --config" not in first_lines:  # another command's config (jaxtune label)
        assert re.search(rf"jaxtune \w+ --config=configs/{path.name}", first_lines)
        return
    config = load_config_file(path)
    check_keys(config)
    assert f"jaxtune train --config=configs/{path.name}" in first_lines
    assert config.output_dir == f"runs/{path.stem}"


def test_overrides_take_the_type_of_the_key():
    config, rest = parse_config_args(
        [
            "--config=configs/sft_lora.py",
            "--config.optim.lr=3e-4",
            "--config.train.steps=7",
            "--config.data.packing=false",
            "--config.peft.targets",  # the value as the next argument
            "q_proj,v_proj",
            "--config.model.path=some/dir",
            "extra",
        ]
    )
    assert rest == ["extra"]
    assert config.optim.lr == 3e-4 and isinstance(config.optim.lr, float)
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.data.packing is False
    assert config.peft.targets == "q_proj,v_proj"
    assert config.peft.method == "lora"  # from the file
    assert config.model.path == "some/dir"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.steps", "ten", "cannot read it as int"),
        ("data.packing", "maybe", "expected true or false"),
        ("optim.lrr", "1", "Did you mean optim.lr?"),
        ("trian.steps", "1", "Did you mean train.steps?"),
    ],
)
def test_bad_overrides(key, value, message):
    with pytest.raises(UserError, match=message):
        apply_override(default_config(), key, value)


def test_commands_are_registered(capsys):
    choices = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "eval", "export", "generate"} <= set(choices)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "train" in capsys.readouterr().out


def test_unknown_argument_of_a_command_without_config(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", "x", "--out", "y", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err

"""scripts/prepare_data.py: the batches a run's config makes, counted, shown and written."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from jaxtune.data import set_path
from tests.train_support import ROOT, tiny_llama

spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts" / "prepare_data.py")
prepare_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare_data)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return tiny_llama(tmp_path_factory.mktemp("prepare") / "llama")


def test_sft_recipe_counts_every_row_and_writes_batches(model_dir, tmp_path, capsys):
    out = tmp_path / "prepared"
    argv = [
        "--config=configs/sft_lora.py",
        f"--config.model.path={model_dir}",
        "--config.train.seq_len=256",
        "--show=1",
        f"--out={out}",
    ]
    assert prepare_data.main(argv) == 0
    printed = capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    rows = len((ROOT / "jaxtune/data/sets/instruct.jsonl").read_text().splitlines())
    seq = stats["sequences"]
    assert seq["examples"] == rows
    assert 0 < seq["learned_tokens"] < seq["tokens"]
    batches = np.load(out / "batches.npz")
    assert batches["input_ids"].shape == (stats["batches"], 8, 256)
    assert int(np.count_nonzero(batches["segment_ids"])) == seq["tokens"]
    assert float(batches["loss_mask"].sum()) == seq["learned_tokens"]
    assert "--- example 1" in printed and "[[" in printed  # the answer is marked as learned


def test_preference_data_has_both_sides(model_dir, capsys):
    argv = [
        "--config.stage=dpo",
        f"--config.data.train={set_path('preference')}",
        f"--config.model.path={model_dir}",
        "--config.train.seq_len=256",
        "--show=0",
    ]
    assert prepare_data.main(argv) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["chosen"]["examples"] == stats["rejected"]["examples"] == 60


def test_a_row_too_long_is_reported_with_its_file_and_row(model_dir, capsys):
    argv = [f"--config.model.path={model_dir}", "--config.train.seq_len=64"]
    argv.append(f"--config.data.train={set_path('instruct')}")
    assert prepare_data.main(argv) == 2
    err = capsys.readouterr().err
    assert "instruct.jsonl, row" in err and "truncation" in err

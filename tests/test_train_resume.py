"""Exact resume: a run killed with SIGKILL and started again with the same command computes the
same losses as an uninterrupted run, with no step skipped or repeated (LoRA with dropout, so the
RNG, the data position, the adapters and the optimizer state must all come back)."""

from __future__ import annotations

import signal
import sys

import numpy as np
import pytest

from jaxtune.cli.main import main
from jaxtune.data import set_path
from tests.train_support import env, read_metrics, tiny_llama

KILL_AT = 12
KILLER = f"""
import os, signal, sys
from jaxtune.train import STEP_HOOKS
from jaxtune.cli.main import main
STEP_HOOKS.append(lambda step, _: step == {KILL_AT} and os.kill(os.getpid(), signal.SIGKILL))
sys.exit(main(sys.argv[1:]))
"""


def command(model: str, output_dir) -> list[str]:
    return [
        "train",
        "--config=configs/sft_lora.py",
        f"--config.model.path={model}",
        f"--config.data.train={set_path('instruct')}",
        "--config.data.truncation=truncate",
        f"--config.output_dir={output_dir}",
        "--config.train.steps=20",
        "--config.train.batch_size=4",
        "--config.train.seq_len=128",
        "--config.train.save_every=5",
        "--config.train.log_every=1",
        "--config.peft.rank=4",
        "--config.peft.dropout=0.1",
        "--config.optim.lr=1e-2",
        "--config.log.tensorboard=false",
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("resume") / "llama")


def test_killed_run_resumes_exactly(model_dir, tmp_path):
    import subprocess

    from tests.train_support import ROOT

    assert main(command(model_dir, tmp_path / "straight")) == 0
    straight = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight")}
    assert sorted(straight) == list(range(1, 21))

    args = command(model_dir, tmp_path / "resumed")
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, *args], env=env(), cwd=ROOT, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = [r["step"] for r in read_metrics(tmp_path / "resumed")]
    assert before[-1] >= KILL_AT and before[-1] < 20  # it died mid-run
    names = [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()]
    kept = sorted(int(n) for n in names if n.isdigit())  # a save cut by the kill: *-tmp
    assert max(kept) in (5, 10), names

    again = subprocess.run(
        [sys.executable, "-m", "jaxtune.cli.main", *args],
        env=env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr
    records = read_metrics(tmp_path / "resumed")
    steps = [r["step"] for r in records]
    assert steps == list(range(1, 21)), steps  # none skipped, none repeated
    resumed = {r["step"]: r["loss"] for r in records}
    for step in range(1, 21):  # bit-identical on CPU (same programs, same data, same keys)
        assert resumed[step] == straight[step], (step, resumed[step], straight[step])
    assert np.mean([straight[s] for s in range(18, 21)]) < straight[1]

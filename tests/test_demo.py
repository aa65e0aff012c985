"""`make demo` end to end on a tiny model: every stage runs and writes what it promises.

The real run (SmolLM2-135M, 30 SFT + 8 DPO steps) is what `make demo` does; its measured numbers
are in the README. Here the same code path runs for 6 + 3 steps on a tiny random Llama.
"""

from __future__ import annotations

import json
import math

from jaxtune.demo import HELD_OUT, main
from tests.train_support import checkpoint_with_tokenizer


def test_demo_runs_every_stage(tiny_checkpoint, tmp_path, capsys):
    model = checkpoint_with_tokenizer(tiny_checkpoint("llama"), tmp_path / "model")
    out = tmp_path / "demo"
    args = ["--model", model, "--steps", "6", "--dpo-steps", "3", "--output-dir", str(out)]
    assert main(args) == 0

    report = json.loads((out / "answers.json").read_text())
    assert len(report["answers"]) == HELD_OUT
    assert all(math.isfinite(v) for v in report["held_out_loss"].values())
    assert report["merged_export_max_logit_diff"] < 1e-4
    assert (out / "loss_curve.png").stat().st_size > 0
    assert (out / "merged" / "config.json").exists()
    dpo = report["dpo_held_out_pairs"]
    assert dpo["accuracy"]["before"] == 0.0 and dpo["margin"]["before"] == 0.0
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and "preference accuracy" in printed

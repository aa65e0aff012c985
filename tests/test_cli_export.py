"""`jaxtune export` (merged HF safetensors, PEFT adapter) and `jaxtune eval` on a trained LoRA run:
the exported files load in transformers / peft and give the trained model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.cli.main import main
from jaxtune.data import set_path
from jaxtune.train.restore import load_trained
from tests.train_support import read_metrics, tiny_llama

IDS = np.array([[5, 17, 3, 99, 42, 8, 61, 23], [1, 2, 3, 4, 5, 6, 7, 8]], np.int32)


def lora_args(model: str, output_dir) -> list[str]:
    return [
        "--config=configs/sft_lora.py",
        f"--config.model.path={model}",
        f"--config.data.train={set_path('instruct')}",
        "--config.data.truncation=truncate",
        f"--config.output_dir={output_dir}",
        "--config.train.batch_size=4",
        "--config.train.seq_len=128",
        "--config.peft.rank=4",
        "--config.optim.lr=1e-2",
        "--config.optim.warmup_steps=0",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = tiny_llama(root / "llama")
    out = root / "run"
    assert main(["train", *lora_args(model, out), "--config.train.steps=8"]) == 0
    run, params, step = load_trained(out)
    assert step == 8
    logits = np.asarray(run.model.apply(params, jnp.asarray(IDS)))
    return model, out, logits


def test_run_outputs_are_adapter_only_checkpoints_metrics_and_tensorboard(trained):
    model, out, _ = trained
    step_dir = out / "checkpoints" / "8"
    stored = sum(p.stat().st_size for p in step_dir.rglob("*") if p.is_file())
    base = sum(p.stat().st_size for p in Path(model).glob("*.safetensors"))
    assert stored < base / 2  # adapters + their Adam moments only, not the frozen base
    records = read_metrics(out)
    assert records[-1]["step"] == 8 and "loss" in records[-1] and "tokens_per_s" in records[-1]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_export_merged_loads_in_transformers(trained, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    _, out, logits = trained
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "merged")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(IDS, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(theirs, logits, rtol=0, atol=1e-4)
    assert (tmp_path / "merged" / "tokenizer.json").exists()


def test_export_adapter_loads_in_peft(trained, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, out, logits = trained
    step_dir = out / "checkpoints" / "8"
    assert (
        main(["export", "--checkpoint", str(step_dir), "--out", str(tmp_path / "a"), "--adapter"])
        == 0
    )
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(torch.tensor(IDS, dtype=torch.long)).logits.numpy()
    assert np.abs(base_logits - logits).max() > 1e-2  # training changed the model
    hf = PeftModel.from_pretrained(base, tmp_path / "a").eval()  # (wraps base in place)
    with torch.no_grad():
        theirs = hf(torch.tensor(IDS, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(theirs, logits, rtol=0, atol=1e-4)


def test_eval_trained_vs_base(trained, capsys):
    model, out, _ = trained
    eval_set = f"--config.data.eval={set_path('instruct')}"
    assert main(["eval", "--checkpoint", str(out), eval_set]) == 0
    after = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", *lora_args(model, out / "unused"), eval_set]) == 0
    before = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert after["step"] == 8 and before["step"] == 0
    assert after["eval_loss_tokens"] == before["eval_loss_tokens"] > 0
    assert after["eval_loss"] < before["eval_loss"] - 0.2


def test_export_errors(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", "--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    assert "no checkpoints there" in capsys.readouterr().err

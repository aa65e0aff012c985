"""Stage `rm`: the reward model learns the separable shipped preference set (held-out pairs),
its loss is trl's RewardTrainer loss on the same rewards, and its exports load in transformers
(merged `LlamaForSequenceClassification`, or base + PEFT SEQ_CLS adapter) with the same scores,
and back in jaxtune (`load_reward_model`, `score`, `jaxtune eval`)."""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from jaxtune.cli.config_flags import apply_override, load_config_file
from jaxtune.cli.main import main
from jaxtune.data import set_path
from jaxtune.models import load_reward_model, score
from jaxtune.train import train
from jaxtune.train.build import make_batches
from jaxtune.train.restore import load_trained
from tests.train_support import ROOT, tiny_llama

STEPS = 30
TOL = dict(rtol=1e-6, atol=1e-6)


@functools.partial(jax.jit, static_argnums=(0, 1))
def stage_loss(stage, model, params, batch):
    return stage.loss(model, params, batch, None, False)


@functools.partial(jax.jit, static_argnums=(0, 1))
def stage_rewards(stage, model, params, batch):
    return stage.rewards(model, params, batch)


@pytest.fixture(scope="module")
def split_sets(tmp_path_factory):
    """The shipped preference set, every 5th pair held out (48 train, 12 eval)."""
    root = tmp_path_factory.mktemp("pref")
    rows = Path(set_path("preference")).read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join(r for i, r in enumerate(rows) if i % 5 != 4))
    (root / "eval.jsonl").write_text("\n".join(r for i, r in enumerate(rows) if i % 5 == 4))
    return str(root / "train.jsonl"), str(root / "eval.jsonl")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    # transformers' init (0.02): the last token's hidden state starts as a smooth mix of the
    # sequence, which a small head reads; 0.2 (the LM tests' scale) overfits 48 pairs instead.
    return tiny_llama(tmp_path_factory.mktemp("rm") / "llama", init_std=0.02)


def rm_config(base_dir, out, train_set, eval_set, **extra):
    config = load_config_file(ROOT / "configs" / "rm_lora.py")
    overrides = {
        "model.path": base_dir,
        "output_dir": str(out),
        "data.train": train_set,
        "data.eval": eval_set,
        "data.truncation": "truncate",
        "train.steps": str(STEPS),
        "train.batch_size": "8",
        "train.seq_len": "128",
        "train.save_every": "0",
        "train.remat": "none",
        "train.eval_at_start": "true",
        "train.log_every": "100",
        "peft.rank": "4",
        "optim.lr": "1e-2",
        "optim.warmup_steps": "0",
        "log.tensorboard": "false",
        "log.progress": "false",
        **extra,
    }
    for key, value in overrides.items():
        apply_override(config, key, value)
    return config


@pytest.fixture(scope="module")
def trained(base_dir, split_sets, tmp_path_factory):
    """Full fine-tuning: held-out accuracy >= 11/12 for every seed tried (0-3); LoRA on this
    random tiny model generalises from 48 pairs for some seeds only."""
    out = tmp_path_factory.mktemp("rm_run") / "run"
    extra = {"peft.method": "none", "optim.lr": "3e-3"}
    result = train(rm_config(base_dir, out, *split_sets, **extra))
    return out, result


@pytest.fixture(scope="module")
def trained_lora(base_dir, split_sets, tmp_path_factory):
    """A few LoRA steps (the recipe's method): the head must train beside the adapters."""
    out = tmp_path_factory.mktemp("rm_lora") / "run"
    extra = {"train.steps": "4", "train.eval_at_start": "false", "data.eval": ""}
    result = train(rm_config(base_dir, out, *split_sets, **extra))
    return out, result


@pytest.fixture(scope="module")
def eval_batch(trained):
    """The held-out pairs as one batch (the data worker's), and the trained run's params."""
    out, _ = trained
    run, params, _ = load_trained(out)
    batches = list(make_batches(run.config, run.tokenizer, run.stage, "eval"))
    batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    real = batch["chosen_segment_ids"].max(axis=1) > 0  # drop the last batch's padding rows
    return run, params, {k: v[real] for k, v in batch.items()}


def test_rm_learns_held_out_pairs(trained):
    out, result = trained
    before, after = result.evals[0], result.evals[STEPS]
    assert before["eval_loss_tokens"] == after["eval_loss_tokens"] == 12  # held-out pairs
    assert after["eval_accuracy"] > 0.9 > before["eval_accuracy"]
    assert after["eval_margin"] > before["eval_margin"] + 1.0
    assert after["eval_loss"] < before["eval_loss"] - 0.3
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"accuracy", "margin", "rewards/chosen", "rewards/rejected"} <= set(records[-1])


def test_head_trains_with_lora_and_is_in_the_adapter_checkpoint(trained_lora):
    from jaxtune import peft

    out, result = trained_lora
    initial = result.run.trainable  # the state the run started from
    assert initial["score"]["kernel"].shape == (64, 1)  # in the trainable (saved) tree
    assert peft.trainable_mask(result.run.combine(initial, result.run.frozen))["score"]["kernel"]
    stored = sum(p.stat().st_size for p in (out / "checkpoints" / "4").rglob("*") if p.is_file())
    base = sum(p.stat().st_size for p in Path(result.run.config.model.path).glob("*.safetensors"))
    assert stored < base / 2  # adapters, head and their moments; not the frozen base
    _, params, _ = load_trained(out)
    assert not np.allclose(params["score"]["kernel"], initial["score"]["kernel"])


class _Rewards:
    """A stand-in model whose outputs are given rewards (trl's compute_loss calls model(...))."""

    training = False

    def __init__(self, rewards):
        self.rewards = rewards

    def __call__(self, **inputs):
        return SimpleNamespace(logits=self.rewards[:, None])


@pytest.mark.parametrize("center", [0.0, 0.01])
def test_stage_loss_equals_trl_reward_trainer_on_the_same_rewards(eval_batch, center):
    import dataclasses

    import torch
    from trl import RewardTrainer

    run, params, batch = eval_batch
    stage = dataclasses.replace(run.stage, center_coef=center)
    out = stage_loss(stage, run.model, params, batch)
    chosen, rejected, valid = stage_rewards(stage, run.model, params, batch)
    assert bool(valid[:, 0].all()) and not bool(valid[:, 1:].any())  # one pair per row
    rewards = torch.tensor(np.concatenate([chosen[:, 0], rejected[:, 0]]))

    trainer = RewardTrainer.__new__(RewardTrainer)
    identity = lambda x: x
    trainer.__dict__.update(
        model=_Rewards(rewards),
        accelerator=SimpleNamespace(gather=identity, gather_for_metrics=identity),
        args=SimpleNamespace(center_rewards_coefficient=center or None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    mask = torch.ones(2 * len(chosen), 4, dtype=torch.long)
    theirs = float(trainer.compute_loss(trainer.model, {"attention_mask": mask}))
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    weight = float(out.weight)
    np.testing.assert_allclose(float(out.total) / weight, theirs, **TOL)
    for name in ("accuracy", "margin", "mean_reward"):
        total, count = out.metrics[name]
        np.testing.assert_allclose(float(total / count), metrics[name], **TOL, err_msg=name)


def hf_scores(model, batch, side):
    import torch

    ids = torch.tensor(batch[f"{side}_input_ids"], dtype=torch.long)
    mask = torch.tensor(batch[f"{side}_segment_ids"] > 0, dtype=torch.long)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[:, 0].numpy()


def test_merged_export_is_a_sequence_classifier_with_our_scores(trained, eval_batch, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out, _ = trained
    run, params, batch = eval_batch
    ours = stage_rewards(run.stage, run.model, params, batch)
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "rm")]) == 0
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["pad_token_id"] == run.tokenizer.pad_token_id and len(config["id2label"]) == 1
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert hf.score.weight.shape == (1, 64)
    model, backbone, head = load_reward_model(tmp_path / "rm")
    for i, side in enumerate(("chosen", "rejected")):
        theirs = hf_scores(hf, batch, side)
        np.testing.assert_allclose(theirs, ours[i][:, 0], rtol=0, atol=1e-4, err_msg=side)
        mask = batch[f"{side}_segment_ids"] > 0
        again = score(model, backbone, head, batch[f"{side}_input_ids"], mask)
        np.testing.assert_allclose(again, theirs, rtol=0, atol=1e-4, err_msg=side)


def test_adapter_export_loads_in_peft_as_seq_cls(trained_lora, eval_batch, base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    out, _ = trained_lora
    _, _, batch = eval_batch
    run, params, _ = load_trained(out)
    ours = stage_rewards(run.stage, run.model, params, batch)
    args = ["export", "--checkpoint", str(out), "--out", str(tmp_path / "ad"), "--adapter"]
    assert main(args) == 0
    adapter_config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_CLS"
    base = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, pad_token_id=run.tokenizer.pad_token_id
    )
    hf = PeftModel.from_pretrained(base, tmp_path / "ad").eval()
    theirs = hf_scores(hf, batch, "chosen")
    np.testing.assert_allclose(theirs, ours[0][:, 0], rtol=0, atol=1e-4)
    # The run directory loads as a reward model too (adapters merged).
    model, backbone, head = load_reward_model(out)
    chosen = {k: batch["chosen_" + k] for k in ("input_ids", "segment_ids", "positions")}
    np.testing.assert_allclose(score(model, backbone, head, chosen), ours[0][:, 0], atol=1e-5)


def test_eval_command_scores_a_run_and_an_exported_reward_model(
    trained, split_sets, tmp_path, capsys
):
    out, result = trained
    eval_set = f"--config.data.eval={split_sets[1]}"
    assert main(["eval", "--checkpoint", str(out), eval_set]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((out / "eval_results.json").read_text())
    assert printed == saved and saved["stage"] == "rm"
    np.testing.assert_allclose(saved["eval_accuracy"], result.evals[STEPS]["eval_accuracy"])
    np.testing.assert_allclose(saved["eval_margin"], result.evals[STEPS]["eval_margin"], atol=1e-5)

    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "rm")]) == 0
    capsys.readouterr()
    args = [
        "eval",
        f"--config={ROOT / 'configs' / 'rm_lora.py'}",
        f"--config.model.path={tmp_path / 'rm'}",
        f"--config.output_dir={tmp_path / 'scored'}",
        "--config.train.seq_len=128",
        "--config.data.truncation=truncate",
        eval_set,
    ]
    assert main(args) == 0
    exported = json.loads((tmp_path / "scored" / "eval_results.json").read_text())
    assert exported["step"] == 0  # the loaded reward model, head included, not a fresh head
    np.testing.assert_allclose(exported["eval_accuracy"], saved["eval_accuracy"])
    np.testing.assert_allclose(exported["eval_margin"], saved["eval_margin"], atol=1e-4)


def test_missing_rejected_names_the_file_and_row(base_dir, tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
        {"prompt": "Say bye.", "chosen": "Bye!"},
    ]
    bad.write_text("\n".join(json.dumps(r) for r in rows))
    args = [
        "train",
        f"--config={ROOT / 'configs' / 'rm_lora.py'}",
        f"--config.model.path={base_dir}",
        f"--config.output_dir={tmp_path / 'run'}",
        f"--config.data.train={bad}",
        "--config.train.batch_size=2",
    ]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert f"{bad}, row 2" in err and "rejected" in err and "Traceback" not in err


def test_packed_pairs_score_as_unpacked(eval_batch):
    """data.packing puts several pairs in a row; each segment is scored at its own last token."""
    run, params, batch = eval_batch
    config = run.config.copy_and_resolve_references()
    config.data.packing = True
    packed = list(make_batches(config, run.tokenizer, run.stage, "eval"))
    assert max(int(b["chosen_segment_ids"].max()) for b in packed) > 1  # really packed
    sums = [stage_loss(run.stage, run.model, params, b)
            for b in packed]  # fmt: skip
    one = stage_loss(run.stage, run.model, params, batch)
    assert sum(float(s.weight) for s in sums) == float(one.weight) == 12
    total = sum(float(s.total) for s in sums)
    np.testing.assert_allclose(total, float(one.total), rtol=1e-5)
    for name in ("accuracy", "margin"):
        got = sum(float(s.metrics[name][0]) for s in sums)
        np.testing.assert_allclose(got, float(one.metrics[name][0]), rtol=1e-5, atol=1e-5)

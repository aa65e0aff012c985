"""PPO and GRPO learn: the recipes ppo_lora and grpo_lora (LoRA; the reference is the base with
adapters off; PPO's value head trains beside the adapters) on a tiny random model with a
programmatic reward (the number of response tokens in a target set): the mean rollout reward
rises clearly over a few dozen steps while the KL to the reference stays bounded. Real train
loop, data pipeline and compiled sampler."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

from jaxtune.cli.config_flags import load_config_file
from jaxtune.data import set_path
from jaxtune.train import STEP_HOOKS, train
from jaxtune.train.export import export_adapter, export_merged
from tests.train_support import ROOT, tiny_llama

TARGETS = frozenset(range(40, 56))  # 16 of the 128 ids: ~1 per 8-token response at start


def target_count_reward(completions, completion_ids, **_):
    """The number of sampled tokens whose id is in TARGETS."""
    return [float(sum(t in TARGETS for t in ids)) for ids in completion_ids]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("rl") / "llama")


def rl_config(stage: str, model: str, output_dir: str, steps: int):
    c = load_config_file(ROOT / "configs" / f"{stage}_lora.py")
    c.model.path = model
    c.output_dir = output_dir
    c.data.train = set_path("prompts")
    c.data.truncation = "truncate"
    c.train.steps = steps
    c.train.seq_len = 32  # prompt length: longer prompts keep their end (counted)
    c.train.remat = "none"
    c.train.log_every = 1000
    c.train.save_every = 0
    c.log.tensorboard = False
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 0
    c.peft.rank = 4
    section = c[stage]
    section.reward_fn = f"{__name__}.target_count_reward"
    section.max_new_tokens = 8
    return c


def run_and_record(config):
    """(TrainResult, step -> logged metrics)."""
    records: dict[int, dict[str, float]] = {}
    hook = lambda step, metrics: records.__setitem__(step, metrics)
    STEP_HOOKS.append(hook)
    try:
        result = train(config)
    finally:
        STEP_HOOKS.remove(hook)
    return result, records


def per_rollout(records, steps_per_rollout: int, key: str) -> np.ndarray:
    return np.array([records[s][key] for s in sorted(records) if (s - 1) % steps_per_rollout == 0])


def test_ppo_raises_the_reward_with_bounded_kl(tiny_dir, tmp_path):
    config = rl_config("ppo", tiny_dir, str(tmp_path / "ppo"), steps=48)
    config.train.batch_size = 16
    config.ppo.ppo_epochs = 1
    config.ppo.num_minibatches = 2
    config.ppo.kl_coef = 0.1
    result, records = run_and_record(config)

    reward = per_rollout(records, 2, "reward_mean")
    kl = per_rollout(records, 2, "kl")
    assert len(reward) == 24
    first, last = reward[:6].mean(), reward[-6:].mean()
    assert last > first + 0.5, f"reward {first:.2f} -> {last:.2f}"
    assert kl[-8:].mean() < 10.0 and kl.max() < 20.0, kl  # per sequence of 8 tokens
    for key in ("value/loss", "value/explained_variance", "policy/clipfrac", "entropy"):
        assert np.isfinite(records[48][key])
    assert records[48]["time/generation_s"] > 0 and records[48]["time/train_s"] > 0
    # The export is the policy alone: adapters merged, no value head.
    params = result.run.combine(result.state.params, result.run.frozen)
    out = export_merged(result.run, params, tmp_path / "export")
    with safe_open(str(out / "model.safetensors"), "np") as f:
        names = list(f.keys())
    assert names and not any("value" in name for name in names)
    adapter = export_adapter(result.run, params, tmp_path / "adapter")
    with safe_open(str(adapter / "adapter_model.safetensors"), "np") as f:
        names = list(f.keys())
    assert any("lora_A" in name for name in names)
    assert not any("value" in name for name in names)


def test_grpo_raises_the_reward_with_bounded_kl(tiny_dir, tmp_path):
    config = rl_config("grpo", tiny_dir, str(tmp_path / "grpo"), steps=40)
    config.train.batch_size = 8
    config.grpo.num_generations = 4
    config.grpo.beta = 0.1
    config.optim.lr = 3e-3
    _, records = run_and_record(config)

    reward = per_rollout(records, 1, "reward_mean")
    kl = per_rollout(records, 1, "kl")
    first, last = reward[:8].mean(), reward[-8:].mean()
    assert last > first + 0.5, f"reward {first:.2f} -> {last:.2f}"
    assert kl[-8:].mean() < 10.0 and kl.max() < 20.0, kl  # per sequence of 8 tokens

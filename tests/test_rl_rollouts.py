"""The rollout plumbing of the ppo and grpo stages: sequences and log-probs agree with the
compiled sampler, the PPO targets compose the published formulas, the value head trains under
PEFT and is not exported, minibatch epochs, and the user errors (rewards, reward-model
tokenizer, long prompts)."""

from __future__ import annotations

import warnings

import jax
import ml_collections
import numpy as np
import pytest

from jaxtune import models, peft
from jaxtune.errors import UserError
from jaxtune.generate import generate
from jaxtune.rl import advantages, minibatches, rewards
from jaxtune.rl.rollout import Rollout
from jaxtune.rl.sequences import join, response_hidden, response_logps
from jaxtune.rl.value_head import KEY, add_value_head, drop_value_head, head_values
from tests.train_support import small_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_llama(tmp_path_factory.mktemp("rl_units") / "llama")
    model, params = models.load(path)
    return path, model, params


def test_rollout_logps_and_values_line_up_with_the_sampler(tiny):
    _, model, params = tiny
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 120, (4, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0  # left padding
    out = generate(
        model,
        params,
        ids,
        mask,
        max_new_tokens=8,
        temperature=0.7,
        rng=jax.random.key(1),
        eos_ids=(3,),
        bucket=False,
    )
    seq = join(ids, mask, np.asarray(out.tokens), np.asarray(out.mask))
    assert seq["input_ids"].shape == (4, 20) and seq["response_mask"].shape == (4, 8)
    hidden = response_hidden(model, params, seq)
    logps = response_logps(model, params, hidden, seq, temperature=0.7, chunk_size=7)
    np.testing.assert_allclose(np.asarray(logps), np.asarray(out.logprobs), atol=1e-4)
    with_head = add_value_head(params, jax.random.key(0), model.config.hidden_size)
    assert head_values(with_head, hidden).shape == (4, 8)


def numpy_ppo_targets(logp, ref, values, scores, mask, coef, gamma, lam):
    """InstructGPT's shaping + GAE + whitening, written out directly."""
    b, t = logp.shape
    kl = (logp - ref) * mask
    rewards = -coef * kl
    for i in range(b):
        rewards[i, int(mask[i].sum()) - 1] += scores[i]
    adv = np.zeros((b, t))
    for i in range(b):
        n, last = int(mask[i].sum()), 0.0
        for j in reversed(range(n)):
            next_v = values[i, j + 1] if j + 1 < n else 0.0
            last = rewards[i, j] + gamma * next_v - values[i, j] + gamma * lam * last
            adv[i, j] = last
    returns = (adv + values) * mask
    sel = adv[mask > 0]
    white = (adv - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8) * mask
    return white, returns, kl.sum(1).mean()


def test_ppo_targets_compose_the_published_formulas():
    rng = np.random.default_rng(1)
    b, t = 3, 6
    mask = (np.arange(t)[None] < np.array([[6], [4], [1]])).astype(np.float32)
    logp, ref, values = (rng.normal(size=(b, t)).astype(np.float32) * mask for _ in range(3))
    scores = rng.normal(size=b).astype(np.float32)
    out, metrics = advantages.ppo_targets(
        logp, ref, values, scores, mask, kl_coef=0.1, gamma=0.99, lam=0.9
    )
    adv, returns, kl = numpy_ppo_targets(logp, ref, values, scores, mask, 0.1, 0.99, 0.9)
    np.testing.assert_allclose(out["advantages"], adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["returns"], returns, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-5)


def test_value_head_trains_beside_lora_and_is_not_exported(tiny):
    _, model, params = tiny
    lora = peft.lora(params, "all-linear", rank=2, rng=jax.random.key(0))
    with_head = add_value_head(lora, jax.random.key(1), model.config.hidden_size)
    mask = peft.trainable_mask(with_head)
    assert mask[KEY]["kernel"] is True or bool(mask[KEY]["kernel"])
    assert not mask["embed_tokens"]["embedding"]
    trainable, _ = peft.split_trainable(with_head)
    assert trainable[KEY]["kernel"] is not None
    assert KEY not in drop_value_head(with_head)
    full = add_value_head(params, jax.random.key(1), model.config.hidden_size)
    assert bool(peft.trainable_mask(full)[KEY]["kernel"])


def test_minibatch_epochs_visit_every_row_once_per_epoch():
    arrays = {"x": np.arange(12)}
    out = list(
        minibatches.epochs(arrays, epochs=3, num_minibatches=4, rng=np.random.default_rng(0))
    )
    assert len(out) == 12 and all(len(b["x"]) == 3 for b in out)
    for e in range(3):
        assert sorted(np.concatenate([b["x"] for b in out[4 * e : 4 * e + 4]])) == list(range(12))
    with pytest.raises(UserError, match="num_minibatches=5 does not divide the 12 rows"):
        next(minibatches.epochs(arrays, epochs=1, num_minibatches=5, rng=np.random.default_rng()))


def test_reward_functions_resolve_and_check_their_output():
    assert rewards.resolve("exact_match") is rewards.BUILTINS["exact_match"]
    assert rewards.resolve(f"{__name__}:numpy_ppo_targets") is numpy_ppo_targets
    with pytest.raises(UserError, match="cannot import module 'no_such_module'"):
        rewards.resolve("no_such_module.reward")
    with pytest.raises(UserError, match="neither a built-in"):
        rewards.resolve("exactmatch")
    with pytest.raises(UserError, match="returned 1 scores for 2 completions"):
        rewards.call_reward("f", lambda c, **_: [1.0], ["a", "b"], {})
    with pytest.raises(UserError, match="non-finite"):
        rewards.call_reward("f", lambda c, **_: [1.0, float("nan")], ["a", "b"], {})


def test_reward_source_sums_weighted_functions():
    from jaxtune.rl.settings import RolloutSettings

    settings = RolloutSettings(reward_fn="exact_match, format", reward_weights="2,0.5")
    source = rewards.RewardSource.create(settings, small_tokenizer())
    rollout = Rollout(
        prompt_ids=np.ones((2, 3), np.int32),
        prompt_mask=np.ones((2, 3), np.int32),
        tokens=np.ones((2, 4), np.int32),
        mask=np.ones((2, 4), bool),
        finished=np.ones(2, bool),
        columns={"answer": np.array(["7", "8"], dtype=object)},
    )
    texts = ["<think>x</think><answer>7</answer>", "9"]
    scores, parts = source(rollout, ["q1", "q2"], texts)
    np.testing.assert_allclose(scores, [2.5, 0.0])
    assert parts == {"reward/exact_match": 0.5, "reward/format": 0.5}


def test_reward_model_with_another_tokenizer_is_a_user_error():
    with pytest.raises(UserError, match=r"tokenizer .* differs from the policy"):
        rewards.check_same_tokenizer(small_tokenizer(96), small_tokenizer(128), "runs/rm")
    rewards.check_same_tokenizer(small_tokenizer(128), small_tokenizer(128), "runs/rm")


def test_reward_model_vocabulary_smaller_than_the_ids_is_a_user_error(tiny):
    _, model, params = tiny
    scorer = rewards.RewardModelScorer(model, params, {"kernel": np.zeros((64, 1))}, "rm/")
    rollout = Rollout(
        prompt_ids=np.full((1, 2), 130, np.int32),  # ids past the 128-entry vocabulary
        prompt_mask=np.ones((1, 2), np.int32),
        tokens=np.ones((1, 2), np.int32),
        mask=np.ones((1, 2), bool),
        finished=np.ones(1, bool),
        columns={},
    )
    with pytest.raises(UserError, match="outside its vocabulary of 128"):
        scorer(rollout)


def test_prompts_longer_than_the_limit_are_truncated_and_counted():
    from jaxtune.data import make_batches, set_path
    from jaxtune.data.errors import DataWarning

    tok = small_tokenizer()
    config = {"train": set_path("prompts"), "truncation": "truncate"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = next(make_batches(config, tok, stage="ppo", batch_size=4, seq_len=12))
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert any("48 truncated to the cut-off" in m for m in messages), messages
    assert batch["prompt_mask"].all()  # every prompt fills the 12 columns
    text = tok.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )
    tail = tok(text, add_special_tokens=False)["input_ids"][-2:]  # "<|im_start|>assistant\n"
    assert (batch["prompt_ids"][:, -2:] == np.array(tail)).all()  # the end is kept


def stage_config(section: str, **values):
    from jaxtune.train.stages import grpo, ppo

    module = {"ppo": ppo, "grpo": grpo}[section]
    c = ml_collections.ConfigDict({section: module.default_config(), "train": {"loss_chunk": 64}})
    for key, value in values.items():
        c[section][key] = value
    return module, c


def test_stage_settings_errors_name_the_key():
    module, c = stage_config("ppo")
    with pytest.raises(UserError, match=r"config\.ppo has no reward"):
        module.make_stage(c)
    module, c = stage_config("ppo", reward_fn="exact_match", temperature=0.0)
    with pytest.raises(UserError, match=r"config\.ppo\.temperature=0\.0"):
        module.make_stage(c)
    module, c = stage_config("grpo", reward_fn="exact_match", num_generations=1)
    with pytest.raises(UserError, match="num_generations=1"):
        module.make_stage(c)
    module, c = stage_config("grpo", reward_fn="exact_match")
    assert module.make_stage(c).settings.group_size == 4
    c.data = ml_collections.ConfigDict({"eval": "heldout.jsonl"})
    with pytest.raises(UserError, match=r"data\.eval is set, but the grpo stage"):
        module.make_stage(c)


def test_separate_critic_has_its_own_trainable_weights(tiny):
    from jaxtune.rl.value_head import CRITIC, critic_params

    params = tiny[2]
    lora = peft.lora(params, "all-linear", rank=2, rng=jax.random.key(0))
    with_critic = add_value_head(lora, jax.random.key(1), 64, separate=True)
    mask = peft.trainable_mask(with_critic)
    assert bool(mask[KEY]["kernel"]) and not mask[CRITIC]["embed_tokens"]["embedding"]
    critic_q = with_critic[CRITIC]["layers"]["self_attn"]["q_proj"]["kernel"]
    policy_q = with_critic["layers"]["self_attn"]["q_proj"]["kernel"]
    assert critic_q.lora_a is not policy_q.lora_a  # own buffers (the step donates each once)
    assert bool(
        peft.trainable_mask(with_critic)[CRITIC]["layers"]["self_attn"]["q_proj"]["kernel"].lora_a
    )
    assert critic_params(with_critic) is with_critic[CRITIC]
    assert set(drop_value_head(with_critic)) == set(params)


def test_ppo_with_a_separate_critic_trains(tiny, tmp_path):
    from jaxtune.data import set_path
    from jaxtune.train import default_config, train

    path, _, _ = tiny
    c = default_config()
    c.stage, c.model.path, c.output_dir = "ppo", path, str(tmp_path / "run")
    c.data.train, c.data.truncation = set_path("prompts"), "truncate"
    c.train.steps, c.train.batch_size, c.train.seq_len, c.train.remat = 4, 4, 32, "none"
    c.train.save_every, c.log.tensorboard, c.optim.warmup_steps = 0, False, 0
    c.ppo.reward_fn, c.ppo.critic, c.ppo.max_new_tokens = "format", "separate", 8
    c.ppo.ppo_epochs, c.ppo.num_minibatches = 2, 2
    result = train(c)
    assert all(np.isfinite(v) for v in result.losses.values())
    critic = result.state.params["critic"]["layers"]["mlp"]["up_proj"]["kernel"]
    policy = result.state.params["layers"]["mlp"]["up_proj"]["kernel"]
    assert not np.allclose(critic, policy)  # trained apart from the policy

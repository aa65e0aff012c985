"""PPO and GRPO math against straightforward numpy implementations of the published formulas.

The numpy references below are written from the papers (GAE: Schulman et al. 2016; PPO clipped
objectives: Schulman et al. 2017; adaptive KL: Ziegler et al. 2019; KL estimators: Schulman's
"Approximating KL divergence" 2020; GRPO: Shao et al. 2024 with trl's reductions), with explicit
per-row loops over the true response lengths, independently of the JAX code. Fixed random
tensors with variable lengths; fp32; tolerance 1e-6.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.errors import UserError
from jaxtune.losses.grpo import group_advantages, grpo_loss
from jaxtune.losses.logprobs import chunked_token_logps, token_entropy, token_logps
from jaxtune.losses.ppo import (
    KLController,
    contains_eos,
    eos_penalty,
    explained_variance,
    gae,
    kl_penalty,
    masked_whiten,
    mean_entropy,
    policy_loss,
    token_rewards,
    value_loss,
)
from jaxtune.losses.verifiable import exact_match_reward, extract_answer, format_reward

TOL = dict(rtol=1e-6, atol=1e-6)
B, T = 6, 9
LENGTHS = [9, 3, 6, 1, 7, 4]


def f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


@pytest.fixture(scope="module")
def rollout():
    rng = np.random.default_rng(0)
    mask = f32([[1.0] * n + [0.0] * (T - n) for n in LENGTHS])
    logp = f32(-rng.gamma(2.0, 1.0, (B, T)))
    return {
        "mask": mask,
        "logprobs": logp,
        "old_logprobs": f32(logp + rng.normal(0, 0.3, (B, T))),
        "ref_logprobs": f32(logp + rng.normal(0, 0.5, (B, T))),
        "values": f32(rng.normal(0, 1, (B, T))),
        "old_values": f32(rng.normal(0, 1, (B, T))),
        "rewards": f32(rng.normal(0, 1, (B, T))),
        "advantages": f32(rng.normal(0, 1, (B, T))),
        "returns": f32(rng.normal(0, 1, (B, T))),
        "scores": f32(rng.normal(0, 2, B)),
    }


# ---------------------------------------------------------------- numpy references


def np_gae(rewards, values, lengths, gamma, lam):
    adv = np.zeros_like(rewards, dtype=np.float64)
    for i, n in enumerate(lengths):
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[i, t + 1] if t + 1 < n else 0.0
            delta = rewards[i, t] + gamma * next_value - values[i, t]
            running = delta + gamma * lam * running
            adv[i, t] = running
    ret = adv + np.where(np.arange(T) < np.array(lengths)[:, None], values, 0.0)
    return adv, ret


def np_valid(x, lengths):
    return np.concatenate([x[i, :n] for i, n in enumerate(lengths)]).astype(np.float64)


def np_whiten(x, lengths, shift_mean=True):
    v = np_valid(x, lengths)
    mean, var = v.mean(), v.var(ddof=1)
    out = (x - mean) / np.sqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return np.where(np.arange(T) < np.array(lengths)[:, None], out, 0.0)


def np_kl(logp, ref, kind):
    log_r = ref.astype(np.float64) - logp  # r = q / p with tokens sampled from p
    return {"k1": -log_r, "k2": log_r**2 / 2, "k3": (np.exp(log_r) - 1) - log_r}[kind]


def np_policy_loss(logp, old, adv, lengths, clip):
    ratio = np.exp(logp.astype(np.float64) - old)
    surrogate = np.minimum(ratio * adv, np.clip(ratio, 1 - clip, 1 + clip) * adv)  # L^CLIP
    return -np_valid(surrogate, lengths).mean()


def np_value_loss(v, v_old, ret, lengths, clip):
    clipped = v_old + np.clip(v.astype(np.float64) - v_old, -clip, clip)
    per = 0.5 * np.maximum((v - ret) ** 2, (clipped - ret) ** 2)
    return np_valid(per, lengths).mean()


# ---------------------------------------------------------------- PPO


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)])
def test_gae_equals_numpy(rollout, gamma, lam):
    r, v, m = rollout["rewards"], rollout["values"], rollout["mask"]
    adv, ret = gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(m), gamma=gamma, lam=lam)
    ref_adv, ref_ret = np_gae(r, v, LENGTHS, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, **TOL)
    np.testing.assert_allclose(ret, ref_ret, **TOL)
    # garbage in the padded tail changes nothing
    junk = jnp.where(jnp.asarray(m) > 0, jnp.asarray(v), 1e3)
    np.testing.assert_allclose(
        gae(jnp.asarray(r), junk, jnp.asarray(m), gamma=gamma, lam=lam)[0], ref_adv, **TOL
    )


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_equals_numpy(rollout, shift_mean):
    x, m = rollout["advantages"] * 3 + 1, rollout["mask"]
    ours = masked_whiten(jnp.asarray(x), jnp.asarray(m), shift_mean=shift_mean)
    np.testing.assert_allclose(ours, np_whiten(x, LENGTHS, shift_mean), **TOL)
    if shift_mean:
        valid = np_valid(np.asarray(ours), LENGTHS)
        assert abs(valid.mean()) < 1e-6 and abs(valid.std(ddof=1) - 1) < 1e-5


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimators_equal_numpy(rollout, kind):
    ours = kl_penalty(jnp.asarray(rollout["logprobs"]), jnp.asarray(rollout["ref_logprobs"]), kind)
    np.testing.assert_allclose(
        ours, np_kl(rollout["logprobs"], rollout["ref_logprobs"], kind), **TOL
    )
    if kind in ("k2", "k3"):
        assert (np.asarray(ours) >= 0).all()


def test_kl_estimators_are_unbiased_or_not_as_published():
    """Sampling from p: E[k1] = E[k3] = KL(p||q), k2 is biased; checked on a 5-way categorical."""
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    q = np.array([0.3, 0.3, 0.2, 0.1, 0.1])
    exact = float(np.sum(p * np.log(p / q)))
    logp, logq = jnp.log(jnp.asarray(p, jnp.float32)), jnp.log(jnp.asarray(q, jnp.float32))
    expect = {
        k: float(jnp.sum(jnp.asarray(p) * kl_penalty(logp, logq, k))) for k in ("k1", "k2", "k3")
    }
    assert abs(expect["k1"] - exact) < 1e-6 and abs(expect["k3"] - exact) < 1e-6
    assert abs(expect["k2"] - exact) > 1e-3


@pytest.mark.parametrize("clip", [0.1, 0.2])
def test_policy_loss_equals_numpy(rollout, clip):
    lp, old, adv, m = (rollout[k] for k in ("logprobs", "old_logprobs", "advantages", "mask"))
    out = policy_loss(
        jnp.asarray(lp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(m), clip=clip
    )
    np.testing.assert_allclose(float(out.loss), np_policy_loss(lp, old, adv, LENGTHS, clip), **TOL)
    ratio = np.exp(lp.astype(np.float64) - old)
    clipped = np.clip(ratio, 1 - clip, 1 + clip) * -adv > ratio * -adv
    frac = np_valid(clipped.astype(np.float64), LENGTHS).mean()
    np.testing.assert_allclose(float(out.means()["policy/clipfrac"]), frac, **TOL)
    assert 0 < frac < 1


def test_policy_loss_gradient_follows_advantage(rollout):
    """Unclipped (ratio 1), d loss / d log pi = -A / n on each counted token, 0 elsewhere."""
    lp, adv, m = (jnp.asarray(rollout[k]) for k in ("logprobs", "advantages", "mask"))
    grad = jax.grad(lambda x: policy_loss(x, lp, adv, m).loss)(lp)
    np.testing.assert_allclose(grad, -np.asarray(adv) * np.asarray(m) / m.sum(), **TOL)


@pytest.mark.parametrize("clip", [0.2, 0.5])
def test_value_loss_equals_numpy(rollout, clip):
    v, old, ret, m = (rollout[k] for k in ("values", "old_values", "returns", "mask"))
    out = value_loss(jnp.asarray(v), jnp.asarray(old), jnp.asarray(ret), jnp.asarray(m), clip=clip)
    np.testing.assert_allclose(float(out.loss), np_value_loss(v, old, ret, LENGTHS, clip), **TOL)


def test_token_rewards_and_eos_penalty(rollout):
    lp, ref, m, s = (rollout[k] for k in ("logprobs", "ref_logprobs", "mask", "scores"))
    kl = np_kl(lp, ref, "k1")
    ours = token_rewards(jnp.asarray(s), jnp.asarray(kl, jnp.float32), jnp.asarray(m), 0.1)
    expected = -0.1 * kl * m
    for i, n in enumerate(LENGTHS):
        expected[i, n - 1] += s[i]
    np.testing.assert_allclose(ours, expected, **TOL)

    ids = jnp.asarray([[5, 2, 0, 0], [5, 6, 7, 8], [2, 9, 9, 9]])
    resp_mask = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1]])
    has_eos = contains_eos(ids, resp_mask, eos_id=2)  # row 2's EOS sits on a padded slot
    np.testing.assert_array_equal(has_eos, [True, False, False])
    np.testing.assert_array_equal(contains_eos(ids, resp_mask, eos_id=[2, 8]), [True, True, False])
    penalised = eos_penalty(jnp.asarray([1.0, 1.0, 0.5]), has_eos, penalty=1.5)
    np.testing.assert_allclose(penalised, [1.0, -0.5, -1.0], **TOL)


def test_entropy_and_explained_variance(rollout):
    rng = np.random.default_rng(1)
    logits = f32(rng.normal(0, 2, (B, T, 11)))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ent = -(p * np.log(p)).sum(-1)
    m = rollout["mask"]
    np.testing.assert_allclose(token_entropy(jnp.asarray(logits)), ent, **TOL)
    out = mean_entropy(jnp.asarray(logits), jnp.asarray(m))
    np.testing.assert_allclose(float(out.loss), np_valid(ent, LENGTHS).mean(), **TOL)

    ret, v = rollout["returns"], rollout["values"]
    y, y_hat = np_valid(ret, LENGTHS), np_valid(v, LENGTHS)
    expected = 1 - np.var(y - y_hat) / np.var(y)
    ours = explained_variance(jnp.asarray(v), jnp.asarray(ret), jnp.asarray(m))
    np.testing.assert_allclose(float(ours), expected, **TOL)
    perfect = explained_variance(jnp.asarray(ret), jnp.asarray(ret), jnp.asarray(m))
    assert float(perfect) == 1.0


def test_kl_controllers_follow_ziegler():
    fixed = KLController(init_coef=0.2)
    assert float(fixed.update(fixed.init(), jnp.asarray(50.0), 64)) == pytest.approx(0.2)
    ctl = KLController(init_coef=0.2, target=6.0, horizon=10_000)
    coef, ref = ctl.init(), 0.2
    for kl in [1.0, 5.9, 6.0, 6.5, 30.0, 30.0]:
        coef = ctl.update(coef, jnp.asarray(kl), 256)
        ref *= 1 + np.clip(kl / 6.0 - 1, -0.2, 0.2) * 256 / 10_000
        np.testing.assert_allclose(float(coef), ref, rtol=1e-6)
    assert float(ctl.update(coef, jnp.asarray(30.0), 256)) > float(coef)  # too much KL: raise
    assert float(ctl.update(coef, jnp.asarray(1.0), 256)) < float(coef)
    with pytest.raises(UserError):
        KLController(target=-1.0)


# ---------------------------------------------------------------- GRPO


def np_group_advantages(rewards, k, scale="group", eps=1e-4):
    r = np.asarray(rewards, np.float64)
    out = np.empty_like(r)
    for g in range(len(r) // k):
        group = r[g * k : (g + 1) * k]
        std = {"group": group.std(ddof=1), "batch": r.std(ddof=1), "none": None}[scale]
        centred = group - group.mean()
        out[g * k : (g + 1) * k] = centred if std is None else centred / (std + eps)
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_numpy(scale):
    rng = np.random.default_rng(2)
    rewards = f32(rng.integers(0, 2, 12) + rng.normal(0, 0.1, 12))
    ours = group_advantages(jnp.asarray(rewards), 4, scale=scale)
    np.testing.assert_allclose(ours, np_group_advantages(rewards, 4, scale), **TOL)
    same = group_advantages(jnp.asarray(f32([1, 1, 1, 0, 0, 0])), 3)  # identical rewards: 0
    np.testing.assert_allclose(same, np.zeros(6), atol=1e-6)
    with pytest.raises(UserError, match="whole groups"):
        group_advantages(jnp.asarray(rewards), 5)


def np_grpo(logp, old, ref, adv, lengths, beta, eps, eps_high, loss_type, max_len):
    ratio = np.exp(logp.astype(np.float64) - old)
    a = adv[:, None]
    surrogate = np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps_high) * a)
    kl = np.exp(ref.astype(np.float64) - logp) - (ref - logp) - 1  # Shao et al. eq. 4
    per = -(surrogate - beta * kl)
    if loss_type == "grpo":  # 1/G sum_i 1/|o_i| sum_t
        return np.mean([per[i, :n].mean() for i, n in enumerate(lengths)])
    if loss_type == "bnpo":
        return np_valid(per, lengths).mean()
    return np_valid(per, lengths).sum() / (len(lengths) * max_len)


@pytest.mark.parametrize(
    "loss_type,beta,eps_high",
    [("grpo", 0.04, None), ("grpo", 0.0, 0.28), ("bnpo", 0.1, None), ("dr_grpo", 0.04, 0.3)],
)
def test_grpo_loss_equals_numpy(rollout, loss_type, beta, eps_high):
    lp, old, ref, m = (rollout[k] for k in ("logprobs", "old_logprobs", "ref_logprobs", "mask"))
    adv = f32(np.random.default_rng(3).normal(0, 1, B))
    out = grpo_loss(
        jnp.asarray(lp),
        jnp.asarray(old),
        jnp.asarray(ref),
        jnp.asarray(adv),
        jnp.asarray(m),
        beta=beta,
        epsilon=0.2,
        epsilon_high=eps_high,
        loss_type=loss_type,
        max_completion_length=12,
    )
    high = 0.2 if eps_high is None else eps_high
    expected = np_grpo(lp, old, ref, adv, LENGTHS, beta, 0.2, high, loss_type, 12)
    np.testing.assert_allclose(float(out.loss), expected, **TOL)
    if beta:
        kl = np_kl(lp, ref, "k3")
        np.testing.assert_allclose(float(out.means()["kl"]), np_valid(kl, LENGTHS).mean(), **TOL)


def test_grpo_on_policy_gradient_is_advantage_weighted(rollout):
    """One update per rollout (old = current): d loss / d log pi = -A_i / |o_i| / G."""
    lp, m = jnp.asarray(rollout["logprobs"]), jnp.asarray(rollout["mask"])
    adv = jnp.asarray(f32(np.linspace(-1, 1, B)))
    grad = jax.grad(lambda x: grpo_loss(x, None, None, adv, m, beta=0.0).loss)(lp)
    expected = -np.asarray(adv)[:, None] * np.asarray(m) / np.array(LENGTHS)[:, None] / B
    np.testing.assert_allclose(grad, expected, **TOL)


def test_verifiable_rewards():
    completions = [
        "<think>6*7</think> <answer>42</answer>",
        "so the total is 1,000.50 dollars",
        "Natalia sold 48 clips.\n#### 72",
        "The answer is $\\boxed{\\frac{1}{2}}$",
        "no digits here",
        "The answer is 3.",
    ]
    assert extract_answer(completions[3]) == "\\frac{1}{2}"
    assert extract_answer(completions[4]) is None
    rewards = exact_match_reward(
        completions, answer=["42", "1000.5", "72", "\\frac{1}{2}", "0", "4"]
    )
    assert rewards == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert format_reward(["<answer>x</answer>"], pattern=r"<answer>.*</answer>") == [1.0]


# ---------------------------------------------------------------- chunked log-probs


def test_chunked_token_logps_equal_full_and_grads_match():
    rng = np.random.default_rng(4)
    hidden = jnp.asarray(f32(rng.normal(0, 1, (3, 5, 8))))
    w = jnp.asarray(f32(rng.normal(0, 1, (8, 13))))
    targets = jnp.asarray(rng.integers(0, 13, (3, 5)))
    mask = jnp.asarray(f32(rng.integers(0, 2, (3, 5))))

    def full(w):
        return token_logps(hidden @ w, targets, mask, temperature=0.8)

    def chunked(w):
        return chunked_token_logps(
            hidden, lambda h: h @ w, targets, mask, chunk_size=4, temperature=0.8
        )

    np.testing.assert_allclose(jax.jit(chunked)(w), full(w), **TOL)
    g_full = jax.grad(lambda w: full(w).sum())(w)
    g_chunk = jax.jit(jax.grad(lambda w: chunked(w).sum()))(w)
    np.testing.assert_allclose(g_chunk, g_full, **TOL)
    _logp, ent = chunked_token_logps(
        hidden, lambda h: h @ w, targets, mask, chunk_size=7, with_entropy=True
    )
    np.testing.assert_allclose(ent, token_entropy(hidden @ w), **TOL)

"""Preference losses (DPO family, SimPO, ORPO, KTO, reward model) against trl 1.16's own code.

trl's loss code runs unmodified on tiny random torch Llamas: `DPOTrainer._compute_loss`,
`KTOTrainer._compute_loss`, `RewardTrainer.compute_loss` and the experimental
`CPOTrainer` / `ORPOTrainer.get_batch_loss_metrics`, each called on a trainer object that holds
only the attributes the method reads (no dataset, tokenizer or Trainer setup). Our losses get the
same policy and reference log-probs (or, for SimPO/ORPO/RM, the same logits / hidden states) and
must give the same loss and reported metrics to 1e-6 in fp32.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.errors import UserError
from jaxtune.losses.dpo import dpo_loss
from jaxtune.losses.kto import kto_kl, kto_loss, mismatched_rows
from jaxtune.losses.lm import lm_loss
from jaxtune.losses.logprobs import (
    concat_pairs,
    sequence_logps,
    split_pairs,
    token_entropy,
    token_logps,
)
from jaxtune.losses.orpo import orpo_loss
from jaxtune.losses.reward import last_token_index, pairwise_loss, sequence_reward
from jaxtune.losses.simpo import simpo_loss
from tests.losses_support import PAIRS, VOCAB, contract_rows, preference_batch

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

TOL = dict(rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- trl's view of the rows


def trl_tensors(rows: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The same rows as trl's collators give them: attention_mask, completion_mask, labels."""
    ids = torch.tensor(rows["input_ids"], dtype=torch.long)
    completion = np.zeros_like(rows["loss_mask"], dtype=np.int64)
    completion[:, 1:] = rows["loss_mask"][:, :-1] > 0  # position t predicts token t + 1
    completion = torch.tensor(completion)
    return {
        "input_ids": ids,
        "attention_mask": torch.tensor(rows["segment_ids"] > 0, dtype=torch.long),
        "completion_mask": completion,
        "labels": ids.masked_fill(completion == 0, -100),
    }


# ---------------------------------------------------------------- tiny torch models and trainers


def tiny_llama(seed: int, cls_name: str = "LlamaForCausalLM", init: float = 0.02):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        num_labels=1,
        initializer_range=init,
    )
    return getattr(transformers, cls_name)(config).eval()


def fused(model):
    """A model with trl's fused LM head, as DPOTrainer/KTOTrainer install it."""
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return model


@pytest.fixture(scope="module")
def policy_and_ref():
    """(sharper policy, flatter reference): their log-probs differ by a few nats per sequence."""
    return fused(tiny_llama(1, init=0.15)), fused(tiny_llama(2))


def bare(cls, model, **attrs):
    """A trainer object without Trainer.__init__: just what the loss method reads."""
    trainer = cls.__new__(cls)
    identity = lambda x: x
    fields = dict(
        model=model,
        accelerator=SimpleNamespace(
            device=torch.device("cpu"),
            gather=identity,
            gather_for_metrics=identity,
            unwrap_model=identity,
        ),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    trainer.__dict__.update(fields | attrs)
    return trainer


def trl_metrics(trainer) -> dict[str, float]:
    return {k: v[-1] for k, v in trainer._metrics["eval"].items()}


def fused_logps(model, t: dict[str, torch.Tensor]) -> np.ndarray:
    """Per-sequence completion log-probs exactly as trl's fused head computes them."""
    with torch.no_grad():
        out = model(
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            labels=t["labels"],
            fused_lm_head=True,
        )
    return out.log_probs.sum(1).numpy()


# ---------------------------------------------------------------- log-probs


def test_sequence_logps_equal_trl(policy_and_ref):
    """Our summed / averaged completion log-probs == trl's fused head and get_batch_logps."""
    from trl.experimental.cpo import CPOTrainer

    policy, _ = policy_and_ref
    cat = concat_pairs(preference_batch())
    t = trl_tensors({k: np.asarray(v) for k, v in cat.items()})
    with torch.no_grad():
        logits = policy(t["input_ids"], attention_mask=t["attention_mask"]).logits
    ours_sum = sequence_logps(jnp.asarray(logits.numpy()), cat["targets"], cat["loss_mask"])
    np.testing.assert_allclose(ours_sum, fused_logps(policy, t), **TOL)
    theirs_sum = CPOTrainer.get_batch_logps(logits, t["labels"], average_log_prob=False)
    theirs_avg = CPOTrainer.get_batch_logps(logits, t["labels"], average_log_prob=True)
    ours_avg = sequence_logps(
        jnp.asarray(logits.numpy()), cat["targets"], cat["loss_mask"], average=True
    )
    np.testing.assert_allclose(ours_sum, theirs_sum.numpy(), **TOL)
    np.testing.assert_allclose(ours_avg, theirs_avg.numpy(), **TOL)
    # masked positions contribute nothing, whatever their (even out-of-range) target
    junk = jnp.where(cat["loss_mask"] > 0, cat["targets"], 10_000)
    np.testing.assert_array_equal(
        sequence_logps(jnp.asarray(logits.numpy()), junk, cat["loss_mask"]), ours_sum
    )


def test_token_entropy_equals_torch():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 17)).astype(np.float32) * 3
    p = torch.softmax(torch.tensor(logits), -1)
    ref = -(p * torch.log_softmax(torch.tensor(logits), -1)).sum(-1)
    np.testing.assert_allclose(token_entropy(jnp.asarray(logits)), ref.numpy(), **TOL)
    ids = rng.integers(0, 17, (2, 5))
    hot = torch.log_softmax(torch.tensor(logits) / 0.7, -1).gather(-1, torch.tensor(ids)[..., None])
    np.testing.assert_allclose(
        token_logps(jnp.asarray(logits), jnp.asarray(ids), temperature=0.7),
        hot[..., 0].numpy(),
        **TOL,
    )


# ---------------------------------------------------------------- DPO family


@pytest.fixture(scope="module")
def dpo_inputs(policy_and_ref):
    policy, ref = policy_and_ref
    cat = concat_pairs(preference_batch())
    t = trl_tensors({k: np.asarray(v) for k, v in cat.items()})
    logps = split_pairs(jnp.asarray(fused_logps(policy, t)))
    ref_logps = split_pairs(jnp.asarray(fused_logps(ref, t)))
    lengths = split_pairs(jnp.sum(cat["loss_mask"], -1))
    return t, logps, ref_logps, lengths


def trl_dpo(policy, ref, t, loss_type: str, beta: float, label_smoothing: float = 0.0):
    from trl import DPOTrainer

    trainer = bare(
        DPOTrainer,
        policy,
        ref_model=ref,
        precompute_ref_logps=False,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
    )
    inputs = {k: t[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    with torch.no_grad():
        loss = trainer._compute_loss(policy, inputs, return_outputs=False)
    return float(loss), trl_metrics(trainer)


DPO_METRICS = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
]


@pytest.mark.parametrize(
    "loss_type,beta,smoothing",
    [
        ("sigmoid", 0.1, 0.0),
        ("sigmoid", 1.0, 0.0),
        ("ipo", 0.1, 0.0),
        ("hinge", 0.5, 0.0),
        ("robust", 0.3, 0.2),
    ],
)
def test_dpo_equals_trl(policy_and_ref, dpo_inputs, loss_type, beta, smoothing):
    policy, ref = policy_and_ref
    t, (pc, pr), (rc, rr), (lc, lr) = dpo_inputs
    theirs, metrics = trl_dpo(policy, ref, t, loss_type, beta, smoothing)
    out = dpo_loss(
        pc,
        pr,
        rc,
        rr,
        beta=beta,
        loss_type=loss_type,
        label_smoothing=smoothing,
        chosen_lengths=lc,
        rejected_lengths=lr,
    )
    np.testing.assert_allclose(float(out.loss), theirs, **TOL)
    means = out.means()
    for name in DPO_METRICS:
        np.testing.assert_allclose(float(means[name]), metrics[name], **TOL, err_msg=name)
    assert 0.0 < metrics["rewards/accuracies"] < 1.0  # the pairs are not all on one side
    if loss_type == "hinge":  # both sides of the hinge occur
        margins = beta * ((np.asarray(pc) - rc) - (np.asarray(pr) - rr))
        assert (margins > 1).any() and (margins < 1).any()


def test_cdpo_is_the_published_formula_and_trl_sigmoid_ignores_smoothing(
    policy_and_ref, dpo_inputs
):
    policy, ref = policy_and_ref
    t, (pc, pr), (rc, rr), _ = dpo_inputs
    beta, e = 0.5, 0.25
    d = (np.asarray(pc) - np.asarray(rc)) - (np.asarray(pr) - np.asarray(rr))
    logsig = lambda x: -np.logaddexp(0.0, -x)
    published = np.mean(-(1 - e) * logsig(beta * d) - e * logsig(-beta * d))
    out = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="cdpo", label_smoothing=e)
    np.testing.assert_allclose(float(out.loss), published, **TOL)
    # trl 1.16: loss_type="sigmoid" with label_smoothing gives plain DPO, not cDPO
    smoothed, _ = trl_dpo(policy, ref, t, "sigmoid", beta, label_smoothing=e)
    plain = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="sigmoid")
    np.testing.assert_allclose(smoothed, float(plain.loss), **TOL)
    assert abs(float(out.loss) - float(plain.loss)) > 1e-3


def test_dpo_rejects_bad_settings(dpo_inputs):
    _, (pc, pr), (rc, rr), _ = dpo_inputs
    with pytest.raises(UserError, match="cdpo"):
        dpo_loss(pc, pr, rc, rr, loss_type="sigmoid", label_smoothing=0.1)
    with pytest.raises(UserError, match="not one of"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")
    with pytest.raises(UserError, match="robust"):
        dpo_loss(pc, pr, rc, rr, loss_type="robust", label_smoothing=0.5)


# ---------------------------------------------------------------- SimPO and ORPO (no reference)


def trl_pair_batch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out = {}
    for side in ("chosen", "rejected"):
        rows = {k[len(side) + 1 :]: v for k, v in batch.items() if k.startswith(side)}
        t = trl_tensors(rows)
        out |= {f"{side}_{k}": t[k] for k in ("input_ids", "attention_mask", "labels")}
    return out


def policy_logits(model, cat) -> jnp.ndarray:
    with torch.no_grad():
        ids = torch.tensor(np.asarray(cat["input_ids"]), dtype=torch.long)
        mask = torch.tensor(np.asarray(cat["segment_ids"]) > 0, dtype=torch.long)
        return jnp.asarray(model(ids, attention_mask=mask, use_cache=False).logits.numpy())


@pytest.mark.parametrize("cpo_alpha,smoothing", [(0.0, 0.0), (1.0, 0.1)])
def test_simpo_equals_trl_cpo(cpo_alpha, smoothing):
    from trl.experimental.cpo import CPOTrainer

    policy = tiny_llama(5)
    batch = preference_batch(seed=1)
    beta, gamma = 2.0, 0.8
    trainer = bare(
        CPOTrainer,
        policy,
        is_encoder_decoder=False,
        pad_token_id=0,
        loss_type="simpo",
        alpha=0.0,
        beta=beta,
        simpo_gamma=gamma,
        label_smoothing=smoothing,
        cpo_alpha=cpo_alpha,
    )
    with torch.no_grad():
        theirs, metrics = trainer.get_batch_loss_metrics(policy, trl_pair_batch(batch))

    cat = concat_pairs(batch)
    logits = policy_logits(policy, cat)
    chosen_avg, rejected_avg = split_pairs(
        sequence_logps(logits, cat["targets"], cat["loss_mask"], average=True)
    )
    half = PAIRS
    total, count = lm_loss(logits[:half], cat["targets"][:half], cat["loss_mask"][:half])
    nll = total / count if cpo_alpha else None  # trl reports nll_loss 0 without cpo_alpha
    out = simpo_loss(
        chosen_avg,
        rejected_avg,
        beta=beta,
        gamma=gamma,
        label_smoothing=smoothing,
        chosen_nll=nll,
        sft_weight=cpo_alpha,
    )
    np.testing.assert_allclose(float(out.loss), float(theirs), **TOL)
    means = out.means()
    for name in DPO_METRICS + (["nll_loss"] if cpo_alpha else []):
        np.testing.assert_allclose(float(means[name]), metrics[name], **TOL, err_msg=name)


def test_orpo_equals_trl():
    from trl.experimental.orpo import ORPOTrainer

    policy = tiny_llama(6)
    batch = preference_batch(seed=2)
    beta = 0.2
    trainer = bare(ORPOTrainer, policy, is_encoder_decoder=False, padding_value=0, beta=beta)
    with torch.no_grad():
        theirs, metrics = trainer.get_batch_loss_metrics(policy, trl_pair_batch(batch))

    cat = concat_pairs(batch)
    logits = policy_logits(policy, cat)
    chosen_avg, rejected_avg = split_pairs(
        sequence_logps(logits, cat["targets"], cat["loss_mask"], average=True)
    )
    # trl's ORPO NLL: the chosen rows' whole sequence, prompt included
    whole = np.zeros(cat["segment_ids"].shape, np.float32)
    whole[:, :-1] = np.asarray(cat["segment_ids"])[:, 1:] > 0
    total, count = lm_loss(logits[:PAIRS], cat["targets"][:PAIRS], jnp.asarray(whole[:PAIRS]))
    out = orpo_loss(chosen_avg, rejected_avg, total / count, beta=beta)
    np.testing.assert_allclose(float(out.loss), float(theirs), **TOL)
    means = out.means()
    for name in [*DPO_METRICS, "nll_loss", "log_odds_ratio", "log_odds_chosen"]:
        np.testing.assert_allclose(float(means[name]), metrics[name], **TOL, err_msg=name)


# ---------------------------------------------------------------- KTO


def test_mismatched_rows_pair_prompt_i_with_completion_i_minus_1():
    seqs = [np.array([5, 6, 7, 8]), np.array([9, 10, 11, 12, 13]), np.array([14, 15, 16])]
    rows = contract_rows(seqs, [2, 3, 1], 8)
    kl = mismatched_rows(rows)
    # prompts [5 6], [9 10 11], [14]; completions [7 8], [12 13], [15 16]
    expected = [[5, 6, 15, 16], [9, 10, 11, 7, 8], [14, 12, 13]]
    again = contract_rows([np.array(e) for e in expected], [2, 3, 1], 8)
    for key in again:
        np.testing.assert_array_equal(kl[key], again[key], err_msg=key)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.33)])
def test_kto_equals_trl(policy_and_ref, weights):
    from trl import KTOTrainer

    ref, policy = policy_and_ref  # flatter policy: its KL estimate is > 0, so z0 is not clipped
    b = preference_batch(seed=4)
    rows = {
        k[len("chosen_") :]: np.concatenate([v, b["rejected_" + k[7:]]])[:7]
        for k, v in b.items()
        if k.startswith("chosen_")
    }  # 7 unpaired rows
    labels = np.array([1, 0, 1, 1, 0, 0, 1])
    kl_rows = mismatched_rows(rows)
    t, t_kl = trl_tensors(rows), trl_tensors(kl_rows)
    beta = 0.3
    trainer = bare(
        KTOTrainer,
        policy,
        ref_model=ref,
        calculate_KL=True,
        precompute_ref_logps=False,
        loss_type="kto",
        beta=beta,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
    )
    inputs = {
        "input_ids": t["input_ids"],
        "attention_mask": t["attention_mask"],
        "completion_mask": t["completion_mask"],
        "KL_input_ids": t_kl["input_ids"],
        "KL_attention_mask": t_kl["attention_mask"],
        "KL_completion_mask": t_kl["completion_mask"],
        "label": torch.tensor(labels.astype(bool)),
    }
    with torch.no_grad():
        theirs = float(trainer._compute_loss(policy, inputs, return_outputs=False))
    metrics = trl_metrics(trainer)

    kl = kto_kl(jnp.asarray(fused_logps(policy, t_kl)), jnp.asarray(fused_logps(ref, t_kl)))
    out = kto_loss(
        jnp.asarray(fused_logps(policy, t)),
        jnp.asarray(fused_logps(ref, t)),
        jnp.asarray(labels),
        kl,
        beta=beta,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
    )
    assert float(kl) > 0.1
    np.testing.assert_allclose(float(out.loss), theirs, **TOL)
    means = out.means()
    for name in [*DPO_METRICS[:3], "logps/chosen", "logps/rejected", "kl"]:
        np.testing.assert_allclose(float(means[name]), metrics[name], **TOL, err_msg=name)


# ---------------------------------------------------------------- reward model


def test_last_token_index_any_padding():
    mask = jnp.asarray([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(last_token_index(mask), [2, 4, 4, 1])


@pytest.mark.parametrize("with_margin,center", [(False, None), (True, 0.01)])
def test_reward_model_loss_equals_trl(with_margin, center):
    """Our head on the last non-pad token == LlamaForSequenceClassification's score, and our
    Bradley-Terry loss == RewardTrainer.compute_loss on the same model and pairs."""
    from trl import RewardTrainer

    model = tiny_llama(7, "LlamaForSequenceClassification")
    with torch.no_grad():  # a larger head than the default init, so rewards spread out
        model.score.weight.normal_(0.0, 1.0)
    cat = concat_pairs(preference_batch(seed=5))
    ids = torch.tensor(np.asarray(cat["input_ids"]), dtype=torch.long)
    mask = torch.tensor(np.asarray(cat["segment_ids"]) > 0, dtype=torch.long)
    inputs = {"input_ids": ids, "attention_mask": mask}
    margin = np.linspace(0.0, 1.0, PAIRS).astype(np.float32)
    if with_margin:
        inputs["margin"] = torch.tensor(margin)
    trainer = bare(RewardTrainer, model, args=SimpleNamespace(center_rewards_coefficient=center))
    with torch.no_grad():
        theirs = float(trainer.compute_loss(model, dict(inputs)))
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    metrics = trl_metrics(trainer)

    head = {"kernel": jnp.asarray(model.score.weight.detach().numpy().T)}
    scores = sequence_reward(head, jnp.asarray(hidden.numpy()), cat["segment_ids"] > 0)
    chosen, rejected = split_pairs(scores)
    out = pairwise_loss(
        chosen, rejected, margin=jnp.asarray(margin) if with_margin else None, center_coef=center
    )
    np.testing.assert_allclose(float(out.loss), theirs, **TOL)
    means = out.means()
    np.testing.assert_allclose(float(means["accuracy"]), metrics["accuracy"], **TOL)
    np.testing.assert_allclose(float(means["margin"]), metrics["margin"], **TOL)
    np.testing.assert_allclose(float(means["mean_reward"]), metrics["mean_reward"], **TOL)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust", "cdpo"])
def test_dpo_jits_and_its_gradient_raises_chosen_lowers_rejected(dpo_inputs, loss_type):
    _, (pc, pr), (rc, rr), (lc, lr) = dpo_inputs
    smoothing = 0.1 if loss_type in ("robust", "cdpo") else 0.0
    kwargs = dict(beta=0.1, loss_type=loss_type, label_smoothing=smoothing)

    def loss(pc, pr, rc, rr):
        return dpo_loss(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **kwargs).loss

    eager = loss(pc, pr, rc, rr)
    np.testing.assert_allclose(jax.jit(loss)(pc, pr, rc, rr), eager, **TOL)
    g_pc, g_pr, g_rc, g_rr = jax.grad(loss, argnums=(0, 1, 2, 3))(pc, pr, rc, rr)
    assert (np.asarray(g_pc) < 0).all() and (np.asarray(g_pr) > 0).all()
    assert not np.asarray(g_rc).any() and not np.asarray(g_rr).any()  # the reference is frozen

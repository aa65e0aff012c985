"""Batches follow the contract; packing, stages, shuffling, hosts, and exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxtune.data import (
    DataError,
    make_kto_batches,
    make_lm_batches,
    make_preference_batches,
    make_prompt_batches,
    set_path,
)
from tests.test_data_tokenizers import read_set, smollm2

ONE_HOST = dict(host_index=0, host_count=1)


def documents(batch, prefix=""):
    """Per row, the (ids, targets, loss_mask, positions) of each segment."""
    out = []
    for r in range(batch[prefix + "input_ids"].shape[0]):
        seg = batch[prefix + "segment_ids"][r]
        docs = []
        for s in range(1, seg.max() + 1):
            sel = seg == s
            docs.append(
                tuple(
                    batch[prefix + k][r][sel]
                    for k in ("input_ids", "targets", "loss_mask", "positions")
                )
            )
        out.append(docs)
    return out


def check_contract(batch, prefix=""):
    ids, seg = batch[prefix + "input_ids"], batch[prefix + "segment_ids"]
    assert ids.dtype == np.int32 and seg.dtype == np.int32
    assert batch[prefix + "loss_mask"].dtype == np.float32
    assert batch[prefix + "targets"].dtype == batch[prefix + "positions"].dtype == np.int32
    shapes = {
        batch[prefix + k].shape
        for k in ("input_ids", "targets", "loss_mask", "segment_ids", "positions")
    }
    assert len(shapes) == 1
    for r in range(ids.shape[0]):
        used = seg[r] > 0
        assert (
            not used[np.argmin(used) :].any() if not used.all() else True
        )  # padding only at the end
        assert (np.diff(seg[r][used]) >= 0).all()
    for row in documents(batch, prefix):
        for doc_ids, targets, loss_mask, positions in row:
            assert (positions == np.arange(len(doc_ids))).all()
            assert (targets[:-1] == doc_ids[1:]).all()  # next token within the document
            assert loss_mask[-1] == 0  # the last token predicts nothing of this document
    assert (batch[prefix + "loss_mask"][seg == 0] == 0).all()


def test_lm_batches_follow_the_contract_packed_and_not():
    tok = smollm2()
    config = {"train": set_path("chat"), "seed": 3}
    plain = make_lm_batches(config, tok, batch_size=4, seq_len=256, **ONE_HOST)
    packed = make_lm_batches(
        {**config, "packing": True}, tok, batch_size=4, seq_len=256, **ONE_HOST
    )
    b_plain, b_packed = next(plain), next(packed)
    check_contract(b_plain)
    check_contract(b_packed)
    assert b_plain["segment_ids"].max() == 1 and b_packed["segment_ids"].max() > 1
    # same stream order: the padded batch's documents are the first ones the packed batch holds
    packed_docs = {tuple(d[0]) for row in documents(b_packed) for d in row}
    assert all(tuple(row[0][0]) in packed_docs for row in documents(b_plain))
    assert packed.fill > plain.fill


def test_same_seed_same_batches_other_seed_other_order():
    tok = smollm2()
    make = lambda seed: next(
        make_lm_batches(
            {"train": set_path("instruct"), "seed": seed},
            tok,
            batch_size=8,
            seq_len=128,
            **ONE_HOST,
        )
    )
    a, b, c = make(1), make(1), make(2)
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["input_ids"] == c["input_ids"]).all()


def run(make, k, total):
    """Batches 0..total-1 straight, and with a restore (through JSON) after k batches."""
    straight = [next(it) for it in [make()] for _ in range(total)]
    first = make()
    head = [next(first) for _ in range(k)]
    state = json.loads(json.dumps(first.state()))
    resumed = make()
    resumed.restore(state)
    tail = [next(resumed) for _ in range(total - k)]
    return straight, head + tail


@pytest.mark.parametrize(
    "config",
    [
        {"train": set_path("instruct"), "packing": True},  # 40 rows: several epochs
        {"train": set_path("chat")},
        {
            "train": [set_path("instruct"), set_path("chat")],
            "mix_weights": [0.3, 0.7],
            "packing": True,
        },
        {
            "train": set_path("demo_pirate"),
            "streaming": True,
            "shuffle_buffer": 16,
            "packing": True,
        },
    ],
    ids=["packed-epochs", "padded", "mixture", "streaming"],
)
def test_resume_gives_the_same_batches(config):
    tok = smollm2()
    make = lambda: make_lm_batches(
        {**config, "seed": 5}, tok, batch_size=4, seq_len=192, **ONE_HOST
    )
    straight, resumed = run(make, k=7, total=16)
    for a, b in zip(straight, resumed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    seen = {tuple(d[0]) for batch in straight for row in documents(batch) for d in row}
    assert len(seen) > 8  # the run really moved through the data


def test_restore_refuses_other_settings():
    tok = smollm2()
    it = make_lm_batches({"train": set_path("chat")}, tok, batch_size=2, seq_len=256, **ONE_HOST)
    other = make_lm_batches({"train": set_path("chat")}, tok, batch_size=4, seq_len=256, **ONE_HOST)
    with pytest.raises(DataError, match="batch_size"):
        other.restore(it.state())


def test_mixture_follows_the_weights():
    tok = smollm2()
    config = {"train": [set_path("instruct"), set_path("demo_pirate")], "mix_weights": [0.2, 0.8]}
    it = make_lm_batches(config, tok, batch_size=50, seq_len=128, **ONE_HOST)
    batch = next(it)
    arr = tok.convert_tokens_to_ids("Arr")
    pirate = np.mean([(row == arr).any() for row in batch["input_ids"]])
    assert 0.6 < pirate < 0.95


def test_hosts_split_the_global_batch():
    tok = smollm2()
    config = {"train": set_path("instruct"), "packing": True, "seed": 1}
    whole = next(make_lm_batches(config, tok, batch_size=4, seq_len=128, **ONE_HOST))
    parts = [
        next(make_lm_batches(config, tok, batch_size=4, seq_len=128, host_index=h, host_count=2))
        for h in range(2)
    ]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_eval_is_one_ordered_pass_with_a_padded_last_batch():
    tok = smollm2()
    it = make_lm_batches(
        {"eval": set_path("demo_pirate_eval")},
        tok,
        batch_size=4,
        seq_len=128,
        split="eval",
        **ONE_HOST,
    )
    batches = list(it)
    assert len(batches) == 4  # 14 rows
    assert (batches[-1]["segment_ids"].max(axis=1) > 0).tolist() == [True, True, False, False]
    first = read_set("demo_pirate_eval")[0]["messages"]
    ref = tok.apply_chat_template(first)["input_ids"]
    assert batches[0]["input_ids"][0, : len(ref)].tolist() == ref


def test_preference_pairs_stay_together():
    tok = smollm2()
    config = {"train": set_path("preference"), "packing": True}
    batch = next(make_preference_batches(config, tok, batch_size=2, seq_len=256, **ONE_HOST))
    check_contract(batch, "chosen_")
    check_contract(batch, "rejected_")
    chosen, rejected = documents(batch, "chosen_"), documents(batch, "rejected_")
    rows = read_set("preference")
    for row_c, row_r in zip(chosen, rejected, strict=True):
        assert len(row_c) == len(row_r) > 1
        for (ids_c, _, mask_c, _), (ids_r, _, mask_r, _) in zip(row_c, row_r, strict=True):
            n = int(np.argmax(mask_c > 0))  # loss starts where the prompt ends (shared by both)
            assert n == int(np.argmax(mask_r > 0)) and (ids_c[: n + 1] == ids_r[: n + 1]).all()
            text = tok.decode(ids_r[n + 1 :])
            assert any(text.startswith(r["rejected"][0]["content"]) for r in rows)


def test_kto_batches_carry_labels_and_kl_sequences():
    tok = smollm2()
    batch = next(
        make_kto_batches(
            {"train": set_path("preference"), "shuffle": False},
            tok,
            batch_size=4,
            seq_len=256,
            **ONE_HOST,
        )
    )
    assert batch["kto_label"].tolist() == [1, 0, 1, 0]  # each pair -> desirable, undesirable
    check_contract(batch)
    check_contract(batch, "kl_")
    docs, kl = documents(batch), documents(batch, "kl_")
    for i in range(4):
        ids, _, mask, _ = docs[i][0]
        prompt_len = int(np.argmax(mask > 0)) + 1
        prev_ids, _, prev_mask, _ = docs[i - 1][0]
        prev_start = int(np.argmax(prev_mask > 0)) + 1
        expected = np.concatenate([ids[:prompt_len], prev_ids[prev_start:]])
        np.testing.assert_array_equal(kl[i][0][0], expected)


def test_prompt_batches_are_left_padded_generation_prompts():
    tok = smollm2()
    batch = next(
        make_prompt_batches(
            {"train": set_path("prompts"), "shuffle": False},
            tok,
            batch_size=3,
            prompt_len=64,
            **ONE_HOST,
        )
    )
    rows = read_set("prompts")[:3]
    for r, row in enumerate(rows):
        ref = tok.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], add_generation_prompt=True
        )["input_ids"]
        n = len(ref)
        assert batch["prompt_ids"][r, -n:].tolist() == ref
        assert batch["prompt_mask"][r].tolist() == [0] * (64 - n) + [1] * n
        assert batch["answer"][r] == row["answer"]
    with pytest.raises(DataError, match="packing is not supported"):
        make_prompt_batches(
            {"train": set_path("prompts"), "packing": True},
            tok,
            batch_size=3,
            prompt_len=64,
            **ONE_HOST,
        )


def test_pretraining_text_is_split_and_fully_learned():
    tok = smollm2()
    it = make_lm_batches(
        {"train": set_path("text"), "packing": True, "shuffle": False},
        tok,
        batch_size=2,
        seq_len=32,
        **ONE_HOST,
    )
    batch = next(it)
    check_contract(batch)
    docs = documents(batch)
    assert all(len(d[0]) <= 32 for row in docs for d in row)
    for row in docs:
        for _, _, mask, _ in row:
            assert mask[:-1].all()
    first_text = read_set("text")[0]["text"]
    assert batch["input_ids"][0].tolist() == tok(first_text)["input_ids"][:32]

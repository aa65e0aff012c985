"""Formats -> records, column mapping, and bad rows: errors naming file and row, or skip counts."""

from __future__ import annotations

import json

import pytest

from jaxtune.data import DataConfig, DataError, DataWarning, make_lm_batches
from jaxtune.data.errors import BadRow
from jaxtune.data.formats import (
    Chat,
    Pair,
    Prompt,
    Text,
    Unpaired,
    detect_format,
    read_row,
    to_kind,
)
from tests.test_data_tokenizers import sentencepiece_like, smollm2

U = lambda text: {"role": "user", "content": text}
A = lambda text: {"role": "assistant", "content": text}
S = lambda text: {"role": "system", "content": text}


def test_alpaca_with_input_system_and_history():
    row = {
        "instruction": "Add",
        "input": "2 and 3",
        "output": "5",
        "system": "Be exact.",
        "history": [["Hi", "Hello"]],
    }
    assert read_row(row, "alpaca", {}) == Chat(
        (S("Be exact."), U("Hi"), A("Hello"), U("Add\n2 and 3"), A("5"))
    )
    assert read_row({"instruction": "Add", "input": "", "output": "5"}, "alpaca", {}).messages == (
        U("Add"),
        A("5"),
    )


def test_sharegpt_tags_and_custom_columns():
    row = {
        "conv": [
            {"speaker": "me", "text": "Hi"},
            {"speaker": "bot", "text": "Yo"},
            {"speaker": "tool_out", "text": "42"},
            {"speaker": "bot", "text": "It is 42"},
        ]
    }
    columns = {
        "messages": "conv",
        "role_tag": "speaker",
        "content_tag": "text",
        "user_tag": "me",
        "assistant_tag": "bot",
        "observation_tag": "tool_out",
    }
    record = read_row(row, "sharegpt", columns)
    assert record.messages == (U("Hi"), A("Yo"), {"role": "tool", "content": "42"}, A("It is 42"))
    default = {
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
        "system": "Sys",
    }
    assert read_row(default, "sharegpt", {}).messages == (S("Sys"), U("Hi"), A("Yo"))


def test_openai_messages_with_content_parts():
    row = {
        "messages": [
            U("Hi"),
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
            },
        ]
    }
    assert read_row(row, "messages", {}).messages == (U("Hi"), A("Hello"))


def test_preference_explicit_and_implicit_prompt():
    explicit = {"prompt": "Q?", "chosen": "good", "rejected": "bad"}
    assert read_row(explicit, "preference", {}) == Pair((U("Q?"),), (A("good"),), (A("bad"),))
    implicit = {"chosen": [U("Q?"), A("good")], "rejected": [U("Q?"), A("bad")]}
    assert read_row(implicit, "preference", {}) == Pair((U("Q?"),), (A("good"),), (A("bad"),))
    pair = read_row(explicit, "preference", {})
    assert to_kind(pair, "unpaired") == [
        Unpaired((U("Q?"),), (A("good"),), True),
        Unpaired((U("Q?"),), (A("bad"),), False),
    ]
    assert to_kind(pair, "lm") == [Chat((U("Q?"), A("good")))]


def test_kto_prompt_and_text():
    kto = read_row({"prompt": [U("Q?")], "completion": "yes", "label": False}, "kto", {})
    assert kto == Unpaired((U("Q?"),), (A("yes"),), False)
    assert read_row(
        {"question": "2+2?", "answer": "4"}, "prompt", {"prompt": "question"}
    ) == Prompt((U("2+2?"),), "4")
    assert to_kind(Chat((U("Q"), A("x"))), "prompt") == [Prompt((U("Q"),), "x")]
    assert read_row({"body": "once upon"}, "text", {"text": "body"}) == Text("once upon")


def test_detect_format():
    assert detect_format(["messages"]) == "messages"
    assert detect_format(["conversations", "system"]) == "sharegpt"
    assert detect_format(["instruction", "input", "output"]) == "alpaca"
    assert detect_format(["prompt", "chosen", "rejected"]) == "preference"
    assert detect_format(["prompt", "completion", "label"]) == "kto"
    assert detect_format(["prompt", "answer"]) == "prompt"
    assert detect_format(["text"]) == "text"
    with pytest.raises(BadRow, match=r"data\.format"):
        detect_format(["foo"])


@pytest.mark.parametrize(
    "row, message",
    [
        ({"messages": [U("Hi")], "x": 1}, "must end with an assistant"),
        ({"instruction": "Hi"}, "missing field 'output'"),
        ({"instruction": "Hi", "output": 3}, "must be a string"),
        ({"messages": []}, "empty conversation"),
        ({"messages": "Hi"}, "must be a list of messages"),
        ({"messages": [U("Hi"), {"role": "robot", "content": "x"}]}, "unknown role"),
        ({"messages": [U("Hi"), A("a"), S("late"), A("b")]}, "only the first"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, row, message):
    alpaca = "instruction" in row
    good = (
        {"instruction": "Hi", "output": "Hello"} if alpaca else {"messages": [U("Hi"), A("Hello")]}
    )
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good, good, row, good]) + "\n")
    fmt = "alpaca" if alpaca else "messages"
    config = {"train": str(path), "format": fmt}
    with pytest.raises(DataError, match=rf"data.jsonl, row 3: .*{message}"):
        make_lm_batches(config, smollm2(), batch_size=2, seq_len=64, host_index=0, host_count=1)


def write_rows(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_skip_bad_rows_warns_with_counts(tmp_path):
    good = {"messages": [U("Hi"), A("Hello")]}
    two_users = {"messages": [U("a"), U("b"), A("c")]}
    rows = [good, {"messages": []}, two_users, good, {"messages": [U("Hi")]}, good]
    path = write_rows(tmp_path / "mixed.jsonl", rows)
    config = {"train": path, "template": "mistral"}  # mistral forbids two user turns in a row
    with pytest.raises(DataError, match=r"mixed.jsonl, row 2: .*empty"):
        make_lm_batches(
            config, sentencepiece_like(), batch_size=2, seq_len=64, host_index=0, host_count=1
        )
    with pytest.warns(DataWarning) as caught:
        it = make_lm_batches(
            {**config, "skip_bad_rows": True},
            sentencepiece_like(),
            batch_size=3,
            seq_len=64,
            host_index=0,
            host_count=1,
            split="train",
        )
    text = str(caught[0].message)
    assert "kept 3 of 6 rows" in text
    assert "1 empty conversation" in text and "1 template" in text and "1 no answer" in text
    assert "row 3" in text and "alternate" in text
    batch = next(it)
    assert (batch["segment_ids"][:, 0] == 1).all()
    # ChatML does not forbid two user turns: the same row is kept with the tokenizer's template
    with pytest.warns(DataWarning, match="kept 4 of 6"):
        make_lm_batches(
            {"train": path, "skip_bad_rows": True},
            smollm2(),
            batch_size=2,
            seq_len=64,
            host_index=0,
            host_count=1,
        )


def test_rows_longer_than_the_cutoff(tmp_path):
    long = {"messages": [U("word " * 80), A("answer " * 10)]}
    short = {"messages": [U("Hi"), A("Hello")]}
    path = write_rows(tmp_path / "long.jsonl", [short, long, short])
    base = {"train": path, "cutoff_len": 48}
    kwargs = dict(batch_size=2, seq_len=64, host_index=0, host_count=1)
    tok = smollm2()
    with pytest.raises(DataError, match=r"long.jsonl, row 2: .* longer than cutoff_len=48"):
        make_lm_batches(base, tok, **kwargs)
    with pytest.warns(DataWarning, match=r"kept 2 of 3 rows \(1 too long\)"):
        make_lm_batches({**base, "skip_bad_rows": True}, tok, **kwargs)
    with pytest.warns(DataWarning, match=r"kept 2 of 3 rows \(1 dropped\)"):
        make_lm_batches({**base, "truncation": "drop"}, tok, **kwargs)
    # truncate: the prompt alone fills the cut-off, nothing left to learn -> dropped, counted
    with pytest.warns(DataWarning, match=r"1 dropped"):
        make_lm_batches({**base, "truncation": "truncate"}, tok, **kwargs)
    long_answer = {"messages": [U("Hi"), A("answer " * 80)]}
    path2 = write_rows(tmp_path / "long2.jsonl", [short, long_answer])
    with pytest.warns(DataWarning, match=r"kept 2 of 2 rows \(1 truncated to the cut-off\)"):
        it = make_lm_batches(
            {**base, "train": path2, "truncation": "truncate", "shuffle": False}, tok, **kwargs
        )
    batch = next(it)
    assert (batch["segment_ids"][1] > 0).sum() == 48 and batch["loss_mask"][1, :47].sum() > 0


def test_config_errors(tmp_path):
    with pytest.raises(DataError, match=r"Did you mean data\.cutoff_len"):
        DataConfig.from_mapping({"cutof_len": 3})
    with pytest.raises(DataError, match="no such file"):
        make_lm_batches(
            {"train": str(tmp_path / "nope.jsonl")},
            smollm2(),
            batch_size=1,
            seq_len=8,
            host_index=0,
            host_count=1,
        )
    with pytest.raises(DataError, match="one weight per source"):
        DataConfig.from_mapping({"train": "a.jsonl,b.jsonl", "mix_weights": [1.0]})


def test_default_config_round_trip():
    from jaxtune.data import default_config, set_path

    config = default_config()
    config.train = set_path("chat") + "," + set_path("instruct")
    config.mix_weights = (1.0, 3.0)
    config.columns = {"prompt": "question"}
    data = DataConfig.from_mapping(config)
    assert [s.path for s in data.train] == [set_path("chat"), set_path("instruct")]
    assert data.template is None and data.cutoff_len is None and data.eval == ()
    assert data.weights() == (1.0, 3.0) and data.train[0].columns == {"prompt": "question"}


def test_identical_pairs_are_dropped_with_a_count(tmp_path):
    pair = {"prompt": "Q?", "chosen": "good", "rejected": "bad"}
    same = {"prompt": "Q?", "chosen": "same", "rejected": "same"}
    path = write_rows(tmp_path / "pairs.jsonl", [pair, same, pair])
    with pytest.warns(DataWarning, match=r"kept 2 of 3 rows \(1 identical pair\)"):
        from jaxtune.data import make_preference_batches

        make_preference_batches(
            {"train": path},
            smollm2(),
            batch_size=2,
            seq_len=64,
            **{"host_index": 0, "host_count": 1},
        )

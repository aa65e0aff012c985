"""`jaxtune label` (RLAIF): judges, answer parsing, counts of skipped rows, and output that the
preference stages read."""

from __future__ import annotations

import json

import pytest

from jaxtune.cli.main import main
from jaxtune.label import pairs, templates
from jaxtune.label.judges import RuleJudge
from tests.train_support import ROOT, small_tokenizer, tiny_llama


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("A", "A"),
        (" B.", "B"),
        ("a good one", None),
        ("Response B", "B"),
        ("The better response is A", "A"),
        ("Answer A is better than B", "A"),
        ('The correct answer is "B".', "B"),
        ("A:\n\nB\n\nThe correct answer is B", "B"),
        ("Response A is better than response B", "A"),
        ("Apples", None),
        ("", None),
        ("I cannot decide", None),
        ("Both", None),
    ],
)
def test_parse_choice(answer, expected):
    assert templates.parse_choice(answer) == expected


def test_parse_score():
    assert templates.parse_score("Score: 7/10") == 7.0
    assert templates.parse_score("10") == 10.0
    assert templates.parse_score("no idea") is None


ROWS = [
    {"prompt": "What is 2 + 3?", "responses": ["5", "6"], "answer": "5"},
    {"prompt": "What is 4 * 2?", "responses": ["It is 7", "8"], "answer": "8"},
    {"prompt": "What is 9 - 1?", "responses": ["7", "6"], "answer": "8"},  # tie: both wrong
    {"prompt": "What is 1 + 1?", "responses": ["2", "2"], "answer": "2"},  # one candidate
]


def test_rule_judge_orders_pairs_and_counts_skips():
    labelled, counts = pairs.label(ROWS, RuleJudge("exact_match"))
    assert [(p["chosen"], p["rejected"]) for p in labelled] == [("5", "6"), ("8", "It is 7")]
    assert counts.labelled == 2 and counts.skipped == {"tie": 1, "too_few": 1}


class ScriptedJudge:
    """A pairwise judge with fixed answers (the parser's output)."""

    def __init__(self, first, second):
        self.answers = [first, second]

    def choose(self, prompts, a, b):
        return self.answers.pop(0)


def test_unparseable_and_inconsistent_answers_are_counted_and_skipped():
    rows = ROWS[:3]
    judge = ScriptedJudge(["B", None, "A"], ["A", "B", "A"])
    labelled, counts = pairs.label(rows, judge, both_orders=True)
    assert [(p["chosen"], p["rejected"]) for p in labelled] == [("6", "5")]
    assert counts.skipped == {"unparseable": 1, "inconsistent": 1}


def test_label_command_writes_rows_the_preference_pipeline_reads(tmp_path):
    from jaxtune.data import make_batches

    src = tmp_path / "candidates.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    out = tmp_path / "prefs.jsonl"
    args = ["label", "--input", str(src), "--output", str(out)]
    assert main([*args, "--judge", "rule", "--rule", "exact_match"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6", "answer": "5"}
    batches = make_batches(
        {"train": str(out)}, small_tokenizer(), stage="rm", batch_size=2, seq_len=64
    )
    batch = next(batches)
    assert batch["chosen_input_ids"].shape == (2, 64) and batch["rejected_loss_mask"].sum() > 0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("label") / "llama")


def test_llm_judge_garbage_answers_are_counted_and_the_command_fails_clearly(
    tiny_model, tmp_path, capsys
):
    """A random tiny LLM answers neither A nor B: every row is counted unparseable."""
    model = tiny_model
    src = tmp_path / "candidates.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in ROWS[:2]) + "\n")
    status = main(
        [
            "label",
            "--input",
            str(src),
            "--output",
            str(tmp_path / "prefs.jsonl"),
            "--judge",
            "llm",
            "--judge-model",
            model,
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert "labelled 0 of 2 rows (skipped: 2 unparseable)" in err


def test_label_recipe_gives_the_flags_and_the_command_line_wins(tmp_path):
    src = tmp_path / "candidates.jsonl"
    rows = [dict(r, chosen="given", rejected="given too") for r in ROWS[:2]]  # not copied over
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        "def get_config():\n"
        f"    return dict(input={str(src)!r}, output='unused.jsonl', judge='rule',\n"
        "                rule='exact_match')\n"
    )
    out = tmp_path / "prefs.jsonl"
    assert main(["label", f"--config={recipe}", "--output", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["chosen"], r["rejected"]) for r in got] == [("5", "6"), ("8", "It is 7")]
    recipe.write_text("def get_config():\n    return dict(judje='rule')\n")
    assert main(["label", f"--config={recipe}"]) == 2  # unknown key: a user error


def test_rlaif_label_recipe_runs(tiny_model, tmp_path):
    """configs/rlaif_label.py with a tiny policy and a rule judge instead of SmolLM2."""
    out = tmp_path / "prefs.jsonl"
    recipe = f"--config={ROOT / 'configs' / 'rlaif_label.py'}"
    args = ["label", recipe, "--policy", tiny_model, "--output", str(out)]
    args += ["--judge", "rule", "--rule", "tests.test_rl_pipeline.rule_score"]
    assert main([*args, "--max-new-tokens", "8"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) > 20 and {"prompt", "chosen", "rejected"} <= set(rows[0])

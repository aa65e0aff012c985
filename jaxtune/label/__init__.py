"""RLAIF labelling: preference pairs judged by an AI (or a rule), for the `rm` and `dpo` stages.

    rows   = rows.read_rows("candidates.jsonl")            # {"prompt", "responses": [...]}
    rows   = sampling.add_samples(rows, policy, k=2)     # or sample k responses per prompt
    pairs, counts = pairs.label(rows, judge)             # judge: rule | reward model | LLM
    rows.write_pairs("prefs.jsonl", pairs)                  # {"prompt", "chosen", "rejected"}

Judges (judges.py): a scorer gives each response a number (a Python function, a reward model,
or an LLM asked for a 1-10 score with templates.SCORE) and the pair is (best, worst); a
pairwise LLM judge is asked which of two responses is better (templates.PAIRWISE), optionally
in both orders to cancel position bias. Answers that cannot be parsed, ties and inconsistent
verdicts are counted and the row is skipped. The command is `jaxtune label` (jaxtune.cli.label).
"""

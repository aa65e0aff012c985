"""RLAIF labelling for `jaxtune label`: sample two answers per prompt from a policy, let an AI
judge pick the better one, and write prompt/chosen/rejected JSONL for the `rm` and `dpo` stages.

    jaxtune label --config=configs/rlaif_label.py
    jaxtune label --config=configs/rlaif_label.py --policy runs/sft_lora/exported \
        --judge-model Qwen/Qwen2.5-1.5B-Instruct --output runs/rlaif/prefs.jsonl

Keys are the command's flags (dashes as underscores); flags on the command line win. Defaults:
the embedded SmolLM2-135M-Instruct both answers and judges, which runs offline but is too small
to judge: it answers with the same letter whatever the order, so `both_orders` drops nearly all
of its verdicts as inconsistent (5 of 8 on shipped pairs, 3 more unparseable). Give a larger
instruct model as --judge-model for real labels, or --judge rm / --judge rule.
"""

import ml_collections

from jaxtune.data import set_path


def get_config():
    return ml_collections.ConfigDict(
        dict(
            input=set_path("preference"),  # its prompts; the given answers are not used
            output="runs/rlaif/prefs.jsonl",
            policy="embedded",  # the embedded SmolLM2-135M-Instruct (your SFT model here)
            num_samples=2,  # candidates per prompt
            max_new_tokens=64,
            temperature=1.0,
            judge="llm",  # llm | rm | rule
            judge_model="embedded",  # the embedded SmolLM2-135M-Instruct
            llm_mode="pairwise",  # pairwise (A or B) | score (1-10)
            both_orders=True,  # ask again with A and B swapped; keep consistent verdicts
            rule="",  # judge=rule: exact_match, format or a dotted path
            seed=0,
            batch_size=16,
        )
    )

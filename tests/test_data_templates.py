"""Chat templates: token ids equal transformers' apply_chat_template; assistant masks exact."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from jaxtune.data import BUILTIN, DataError, TemplateBreaksPrefix, resolve_template
from jaxtune.data.errors import BadRow
from jaxtune.data.formats import Chat
from jaxtune.data.masks import learned_tokens, shift_targets
from jaxtune.data.tokenize import tokenize_records
from tests.test_data_tokenizers import read_set, sentencepiece_like, smollm2, with_tokens

OFFICIAL_DIR = Path(__file__).parent / "data" / "chat_templates"
# The `chat_template` strings of the models' own tokenizer_config.json, vendored verbatim (the hub
# is out of reach here); where they were read:
OFFICIAL = {
    # teknium/OpenHermes-2.5-Mistral-7B (plain ChatML): quoted in ggml-org/llama.cpp
    # tests/test-chat-template.cpp and in mistral.rs' test_chat_templates
    "chatml": "openhermes-2.5-mistral-7b",
    # Qwen/Qwen2.5-*-Instruct: chujiezheng/chat_templates chat_templates/qwen2.5-instruct.jinja,
    # and a Rust crate's test constant copied from the model's tokenizer_config.json
    "qwen": "qwen2.5-instruct",
    # Qwen/Qwen2-*-Instruct: the ChatML template with "You are a helpful assistant." that public
    # code vendors as Qwen2's (found through the code search; no repository name to cite)
    "qwen2": "qwen2-instruct",
    # meta-llama/Meta-Llama-3-{8B,70B}-Instruct, tokenizer_config.json at revision a5a71a75 (as
    # quoted by GoogleCloudPlatform vertex-ai-samples' PEFT template docs); llama.cpp's test has
    # the first revision, which lacks the add_generation_prompt guard
    "llama3": "meta-llama-3-instruct",
    # meta-llama/Llama-3.2-3B-Instruct as mirrored by unsloth/Llama-3.2-3B-Instruct (revision
    # 006f5dcd), quoted verbatim in a public test suite; its date is pinned through date_string
    "llama3.1": "llama-3.2-instruct",
    # mistralai/Mistral-7B-Instruct-v0.2 (and v0.1 since mid 2024), mistralai's "v1" template
    # with a system prompt: ggml-org/llama.cpp tests/test-chat-template.cpp
    "mistral": "mistral-7b-instruct-v0.2",
    # google/gemma-3-*-it: quoted in ShishirPatil/gorilla (BFCL) gemma handler; text parts only
    "gemma": "gemma-3-it",
}
# what transformers' apply_chat_template passes to an official template besides the messages
OFFICIAL_KWARGS = {"llama3.1": {"date_string": "26 Jul 2024"}}  # else today's date
# google/gemma-7b-it and gemma-2-*-it (both refuse a system turn): mistral.rs' test_chat_templates
GEMMA_1_2 = "gemma-7b-it"


def official(name: str) -> str:
    return (OFFICIAL_DIR / f"{name}.jinja").read_text()


def conversations() -> list[list[dict]]:
    """Shipped multi-turn chats (with and without system), instruction pairs, an edge case."""
    chats = [r["messages"] for r in read_set("chat")]
    pirate = [r["messages"] for r in read_set("demo_pirate")[:5]]
    edge = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  spaces around  "},
        {"role": "assistant", "content": "ok  "},
        {"role": "user", "content": "Ünïcödé ✓ and 数字 42"},
        {"role": "assistant", "content": "Fine: ✓ 数字."},
    ]
    return [*chats, *pirate, edge]


def tokenizer_for(template: str | None):
    """A tokenizer with the special tokens a model using `template` has."""
    if template in ("chatml", "qwen", "qwen2", "alpaca", "plain", None):
        return smollm2()
    if template in ("llama3", "llama3.1"):
        return with_tokens(
            smollm2(),
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            extra=["<|start_header_id|>", "<|end_header_id|>"],
        )
    if template == "gemma":
        return gemma_tokenizer()
    return sentencepiece_like()  # mistral: a SentencePiece-style model with <s> and </s>


@functools.cache
def gemma_tokenizer():
    return with_tokens(sentencepiece_like(), bos="<bos>", eos="<eos>")


def encode(tok, template, messages):
    (result,) = tokenize_records(
        [Chat(tuple(messages))], tok, resolve_template(tok, template), ["t"]
    )
    if isinstance(result, BadRow):
        raise result
    return result[0]


@pytest.mark.parametrize("template", [None, *sorted(set(BUILTIN) - {"chatml_qwen"})])
def test_token_ids_equal_apply_chat_template(template):
    """Ids equal transformers' rendering of the model's official template (SmolLM2's own for None;
    alpaca and plain have no model behind them and are checked against themselves)."""
    tok = tokenizer_for(template)
    if template is None:
        source = tok.chat_template
    else:
        source = official(OFFICIAL[template]) if template in OFFICIAL else BUILTIN[template]
    ours_template = resolve_template(tok, template)
    kwargs = OFFICIAL_KWARGS.get(template, {})
    for messages in conversations():
        ours = encode(tok, template, messages)
        ref = tok.apply_chat_template(messages, chat_template=source, **kwargs)["input_ids"]
        assert ours.ids.tolist() == ref
        # every span starts after the generation header and ends on the turn's EOS
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        assert len(ours.spans) == len(answers)
        for (start, end), turn in zip(ours.spans, answers, strict=True):
            assert messages[turn]["content"].strip()[:3] in tok.decode(ours.ids[start:end])
            # the prompt a generation starts from is the official one too
            prompt = tok.apply_chat_template(
                messages[:turn],
                chat_template=source,
                add_generation_prompt=True,
                tokenize=False,
                **kwargs,
            )
            assert ours_template.render(messages[:turn], add_generation_prompt=True) == prompt
            assert len(tok(prompt, add_special_tokens=False)["input_ids"]) <= start


def test_gemma_equals_gemma_1_and_2_without_system_turns():
    """Gemma 1/2 templates refuse a system turn; without one they render as Gemma 3's."""
    tok, source = tokenizer_for("gemma"), official(GEMMA_1_2)
    chats = [m for m in conversations() if m[0]["role"] != "system"]
    assert len(chats) > 10
    for messages in chats:
        ref = tok.apply_chat_template(messages, chat_template=source)["input_ids"]
        assert encode(tok, "gemma", messages).ids.tolist() == ref
    with pytest.raises(Exception, match="System role not supported"):
        tok.apply_chat_template(MULTI_TURN, chat_template=source)


GENERATION_TAGGED = {
    # the same templates with {% generation %} around what an assistant turn should learn
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + '<|im_end|>\\n' }}{% endgeneration %}"
        "{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{% for message in messages %}"
        "{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
}


@pytest.mark.parametrize("template", sorted(GENERATION_TAGGED))
def test_masks_equal_transformers_generation_tags(template):
    """Spans found prefix by prefix == transformers' assistant_masks from {% generation %}."""
    tok = tokenizer_for(template)
    for messages in conversations():
        ours = encode(tok, template, messages)
        ref = tok.apply_chat_template(
            messages,
            chat_template=GENERATION_TAGGED[template],
            return_assistant_tokens_mask=True,
        )
        assert ours.ids.tolist() == ref["input_ids"]
        mask = learned_tokens(len(ours.ids), ours.spans)
        assert mask.astype(int).tolist() == ref["assistant_masks"]


MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye now."},
]


def learned_pieces(tok, ids, learn) -> list[list[str]]:
    """Runs of consecutive learned tokens, as token strings."""
    runs, run = [], []
    for token, on in zip(tok.convert_ids_to_tokens(ids.tolist()), learn, strict=True):
        if on:
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    return [*runs, run] if run else runs


def test_multi_turn_boundaries_token_by_token():
    tok = smollm2()
    t = encode(tok, None, MULTI_TURN)
    tokens = tok.convert_ids_to_tokens(t.ids.tolist())
    learn = learned_tokens(len(t.ids), t.spans)
    assert learned_pieces(tok, t.ids, learn) == [
        ["Hello", "!", "<|im_end|>", "Ċ"],
        ["By", "e", "Ġnow", ".", "<|im_end|>", "Ċ"],
    ]
    for start, end in t.spans:  # just before: the whole header; just after: the next turn
        assert tok.decode(t.ids[:start]).endswith("<|im_start|>assistant\n")
        assert tokens[start - 1] == "Ċ" and tokens[start - 1 - 1] != "Ċ"
        assert tokens[end - 2 : end] == ["<|im_end|>", "Ċ"]
        assert end == len(tokens) or tokens[end] == "<|im_start|>"
    # targets / loss_mask: position t learns token t+1
    targets, loss_mask = shift_targets(t.ids, learn)
    learned_targets = tok.convert_ids_to_tokens(targets[loss_mask > 0].tolist())
    assert learned_targets == [
        "Hello",
        "!",
        "<|im_end|>",
        "Ċ",
        "By",
        "e",
        "Ġnow",
        ".",
        "<|im_end|>",
        "Ċ",
    ]
    assert loss_mask[-1] == 0 and (targets[:-1] == t.ids[1:]).all()


def test_mask_history_and_train_on_prompt():
    tok = smollm2()
    t = encode(tok, None, MULTI_TURN)
    last = learned_tokens(len(t.ids), t.spans, mask_history=True)
    assert learned_pieces(tok, t.ids, last) == [["By", "e", "Ġnow", ".", "<|im_end|>", "Ċ"]]
    everything = learned_tokens(len(t.ids), t.spans, train_on_prompt=True)
    assert everything.all()
    last_turn = learned_tokens(len(t.ids), t.spans, train_on_prompt=True, mask_history=True)
    assert (
        tok.decode(t.ids[last_turn])
        == "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nBye now.<|im_end|>\n"
    )


def test_template_that_rewrites_earlier_turns_is_refused():
    tok = smollm2()
    counting = (  # the header counts the messages, so earlier turns render differently later
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + (messages | length | string)"
        " + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(TemplateBreaksPrefix, match="turn by turn"):
        encode(tok, counting, MULTI_TURN)


def test_answer_merging_with_the_header_is_a_bad_row():
    tok = smollm2()
    # "assistant\n" + "\n" + "<|im_end|>": the header's newline and the answer's become one token
    merging = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n"}]
    assert tok.convert_ids_to_tokens(tok("\n\n")["input_ids"]) == ["ĊĊ"]
    # followed by text, the same newlines split and the span is exact
    fine = encode(tok, None, [merging[0], {"role": "assistant", "content": "\nHello"}])
    (start, end) = fine.spans[0]
    assert tok.decode(fine.ids[start:end]) == "\nHello<|im_end|>\n"
    with pytest.raises(BadRow, match="merge"):
        encode(tok, None, merging)


def test_template_raise_exception_and_sandbox():
    tok = sentencepiece_like()
    two_users = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
    ]
    with pytest.raises(BadRow, match="alternate"):
        encode(tok, "mistral", two_users)
    assert encode(smollm2(), "chatml", two_users).spans  # ChatML allows it
    with pytest.raises(BadRow, match="unsafe"):
        encode(tok, "{{ messages.__class__.__mro__ }}", MULTI_TURN)


def test_missing_or_unknown_template():
    tok = sentencepiece_like()  # has no chat template of its own
    with pytest.raises(DataError, match="no chat template"):
        resolve_template(tok, None)
    with pytest.raises(DataError, match="built-ins"):
        resolve_template(tok, "llama9")
    with pytest.raises(DataError, match="does not parse"):
        resolve_template(tok, "{% for %}")

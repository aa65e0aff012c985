"""Chat templates: the tokenizer's own jinja template, or a built-in one for base models.

Templates render in jinja's immutable sandbox with the globals transformers gives them
(raise_exception, strftime_now, tojson, namespace, loop controls), so a template renders here
exactly as `tokenizer.apply_chat_template` renders it. Built-ins are jinja strings too, each
rendering what the named model's own template renders for text chats (tests compare token ids
with the official templates, vendored under tests/data/chat_templates):

    chatml   <|im_start|>user\\n...<|im_end|>\\n          (OpenHermes-2.5 ChatML, no default system)
    qwen     chatml + "You are Qwen, created by Alibaba Cloud..."   (Qwen2.5-Instruct)
    qwen2    chatml + "You are a helpful assistant."                (Qwen2-Instruct)
    llama3   <|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n...<|eot_id|>
             (Meta-Llama-3-Instruct)
    llama3.1 llama3 + a system block "Cutting Knowledge Date: December 2023\\nToday Date:
             26 Jul 2024" (Llama 3.1-3.3 Instruct; 3.2's own template writes today's date)
    mistral  <s> [INST] ... [/INST] answer</s>              (Mistral-7B-Instruct v0.1/v0.2)
    gemma    <bos><start_of_turn>user\\n...<end_of_turn>\\n  (Gemma 3; system joins turn one,
             which Gemma 1/2 templates refuse)
    alpaca   ### Instruction: / ### Response:             (for base models)
    plain    prompt\\n answer<eos>                          (for base models)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

from jaxtune.data.errors import BadRow, DataError

BUILTIN: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "qwen": (  # Qwen2.5-Instruct: its own default system; tool results as user turns
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
        "{% else %}{% set system = 'You are Qwen, created by Alibaba Cloud. "
        "You are a helpful assistant.' %}{% set loop_messages = messages %}{% endif %}"
        "{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'tool' %}"
        "{{ '<|im_start|>user\\n<tool_response>\\n' + message['content']"
        " + '\\n</tool_response><|im_end|>\\n' }}"
        "{% else %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "qwen2": (  # Qwen2-Instruct: ChatML with a generic default system
        "{% for message in messages %}"
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{% for message in messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        " + message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "llama3.1": (  # Llama 3.1-3.3 Instruct: a system block with the knowledge cutoff and a date
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system_message = messages[0]['content'] | trim %}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}{% set system_message = '' %}{% set loop_messages = messages %}{% endif %}"
        "{{ '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: "
        "December 2023\\nToday Date: 26 Jul 2024\\n\\n' + system_message + '<|eot_id|>' }}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'tool' %}"
        "{{ '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message['content']"
        " + '<|eot_id|>' }}"
        "{% else %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        " + message['content'] | trim + '<|eot_id|>' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "mistral": (  # Mistral-7B-Instruct v0.1/v0.2 (the "v1" tokenizer), system in turn one
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
        "{% else %}{% set loop_messages = messages %}{% endif %}"
        "{{ bos_token }}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('After an optional system message, conversation roles must "
        "alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.first and system_message is defined %}"
        "{{ ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ ' [INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
        "{% else %}{{ raise_exception('Mistral templates take user and assistant turns "
        "after an optional system message, not ' + message['role']) }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    "gemma": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}"
        "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate "
        "user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '')"
        " + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
    "alpaca": (
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}{{ 'Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\\n\\n' }}"
        "{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
        "{% else %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "plain": (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% else %}{{ message['content'] + '\\n' }}{% endif %}"
        "{% endfor %}"
    ),
}
BUILTIN["chatml_qwen"] = BUILTIN["qwen"]


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace without underscore attributes (as transformers' sandbox)."""

    def __init__(*args: Any, **kwargs: Any):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


class _Dict:
    """`dict(...)` for templates without handing them the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Generation(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}` blocks; spans are found by prefixes."""

    tags = frozenset({"generation"})

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """A chat template compiled in the sandbox transformers uses."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise DataError(f"chat template does not parse (line {e.lineno}): {e.message}") from None


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled template and the special tokens it may read (bos_token, eos_token, ...)."""

    name: str
    source: str
    special_tokens: tuple[tuple[str, str], ...]

    def render(
        self, messages: Sequence[dict], *, add_generation_prompt: bool = False, tools: Any = None
    ) -> str:
        """The conversation as text; a template's raise_exception becomes a BadRow."""
        try:
            return compile_template(self.source).render(
                messages=list(messages),
                tools=tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **dict(self.special_tokens),
            )
        except jinja2.exceptions.TemplateError as e:
            raise BadRow(
                f"chat template {self.name!r} refused the conversation: {e}", "template"
            ) from None


def resolve_template(tokenizer: Any, template: str | None) -> ChatTemplate:
    """template None: the tokenizer's own; a BUILTIN name; or a jinja string."""
    if template is None:
        source = getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):
            source = source.get("default")
        if not source:
            raise DataError(
                "the tokenizer has no chat template; set data.template to one of "
                f"{sorted(BUILTIN)} (or a jinja string)"
            )
        name = "tokenizer"
    elif template in BUILTIN:
        name, source = template, BUILTIN[template]
    elif "{" in template:
        name, source = "custom", template
    else:
        raise DataError(f"unknown chat template {template!r}; built-ins: {sorted(BUILTIN)}")
    compile_template(source)
    tokens = tuple(
        sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str))
    )
    return ChatTemplate(name, source, tokens)

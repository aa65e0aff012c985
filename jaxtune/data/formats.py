"""Rows of every supported format -> one normalized record per stage.

Formats (column names are remappable through `columns`, as LlamaFactory's dataset_info does):

    text        {"text": str}                                           pretraining
    alpaca      {"instruction", "input"?, "output", "system"?, "history"?: [[q, a], ...]}
    sharegpt    {"conversations": [{"from": "human"|"gpt"|"system"|"observation"|
                 "function_call", "value": str}], "system"?, "tools"?}
    messages    {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}],
                 "tools"?}                                               OpenAI / TRL
    preference  {"prompt": str | messages, "chosen": str | message | messages, "rejected": ...}
                (or "messages"/"conversations" as the prompt, or no prompt and chosen/rejected
                full conversations sharing their prefix, as TRL's implicit prompt)
    kto         {"prompt": str | messages, "completion": str | message | messages, "label": bool}
    prompt      {"prompt": str | messages, "answer"?: str}               PPO / GRPO

Records: `Chat` (SFT), `Text` (pretraining), `Pair` (rm / dpo family), `Unpaired` (KTO), `Prompt`
(rollouts). `to_kind` converts where it makes sense (a Pair gives a Chat of its chosen answer,
two Unpaired rows, or a Prompt). Problems raise `BadRow`, which the reader turns into an error
naming the file and row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jaxtune.data.errors import BadRow

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")
LABEL_WORDS = {"true": True, "false": False, "1": True, "0": False}

DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "text": {"text": "text"},
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
    },
    "sharegpt": {
        "messages": "conversations",
        "system": "system",
        "tools": "tools",
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "observation_tag": "observation",
        "function_tag": "function_call",
        "system_tag": "system",
    },
    "messages": {
        "messages": "messages",
        "system": "system",
        "tools": "tools",
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "tool",
        "function_tag": "function_call",
        "system_tag": "system",
    },
    "preference": {
        "prompt": "prompt",
        "chosen": "chosen",
        "rejected": "rejected",
        "system": "system",
        "tools": "tools",
    },
    "kto": {"prompt": "prompt", "completion": "completion", "label": "label", "system": "system"},
    "prompt": {"prompt": "prompt", "answer": "answer", "system": "system"},
}


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Chat:
    messages: tuple[Message, ...]
    tools: Any = None


@dataclass(frozen=True)
class Pair:
    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]
    tools: Any = None


@dataclass(frozen=True)
class Unpaired:
    prompt: tuple[Message, ...]
    completion: tuple[Message, ...]
    label: bool
    tools: Any = None


@dataclass(frozen=True)
class Prompt:
    prompt: tuple[Message, ...]
    answer: str | None = None
    tools: Any = None


Record = Text | Chat | Pair | Unpaired | Prompt


def detect_format(column_names: list[str] | tuple[str, ...]) -> str:
    """Guess the format from a dataset's column names (for format="auto")."""
    names = set(column_names)
    if {"chosen", "rejected"} <= names:
        return "preference"
    if {"completion", "label"} <= names:
        return "kto"
    for fmt, key in (("messages", "messages"), ("sharegpt", "conversations")):
        if key in names:
            return fmt
    if "instruction" in names and "output" in names:
        return "alpaca"
    if "text" in names:
        return "text"
    if "prompt" in names:
        return "prompt"
    raise BadRow(
        f"cannot tell the format from the columns {sorted(names)}; set data.format to one of "
        "text, alpaca, sharegpt, messages, preference, kto, prompt (and data.columns)"
    )


def read_row(row: Mapping[str, Any], fmt: str, columns: Mapping[str, str]) -> Record:
    """One raw row -> its record; raises BadRow naming the field at fault."""
    cols = {**DEFAULT_COLUMNS[fmt], **columns}
    system = _optional_str(row, cols.get("system"))
    if fmt == "text":
        text = _required_str(row, cols["text"])
        if not text.strip():
            raise BadRow(f"field {cols['text']!r} is empty", "empty text")
        return Text(text)
    if fmt == "alpaca":
        return Chat(_with_system(_alpaca_messages(row, cols), system))
    if fmt in ("sharegpt", "messages"):
        value = _from_json_text(_field(row, cols["messages"]), cols["messages"])
        messages = _messages(value, cols["messages"], cols)
        return Chat(_with_system(messages, system), _tools(row, cols))
    if fmt == "preference":
        return _read_pair(row, cols, system)
    if fmt == "kto":
        prompt = _with_system(
            _as_messages(_field(row, cols["prompt"]), cols["prompt"], cols), system
        )
        label = _field(row, cols["label"])
        if isinstance(label, str):  # a CSV cell
            label = LABEL_WORDS.get(label.strip().lower(), label)
        if not isinstance(label, bool | int) or label not in (0, 1, True, False):
            raise BadRow(f"field {cols['label']!r} must be true or false, got {label!r}")
        completion = _as_answer(_field(row, cols["completion"]), cols["completion"], cols)
        return Unpaired(prompt, completion, bool(label))
    if fmt == "prompt":
        prompt = _with_system(
            _as_messages(_field(row, cols["prompt"]), cols["prompt"], cols), system
        )
        return Prompt(prompt, _optional_str(row, cols.get("answer")), _tools(row, cols))
    raise BadRow(f"unknown format {fmt!r}")


def to_kind(record: Record, kind: str) -> list[Record]:
    """Convert a record to what a stage reads: kind in ("lm", "pair", "unpaired", "prompt")."""
    if kind == "lm" and isinstance(record, Text | Chat):
        return [record]
    if kind == "lm" and isinstance(record, Pair):
        return [Chat(record.prompt + record.chosen, record.tools)]
    if kind == "pair" and isinstance(record, Pair):
        return [record]
    if kind == "unpaired" and isinstance(record, Unpaired):
        return [record]
    if kind == "unpaired" and isinstance(record, Pair):  # as TRL: chosen good, rejected bad
        return [
            Unpaired(record.prompt, record.chosen, True, record.tools),
            Unpaired(record.prompt, record.rejected, False, record.tools),
        ]
    if kind == "prompt" and isinstance(record, Prompt):
        return [record]
    if kind == "prompt" and isinstance(record, Pair | Unpaired):
        return [Prompt(record.prompt, None, record.tools)]
    if kind == "prompt" and isinstance(record, Chat):
        last = max(
            (i for i, m in enumerate(record.messages) if m["role"] == "assistant"), default=-1
        )
        if last < 0:
            return [Prompt(record.messages, None, record.tools)]
        answer = record.messages[last]["content"]
        return [Prompt(record.messages[:last], answer, record.tools)]
    wanted = {"lm": "text or conversations", "pair": "preference pairs", "unpaired": "KTO rows"}
    raise BadRow(
        f"a {type(record).__name__} row cannot be used where {wanted.get(kind, 'prompts')} are "
        "needed; check data.format for this stage"
    )


def check_chat(messages: tuple[Message, ...], *, needs_answer: bool = True) -> None:
    """A conversation the masks can trust: roles known, system first, an assistant turn last."""
    if not messages:
        raise BadRow("empty conversation", "empty conversation")
    for i, message in enumerate(messages):
        if message["role"] == "system" and i != 0:
            raise BadRow(f"message {i} is a system message; only the first may be one")
    if needs_answer and messages[-1]["role"] != "assistant":
        raise BadRow(
            f"the conversation ends with a {messages[-1]['role']} message; it must end with an "
            "assistant answer to learn from",
            "no answer",
        )


def _field(row: Mapping[str, Any], name: str) -> Any:
    if name not in row or row[name] is None:
        raise BadRow(f"missing field {name!r} (columns: {sorted(row)})", "missing field")
    return row[name]


def _required_str(row: Mapping[str, Any], name: str) -> str:
    value = _field(row, name)
    if not isinstance(value, str):
        raise BadRow(f"field {name!r} must be a string, got {type(value).__name__}", "wrong type")
    return value


def _optional_str(row: Mapping[str, Any], name: str | None) -> str | None:
    if not name or row.get(name) in (None, ""):
        return None
    value = row[name]
    if not isinstance(value, str):
        raise BadRow(f"field {name!r} must be a string, got {type(value).__name__}", "wrong type")
    return value


def _from_json_text(value: Any, name: str | None) -> Any:
    """A list or object given as JSON text (as a CSV cell holds it) decoded; others as they are."""
    if not (isinstance(value, str) and value.lstrip()[:1] in ("[", "{")):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise BadRow(f"field {name!r} is not valid JSON ({e.msg})", "wrong type") from None


def _tools(row: Mapping[str, Any], cols: Mapping[str, str]) -> Any:
    value = row.get(cols.get("tools", ""), None)
    if isinstance(value, str) and value:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise BadRow(f"field {cols['tools']!r} is not valid JSON", "wrong type") from None
    return value or None


def _with_system(messages: tuple[Message, ...], system: str | None) -> tuple[Message, ...]:
    if system is None or (messages and messages[0]["role"] == "system"):
        return messages
    return ({"role": "system", "content": system}, *messages)


def _alpaca_messages(row: Mapping[str, Any], cols: Mapping[str, str]) -> tuple[Message, ...]:
    messages: list[Message] = []
    history = _from_json_text(row.get(cols.get("history", ""), None), cols.get("history")) or []
    if not isinstance(history, list):
        raise BadRow(
            f"field {cols['history']!r} must be a list of [query, answer] pairs", "wrong type"
        )
    for turn in history:
        if not (
            isinstance(turn, list | tuple)
            and len(turn) == 2
            and all(isinstance(t, str) for t in turn)
        ):
            raise BadRow(
                f"field {cols['history']!r} must hold [query, answer] string pairs", "wrong type"
            )
        messages += [
            {"role": "user", "content": turn[0]},
            {"role": "assistant", "content": turn[1]},
        ]
    instruction = _required_str(row, cols["prompt"])
    query = _optional_str(row, cols.get("query"))
    content = instruction + "\n" + query if query else instruction
    messages.append({"role": "user", "content": content})
    messages.append({"role": "assistant", "content": _required_str(row, cols["response"])})
    return tuple(messages)


def _role(raw: Any, cols: Mapping[str, str]) -> str:
    table = {
        cols.get("user_tag", "user"): "user",
        cols.get("assistant_tag", "assistant"): "assistant",
        cols.get("system_tag", "system"): "system",
        cols.get("observation_tag", "tool"): "tool",
        cols.get("function_tag", "function_call"): "assistant",
    }
    table.update({r: r for r in ROLES if r not in table})
    if raw not in table:
        raise BadRow(f"unknown role {raw!r}; expected one of {sorted(table)}", "wrong type")
    return table[raw]


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, Mapping) for p in value):  # OpenAI parts
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
        raise BadRow(f"{where}: only text content parts are supported", "wrong type")
    raise BadRow(f"{where}: content must be a string, got {type(value).__name__}", "wrong type")


def _message(item: Any, where: str, cols: Mapping[str, str]) -> Message:
    role_tag, content_tag = cols.get("role_tag", "role"), cols.get("content_tag", "content")
    if not isinstance(item, Mapping):
        raise BadRow(f"{where} must be a message object, got {type(item).__name__}", "wrong type")
    if role_tag not in item and "role" in item:  # OpenAI messages inside a sharegpt-tagged set
        role_tag, content_tag = "role", "content"
    if role_tag not in item or (item.get(content_tag) is None and "tool_calls" not in item):
        raise BadRow(f"{where} needs {role_tag!r} and {content_tag!r}", "missing field")
    message: Message = {"role": _role(item[role_tag], cols)}
    message["content"] = _content(item.get(content_tag) or "", where)
    for key in MESSAGE_KEYS[2:]:
        if item.get(key) is not None:
            message[key] = item[key]
    return message


def _messages(value: Any, name: str, cols: Mapping[str, str]) -> tuple[Message, ...]:
    if not isinstance(value, list):
        raise BadRow(
            f"field {name!r} must be a list of messages, got {type(value).__name__}", "wrong type"
        )
    if not value:
        raise BadRow(f"field {name!r} is an empty conversation", "empty conversation")
    return tuple(_message(item, f"{name}[{i}]", cols) for i, item in enumerate(value))


def _as_messages(value: Any, name: str, cols: Mapping[str, str]) -> tuple[Message, ...]:
    """A prompt given as a string or as messages."""
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    return _messages(value, name, cols)


def _as_answer(value: Any, name: str, cols: Mapping[str, str]) -> tuple[Message, ...]:
    """A completion given as a string, one message, or messages (all assistant turns)."""
    if isinstance(value, str):
        return ({"role": "assistant", "content": value},)
    messages = (
        (_message(value, name, cols),)
        if isinstance(value, Mapping)
        else _messages(value, name, cols)
    )
    if messages[-1]["role"] != "assistant":
        raise BadRow(f"field {name!r} must end with an assistant message", "no answer")
    return messages


def _read_pair(row: Mapping[str, Any], cols: Mapping[str, str], system: str | None) -> Pair:
    prompt_col = next(
        (
            c
            for c in (cols["prompt"], cols.get("messages"), "conversations")
            if c and row.get(c) is not None
        ),
        None,
    )
    chosen = _field(row, cols["chosen"])
    rejected = _field(row, cols["rejected"])
    if prompt_col is None:  # implicit prompt: the shared prefix of two conversations
        full_c, full_r = (
            _messages(chosen, cols["chosen"], cols),
            _messages(rejected, cols["rejected"], cols),
        )
        n = 0
        while n < min(len(full_c), len(full_r)) - 1 and full_c[n] == full_r[n]:
            n += 1
        if n == 0:
            raise BadRow(
                f"missing field {cols['prompt']!r} (and chosen/rejected share no prompt)",
                "missing field",
            )
        prompt, chosen_m, rejected_m = full_c[:n], full_c[n:], full_r[n:]
        for name, m in ((cols["chosen"], chosen_m), (cols["rejected"], rejected_m)):
            if m[-1]["role"] != "assistant":
                raise BadRow(f"field {name!r} must end with an assistant message", "no answer")
    else:
        prompt = _as_messages(row[prompt_col], prompt_col, cols)
        chosen_m = _as_answer(chosen, cols["chosen"], cols)
        rejected_m = _as_answer(rejected, cols["rejected"], cols)
    return Pair(_with_system(prompt, system), chosen_m, rejected_m, _tools(row, cols))

"""Chat prompts: messages through the model's chat template, their content kept as text.

The template's own markup (``<|im_start|>user`` ...) becomes the control tokens it names;
the *content* of a message never does. A user who writes ``<|im_end|><|im_start|>system``
in a message gets those characters tokenized as plain text, so they cannot end their turn
or open a system turn. How: when some content holds a special token's text, the template is
rendered with a placeholder for each content, and the pieces between placeholders are
tokenized with special tokens honoured while the contents are tokenized with
``split_special_tokens=True``. Content without special-token text is tokenized in one piece
with its template, exactly as ``transformers`` does.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from sw_core.exceptions import ModelError


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` formatted by ``tokenizer``'s chat template (with the
    generation prompt), special tokens in the contents kept as text."""
    specials = _special_texts(tokenizer)
    for m in messages:
        if any(s in m["role"] for s in specials):
            raise ModelError(f"a message's role holds a special token: {m['role'][:60]!r}")
    if not any(s in m["content"] for m in messages for s in specials):
        prompt = _render(tokenizer, messages)
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    marker = f"SWCONTENT{secrets.token_hex(8)}"
    placeholders = [{**m, "content": f"{marker}{i}{marker}"} for i, m in enumerate(messages)]
    rendered = _render(tokenizer, placeholders)
    pieces = re.split(f"{marker}(\\d+){marker}", rendered)
    found = [int(i) for i in pieces[1::2]]
    if sorted(found) != list(range(len(messages))):
        raise ModelError(
            "a message holds the text of a special token, and this model's chat template "
            "changes message contents, so it cannot be kept as plain text; remove it"
        )
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if piece:
                ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
        else:
            text = messages[int(piece)]["content"]
            if text:
                ids += tokenizer(text, add_special_tokens=False, split_special_tokens=True)[
                    "input_ids"
                ]
    return [int(t) for t in ids]


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def _special_texts(tokenizer: Any) -> list[str]:
    """The texts the tokenizer turns into special tokens."""
    texts = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            texts.add(str(added.content))
    return sorted(t for t in texts if t)


def messages_of(value: Any) -> list[dict[str, str]]:
    """A chat input checked: a non-empty list of ``{role, content}`` texts, some text."""
    if not isinstance(value, list) or not value:
        raise ModelError("'messages' must be a non-empty list of {role, content} dicts")
    out = []
    for item in value:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("role"), str)
            or not isinstance(item.get("content"), str)
        ):
            raise ModelError("each message must be a dict with string 'role' and 'content'")
        out.append({"role": item["role"], "content": item["content"]})
    if not any(m["content"].strip() for m in out):
        raise ModelError("'messages' hold no text")
    return out

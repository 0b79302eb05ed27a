"""A chat request's prompt: its messages rendered with the model's chat template (lmgen.chat),
with vLLM's options (`add_generation_prompt`, `continue_final_message`,
`chat_template_kwargs`, `tools`, `documents`). Models without a template get lmgen's default
`Role: text` transcript, and `/v1/models` says so."""

from __future__ import annotations

import anyio

from lmgen.chat import (
    ChatFormat,
    ChatTemplateError,
    chat_format,
    encode_rendered,
    may_lack_content,
)
from lmgen.errors import LmgenError

from .errors import APIError, from_lmgen

# what a template's keywords may not replace: the request's own fields
RESERVED = {"messages", "tools", "documents", "add_generation_prompt", "continue_final_message"}
NO_TEMPLATE = (
    "this model has no chat template: /v1/chat/completions renders its messages as lmgen's "
    "plain 'Role: text' transcript (see docs/SERVER.md)"
)


def template_options(body, fmt: ChatFormat) -> dict:
    """The template's options from a chat or tokenize request (vLLM's names and defaults)."""
    cont = bool(getattr(body, "continue_final_message", None))
    add = getattr(body, "add_generation_prompt", None)
    if add is None:
        add = not cont  # vLLM's default is True, which continuing a message turns off
    options = {"add_generation_prompt": add, "continue_final_message": cont}
    tools = getattr(body, "tools", None)
    if tools:
        if fmt.is_default:
            raise APIError(
                400,
                f"tools need a chat template that renders them; {NO_TEMPLATE}",
                param="tools",
                code="unsupported",
            )
        options["tools"] = tools
    documents = getattr(body, "documents", None)
    if documents is not None:
        options["documents"] = documents
    kwargs = getattr(body, "chat_template_kwargs", None) or {}
    clash = sorted(RESERVED & set(kwargs))
    if clash:
        raise APIError(
            400,
            f"chat_template_kwargs may not set {', '.join(clash)}: give it as a request field",
            param="chat_template_kwargs",
            code="invalid_value",
        )
    return {**kwargs, **options}


def request_messages(body) -> list[dict]:
    """`body.messages` as a template takes them: a message's text parts joined by newlines
    into one string (as vLLM does: templates read `content` as a string, and lmgen's models
    read text only); a message without content is refused unless it is the assistant's (whose
    tool calls a template may render instead)."""
    messages = []
    for i, m in enumerate(body.messages):
        message = m.model_dump(exclude_none=True)
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = "\n".join(part["text"] for part in content)
        elif content is None and not may_lack_content(message["role"]):
            raise APIError(
                400,
                f"messages[{i}] ({message['role']}) has no content",
                param="messages",
                code="invalid_value",
            )
        messages.append(message)
    return messages


async def render_messages(fmt: ChatFormat, body) -> str:
    """The prompt text for `body.messages` (rendered off the event loop: a template may take
    up to lmgen.chat.RENDER_SECONDS); a template's failure is a 400 naming it."""
    messages = request_messages(body)
    options = template_options(body, fmt)
    try:
        return await anyio.to_thread.run_sync(lambda: fmt.render(messages, **options))
    except ChatTemplateError as e:
        raise from_lmgen(e, "messages") from None


async def encode_off_loop(encode, text: str, param: str) -> list[int]:
    """`encode()`, the ids of `text`, off the event loop (a long text takes a while); no text
    is no ids, and the tokenizer's refusal is a 400 naming `param`."""
    if not text:
        return []
    try:
        return await anyio.to_thread.run_sync(encode)
    except LmgenError as e:
        raise from_lmgen(e, param) from None


async def render_prompt(lm, fmt: ChatFormat, body, add_special_tokens: bool | None = None):
    """(text, token ids) of `body.messages` for `lm`: rendered (`render_messages`), then
    encoded as `lmgen.chat` encodes a conversation (`encode_rendered`: a template's own
    special tokens only; lmgen's default transcript with the tokenizer's BOS), unless
    `add_special_tokens` says otherwise (/tokenize's field)."""
    text = await render_messages(fmt, body)

    def encode() -> list[int]:
        if add_special_tokens is None:
            return encode_rendered(lm, fmt, text)
        return lm.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    return text, await encode_off_loop(encode, text, "messages")


def template_card(lm) -> dict:
    """What `/v1/models` says of a model's chat format."""
    fmt = chat_format(lm)
    if fmt.is_default:
        return {"chat_template": False, "warnings": [NO_TEMPLATE]}
    return {"chat_template": True}

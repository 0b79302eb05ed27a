"""A chat request's prompt: its messages rendered with the model's chat template (lmgen.chat),
with vLLM's options (`add_generation_prompt`, `continue_final_message`,
`chat_template_kwargs`, `tools`, `documents`). Models without a template get lmgen's default
`Role: text` transcript, and `/v1/models` says so."""

from __future__ import annotations

import anyio

from lmgen.chat import ChatFormat, ChatTemplateError, chat_format

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


async def render_messages(fmt: ChatFormat, body) -> str:
    """The prompt text for `body.messages` (rendered off the event loop: a template may take
    up to lmgen.chat.RENDER_SECONDS); a template's failure is a 400 naming it."""
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    options = template_options(body, fmt)
    try:
        return await anyio.to_thread.run_sync(lambda: fmt.render(messages, **options))
    except ChatTemplateError as e:
        raise from_lmgen(e, "messages") from None


def template_card(lm) -> dict:
    """What `/v1/models` says of a model's chat format."""
    fmt = chat_format(lm)
    if fmt.is_default:
        return {"chat_template": False, "warnings": [NO_TEMPLATE]}
    return {"chat_template": True}

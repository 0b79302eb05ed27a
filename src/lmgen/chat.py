"""Chat templates, rendered as transformers' `apply_chat_template` renders them.

A model's template is Jinja text shipped with it (`tokenizer_config.json`'s `chat_template`,
a `chat_template.jinja` file, or a GGUF file's `tokenizer.chat_template`). It runs here in
jinja2's immutable sandbox with transformers' settings (`trim_blocks`, `lstrip_blocks`,
`loopcontrols`, a `tojson` that does not escape HTML, `raise_exception`, `strftime_now`, the
special tokens as variables), so the text and the ids equal transformers'. Templates are
untrusted code: rendering also has a time limit and a size limit, and every failure is a
`ChatTemplateError` (a `ConfigError`) naming the template.

Models without a template (the bundled ones) get `DEFAULT_TEMPLATE`, lmgen's plain
`Role: text` transcript, which ends a reply at the next role line (`DEFAULT_STOP`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

# lmgen's transcript for models that have no template of their own (it is what
# /v1/chat/completions has always sent them): one `Role: text` line per message, then
# `Assistant:`. A reply ends where the model starts the next role's line.
DEFAULT_TEMPLATE = (
    "{%- set roles = {'system': 'System', 'developer': 'System', 'user': 'User', "
    "'assistant': 'Assistant', 'tool': 'Tool'} -%}\n"
    "{%- for message in messages -%}\n"
    "{%- if not loop.first %}{{ '\\n' }}{% endif -%}\n"
    "{{ roles[message.role] + ': ' }}\n"
    "{%- if message.content is string %}{{ message.content }}\n"
    "{%- elif message.content %}{% for part in message.content %}{{ part.text }}{% endfor %}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt %}{{ '\\nAssistant:' }}{% endif -%}\n"
)
DEFAULT_STOP = ("\nUser:", "\nSystem:")
# Tokens that end a turn in the templates people use (ChatML, Llama 3, Gemma, Phi-3); the
# template's own is also found by rendering (see `end_of_turn_ids`).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>")
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

RENDER_SECONDS = 2.0  # a template that runs longer fails
MAX_RENDERED = 4 << 20  # characters a template may write
MAX_SEQUENCE = 1 << 20  # items a `*` in a template may build
_REASONING = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' marker, so trimming agrees


class ChatTemplateError(ConfigError):
    """A chat template failed (raised, ran too long, broke the sandbox) or cannot take the
    conversation."""

    def __init__(self, message: str, param: str | None = "messages"):
        super().__init__(message, param)


# -- reading ----------------------------------------------------------------------------------


def may_lack_content(role: str) -> bool:
    """Whether a message of `role` may come without content: only the assistant's, whose tool
    calls a template may render instead. The command line and the server refuse the others."""
    return role == "assistant"


def read_chat_template(path: str | Path) -> str | None:
    """The chat template of a model directory: `chat_template.jinja` when present (it wins,
    as in transformers), else `tokenizer_config.json`'s `chat_template`; None when neither."""
    directory = Path(path)
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"cannot read {jinja}: {e}") from None
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {config}: {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{config} is not a JSON object")
    return pick_template(data.get("chat_template"), str(config))


def pick_template(value: Any, source: str) -> str | None:
    """`chat_template` as tokenizer_config.json holds it: a string, or a list of
    `{"name", "template"}` of which the one named `default` is used (as transformers does)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(t, dict)
        and isinstance(t.get("name"), str)
        and isinstance(t.get("template"), str)
        for t in value
    ):
        named = {t["name"]: t["template"] for t in value}
        if "default" in named:
            return named["default"]
        if named:
            first = next(iter(named))
            log.warning("%s names no default chat template; using %r", source, first)
            return named[first]
        return None
    raise ModelLoadError(
        f"{source}: chat_template must be a string or a list of {{name, template}} objects"
    )


# -- the sandbox ------------------------------------------------------------------------------

_deadline: ContextVar[float] = ContextVar("chat_template_deadline", default=float("inf"))


def _tick() -> None:
    if time.monotonic() > _deadline.get():
        raise TimeoutError(f"it ran longer than {RENDER_SECONDS:g} s")


@lru_cache(maxsize=1)
def _environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        """transformers' environment, with a clock read at every call, attribute and item
        access, and a cap on sequences a template multiplies up."""

        intercepted_binops = frozenset({"*", "**"})

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
            _tick()
            return super().call(__context, __obj, *args, **kwargs)

        def getattr(self, obj, attribute):
            _tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            _tick()
            return super().getitem(obj, argument)

        def call_binop(self, context, operator, left, right):
            _tick()
            if operator == "*":
                for seq, k in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(k, int):
                        if len(seq) * k > MAX_SEQUENCE:
                            raise MemoryError(f"a sequence of {len(seq) * k} items")
            if operator == "**" and isinstance(right, int) and abs(right) > 1024:
                raise MemoryError(f"a power of {right}")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format):
        return datetime.now().strftime(format)

    class Namespace(jinja2.utils.Namespace):
        """`namespace()` that refuses underscore names (no way into Python's internals)."""

        def __init__(*args, **kwargs):
            self, attrs = args[0], dict(*args[1:], **kwargs)
            for key in attrs:
                Namespace._check(key)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} refused")

    class Dict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(
        raise_exception=raise_exception, strftime_now=strftime_now, namespace=Namespace, dict=Dict()
    )
    return env


@lru_cache(maxsize=32)
def _compile(template: str):
    return _environment().from_string(template)


# -- rendering --------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """What a template may see: JSON-like data only (pydantic models and dataclasses become
    dicts; str/int/float subclasses their base type; anything else a `<TypeName>` string)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain(value.model_dump())
    return f"<{type(value).__name__}>"


def normalize_messages(messages: Sequence[Any]) -> list[dict]:
    """Messages as plain dicts, keys whose value is None dropped (templates test for a key,
    not for null), a reasoning field copied under the names templates read."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError("messages must be a list of {role, content} objects")
    out = []
    for k, m in enumerate(plain(list(messages))):
        if not isinstance(m, dict):
            raise ChatTemplateError(f"message {k} is not an object: {m!r}")
        m = {key: v for key, v in m.items() if v is not None}
        reasoning = next((m[f] for f in _REASONING if m.get(f) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def render(
    template: str,
    messages: Sequence[Any],
    *,
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    variables: Mapping[str, Any] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    name: str = "the chat template",
) -> str:
    """`messages` rendered by `template`, as transformers' `apply_chat_template(...,
    tokenize=False)`. `variables` are the special tokens (`special_tokens(tokenizer)`);
    `template_kwargs` more variables (e.g. `enable_thinking=False`), which override them.
    `continue_final_message` leaves the last message open for the model to continue. `name`
    names the template in errors."""
    if add_generation_prompt and continue_final_message:
        raise ChatTemplateError(
            "add_generation_prompt and continue_final_message cannot both be set: the first "
            "opens a new assistant turn, the second continues the last message",
            "continue_final_message",
        )
    chat = normalize_messages(messages)
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise ChatTemplateError("tools must be a list of JSON schema objects", "tools")
    if documents is not None and not (
        isinstance(documents, list) and all(isinstance(d, dict) for d in documents)
    ):
        raise ChatTemplateError("documents must be a list of objects", "documents")
    final = None
    if continue_final_message:
        chat, final = _tag_final_message(chat, template)
    context = {**plain(dict(variables or {})), **plain(dict(template_kwargs or {}))}
    context.update(
        messages=chat,
        tools=plain(tools),
        documents=plain(documents),
        add_generation_prompt=bool(add_generation_prompt),
    )
    text = run_template(template, context, name)
    if final is not None:
        text = _cut_at_tag(text, final)
    return text


def run_template(template: str, context: dict, name: str) -> str:
    """The template's output for `context`, within the time and size limits."""
    token = _deadline.set(time.monotonic() + RENDER_SECONDS)
    try:
        compiled = _compile(template)
        parts, size = [], 0
        for piece in compiled.generate(**context):
            _tick()
            size += len(piece)
            if size > MAX_RENDERED:
                raise MemoryError(f"it wrote more than {MAX_RENDERED} characters")
            parts.append(piece)
        return "".join(parts)
    except ChatTemplateError:
        raise
    except Exception as e:  # the template is untrusted code: any failure is its failure
        kind = type(e).__name__
        detail = " ".join(str(e).split()) or kind
        if kind not in ("TemplateError", "TimeoutError"):
            detail = f"{kind}: {detail}"
        raise ChatTemplateError(f"{name} failed: {detail}") from None
    finally:
        _deadline.reset(token)


def _tag_final_message(chat: list[dict], template: str) -> tuple[list[dict], str]:
    """A marker appended to the last message's text, so that the rendered text can be cut
    right after it (transformers' way, which the trimming below matches)."""
    if not chat:
        raise ChatTemplateError("continue_final_message needs at least one message")
    last = dict(chat[-1])
    if "content" not in template:
        raise ChatTemplateError("continue_final_message: this template never reads 'content'")
    content = last.get("content")
    if isinstance(content, str):
        final, last["content"] = content, content + _CONTINUE_TAG
    elif isinstance(content, (list, tuple)):
        parts = [dict(p) if isinstance(p, dict) else p for p in content]
        k = next(
            (
                i
                for i in reversed(range(len(parts)))
                if isinstance(parts[i], dict) and "text" in parts[i]
            ),
            None,
        )
        if k is None:
            raise ChatTemplateError("continue_final_message: the last message has no text")
        final = parts[k]["text"]
        parts[k]["text"] = final + _CONTINUE_TAG
        last["content"] = parts
    else:
        raise ChatTemplateError("continue_final_message: the last message has no content")
    return [*chat[:-1], last], final


def _cut_at_tag(text: str, final: str) -> str:
    tag = _CONTINUE_TAG.strip()
    if final.strip() not in text or tag not in text:
        raise ChatTemplateError(
            "continue_final_message: the template does not write the last message as given, "
            "so there is nothing to continue"
        )
    at = text.rindex(tag)
    if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return text[:at]
    return text[:at].rstrip()  # the template trimmed the message's end: so does the cut


# -- a model's chat format --------------------------------------------------------------------


def special_tokens(tokenizer) -> dict[str, str]:
    """The special tokens a template sees (`bos_token`, `eos_token`, ...), those the tokenizer
    has."""
    out = {}
    for key in SPECIAL_TOKEN_NAMES:
        value = getattr(tokenizer, key, None)
        if isinstance(value, str) and value:
            out[key] = value
    return out


def end_of_turn_ids(template: str, tokenizer, variables: Mapping[str, Any]) -> tuple[int, ...]:
    """Token ids that end an assistant turn under `template`: the special token the template
    writes right after an assistant message, and the usual end-of-turn tokens it contains."""
    found: list[int] = []
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\x1fREPLY\x1f"}]
    try:
        text = render(template, probe, variables=variables)
    except ChatTemplateError:
        text = ""
    if "\x1fREPLY\x1f" in text:
        after = text.split("\x1fREPLY\x1f", 1)[1]
        first = _leading_special(after, tokenizer)
        if first is not None:
            found.append(first)
    for token in END_OF_TURN_TOKENS:
        if token in template:
            i = _token_id(tokenizer, token)
            if i is not None and i not in found:
                found.append(i)
    return tuple(found)


def _token_id(tokenizer, token: str) -> int | None:
    ids = tokenizer.encode(token, add_special_tokens=False) if token else []
    return ids[0] if len(ids) == 1 else None


def added_tokens(tokenizer) -> dict[int, str]:
    """The tokenizer's added tokens (the special ones a template writes), id -> text."""
    backend = getattr(tokenizer, "backend", None)
    added = backend.get_added_tokens_decoder() if backend is not None else {}
    return {i: t.content for i, t in added.items()}


def _leading_special(text: str, tokenizer) -> int | None:
    """The id of the added (special) token that `text` starts with, if any."""
    for i, content in sorted(added_tokens(tokenizer).items(), key=lambda kv: -len(kv[1])):
        if content.strip() and text.startswith(content):
            return i
    return None


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """How one model's conversations become a prompt and how its replies end."""

    template: str
    name: str  # for messages: "the chat template of MODEL" or "lmgen's default chat format"
    variables: dict  # the special tokens the template sees
    end_ids: tuple[int, ...]  # tokens that end a reply, besides the model's EOS list
    stop: tuple[str, ...] = ()  # strings that end a reply (the default format's role lines)
    is_default: bool = False

    def render(
        self,
        messages,
        *,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        **template_kwargs: Any,
    ) -> str:
        """`render` with this format's template and special tokens; other keywords are
        template variables."""
        return render(
            self.template,
            messages,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=tools,
            documents=documents,
            variables=self.variables,
            template_kwargs=template_kwargs,
            name=self.name,
        )


def chat_format(lm) -> ChatFormat:
    """`lm`'s chat format: its own template, or lmgen's default when it has none."""
    template = getattr(lm, "chat_template", None)
    tok = lm.tokenizer
    variables = special_tokens(tok)
    if template is None:
        return ChatFormat(
            DEFAULT_TEMPLATE,
            "lmgen's default chat format",
            variables,
            (),
            DEFAULT_STOP,
            is_default=True,
        )
    return _model_format(template, tok, tuple(sorted(variables.items())), lm.name)


@lru_cache(maxsize=16)
def _model_format(template: str, tok, variables: tuple, model: str) -> ChatFormat:
    vars_ = dict(variables)
    ends = end_of_turn_ids(template, tok, vars_)
    return ChatFormat(template, f"the chat template of {model}", vars_, ends)


class EndOfTurn:
    """`lm` as a reply is decoded from it: its EOS list extended by the chat template's
    end-of-turn tokens (decoding stops at any, and the reply leaves it out); all else is
    `lm`'s own."""

    def __init__(self, lm, end_ids: Sequence[int]):
        self._lm = lm
        self.eos_token_ids = sorted(set(lm.eos_token_ids) | set(end_ids))

    def __getattr__(self, name: str):
        return getattr(self._lm, name)


def replying(lm, end_ids: Sequence[int]):
    """`lm`, stopping at `end_ids` too (itself when they add nothing to its EOS list)."""
    extra = set(end_ids) - set(lm.eos_token_ids)
    return EndOfTurn(lm, end_ids) if extra else lm


def chat_kwargs(fmt: ChatFormat, kwargs: dict, config=None) -> dict:
    """Decoding keywords with the format's stop strings added to the caller's (those of
    `config` when the keywords set none)."""
    if not fmt.stop:
        return kwargs
    stop = kwargs.get("stop", getattr(config, "stop", None)) or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    return {**kwargs, "stop": stop + [s for s in fmt.stop if s not in stop]}


def apply_chat_template(
    lm, messages, *, add_generation_prompt: bool = False, tokenize: bool = True, **options
) -> str | list[int]:
    """`transformers`' `tokenizer.apply_chat_template` for `lm`: the rendered text, or its
    token ids (special tokens written by the template become their ids; nothing is added)."""
    fmt = chat_format(lm)
    text = fmt.render(messages, add_generation_prompt=add_generation_prompt, **options)
    return encode_rendered(lm, fmt, text) if tokenize else text


def encode_rendered(lm, fmt: ChatFormat, text: str) -> list[int]:
    """The token ids of a conversation `fmt` rendered as `text`. A model's template writes its
    special tokens itself, so nothing is added (as transformers' apply_chat_template); lmgen's
    default transcript is plain text, encoded as `generate` encodes a prompt (with the BOS the
    tokenizer adds, where it adds one: without it Gemma answers a transcript with noise)."""
    return lm.tokenizer.encode(text, add_special_tokens=fmt.is_default)


def prompt_ids(lm, messages, fmt: ChatFormat | None = None, **options) -> list[int]:
    """The token ids of `messages` rendered for a reply (a generation prompt unless
    `continue_final_message`)."""
    fmt = fmt or chat_format(lm)
    options = {"add_generation_prompt": not options.get("continue_final_message"), **options}
    return encode_rendered(lm, fmt, fmt.render(messages, **options))


def fit_messages(lm, messages: list, reserve: int, **options) -> tuple[list, int, list[int]]:
    """The conversation made to fit the model's context with `reserve` tokens left for the
    reply: whole turns (a user message and the replies after it) are dropped, oldest first,
    keeping a leading system message and the last turn. Returns (the messages kept, how many
    were dropped, their prompt ids); a last turn that cannot fit is a ConfigError."""
    fmt = chat_format(lm)
    context = lm.config.n_positions
    head = [m for m in messages[:1] if m.get("role") in ("system", "developer")]
    rest = list(messages[len(head) :])
    dropped = 0
    while True:
        ids = prompt_ids(lm, head + rest, fmt, **options)
        if len(ids) + reserve <= context:
            return head + rest, dropped, ids
        starts = [i for i, m in enumerate(rest) if i > 0 and m.get("role") == "user"]
        if not starts:
            raise ConfigError(
                f"the conversation's last message needs {len(ids)} tokens and a reply "
                f"{reserve}: more than the model's context of {context} tokens",
                "messages",
            )
        dropped += starts[0]
        rest = rest[starts[0] :]


def chat(lm, messages, config=None, *, chat_options: dict | None = None, **kwargs):
    """A reply to `messages` (a `GenerationResult`; `.text` is the reply without its
    end-of-turn token). `chat_options` go to the template (add_generation_prompt,
    continue_final_message, tools, documents, template keywords); the rest are decoding
    keywords."""
    from .decoding.api import generate

    fmt = chat_format(lm)
    prompt = prompt_ids(lm, messages, fmt, **(chat_options or {}))
    return generate(replying(lm, fmt.end_ids), prompt, config, **chat_kwargs(fmt, kwargs, config))


def chat_stream(lm, messages, config=None, *, chat_options: dict | None = None, **kwargs):
    """`chat`, streamed: yields the reply's text deltas as they are decided (greedy and
    sampling; closing the iterator stops the reply)."""
    from .decoding.api import stream

    fmt = chat_format(lm)
    prompt = prompt_ids(lm, messages, fmt, **(chat_options or {}))
    return stream(replying(lm, fmt.end_ids), prompt, config, **chat_kwargs(fmt, kwargs, config))

"""lmgen.chat renders real models' chat templates exactly as transformers'
`apply_chat_template` does: the same text and the same token ids, over single-turn,
multi-turn, system messages, add_generation_prompt on and off, continue_final_message, tools,
template keywords, and text with braces, quotes, newlines and non-ASCII characters."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from tests.chat_templates import SPECIAL_TOKENS, TEMPLATES
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmgen import chat
from lmgen.tokenizers import load_tokenizer

transformers = pytest.importorskip("transformers")

TRICKY = (
    'Braces {"a": {{1}}} {% raw %}, quotes \'single\' "double" `back`,\nnew lines\n\n'
    "\ttabs, non-ASCII: café, naïve, 東京, Ελληνικά, 🙂 — end  "
)
SYSTEM = {"role": "system", "content": "You are terse. Answer in one line."}
Q1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "Paris."}
Q2 = {"role": "user", "content": "And of Japan?"}
CONVERSATIONS = {
    "single": [Q1],
    "multi": [Q1, A1, Q2],
    "system": [SYSTEM, Q1, A1, Q2],
    "tricky": [SYSTEM, {"role": "user", "content": TRICKY}],
    "reply": [Q1, A1],
}
PARTIAL = [Q1, {"role": "assistant", "content": "The capital of France is"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": 'The weather in a city, in "quotes" & <tags>',
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "e.g. Zürich"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_TURNS = [
    Q1,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "content": '{"temperature": 21, "sky": "clear"}'},
]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory) -> str:
    """A byte-level BPE tokenizer with every special token of the templates, built here."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [t for t, *_ in TEMPLATES.values()] + [json.dumps(CONVERSATIONS), TRICKY] * 3
    tok.train_from_iterator(corpus, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path.read_text()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tokenizer_json):
    """name -> (lmgen's LM-like view, transformers' tokenizer), one directory per template."""
    cache = {}

    def get(name: str):
        if name not in cache:
            template, bos, eos, _ = TEMPLATES[name]
            d = tmp_path_factory.mktemp(name.replace(".", "_"))
            (d / "tokenizer.json").write_text(tokenizer_json)
            cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template}
            cfg.update({k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v})
            (d / "tokenizer_config.json").write_text(json.dumps(cfg))
            hf = transformers.AutoTokenizer.from_pretrained(str(d))
            tok = load_tokenizer(d)
            if bos is None:  # lmgen's BPE tokenizer starts from eos when it has no bos
                tok.bos_token = None
            lm = SimpleNamespace(
                name=name,
                tokenizer=tok,
                chat_template=chat.read_chat_template(d),
                eos_token_ids=[tok.eos_token_id],
            )
            cache[name] = (lm, hf)
        return cache[name]

    return get


def hf_ids(out) -> list[int]:
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def both(lm, hf, messages, **options):
    """(lmgen's text, ids) and (transformers' text, ids), or the error each raised."""
    try:
        ours = (
            chat.apply_chat_template(lm, messages, tokenize=False, **options),
            chat.apply_chat_template(lm, messages, tokenize=True, **options),
        )
    except chat.ChatTemplateError as e:
        ours = e
    try:
        theirs = (
            hf.apply_chat_template(messages, tokenize=False, **options),
            hf_ids(hf.apply_chat_template(messages, tokenize=True, **options)),
        )
    except Exception as e:  # transformers raises jinja2's TemplateError or ValueError
        theirs = e
    return ours, theirs


def assert_same(ours, theirs):
    if isinstance(theirs, Exception):
        assert isinstance(ours, chat.ChatTemplateError), (ours, theirs)
        first = str(theirs).split("\n")[0].split("!")[0].strip()
        if type(theirs).__name__ == "TemplateError":  # raise_exception: its message, verbatim
            assert first in str(ours)
        return
    assert not isinstance(ours, Exception), (ours, theirs)
    assert ours[0] == theirs[0]
    assert ours[1] == theirs[1]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_text_and_ids_equal_transformers(pair, name, conversation, add_generation_prompt):
    lm, hf = pair(name)
    messages = CONVERSATIONS[conversation]
    ours, theirs = both(lm, hf, messages, add_generation_prompt=add_generation_prompt)
    assert_same(ours, theirs)
    if name != "mistral" or conversation not in ("system", "tricky"):
        assert not isinstance(theirs, Exception), theirs  # the cases render, not only fail


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_continue_final_message(pair, name):
    lm, hf = pair(name)
    ours, theirs = both(lm, hf, PARTIAL, continue_final_message=True)
    assert_same(ours, theirs)
    assert not isinstance(theirs, Exception)
    assert ours[0].endswith("The capital of France is")


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3", "llama3.1"])
@pytest.mark.parametrize("with_calls", [False, True])
def test_tools(pair, name, with_calls):
    lm, hf = pair(name)
    messages = TOOL_TURNS if with_calls else [SYSTEM, Q1]
    ours, theirs = both(lm, hf, messages, tools=TOOLS, add_generation_prompt=True)
    assert_same(ours, theirs)
    assert not isinstance(theirs, Exception), theirs
    assert "get_weather" in ours[0] and "Zürich" in ours[0]  # tojson keeps non-ASCII


@pytest.mark.parametrize("enable_thinking", [None, True, False])
def test_qwen3_enable_thinking(pair, enable_thinking):
    lm, hf = pair("qwen3")
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    messages = [Q1, {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\nParis."}, Q2]
    ours, theirs = both(lm, hf, messages, add_generation_prompt=True, **kw)
    assert_same(ours, theirs)
    assert ("<think>\n\n</think>" in ours[0]) == (enable_thinking is False)


def test_llama_date_string_keyword(pair):
    lm, hf = pair("llama3.1")
    ours, theirs = both(lm, hf, [Q1], add_generation_prompt=True, date_string="1 Jan 2030")
    assert_same(ours, theirs)
    assert "Today Date: 1 Jan 2030" in ours[0]


def test_mistral_raise_exception_is_one_line_naming_the_template(pair):
    lm, _ = pair("mistral")
    with pytest.raises(chat.ChatTemplateError) as e:
        chat.apply_chat_template(lm, [Q1, Q2])
    assert str(e.value) == (
        "the chat template of mistral failed: Conversation roles must alternate "
        "user/assistant/user/assistant/..."
    )
    assert e.value.param == "messages"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_end_of_turn_token_found(pair, name):
    lm, _ = pair(name)
    expected = lm.tokenizer.encode(TEMPLATES[name][3])
    fmt = chat.chat_format(lm)
    assert len(expected) == 1 and expected[0] in fmt.end_ids


def test_named_templates_and_jinja_file(tmp_path):
    cfg = {
        "chat_template": [
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"},
        ]
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert chat.read_chat_template(tmp_path) == "D"
    (tmp_path / "chat_template.jinja").write_text("J{{ messages }}")
    assert chat.read_chat_template(tmp_path) == "J{{ messages }}"  # the file wins
    assert chat.read_chat_template(tmp_path / "nowhere") is None


def test_bad_template_field_is_a_load_error(tmp_path):
    from lmgen.errors import ModelLoadError

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": 3}))
    with pytest.raises(ModelLoadError, match="chat_template must be a string"):
        chat.read_chat_template(tmp_path)


@pytest.mark.parametrize(
    "template, why",
    [
        ("{{ ''.__class__.__mro__ }}", "SecurityError"),
        ("{{ cycler.__init__.__globals__ }}", "SecurityError"),
        ("{% set ns = namespace(_x=1) %}", "SecurityError"),
        ("{{ messages.append(1) }}", "SecurityError"),  # the immutable sandbox
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "ran longer",
        ),
        ("{{ 'x' * 100000000 }}", "MemoryError"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
        ("{% if %}", "TemplateSyntaxError"),
    ],
)
def test_hostile_templates_fail_with_one_line(template, why):
    with pytest.raises(chat.ChatTemplateError) as e:
        chat.render(template, [Q1], name="the chat template of bad")
    message = str(e.value)
    assert message.startswith("the chat template of bad failed: ") and why in message
    assert "\n" not in message


def test_tojson_does_not_escape_html():
    out = chat.render("{{ messages[0].content | tojson }}", [{"role": "user", "content": "<b>&'é"}])
    assert out == '"<b>&\'é"'


def test_default_format_is_the_plain_transcript():
    messages = [SYSTEM, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}, A1, Q2]
    text = chat.render(chat.DEFAULT_TEMPLATE, messages, add_generation_prompt=True)
    assert text == (
        "System: You are terse. Answer in one line.\nUser: Hi\nAssistant: Paris.\n"
        "User: And of Japan?\nAssistant:"
    )


def test_any_template_variable_name_is_passed_through():
    fmt = chat.ChatFormat(
        "{{ name }}|{{ template }}|{{ variables }}|{{ bos_token }}", "t", {"bos_token": "<s>"}, ()
    )
    out = fmt.render([Q1], name="N", template="T", variables="V", bos_token="<B>")
    assert out == "N|T|V|<B>"  # keywords override the special tokens, as in transformers

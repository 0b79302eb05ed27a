"""Structured output (a regex, a JSON schema, a choice list, a grammar) on the bundled model,
with greedy decoding, sampling, beam search and speculative decoding.

The bundled model writes Shakespeare, not JSON, so the constraints are ones a small model can
finish under the mask (a bounded regex, a schema with an enum and a small integer); every
output that claims completion (finish_reason "eos") must parse or match. The mask itself is
checked against a brute-force oracle: for a choice list, the tokens allowed after a prefix are
exactly those whose text keeps it a prefix of a choice.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

import lmgen
from lmgen.decoding.grammar import StructuredOutput
from lmgen.errors import ConfigError
from lmgen.tokenizers import WordTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

SPEAKER = r"(ROMEO|JULIET|HAMLET): [A-Z][a-z]{1,8}\."
SCHEMA = {
    "type": "object",
    "properties": {
        "speaker": {"enum": ["ROMEO", "JULIET"]},
        "act": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["speaker", "act"],
    "additionalProperties": False,
}
STRATEGIES = {
    "greedy": {"strategy": "greedy"},
    "sample": {"strategy": "sample", "seed": 4, "num_return_sequences": 4},
    "beam": {"strategy": "beam", "num_beams": 3, "num_return_sequences": 3},
}


@pytest.fixture(scope="module")
def lm():
    return lmgen.load()


def texts(result) -> list[tuple[str, str]]:
    return [(c.text, c.finish_reason) for c in result.choices]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_regex_is_matched(lm, strategy):
    results = lm.generate(["The play begins.\n", "Enter"], regex=SPEAKER, max_new_tokens=30,
                          **STRATEGIES[strategy])  # fmt: skip
    for result in results:
        for text, reason in texts(result):
            assert reason == "eos", text  # the regex ends with "." and is then complete
            assert re.fullmatch(SPEAKER, text), text
        assert result.chain == [f"StructuredOutput(regex={SPEAKER!r})"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_json_schema_is_satisfied(lm, strategy):
    result = lm.generate("ROMEO:", json_schema=SCHEMA, max_new_tokens=40, **STRATEGIES[strategy])
    for text, reason in texts(result):
        assert reason == "eos", text
        value = json.loads(text)
        assert set(value) == {"speaker", "act"}
        assert value["speaker"] in ("ROMEO", "JULIET")
        assert isinstance(value["act"], int) and 1 <= value["act"] <= 5
        assert text == json.dumps(value)  # the layout: ", " and ": ", nothing else


def test_json_object_mode_and_schema_as_text(lm):
    result = lm.generate("ROMEO:", json_schema=json.dumps(SCHEMA), strategy="sample", seed=1)
    assert json.loads(result.text)["speaker"] in ("ROMEO", "JULIET")
    # {"type": "object"} is OpenAI's json_object: any object; a small model may not close it
    for c in lm.generate("ROMEO:", json_schema={"type": "object"}, max_new_tokens=12,
                         strategy="sample", seed=2, num_return_sequences=3).choices:  # fmt: skip
        assert c.text.startswith("{")
        if c.finish_reason == "eos":
            assert isinstance(json.loads(c.text), dict)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_choice_is_one_of_the_list(lm, strategy):
    choices = ["ROMEO", "JULIET", "the Nurse", "Friar Laurence"]
    result = lm.generate("Who speaks?", choice=choices, max_new_tokens=10, **STRATEGIES[strategy])
    for text, reason in texts(result):
        assert reason == "eos" and text in choices


@pytest.mark.parametrize(
    "grammar",
    [
        'start: name ": " word "."\nname: "ROMEO" | "JULIET"\nword: /[A-Z][a-z]{1,6}/\n',  # Lark
        'root ::= name ": " word "."\nname ::= "ROMEO" | "JULIET"\nword ::= [A-Z] [a-z] [a-z]?\n',
    ],
    ids=["lark", "gbnf"],
)
@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_context_free_grammar(lm, grammar, strategy):
    result = lm.generate("Enter", grammar=grammar, max_new_tokens=20, **STRATEGIES[strategy])
    for text, reason in texts(result):
        assert reason == "eos"
        assert re.fullmatch(r"(ROMEO|JULIET): [A-Z][a-z]{1,6}\.", text), text


def test_nested_grammar_is_context_free(lm):
    # balanced brackets: no regex can say this
    grammar = 'start: item\nitem: "x" | "[" item ("," item)* "]"\n'
    result = lm.generate("x", grammar=grammar, strategy="sample", seed=5, max_new_tokens=30,
                         num_return_sequences=6)  # fmt: skip
    done = [c.text for c in result.choices if c.finish_reason == "eos"]
    assert done
    for text in done:
        depth = 0
        for ch in text:
            depth += {"[": 1, "]": -1}.get(ch, 0)
            assert depth >= 0
        assert depth == 0 and set(text) <= set("x[],")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unfinished_constraint_ends_with_length_and_is_a_prefix(lm, strategy):
    result = lm.generate("ROMEO:", regex=r"[a-z]{40}!", max_new_tokens=5, **STRATEGIES[strategy])
    for text, reason in texts(result):
        assert reason == "length"
        assert re.fullmatch(r"[a-z]*", text) and len(text) < 41


def test_speculative_decoding_keeps_the_constraint(lm):
    plain = lm.generate("Enter", regex=SPEAKER, max_new_tokens=30)
    spec = lm.generate("Enter", regex=SPEAKER, max_new_tokens=30, draft=lm, speculative_k=3)
    assert spec.text == plain.text and re.fullmatch(SPEAKER, spec.text)
    sampled = lm.generate("Enter", regex=SPEAKER, max_new_tokens=30, strategy="sample", seed=9,
                          draft=lm, speculative_k=3)  # fmt: skip
    assert re.fullmatch(SPEAKER, sampled.text)


def test_stepping_by_hand_and_asking_twice(lm):
    session = lmgen.Session(lm, "Enter", regex=SPEAKER, max_new_tokens=30)
    while not session.done:
        _, first = session.next_logits()
        _, again = session.next_logits()
        assert torch.equal(first, again)
        session.step()
    assert re.fullmatch(SPEAKER, session.results()[0].text)


def test_next_token_shows_what_the_constraint_forbids(lm):
    dist = lm.next_token("ROMEO:", top=0, choice=["JULIET", "Juliet"])
    assert dist.chain == ['StructuredOutput(choice=\'["JULIET", "Juliet"]\')']
    kept = [c.token for c in dist.candidates if c.kept]
    assert kept and all("JULIET".startswith(t) or "Juliet".startswith(t) for t in kept)
    assert "J" in kept


def allowed_after(processor, prefix: list[int], vocab: int) -> set[int]:
    logits = torch.zeros(1, vocab)
    ids = torch.tensor([[1, *prefix]])
    return set(torch.isfinite(processor(ids, logits))[0].nonzero().flatten().tolist())


def test_mask_equals_a_brute_force_oracle(lm):
    tok, eos = lm.tokenizer, lm.eos_token_ids
    choices = ["ROMEO", "JULIET", "JULIA", "Friar Laurence", "O"]
    proc = StructuredOutput("choice", choices, tok, eos, prompt_length=1)
    texts_ = [tok.decode([i]) for i in range(tok.vocab_size)]
    prefix: list[int] = []
    for target in ["JUL", "JULI", "JULIA"]:
        so_far = tok.decode(prefix)
        expected = {
            i
            for i, t in enumerate(texts_)
            if t and i not in eos and any(c.startswith(so_far + t) for c in choices)
        }
        if so_far in choices:
            expected |= set(eos)
        assert allowed_after(proc, prefix, lm.config.vocab_size) == expected
        prefix = tok.encode(target)
    assert allowed_after(proc, tok.encode("O"), lm.config.vocab_size) == set(eos)


def test_wider_model_vocabulary_is_masked_too(lm):
    proc = StructuredOutput("regex", "ab", lm.tokenizer, lm.eos_token_ids, prompt_length=0)
    out = proc(torch.zeros((2, 0), dtype=torch.long), torch.zeros(2, lm.tokenizer.vocab_size + 7))
    assert not bool(torch.isfinite(out[:, lm.tokenizer.vocab_size :]).any())
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"regex": "(ROMEO"}, "regex", "unclosed group"),
        ({"regex": ""}, "regex", "non-empty"),
        ({"json_schema": "{not json"}, "json_schema", "not valid JSON"),
        ({"json_schema": {"type": "strng"}}, "json_schema", "not a valid JSON schema"),
        ({"json_schema": {"type": "integer", "minimum": 5, "maximum": 2}}, "json_schema", ""),
        ({"json_schema": [1, 2]}, "json_schema", "JSON object"),
        ({"choice": []}, "choice", "one or more"),
        ({"choice": "ROMEO"}, "choice", "list"),
        ({"grammar": "start: foo"}, "grammar", "foo"),
        ({"grammar": "root ::= [a-"}, "grammar", "not a valid grammar"),
        ({"grammar": 'x ::= "a"'}, "grammar", "root"),
        ({"regex": "a", "choice": ["a"]}, "choice", "at most one"),
        ({"regex": "a", "ignore_eos": True}, "ignore_eos", "end-of-sequence"),
        ({"regex": "a", "min_new_tokens": 2}, "min_new_tokens", "constraint"),
        ({"regex": r"[^\s\S]"}, "regex", "no token"),  # valid, but nothing can start it
    ],
)
def test_bad_constraints_are_refused_before_generating(lm, kwargs, param, words):
    with pytest.raises(ConfigError) as e:
        lmgen.Session(lm, "ROMEO:", **kwargs)
    assert e.value.param == param
    assert words in str(e.value) and "\n" not in str(e.value)


def test_tokenizers_llguidance_cannot_read_are_refused():
    with pytest.raises(ConfigError, match="structured output") as e:
        StructuredOutput("regex", "a", WordTokenizer(["a", "b"]), [0], prompt_length=0)
    assert e.value.param == "regex"

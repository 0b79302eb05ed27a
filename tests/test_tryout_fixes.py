"""Findings of a new-user tryout, each pinned by a test that failed before its fix: what
export-gguf writes with and without --dtype, and where it refuses to write."""

from __future__ import annotations

import pytest

from test_cli_generate import run
from test_gguf_quant import q8_file, raw_tensors  # noqa: F401  (the fixture)

gguf = pytest.importorskip("gguf")


def test_export_gguf_dtype_converts_kept_blocks(q8_file, tmp_path, capsys):  # noqa: F811
    kept, f16 = tmp_path / "kept.gguf", tmp_path / "f16.gguf"
    code, out, err = run(capsys, "export-gguf", str(q8_file), str(kept))
    assert code == 0, err
    assert "Q8_0 blocks kept" in out
    assert raw_tensors(kept)["blk.0.attn_q.weight"][0] == "Q8_0"
    code, out, err = run(capsys, "export-gguf", str(q8_file), str(f16), "--dtype", "float16")
    assert code == 0, err
    assert "float16 weights" in out and "Q8_0" not in out
    types = {kind for name, (kind, _) in raw_tensors(f16).items() if "norm" not in name}
    assert types == {"F16"}  # every weight matrix in the type asked for, none of the file's blocks


def test_export_gguf_refuses_other_suffix_and_existing_file(q8_file, tmp_path, capsys):  # noqa: F811
    code, out, err = run(capsys, "export-gguf", str(q8_file), str(tmp_path / "m.bin"))
    assert code != 0 and ".gguf" in err and "Traceback" not in err
    assert not (tmp_path / "m.bin").exists()
    target = tmp_path / "there.gguf"
    target.write_bytes(b"keep me")
    code, out, err = run(capsys, "export-gguf", str(q8_file), str(target))
    assert code != 0 and "--force" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == b"keep me"
    code, out, err = run(capsys, "export-gguf", str(q8_file), str(target), "--force")
    assert code == 0, err
    assert target.stat().st_size > 100


@pytest.mark.parametrize(
    "kwargs, strategy",
    [({"num_beams": 2}, "beam"), ({"strategy": "contrastive", "top_k": 4}, "contrastive")],
)
def test_prompt_lookup_dropped_for_beam_and_contrastive_says_so(kwargs, strategy):
    """Session decodes these plainly (prompt lookup is for one greedy or sampled sequence):
    a warning, as every other setting without effect gets."""
    import lmgen
    from lmgen.generation_config import GenerationConfig

    said = GenerationConfig.from_kwargs(prompt_lookup_num_tokens=3, **kwargs).validate()
    assert any("prompt_lookup_num_tokens=3 has no effect" in w and strategy in w for w in said)
    assert not GenerationConfig.from_kwargs(prompt_lookup_num_tokens=3).validate()
    # and it has none: the same tokens as without it
    lm = lmgen.load("shakespeare")
    args = dict(max_new_tokens=6, **kwargs)
    got = lm.generate("ROMEO:", prompt_lookup_num_tokens=3, **args).choices[0].token_ids
    assert got == lm.generate("ROMEO:", **args).choices[0].token_ids


def test_p_less_and_p_less_norm_together_is_one_clear_error(capsys):
    from lmgen.errors import ConfigError
    from lmgen.generation_config import GenerationConfig

    with pytest.raises(ConfigError) as info:
        GenerationConfig.from_kwargs(p_less=True, p_less_norm=True)
    message = str(info.value)
    assert "p_less " in message and "p_less_norm" in message and "\n" not in message
    code, out, err = run(capsys, "generate", "ROMEO:", "--p-less", "--p-less-norm",
                         "--max-new-tokens", "2")  # fmt: skip
    assert code == 2 and "p_less_norm" in err and "Traceback" not in err


def test_plot_generation_refuses_dola_whose_logits_it_cannot_reread(capsys, tmp_path):
    import lmgen
    from lmgen.errors import ConfigError
    from lmgen.plots.generation import generation_data

    lm = lmgen.load("shakespeare")
    with pytest.raises(ConfigError) as info:
        generation_data(lm, "ROMEO:", strategy="sample", seed=2, dola_layers="low")
    assert info.value.param == "dola_layers"
    png = tmp_path / "g.png"
    code, out, err = run(capsys, "plot", "generation", "ROMEO:", "--strategy", "sample",
                         "--seed", "2", "--max-new-tokens", "4", "--dola-layers", "low",
                         "--out", str(png))  # fmt: skip
    assert code == 2 and "--dola-layers" in err and len(err.strip().splitlines()) == 1
    assert not png.exists()
    # prompt lookup changes how tokens are found, not their distributions: still plotted
    data = generation_data(lm, "ROMEO:", strategy="sample", seed=2, max_new_tokens=4,
                           prompt_lookup_num_tokens=2)  # fmt: skip
    assert len(data.entropy) == len(data.token_ids) > 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import lmgen
    from conftest import save_peaky_model
    from lmgen.server import create_app, serve_in_thread

    texts = ["To be, or not to be: that is the question."] * 12
    lm = lmgen.load(save_peaky_model(tmp_path_factory.mktemp("serve") / "tiny", texts))
    with serve_in_thread(create_app({"tiny": lm})) as url:
        yield url, lm


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "application/json", None]
)
def test_a_json_body_is_taken_whatever_its_content_type(served, content_type):
    """`curl -d '{...}'` sends application/x-www-form-urlencoded: the body is JSON all the
    same, and the answer is the one `generate` gives for the same request."""
    import httpx

    url, lm = served
    headers = {"Content-Type": content_type} if content_type else {}
    body = b'{"prompt": "To be", "max_tokens": 5, "temperature": 0}'
    r = httpx.post(url + "/v1/completions", content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    want = lm.generate("To be", max_new_tokens=5, temperature=0).choices[0].text
    assert r.json()["choices"][0]["text"] == want
    r = httpx.post(url + "/v1/completions", content=b"prompt=x", headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_settings_doc_names_the_commands_whose_parsers_take_each_flag():
    """The doc's commands column, against the parsers themselves: `next` has no --seed or
    --dola-layers, and the doc no longer says every setting is a flag of it."""
    from lmgen.cli import build_parser
    from lmgen.settings import COMMAND_GROUPS, SETTINGS, markdown

    parsers = {}
    for name, sub in build_parser()._commands.choices.items():
        parsers[name] = sub
        for inner, p in sub._commands.choices.items() if sub._commands else ():
            parsers[f"{name} {inner}"] = p
    rows = {
        line.split(" | ")[0].strip("| `"): line.split(" | ")
        for line in markdown().splitlines()
        if line.startswith("| `")
    }
    for s in SETTINGS:
        if s.flag_name is None:
            continue
        takers = {  # the commands with an option of this flag that sets this setting
            c
            for c in COMMAND_GROUPS
            for a in parsers[c]._actions
            if s.flag_name in a.option_strings and a.dest == s.name
        }
        assert set(rows[s.name][4].split(", ")) == takers, s.name
    assert "next" not in rows["seed"][4] and "next" not in rows["dola_layers"][4]
    assert "next" in rows["top_p"][4]


def test_a_flag_of_another_command_is_named_as_such(capsys):
    from lmgen.cli import main

    with pytest.raises(SystemExit) as info:
        main(["next", "x", "--dola-layers", "low"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "did you mean" not in err
    assert "--dola-layers is a flag of lmgen generate" in err and "not of this command" in err
    with pytest.raises(SystemExit):
        main(["next", "x", "--samplerz", "a"])
    assert "did you mean --samplers?" in capsys.readouterr().err  # a typo: its lookalike


def test_penalty_alpha_default_does_not_imply_contrastive():
    """Its default (0.6) is what contrastive search uses; only giving it implies contrastive,
    as the doc now says."""
    from lmgen.generation_config import GenerationConfig, infer_strategy
    from lmgen.settings import BY_NAME

    assert GenerationConfig.from_kwargs().strategy == "greedy"
    assert infer_strategy({"penalty_alpha": BY_NAME["penalty_alpha"].default}) == "contrastive"
    assert GenerationConfig.from_kwargs(strategy="contrastive", top_k=4).penalty_alpha == 0.6
    assert "giving it (> 0) implies --strategy contrastive" in BY_NAME["penalty_alpha"].help

"""lmgen.plots: the data behind each picture against independent oracles, the figures, and
the errors. The model is a tiny random GPT (fast to build, no transformers import)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmgen import ConfigError, GPTConfig, plots
from lmgen.generation import generate
from lmgen.lm import LM
from lmgen.model import GPT
from lmgen.processors import TopK, TopP

PROMPT = "To be, or not to be: that is the"


@pytest.fixture(scope="module")
def lm(tiny_tokenizer) -> LM:
    """A random GPT whose weights are scaled up, so its distributions are peaked enough for
    top-k and top-p to cut somewhere interesting."""
    tok = tiny_tokenizer
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tok.vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("bias") and "ln" not in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.25)
    return LM(model, tok, name="tiny")


def raw_logits(lm: LM, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [1, T], last-position logits [1, V]) straight from the model."""
    ids = torch.tensor([lm.tokenizer.encode(prompt)])
    with torch.no_grad():
        return ids, lm.model(ids)[:, -1].float()


# -- next ----------------------------------------------------------------------------------------


def test_next_kept_sets_are_the_processors_output(lm):
    data = plots.next_data(
        lm, PROMPT, top=15, temperature=0.7, top_k=4, top_p=0.6, num_beams=3, seed=0
    )
    ids, logits = raw_logits(lm, PROMPT)
    shown = torch.tensor(data.token_ids)
    # The shown candidates are the top 15 by raw logit, in order.
    assert data.token_ids == logits[0].topk(15).indices.tolist()
    np.testing.assert_allclose(data.raw_probs, logits[0].softmax(-1)[shown], rtol=1e-5)

    top_k = data.method("top_k")
    expect = torch.isfinite(TopK(4)(ids, logits))[0, shown].numpy()
    np.testing.assert_array_equal(top_k.kept, expect)
    assert top_k.cutoff == 4 and top_k.kept_count == 4

    top_p = data.method("top_p")
    kept = torch.isfinite(TopP(0.6)(ids, logits))[0]
    np.testing.assert_array_equal(top_p.kept, kept[shown].numpy())
    assert top_p.kept_count == int(kept.sum())
    # The cumulative line is the raw mass summed in order; the cut falls where it reaches p.
    cum = np.cumsum(logits[0].softmax(-1)[shown].numpy())
    np.testing.assert_allclose(top_p.cumulative, cum, rtol=1e-5)
    if top_p.cutoff is not None:
        assert (
            cum[top_p.cutoff - 1] >= 0.6 - 1e-6 > (cum[top_p.cutoff - 2] if top_p.cutoff > 1 else 0)
        )

    temp = data.method("temperature")
    assert temp.kept.all()
    np.testing.assert_allclose(temp.probs, (logits[0] / 0.7).softmax(-1)[shown], rtol=1e-5)
    # Renormalised over the kept tokens only.
    k_probs = logits[0][shown][:4].softmax(-1).numpy()
    np.testing.assert_allclose(top_k.probs[:4], k_probs, rtol=1e-5)
    assert (top_k.probs[4:] == 0).all()

    greedy = data.method("greedy")
    assert greedy.kept.all() and greedy.selected_token_ids == [data.token_ids[0]]


def test_next_samples_what_generate_would_draw(lm):
    """A sampling panel's chosen token is generate's first token with the same seed."""
    data = plots.next_data(lm, PROMPT, temperature=1.3, top_k=6, top_p=0.8, seed=7)
    for key, kw in (
        ("temperature", {"temperature": 1.3}),
        ("top_k", {"top_k": 6}),
        ("top_p", {"top_p": 0.8}),
    ):
        out = generate(
            lm, PROMPT, strategy="sample", seed=7, max_new_tokens=1, ignore_eos=True, **kw
        )
        assert data.method(key).selected_token_ids == out.token_ids, key


def test_next_beam_panel_is_the_first_beam_step(lm):
    data = plots.next_data(lm, PROMPT, num_beams=3)
    beam = data.method("beam")
    _, logits = raw_logits(lm, PROMPT)
    best = logits[0].topk(6).indices.tolist()
    assert beam.selected_token_ids == best[:3]  # beams 0, 1, 2 in score order
    assert beam.status[:3] == ["kept"] * 3 and beam.status[3:6] == ["pruned"] * 3
    assert all(s == "unscored" for s in beam.status[6:])
    np.testing.assert_allclose(beam.probs[:6], logits[0].softmax(-1)[best].numpy(), rtol=1e-4)


def test_next_figure_draws_the_data(lm):
    data = plots.next_data(lm, PROMPT, top=8, top_k=3)
    fig = plots.plot_next(data)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 5
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert [lab.split("  #")[0] for lab in labels] == data.tokens
    for ax, panel in zip(axes, data.methods, strict=True):
        greyed = [t for t in ax.texts if t.get_text() == "removed"]
        assert len(greyed) == int((np.array(panel.status) == "removed").sum()), panel.key


# -- temperature ---------------------------------------------------------------------------------


def test_temperature_sweep(lm):
    temps = (0.25, 1.0, 2.0)
    data = plots.temperature_data(lm, PROMPT, temps, top=6)
    _, logits = raw_logits(lm, PROMPT)
    for row, t in enumerate(temps):
        p = (logits[0].double() / t).softmax(-1)
        np.testing.assert_allclose(data.probs[row], p[data.token_ids].numpy(), rtol=1e-4)
        assert data.entropy[row] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-4)
        assert data.rest[row] == pytest.approx(1 - float(p[data.token_ids].sum()), abs=1e-5)
    assert np.all(np.diff(data.entropy) > 0)  # hotter is flatter
    assert data.entropy[-1] < math.log(lm.tokenizer.vocab_size)


# -- embeddings ----------------------------------------------------------------------------------


def test_embeddings_are_the_model_tables(lm):
    data = plots.embedding_data(lm, PROMPT)
    ids = lm.tokenizer.encode(PROMPT)
    n = len(ids)
    wte, wpe = lm.model.wte.weight.detach(), lm.model.wpe.weight.detach()
    np.testing.assert_allclose(data.token, wte[ids].numpy(), rtol=1e-6)
    np.testing.assert_allclose(data.position, wpe[:n].numpy(), rtol=1e-6)
    np.testing.assert_allclose(data.combined, (wte[ids] + wpe[:n]).numpy(), rtol=1e-6)
    unit = torch.nn.functional.normalize(wpe[:n], dim=-1)
    np.testing.assert_allclose(data.position_cosine, (unit @ unit.T).numpy(), atol=1e-5)
    unit = torch.nn.functional.normalize(wte[ids] + wpe[:n], dim=-1)
    np.testing.assert_allclose(data.combined_cosine, (unit @ unit.T).numpy(), atol=1e-5)
    assert data.tokens[1] == "␣be"
    assert plots.embedding_data(lm).prompt  # no prompt: a default line


# -- attention -----------------------------------------------------------------------------------


def test_attention_rows_sum_to_one_and_are_causal(lm):
    data = plots.attention_data(lm, PROMPT)
    n = len(lm.tokenizer.encode(PROMPT))
    assert data.weights.shape == (2, 4, n, n)
    np.testing.assert_allclose(data.weights.sum(-1), 1.0, atol=1e-5)
    assert np.all(data.weights[..., np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] == 0)
    assert np.all(data.weights >= 0)


def test_attention_figure_grid_and_one_head(lm):
    data = plots.attention_data(lm, "To be, or not")
    grid = plots.plot_attention(data, layer=1)
    heads = [ax for ax in grid.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert len(heads) == 4
    assert [t.get_text() for t in heads[0].get_yticklabels()] == data.tokens
    one = plots.plot_attention(data, layer=0, head=2)
    assert len([ax for ax in one.axes if ax.get_label() != "<colorbar>"]) == 1


@pytest.mark.parametrize(
    "layer, head, message",
    [
        (2, None, "layer 2 does not exist"),
        (-1, None, "layer -1 does not exist"),
        (0, 4, "head 4 does not exist"),
    ],
)
def test_attention_bad_index(lm, layer, head, message):
    with pytest.raises(ConfigError, match=message):
        plots.plot_attention(lm, "To be", layer=layer, head=head)


# -- beam ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [None, 4.0])
def test_beam_tree_is_beam_search(lm, bias):
    """The tree's finished hypotheses are beam search's result, and each is the path of
    tree nodes that leads to it. With a bias towards the end token, some end early."""
    eos = lm.tokenizer.eos_token_id
    kw = {"logit_bias": {eos: bias}} if bias else {}
    tree = plots.beam_data(lm, PROMPT, num_beams=3, max_new_tokens=5, **kw)
    result = generate(
        lm, PROMPT, strategy="beam", num_beams=3, num_return_sequences=3, max_new_tokens=5, **kw
    )
    assert [h.token_ids for h in tree.hypotheses] == [c.token_ids for c in result.choices]
    assert [h.score for h in tree.hypotheses] == pytest.approx([c.score for c in result.choices])
    for rank, h in enumerate(tree.hypotheses, 1):
        step, index = h.node
        node = next(n for n in tree.steps[step] if n.index == index)
        assert node.rank == rank and node.status == "finished"
        path = []
        while node is not None:  # walk up the tree
            path.append(node.token_id)
            node = (
                None
                if node.parent is None
                else next(n for n in tree.steps[node.step - 1] if n.index == node.parent)
            )
        path.reverse()
        assert path in (h.token_ids, [*h.token_ids, eos])
    for nodes in tree.steps:
        kept = sorted(n.beam for n in nodes if n.status == "kept")
        assert kept == list(range(len(kept))) and len(kept) <= 3
        assert {n.status for n in nodes} <= {"kept", "finished", "pruned"}
    if bias:
        assert any(h.finish_reason == "eos" for h in tree.hypotheses)


def test_beam_figure(lm):
    tree = plots.beam_data(lm, PROMPT, num_beams=2, max_new_tokens=3)
    fig = plots.plot_beam(tree)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum(t.startswith("#") and len(t) <= 3 for t in texts) == 2  # both ranks marked


# -- generation ----------------------------------------------------------------------------------


def test_generation_steps(lm, caplog):
    kw = dict(
        strategy="sample", temperature=0.9, top_k=8, seed=3, max_new_tokens=12, ignore_eos=True
    )
    data = plots.generation_data(lm, PROMPT, **kw)
    result = generate(lm, PROMPT, **kw)
    assert data.token_ids == result.token_ids and len(data.token_ids) == 12
    np.testing.assert_allclose(data.probs, np.exp(result.choices[0].processed_logprobs))
    np.testing.assert_allclose(data.raw_probs, np.exp(result.choices[0].logprobs))
    assert "differ" not in caplog.text  # the re-read agrees with what generate recorded
    # Raw entropies against one independent forward pass.
    seq = torch.tensor([result.prompt_token_ids + result.token_ids])
    with torch.no_grad():
        logits = lm.model(seq)[0, len(result.prompt_token_ids) - 1 : -1].double()
    logp = logits.log_softmax(-1)
    np.testing.assert_allclose(data.raw_entropy, -(logp.exp() * logp).sum(-1), rtol=1e-4)
    # The processed distribution keeps 8 tokens, so its entropy is at most log 8.
    assert np.all(data.entropy <= math.log(8) + 1e-6) and np.all(data.entropy > 0)
    # The pieces cover every token once, in order.
    assert [k for _, group in data.pieces for k in group] == list(range(12))


def test_generation_greedy_and_beam(lm):
    greedy = plots.generation_data(lm, PROMPT, max_new_tokens=6, ignore_eos=True)
    np.testing.assert_allclose(greedy.probs, greedy.raw_probs, rtol=1e-5)
    np.testing.assert_allclose(greedy.entropy, greedy.raw_entropy, rtol=1e-5)
    beam = plots.generation_data(lm, PROMPT, strategy="beam", num_beams=2, max_new_tokens=4)
    assert len(beam.probs) == len(beam.token_ids) and np.all(beam.probs > 0)


# -- readable tokens -----------------------------------------------------------------------------


def test_token_labels_are_readable(tiny_tokenizer):
    from lmgen.plots import style

    tok = tiny_tokenizer
    labels = [style.token_label(tok, t) for t in tok.encode(" the\n日")]
    assert labels[0] == "␣the" and "↵" in labels
    assert "Ġ" not in "".join(labels) and "\ufffd" not in "".join(labels)
    assert any(lab.startswith("\\x") for lab in labels)  # bytes of a split character
    assert style.readable("日 $5") == "\\u65e5␣\\$5"
    assert style.decoded_text(tok, tok.encode("café 日本")) == "café 日本"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda lm: plots.next_data(lm, PROMPT, top_p=1.0), "top_p must be in \\(0, 1\\)"),
        (lambda lm: plots.next_data(lm, PROMPT, top_k=0), "top_k must be an int >= 1"),
        (lambda lm: plots.next_data(lm, PROMPT, temperature=0), "temperature must be finite"),
        (lambda lm: plots.next_data(lm, PROMPT, strategy="beam"), "set by the method panels"),
        (lambda lm: plots.temperature_data(lm, PROMPT, []), "at least one temperature"),
        (lambda lm: plots.beam_data(lm, PROMPT, strategy="sample"), "not strategy 'sample'"),
        (lambda lm: plots.generation_data(lm, PROMPT, top_k=-1), "top_k must be an int >= 0"),
        (lambda lm: plots.attention_data(lm, ""), "the prompt is empty"),
        (lambda lm: plots.embedding_data(lm, ""), "the prompt is empty"),
    ],
)
def test_api_bad_input(lm, call, message):
    with pytest.raises(ConfigError, match=message):
        call(lm)

"""DoLa, decoding by contrasting layers (Chuang et al., ICLR 2024), as transformers'
`generate(dola_layers=...)` does it.

Each step the last position's residual stream after some early ("premature") layers is put
through the LM head too (model/network.py's `early_exit`). Among the candidate layers, the one
whose next-token distribution is furthest from the final layer's (Jensen-Shannon divergence)
is the contrast; the step's logits are then `log p_final - log p_early` over the tokens whose
final probability is at least a tenth of the top one (the rest -inf; transformers'
`_relative_top_filter`). Penalties, temperature and the other warpers act on those logits,
and greedy or sampling chooses as usual.

Candidates: "low" is layers `range(start, N // 2, 2)` and "high" `range(N // 2, N, 2)` of an
N-layer model (with N > 40: `range(start, 20, 2)` and `range(N - 20, N, 2)`), where `start`
skips the embeddings (layer 0) when they are tied to the head (2 for N > 2, 1 for N = 2); a
list names layers itself (0 = the embeddings; those >= N are dropped). Transformers picks one
layer for the whole batch (the divergence averaged over rows); here each row picks its own,
so a row's text does not depend on what else is in its batch (one prompt: the same).

The early layers need the module path of the network (no fused step), so a DoLa request is
a stepper of its own, not a row of the server's batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmgen.errors import ConfigError

from .processor_base import NEG_INF
from .sampling import sample_from_logits
from .state import DecodeState, Tokens
from .steppers import FinishedRows, Pick, Stepper, processed, top_alternatives

RELATIVE_TOP = 0.1  # transformers' relative_top: keep tokens with p >= 0.1 * max p
BASE_FILTER = -1e-3  # what the early layer's filtered log-probabilities become


def candidate_layers(dola_layers, n_layer: int, tied: bool) -> list[int]:
    """The premature layers transformers would contrast for `dola_layers`."""
    start = 0 if not tied else 2 if n_layer > 2 else 1 if n_layer == 2 else 0
    if dola_layers == "low":
        if start == n_layer // 2:
            return [start]
        return list(range(start, n_layer // 2 if n_layer <= 40 else 20, 2))
    if dola_layers == "high":
        low = n_layer // 2 if n_layer <= 40 else n_layer - 20
        return list(range(low, n_layer, 2))
    layers = [i for i in dola_layers if i < n_layer]
    if not layers:
        raise ConfigError(
            f"dola_layers names no layer below the model's {n_layer}: {list(dola_layers)}",
            "dola_layers",
        )
    return layers


def relative_top_filter(final: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """`log p_final - log p_base` where p_final >= RELATIVE_TOP * max p_final, else -inf."""
    final_lp, base_lp = final.log_softmax(dim=-1), base.log_softmax(dim=-1)
    threshold = final_lp.amax(dim=-1, keepdim=True) + math.log(RELATIVE_TOP)
    # transformers: min(threshold, the top value) keeps at least one token
    threshold = torch.minimum(threshold, final_lp.amax(dim=-1, keepdim=True))
    low = final_lp < threshold
    return final_lp.masked_fill(low, NEG_INF) - base_lp.masked_fill(low, BASE_FILTER)


def contrast(final: torch.Tensor, early: dict[int, torch.Tensor], layers: list[int]):
    """The DoLa logits of each row [B, V] from the final logits and the candidate layers'."""
    if len(layers) == 1:
        return relative_top_filter(final, early[layers[0]])
    stacked = torch.stack([early[i] for i in layers])  # (L, B, V)
    mature_p, early_p = final.softmax(-1), stacked.softmax(-1)
    middle = 0.5 * (mature_p[None] + early_p)  # (L, B, V)
    kl1 = F.kl_div(final.log_softmax(-1)[None], middle, reduction="none").mean(-1)
    kl2 = F.kl_div(stacked.log_softmax(-1), middle, reduction="none").mean(-1)
    js = 0.5 * (kl1 + kl2)  # (L, B)
    pick = js.argmax(dim=0)  # each row's most distant layer; the first of ties, as argmax
    base = stacked[pick, torch.arange(final.shape[0])]  # (B, V)
    return relative_top_filter(final, base)


class LayerContrast:
    """The model as DecodeState calls it, keeping the candidate layers' logits of the newest
    position beside the final ones."""

    def __init__(self, model, layers: list[int]):
        self.model, self.layers = model, tuple(layers)
        self.config = model.config
        self.early: dict[int, torch.Tensor] = {}

    def new_cache(self, rows: int, capacity: int):
        return self.model.new_cache(rows, capacity)

    def __call__(self, x, *, attention_mask=None, cache=None, logits_to_keep: int = 0):
        logits, early = self.model(
            x, attention_mask=attention_mask, cache=cache, logits_to_keep=logits_to_keep,
            early_exit=self.layers,
        )  # fmt: skip
        self.early = {i: t[:, -1].float() for i, t in early.items()}
        return logits


class DolaStepper(Stepper):
    """Greedy or sampling from the DoLa logits (after the processor chain)."""

    def __init__(self, lm, tokens: Tokens, config, chain, generators):
        self.tok = lm.tokenizer
        self.tokens, self.config, self.chain, self.generators = tokens, config, chain, generators
        self.sample = config.effective_strategy() == "sample"
        c = lm.model.config
        self.layers = candidate_layers(config.dola_layers, c.n_layer, c.tie_word_embeddings)
        self.model = LayerContrast(lm.model, self.layers)
        capacity = tokens.prompt_width + config.max_new_tokens
        self.state = DecodeState(self.model, tokens, capacity, config.context_overflow)
        eos = lm.eos_token_ids
        self.finished = FinishedRows(tokens.rows, eos[0] if eos else None, tokens.seq.device)
        self.logits: torch.Tensor | None = None
        self.raw_logits = self.processed_logits = None
        self.done = False

    def _feed(self) -> None:
        self.logits = self.state.feed()[:, -1].float()
        self.contrast = contrast(self.logits, self.model.early, self.layers)

    def prefill(self) -> None:
        self._feed()

    def distributions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits, processed(self.chain, self.tokens, self.contrast)

    def select(self) -> list[list[Pick]]:
        raw_logp = self.logits.log_softmax(dim=-1)
        scores = processed(self.chain, self.tokens, self.contrast)
        nxt = sample_from_logits(scores, self.generators) if self.sample else scores.argmax(-1)
        self.raw_logits, self.processed_logits = self.logits, scores
        proc = scores.log_softmax(-1).gather(1, nxt[:, None])[:, 0].tolist()
        raw = raw_logp.gather(1, nxt[:, None])[:, 0].tolist()
        nxt = self.finished.fill(nxt)
        self.tokens.append(nxt)
        top = None
        if self.config.logprobs:
            top = top_alternatives(self.tok, raw_logp, self.config.logprobs)
        ids = nxt.tolist()
        return [[Pick(ids[b], raw[b], proc[b], top[b] if top else None)] for b in range(len(ids))]

    def advance(self, finished: list[bool]) -> None:
        self.finished.update(finished)
        self._feed()

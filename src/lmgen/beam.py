"""Beam search: a different selector over the same model step and the same processors.

Vectorised over batch x beams; the KV cache is reordered by beam index each step. The
bookkeeping follows transformers' beam search so results are identical: the top
`2 * num_beams` continuations per prompt are scored, those ending in eos (among the top
`num_beams`) become finished hypotheses scored by `sum_logprobs / generated_len **
length_penalty`, and the best `num_beams` unfinished ones keep running.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .generation import Choice, GenerationResult, left_pad, pad_token_id, stop_cut
from .generation_config import GenerationConfig
from .processors import build_chain

NEG = -1.0e9  # transformers' "impossible" score; kept identical so scores match exactly


@dataclass
class BeamStep:
    """One step of the search for one prompt, recorded when a trace is asked for."""

    step: int
    candidates: list[dict] = field(default_factory=list)
    """each: {"parent": running beam index, "token_id", "token", "score" (cumulative
    processed log-prob), "status": "kept" | "finished" | "pruned", "beam": new index or None}"""


@dataclass
class BeamTrace:
    prompt_token_ids: list[int]
    steps: list[BeamStep] = field(default_factory=list)
    finished: list[dict] = field(default_factory=list)  # {"token_ids", "score"}, best first


def beam_search(
    lm,
    prompts: list[str],
    prompt_ids: list[list[int]],
    config: GenerationConfig,
    warnings: list[str],
    trace: list[BeamTrace] | None = None,
):
    model, tok = lm.model, lm.tokenizer
    device = lm.device
    nb, lp, early = config.num_beams, config.length_penalty, config.early_stopping
    eos_ids = [] if config.ignore_eos else lm.eos_token_ids
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    keep = max(2, 1 + len(eos_ids)) * nb
    top_mask = torch.arange(keep, device=device) < nb

    ids, mask = left_pad(prompt_ids, pad_token_id(lm), device)
    B, P = ids.shape
    max_len = P + config.max_new_tokens
    chain = build_chain(config, prompt_length=P, eos_token_ids=lm.eos_token_ids)

    run_seq = ids.repeat_interleave(nb, 0).view(B, nb, P)
    run_seq = torch.cat(
        [run_seq, torch.full((B, nb, config.max_new_tokens), pad_token_id(lm), device=device)],
        dim=2,
    )
    run_raw = torch.zeros((B, nb, config.max_new_tokens), device=device)
    run_scores = torch.zeros((B, nb), device=device)
    run_scores[:, 1:] = NEG
    fin_seq, fin_raw = run_seq.clone(), run_raw.clone()
    fin_scores = torch.full((B, nb), NEG, device=device)
    fin_len = torch.zeros((B, nb), dtype=torch.long, device=device)
    fin_done = torch.zeros((B, nb), dtype=torch.bool, device=device)
    improvable = torch.ones((B, 1), dtype=torch.bool, device=device)
    batch_offset = torch.arange(B, device=device)[:, None] * nb
    if trace is not None:
        trace.extend(BeamTrace(p) for p in prompt_ids)

    with torch.inference_mode():
        # Prefill each prompt once, then copy its cache to its beams.
        small = model.new_cache(B, P)
        logits = model(ids, attention_mask=mask, cache=small, logits_to_keep=1)[:, -1]
        cache = model.new_cache(B * nb, max_len)
        cache.k[:, :, :, :P] = small.k.repeat_interleave(nb, 1)
        cache.v[:, :, :, :P] = small.v.repeat_interleave(nb, 1)
        cache.mask[:, :P] = small.mask.repeat_interleave(nb, 0)
        cache.has_padding, cache.length = small.has_padding, P
        logits = logits.repeat_interleave(nb, 0)

        cur = P
        while True:
            raw = torch.log_softmax(logits.float(), dim=-1)
            scores = chain(run_seq.view(B * nb, -1)[:, :cur], raw) if chain else raw
            V = scores.shape[-1]
            acc = (scores.view(B, nb, V) + run_scores[:, :, None]).view(B, nb * V)
            top_scores, top_idx = acc.topk(keep, dim=-1)
            parent = torch.div(top_idx, V, rounding_mode="floor")
            token = top_idx % V
            cand_seq = run_seq.gather(1, parent[:, :, None].expand(-1, -1, max_len))
            cand_seq[:, :, cur] = token
            n_gen = cur - P
            cand_raw = run_raw.gather(1, parent[:, :, None].expand(-1, -1, run_raw.shape[2]))
            flat_parent = (parent + batch_offset).view(-1)
            cand_raw[:, :, n_gen] = raw[flat_parent, token.view(-1)].view(B, keep)
            hits = torch.isin(token, eos) if len(eos_ids) else torch.zeros_like(token, dtype=bool)
            if cur + 1 == max_len:
                hits = torch.ones_like(hits)

            # The best num_beams continuations that did not finish keep running.
            running_scores = top_scores + hits.float() * NEG
            nxt = running_scores.topk(nb, dim=-1).indices
            run_seq = cand_seq.gather(1, nxt[:, :, None].expand(-1, -1, max_len))
            run_raw = cand_raw.gather(1, nxt[:, :, None].expand(-1, -1, cand_raw.shape[2]))
            run_scores = running_scores.gather(1, nxt)
            beam_src = parent.gather(1, nxt) + batch_offset

            # Finished candidates among the top num_beams join the finished set.
            just_done = hits & top_mask[None, :]
            norm = top_scores / ((cur + 1 - P) ** lp)
            full = fin_done.all(-1, keepdim=True) & (early is True)
            norm = norm + full.float() * NEG + (~improvable).float() * NEG
            norm = norm + (~just_done).float() * NEG
            m_scores = torch.cat([fin_scores, norm], 1)
            best = m_scores.topk(nb, dim=-1).indices
            fin_seq = torch.cat([fin_seq, cand_seq], 1).gather(
                1, best[:, :, None].expand(-1, -1, max_len)
            )
            fin_raw = torch.cat([fin_raw, cand_raw], 1).gather(
                1, best[:, :, None].expand(-1, -1, fin_raw.shape[2])
            )
            fin_scores = m_scores.gather(1, best)
            new_len = torch.full_like(top_scores, n_gen + 1, dtype=torch.long)
            fin_len = torch.cat([fin_len, new_len], 1).gather(1, best)
            fin_done = torch.cat([fin_done, just_done], 1).gather(1, best)

            if trace is not None:
                _record(trace, tok, n_gen, parent, token, top_scores, hits, just_done, nxt, nb)

            cur += 1
            best_len = (max_len - P) if (early == "never" and lp > 0) else (cur - P)
            best_running = run_scores[:, :1] / (best_len**lp)
            worst_done = torch.where(
                fin_done, fin_scores.min(1, keepdim=True).values, torch.tensor(NEG, device=device)
            )
            improvable = improvable & (best_running > worst_done).any(-1, keepdim=True)
            go_on = (
                bool(improvable.any())
                and not (bool(fin_done.all()) and early is True)
                and not bool(hits.all())
            )
            if not go_on:
                break
            cache.reorder(beam_src.view(-1))
            # generated tokens are never padding: no attention mask to append
            logits = model(run_seq.view(B * nb, -1)[:, cur - 1 : cur], cache=cache)[:, -1]

    results = []
    seqs, raws = fin_seq.tolist(), fin_raw.tolist()
    lens, scs, dones = fin_len.tolist(), fin_scores.tolist(), fin_done.tolist()
    chain_desc = chain.describe()
    for b in range(B):
        choices = []
        for j in range(config.num_return_sequences):
            gen = seqs[b][j][P : P + lens[b][j]]
            lps = raws[b][j][: lens[b][j]]
            reason = "length"
            if gen and gen[-1] in eos_ids:
                gen, lps, reason = gen[:-1], lps[:-1], "eos"
            if not dones[b][j]:
                reason = "length"
            text = tok.decode(gen)
            cut = stop_cut(tok, gen, text, config.stop) if config.stop else None
            if cut is not None:  # beams are cut at a stop string once the search is over
                text, k = cut
                gen, lps, reason = gen[:k], lps[:k], "stop"
            choices.append(
                Choice(
                    index=j,
                    text=text,
                    token_ids=gen,
                    logprobs=lps,
                    processed_logprobs=[],
                    finish_reason=reason,
                    score=scs[b][j],
                )
            )
        results.append(
            GenerationResult(lm.name, prompts[b], prompt_ids[b], choices, chain_desc, warnings)
        )
        if trace is not None:
            trace[b].finished = [{"token_ids": c.token_ids, "score": c.score} for c in choices]
    return results


def _record(trace, tok, step, parent, token, scores, hits, just_done, nxt, nb):
    parent_l, token_l, score_l = parent.tolist(), token.tolist(), scores.tolist()
    hits_l, done_l, nxt_l = hits.tolist(), just_done.tolist(), nxt.tolist()
    for b, tr in enumerate(trace):
        kept = {k: i for i, k in enumerate(nxt_l[b])}
        st = BeamStep(step)
        for k in range(len(token_l[b])):
            if done_l[b][k]:
                status, beam = "finished", None
            elif k in kept and not hits_l[b][k]:
                status, beam = "kept", kept[k]
            else:
                status, beam = "pruned", None
            st.candidates.append(
                {
                    "parent": parent_l[b][k],
                    "token_id": token_l[b][k],
                    "token": tok.token_to_str(token_l[b][k]),
                    "score": score_l[b][k],
                    "status": status,
                    "beam": beam,
                }
            )
        tr.steps.append(st)

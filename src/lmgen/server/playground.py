"""The playground's endpoints: the next-token distribution with what each processor removed
(`/v1/lmgen/next`), the same with the distribution after each processor and seeded draws
(`/v1/lmgen/pipeline`, see pipeline.py), and beam search with its whole tree
(`/v1/lmgen/beam`). The payloads are built in the model's worker thread."""

from __future__ import annotations

import torch
from fastapi import Request

from lmgen.chat import added_tokens, chat_format
from lmgen.decoding.api import beam_trace_steps, next_token
from lmgen.decoding.processors import (
    XTC,
    EpsilonCutoff,
    EtaCutoff,
    MinP,
    MirostatV2,
    StructuredOutput,
    TopK,
    TopNSigma,
    TopP,
    TypicalP,
    build_chain,
)
from lmgen.decoding.sampling import make_generator, sample_from_logits
from lmgen.errors import GenerationError
from lmgen.generation_config import GenerationConfig

from . import jobs, schemas
from .budget import job_bytes
from .chat_prompt import render_prompt
from .errors import APIError, api_text
from .mapping import config_kwargs
from .openai_api import FINISH, usage
from .pipeline import PipelineRequest, draw_counts, shown_tokens, stage_scores, stage_view
from .registry import Registry
from .worker import CallJob, StepsJob

FILTERS = (TopK, TopP, MinP, TypicalP, TopNSigma, EpsilonCutoff, EtaCutoff, XTC, MirostatV2,
           StructuredOutput)  # fmt: skip


async def next_route(models: Registry, body: schemas.NextRequest, request: Request) -> dict:
    name, s = models.pick(body.model)
    cost = (job_bytes(s.lm, 1, s.lm.config.n_positions), "one row of the whole context")
    out = await jobs.run(request, s, CallJob(lambda lm: next_payload(lm, body)), cost)
    return {"model": name, **out}


async def pipeline_route(models: Registry, body: PipelineRequest, request: Request) -> dict:
    name, s = models.pick(body.model)
    cost = (job_bytes(s.lm, 1, s.lm.config.n_positions), "one row of the whole context")
    out = await jobs.run(request, s, CallJob(lambda lm: pipeline_payload(lm, body)), cost)
    return {"model": name, **out}


async def beam_route(models: Registry, body: schemas.BeamRequest, request: Request) -> dict:
    name, s = models.pick(body.model)
    rows, positions = body.num_beams, s.lm.config.n_positions
    cost = (job_bytes(s.lm, rows, positions), f"{rows} beams x {positions} positions")
    out = await jobs.run(request, s, StepsJob(lambda lm: beam_payload(lm, body)), cost)
    return {"object": "lmgen.beam", "model": name, **out}


async def chat_prompt_route(models: Registry, body: schemas.TokenizeRequest) -> dict:
    """The playground's chat mode: the conversation as the model sees it, the rendered
    prompt token by token with the template's special tokens marked."""
    name, s = models.pick(body.model)
    lm = s.lm
    if body.messages is None:
        raise APIError(400, "messages is required", param="messages", code="invalid_value")
    fmt = chat_format(lm)
    text, ids = await render_prompt(lm, fmt, body)
    special = added_tokens(lm.tokenizer)
    tok = lm.tokenizer
    return {
        "model": name,
        "template": fmt.name,
        "chat_template": not fmt.is_default,
        "prompt": text,
        "token_ids": ids,
        "tokens": [{"id": i, "text": tok.token_to_str(i), "special": i in special} for i in ids],
    }


def next_payload(lm, body: schemas.NextRequest) -> dict:
    """`lmgen next --json` for the body, plus what the playground draws: which rule removed
    each candidate (`removed_by`), its probability before the filters (`pre_filter_prob`), a
    summary of the rules (`filters`) and, with `choose`, the token the generation loop would
    pick (greedy: the most likely processed token; sample: a draw with `seed`)."""
    return _next_step(lm, body)[0]


def pipeline_payload(lm, body: PipelineRequest) -> dict:
    """`next_payload`, plus the pipeline view: `tokens` (the candidates every chart shows,
    with the `text` each would append) and `stages`, the distribution before the chain
    ("model") and after each processor in chain order; with `draws`, how often each token
    came up in that many seeded draws from the last stage (greedy: the one token the greedy
    rule picks every time)."""
    out, stages, nt, strategy = _next_step(lm, body)
    ids, tok = nt.prompt_token_ids, lm.tokenizer
    shown = shown_tokens(stages[0], stages[-1], body.top or out["vocab_size"])
    out["tokens"] = [
        {"token_id": t, "token": tok.token_to_str(t), "text": token_text(tok, ids, t)}
        for t in shown
    ]
    names = ["model"] + [f["name"] for f in out["filters"]]
    about = ["the model's distribution"] + [f["description"] for f in out["filters"]]
    out["stages"] = [
        {"index": k - 1, "name": names[k], "description": about[k], **stage_view(s, shown)}
        for k, s in enumerate(stages)
    ]
    if body.draws:
        if strategy == "sample":
            counts = draw_counts(nt.processed_logits, body.draws, body.seed)
        else:
            counts = {nt.greedy_token_id: body.draws}
        out["draws"] = {"n": body.draws, "seed": body.seed, "counts": counts}
        out["draws"]["strategy"] = strategy
    return out


def token_text(tok, ids: list[int], token_id: int) -> str:
    """What appending `token_id` to `ids` adds to the text (the token's own string where the
    decoded text does not simply grow)."""
    before, after = tok.decode(ids), tok.decode(ids + [token_id])
    return after[len(before) :] if after.startswith(before) else tok.token_to_str(token_id)


def _next_step(lm, body: schemas.NextRequest):
    """(the /v1/lmgen/next payload, the scores before the chain and after each processor,
    the `NextToken`, the strategy)."""
    kw = {"strategy": "sample", **config_kwargs(body, lm.config.vocab_size)}
    nt = next_token(lm, body.prompt, top=body.top, **kw)
    if bool(torch.isnan(nt.processed_logits.float().softmax(-1)).any()):
        raise GenerationError(
            "after the processor chain no token has a finite probability: "
            "the temperature or a penalty is too extreme"
        )
    out = nt.to_dict()
    config = GenerationConfig.from_kwargs(**kw)
    ids = nt.prompt_token_ids
    chain = build_chain(
        config, prompt_length=len(ids), eos_token_ids=lm.eos_token_ids, tokenizer=lm.tokenizer
    )
    x = torch.tensor([ids], device=nt.logits.device)
    stages = stage_scores(chain, x, nt.logits[None].float())
    pre = stages[0]
    removed_by = torch.full(pre.shape[-1:], -1, dtype=torch.long)
    for k, p in enumerate(chain):
        newly = (torch.isfinite(stages[k][0]) & ~torch.isfinite(stages[k + 1][0])).cpu()
        removed_by[newly] = k
        if not isinstance(p, FILTERS):
            pre = p(x, pre.clone())
    pre_prob = pre.softmax(-1)[0].tolist()
    names = [type(p).__name__ for p in chain]
    rb = removed_by.tolist()
    for c in out["candidates"]:
        k = rb[c["token_id"]]
        c["removed_by"] = names[k] if k >= 0 else None
        c["pre_filter_prob"] = pre_prob[c["token_id"]]
    counts = torch.bincount(removed_by[removed_by >= 0], minlength=len(chain)).tolist()
    out["filters"] = [
        {
            "index": k,
            "name": names[k],
            "description": repr(p),
            "removed": counts[k] if k < len(counts) else 0,
        }
        for k, p in enumerate(chain)
    ]
    out["prompt"] = body.prompt
    out["vocab_size"] = int(pre.shape[-1])
    out["kept_count"] = int(torch.isfinite(nt.processed_logits).sum())
    strategy = config.effective_strategy()
    if body.choose:
        if strategy == "sample":
            g = make_generator(body.seed, nt.processed_logits.device)
            tid = int(sample_from_logits(nt.processed_logits[None].float(), [g])[0])
        else:
            tid = nt.greedy_token_id
        tok = lm.tokenizer
        probs = nt.processed_logits.float().softmax(-1)
        out["chosen"] = {
            "token_id": tid,
            "token": tok.token_to_str(tid),
            "text": token_text(tok, ids, tid),
            "strategy": strategy,
            "seed": body.seed,
            "processed_prob": float(probs[tid]),
            "prob": float(nt.logits.float().softmax(-1)[tid]),
        }
    return out, stages, nt, strategy


def beam_payload(lm, body: schemas.BeamRequest):
    """Beam search for one prompt with its trace: every step's candidates (parent beam, token,
    cumulative score, kept | finished | pruned), as a tree with node ids, and the path of each
    returned hypothesis through it. A generator of the search's steps (a worker job takes one
    per turn) that returns the payload."""
    config = GenerationConfig.from_kwargs(
        **{"strategy": "beam", **config_kwargs(body, lm.config.vocab_size)}
    )
    result, tr = yield from beam_trace_steps(lm, body.prompt, config)
    ids, warnings = result.prompt_token_ids, result.warnings
    steps, prev_kept = [], {}
    for st in tr.steps:
        kept, cands = {}, []
        for k, c in enumerate(st.candidates):
            node = f"{st.step}:{k}"
            parent_id = "root" if st.step == 0 else prev_kept.get(c["parent"])
            cands.append({"id": node, "parent_id": parent_id, **c})
            if c["status"] == "kept":
                kept[c["beam"]] = node
        steps.append({"step": st.step, "candidates": cands})
        prev_kept = kept
    eos = set(lm.eos_token_ids)
    choices = []
    for c in result.choices:
        path, node = [], "root"
        for t, token in enumerate(c.token_ids):
            match = (
                next(
                    (
                        d
                        for d in steps[t]["candidates"]
                        if d["parent_id"] == node and d["token_id"] == token
                    ),
                    None,
                )
                if t < len(steps)
                else None
            )
            if match is None:
                break
            node = match["id"]
            path.append(node)
        if c.finish_reason == "eos" and len(c.token_ids) < len(steps):
            end = next(
                (
                    d
                    for d in steps[len(c.token_ids)]["candidates"]
                    if d["parent_id"] == node and d["token_id"] in eos and d["status"] == "finished"
                ),
                None,
            )
            if end is not None:
                path.append(end["id"])
        choices.append(
            {
                "index": c.index,
                "text": c.text,
                "token_ids": c.token_ids,
                "score": c.score,
                "finish_reason": FINISH[c.finish_reason],
                "path": path,
            }
        )
    return {
        "prompt": body.prompt,
        "prompt_token_ids": ids,
        "chain": result.chain,
        "num_beams": config.num_beams,
        "length_penalty": config.length_penalty,
        "steps": steps,
        "choices": choices,
        "warnings": [api_text(w) for w in warnings],
        "usage": usage([result]),
    }

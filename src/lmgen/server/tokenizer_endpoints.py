"""vLLM's tokenizer endpoints, so that evaluation harnesses and clients can count and send
tokens exactly as the model sees them: `POST /tokenize`, `POST /detokenize` and
`GET /tokenizer_info` (what lm-evaluation-harness's `tokenizer_backend=auto` looks for)."""

from __future__ import annotations

from lmgen.chat import chat_format

from . import schemas
from .chat_prompt import encode_off_loop, render_prompt
from .errors import APIError
from .registry import Registry


async def tokenize(models: Registry, body: schemas.TokenizeRequest) -> dict:
    name, s = models.pick(body.model)
    lm = s.lm
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give either prompt or messages", param="prompt", code="invalid_value")
    if body.messages is not None:  # the model's chat template, as /v1/chat/completions
        _, tokens = await render_prompt(lm, chat_format(lm), body, body.add_special_tokens)
    else:  # a prompt as `generate` encodes it (vLLM's default: the tokenizer's specials)
        add = True if body.add_special_tokens is None else body.add_special_tokens
        text = body.prompt
        tokens = await encode_off_loop(
            lambda: lm.tokenizer.encode(text, add_special_tokens=add), text, "prompt"
        )
    out = {"count": len(tokens), "max_model_len": lm.config.n_positions, "tokens": tokens}
    out["token_strs"] = (
        [lm.tokenizer.token_to_str(t) for t in tokens] if body.return_token_strs else None
    )
    return out


async def detokenize(models: Registry, body: schemas.DetokenizeRequest) -> dict:
    name, s = models.pick(body.model)
    lm = s.lm
    vocab = lm.config.vocab_size
    bad = next((i for i, t in enumerate(body.tokens) if t >= vocab), None)
    if bad is not None:
        raise APIError(
            400,
            f"token id {body.tokens[bad]} (position {bad}) is not in this model's vocabulary: "
            f"ids are in [0, {vocab})",
            param="tokens",
            code="invalid_value",
        )
    return {"prompt": lm.tokenizer.decode(body.tokens)}


def tokenizer_info(models: Registry, model: str | None) -> dict:
    name, s = models.pick(model)
    tok, cfg = s.lm.tokenizer, s.lm.config
    return {
        "model": name,
        "tokenizer_class": type(tok).__name__,
        "eos_token": getattr(tok, "eos_token", None),
        "eos_token_id": tok.eos_token_id,
        "bos_token": getattr(tok, "bos_token", None),
        "bos_token_id": tok.bos_token_id,
        "pad_token": None,
        "unk_token": None,
        "model_max_length": cfg.n_positions,
        "max_model_len": cfg.n_positions,
        "vocab_size": cfg.vocab_size,
        "chat_template": getattr(s.lm, "chat_template", None),  # None: lmgen's default
    }

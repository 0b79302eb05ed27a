"""Speculative decoding over HTTP: a completions or chat request names another served model
as its draft (`draft_model`, with `speculative_k` proposals per pass of the model).

The draft is one of the models `lmgen serve --model ...` loaded (listed by `/v1/models`); what
kind of speculation runs is decided as `lm.generate(draft=...)` decides it: a draft with the
model's tokenizer is speculative decoding, one with a tokenizer of its own is universal
assisted decoding (the text re-encoded). Either way the tokens are those of `lm.generate` with
the same draft: for greedy decoding the very tokens of the request without a draft, and for
seeded sampling too when the tokenizers differ.

Such a request runs as a job of its own, stepped in turns beside the running batch (the batch
is one model's forward pass; a speculative round is two models and a rollback), one prompt
after the other. The draft's weights are shared with its own worker, which may be running it
at the same time: a forward pass only reads them, and each job has its own caches.
Settings the draft cannot serve are refused here, before the request is queued, by the
library's own check (`check_draft`), so a stream never starts only to fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmgen.chat import replying
from lmgen.decoding.speculative import check_draft
from lmgen.errors import ConfigError

from .budget import job_bytes
from .errors import APIError, from_lmgen
from .registry import Registry
from .work import GenerateJob, PromptsJob, Steps, score_prompt, session_steps

FIELD = "draft_model"


@dataclass(frozen=True)
class Draft:
    """A request's draft: the served model's name and LM, and `speculative_k` when given (the
    library's default otherwise)."""

    name: str
    lm: Any
    k: int | None

    def options(self) -> dict[str, Any]:
        """The `Session` keywords (`draft=`, `speculative_k=`)."""
        return {"draft": self.lm} | ({} if self.k is None else {"speculative_k": self.k})


def request_draft(models: Registry, target: str, body) -> Draft | None:
    """The draft `body` names, or None; a 400 naming the field for `speculative_k` without a
    draft, a name this server does not serve, and the model itself."""
    name, k = body.draft_model, body.speculative_k
    if name is None:
        if k is not None:
            raise APIError(
                400,
                "speculative_k needs draft_model: the name of another served model to propose "
                "the tokens",
                param="speculative_k",
                code="invalid_value",
            )
        return None
    if name not in models.served:
        raise APIError(
            400,
            f"draft_model {name!r} is not served here; this server has: {', '.join(models)} "
            "(serve a draft with another `lmgen serve --model`)",
            param=FIELD,
            code="model_not_found",
        )
    if name == target:
        raise APIError(
            400,
            f"draft_model {name!r} is the model itself; name a smaller served model",
            param=FIELD,
            code="invalid_value",
        )
    return Draft(name, models.served[name].lm, k)


def check_settings(lm, draft: Draft, config) -> None:
    """The 400 for settings a draft cannot serve (several choices, beam or contrastive search,
    DoLa, prompt lookup), with the message Python gives, in the API's names."""
    try:
        check_draft(lm, draft.lm, config, draft.k or 1, draft_param=FIELD)
    except ConfigError as e:
        raise from_lmgen(e) from None


def with_draft_cost(cost: tuple[int, str], draft: Draft, positions: int) -> tuple[int, str]:
    """A decoding job's memory estimate plus the draft's one row of `positions`."""
    nbytes, what = cost
    return nbytes + job_bytes(draft.lm, 1, positions), f"{what}, and the draft's row"


class SpeculativeJob(PromptsJob):
    """`GenerateJob`'s work with a draft model: one `Session` per prompt, in turn (speculative
    decoding checks one sequence), a speculative round per step. Its events and result have
    the shapes of `GenerateJob`'s: choice `k` is prompt `k` (one choice each)."""

    def __init__(self, prompts: list, config, draft: Draft, **options):
        super().__init__(prompts, config, **options)
        self.draft = draft

    def steps(self, lm) -> Steps:
        target = replying(lm, self.end_ids)
        results = []
        for k, prompt in enumerate(self.prompts):
            on_delta = self._events_of(k) if self.events is not None else None
            results += yield from session_steps(
                target, [prompt], self.config, on_delta, **self.draft.options()
            )
        scored = None
        if self.prompt_logprobs is not None:
            scored = [score_prompt(lm, r.prompt_token_ids, self.prompt_logprobs) for r in results]
        return results, scored

    def _events_of(self, k: int):
        """The session's events (its one choice is 0) as those of choice `k`."""

        def emit(kind: str, _choice: int, value) -> None:
            self.emit(kind, k, value)

        return emit


def generate_job(draft: Draft | None, prompts: list, config, **options) -> PromptsJob:
    """The job that decodes `prompts`: a `GenerateJob` (the running batch, or a job of its
    own), or with a draft a `SpeculativeJob`."""
    if draft is None:
        return GenerateJob(prompts, config, **options)
    return SpeculativeJob(prompts, config, draft, **options)

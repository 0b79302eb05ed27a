"""What decoding returns: choices, results, the next-token table, beam-step candidates."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass
class Choice:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    """log-probability of each chosen token under the raw model (before the processors)"""
    processed_logprobs: list[float]
    """the same under the processed distribution the token was actually chosen from"""
    finish_reason: str  # "length" | "stop" | "eos" | "cancelled"
    score: float | None = None  # beam search: length-normalised sum of processed log-probs
    top_logprobs: list[list[TopLogprob]] | None = None  # raw-model top-N per step, on request


@dataclass
class GenerationResult:
    model: str
    prompt: str
    prompt_token_ids: list[int]
    choices: list[Choice]
    chain: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.choices[0].token_ids

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason

    def to_dict(self) -> dict:
        """The documented `--json` shape of `lmgen generate`."""
        choices = []
        for c in self.choices:
            d = {
                "index": c.index,
                "text": c.text,
                "token_ids": c.token_ids,
                "logprobs": c.logprobs,
                "finish_reason": c.finish_reason,
            }
            if c.score is not None:
                d["score"] = c.score
            choices.append(d)
        return {
            "model": self.model,
            "prompt": self.prompt,
            "prompt_token_ids": self.prompt_token_ids,
            "choices": choices,
        }


@dataclass
class Candidate:
    token_id: int
    token: str
    logit: float
    prob: float
    processed_prob: float
    kept: bool


@dataclass
class NextToken:
    prompt: str
    prompt_token_ids: list[int]
    chain: list[str]
    candidates: list[Candidate]
    greedy_token_id: int
    logits: torch.Tensor  # the raw logits over the whole vocabulary
    processed_logits: torch.Tensor

    def to_dict(self) -> dict:
        """The documented `--json` shape of `lmgen next`."""
        return {
            "prompt_token_ids": self.prompt_token_ids,
            "chain": self.chain,
            "greedy_token_id": self.greedy_token_id,
            "candidates": [vars(c).copy() for c in self.candidates],
        }


@dataclass
class BeamStep:
    """One step of beam search for one prompt (recorded with `record=("candidates",)`)."""

    step: int
    candidates: list[dict] = field(default_factory=list)
    """each: {"parent": running beam index, "token_id", "token", "score" (cumulative
    processed log-prob), "status": "kept" | "finished" | "pruned", "beam": new index or None}"""


@dataclass
class BeamTrace:
    """A whole search for one prompt: its steps and the returned beams, best first."""

    prompt_token_ids: list[int]
    steps: list[BeamStep] = field(default_factory=list)
    finished: list[dict] = field(default_factory=list)  # {"token_ids", "score"}, best first

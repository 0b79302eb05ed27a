"""The served models by name: each with its worker thread, and the card `/v1/models` shows."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .budget import MemoryBudget
from .chat_prompt import template_card
from .errors import APIError
from .worker import ModelWorker


@dataclass
class Served:
    lm: object
    worker: ModelWorker
    budget: MemoryBudget  # shared by all the models: one process, one memory
    created: int


class Registry:
    def __init__(self, models: dict, budget: MemoryBudget, **worker_options):
        if not models:
            raise ValueError("create_app needs at least one model")
        now = int(time.time())
        self.budget = budget
        self.served = {
            name: Served(lm, ModelWorker(lm, **worker_options), budget, now)
            for name, lm in models.items()
        }

    def __iter__(self):
        return iter(self.served)

    def items(self):
        return self.served.items()

    def pick(self, name: str | None) -> tuple[str, Served]:
        """The model a request names; the first served one when it names none."""
        if name is None:
            name = next(iter(self.served))
        s = self.served.get(name)
        if s is None:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server has: {', '.join(self.served)}",
                param="model",
                code="model_not_found",
            )
        return name, s

    def card(self, name: str) -> dict:
        s = self.served[name]
        cfg = s.lm.config
        return {
            "id": name,
            "object": "model",
            "created": s.created,
            "owned_by": "lmgen",
            "max_model_len": cfg.n_positions,
            "vocab_size": cfg.vocab_size,
            "lmgen": {
                "parameters": s.lm.model.num_parameters(),
                "vocab_size": cfg.vocab_size,
                "n_layer": cfg.n_layer,
                "n_embd": cfg.n_embd,
                "tokenizer": type(s.lm.tokenizer).__name__,
                **template_card(s.lm),
            },
        }

    def close(self) -> None:
        for s in self.served.values():
            s.worker.close()

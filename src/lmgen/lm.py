"""`LM`: a model, its tokenizer and its config, with the generation API on top."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import settings
from .chat import read_chat_template
from .checkpoint import (
    read_generation_config,
    read_gguf_model,
    read_model_dir,
    resolve_model,
    write_model_dir,
)
from .model import GPT, GPTConfig


class LM:
    chat_template: str | None = None  # the model's Jinja chat template (lmgen.chat), if any
    generation_defaults: dict = {}  # generation_config.json's eos ids and sampling defaults
    # a deployment's defaults for requests that do not set them (`lmgen serve --temperature`)
    decoding_defaults: dict = {}

    def __init__(self, model: GPT, tokenizer, name: str = "lmgen", path: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.path = path

    @property
    def config(self) -> GPTConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.wte.weight.device

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends a sequence: the tokenizer's, config.json's (an id or a list) and
        generation_config.json's (Llama 3 lists several), as transformers stops on any."""
        ids = {self.tokenizer.eos_token_id, *self.config.eos_token_ids}
        ids.update(self.generation_defaults.get("eos_token_id", ()))
        return sorted(i for i in ids if i is not None)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        self.model.to(device=device, dtype=dtype)
        return self

    def save(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        return write_model_dir(self.model, self.tokenizer, directory, dtype=dtype)

    def with_model_defaults(self, config, kwargs: dict) -> dict:
        """`kwargs` over the model's generation_config.json defaults, as transformers'
        `generate()` takes them: key by key, the caller's values first. Its sampling settings
        apply when it says do_sample and the caller chose no other strategy; an explicit
        `config` (a GenerationConfig) is taken as it is."""
        d = self.generation_defaults
        if config is not None or not d:
            return kwargs
        chosen = {"strategy", "num_beams", "penalty_alpha"} & set(kwargs)
        if kwargs.get("temperature") == 0:  # the caller asks for greedy
            chosen.add("temperature")
        sampling = bool(d.get("do_sample")) and (not chosen or kwargs.get("strategy") == "sample")
        out = settings.hf_generation_defaults(d, sampling)
        if sampling:
            out["strategy"] = "sample"
        return {**out, **kwargs}

    def generate(self, prompt: str | list[str], config=None, **kwargs):
        """Continuations of `prompt` (a list of prompts gives a list of results); keyword
        arguments are `GenerationConfig` fields, e.g. strategy="sample", top_p=0.9, seed=1,
        over the model's own defaults (generation_config.json; `with_model_defaults`).
        Several prompts, greedy or sampling, go through the server's running batch, each
        prompt leaving as it finishes and the next taking its place (`generate_many`)."""
        from .decoding.api import generate
        from .server.engine import generate_many

        kwargs = self.with_model_defaults(config, kwargs)
        results = generate_many(self, prompt, config, kwargs)
        if results is not None:
            return results
        return generate(self, prompt, config, **kwargs)

    def stream(self, prompt: str, config=None, **kwargs):
        """Yields text deltas of one continuation as they are decided."""
        from .decoding.api import stream

        return stream(self, prompt, config, **self.with_model_defaults(config, kwargs))

    def session(self, prompts, config=None, **kwargs):
        """A stepwise `Session` over `prompts` (see lmgen.decoding.session)."""
        from .decoding.session import Session

        return Session(self, prompts, config, **kwargs)

    def next_token(self, prompt: str, top: int = 10, config=None, **kwargs):
        """The next-token distribution, raw and after the processor chain."""
        from .decoding.api import next_token

        return next_token(self, prompt, top, config, **kwargs)

    def chat(self, messages, config=None, **kwargs):
        """The assistant's reply to `messages` (OpenAI-style dicts), rendered with the model's
        chat template and stopped at its end of turn; keyword arguments as for generate, plus
        `chat_options` for the template (lmgen.chat.chat)."""
        from .chat import chat

        return chat(self, messages, config, **kwargs)

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True, **kw):
        """transformers' `tokenizer.apply_chat_template` with this model's template: the text
        (tokenize=False) or its token ids; tools, documents, continue_final_message and
        template keywords are passed through."""
        from .chat import apply_chat_template

        return apply_chat_template(
            self, messages, add_generation_prompt=add_generation_prompt, tokenize=tokenize, **kw
        )

    def __repr__(self) -> str:
        n = self.model.num_parameters()
        return f"LM({self.name!r}, {n / 1e6:.1f}M parameters, {self.tokenizer!r})"


def load(
    name_or_dir: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
) -> LM:
    """Loads a model directory (GPT-2, Llama, Mistral, Qwen2/3, Gemma 3, GPT-NeoX), a `.gguf`
    file, a bundled model by name (default `shakespeare`), or `hf:NAME`.

    `quantize="int8"`: int8 weight-only linear layers for decoding (lmgen.quantize); "int4":
    Q4_0 blocks. A `.gguf` keeps its Q8_0/Q4_0/Q4_1/Q5_0/Q4_K weights as they are unless `dtype`
    or `quantize="none"` asks for float weights (docs/PERFORMANCE.md)."""
    path = resolve_model(name_or_dir)
    chat_template, generation = None, {}
    if path.is_file():
        from .ggml_blocks import KEPT

        keep = () if dtype is not None or quantize in ("none", "int8") else KEPT
        _, model, tokenizer, gguf = read_gguf_model(path, keep=keep)
        chat_template, generation = gguf.chat_template, {"eos_token_id": []}
    else:
        config, model, tokenizer = read_model_dir(path)
        chat_template = read_chat_template(path)
        generation = read_generation_config(path, config.vocab_size)
    if device or dtype:
        model.to(device=device, dtype=dtype)
    if quantize:
        from .quantize import quantize_model

        quantize_model(model, quantize)
    name = str(name_or_dir) if name_or_dir is not None else path.name
    lm = LM(model, tokenizer, name=name, path=path)
    lm.chat_template = chat_template
    lm.generation_defaults = generation
    return lm

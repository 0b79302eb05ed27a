"""lmgen: a GPT language model, every decoding strategy, and pictures of each step."""

import importlib

from .errors import ConfigError, GenerationError, LmgenError, ModelLoadError
from .lazy import lazy_names

__version__ = "0.1.0"

# `lmgen.compare` is the function (`from lmgen.compare import metrics` reaches the modules):
# the package is imported first, so that importing one of its modules later cannot rebind it.
importlib.import_module(".compare", __name__)
globals().pop("compare")

# The rest import torch, so they load on first use: `import lmgen` stays quick, and the CLI
# (lmgen.cli) is running, with its Ctrl-C handling, before torch is imported.
__getattr__, __dir__, _lazy = lazy_names(
    __name__,
    {
        ".compare.runner": ["compare"],
        ".decoding": [
            "GenerationResult",
            "Session",
            "StepOutput",
            "generate",
            "next_token",
            "stream",
        ],
        ".generation_config": ["GenerationConfig"],
        ".lm": ["LM", "load"],
        ".model": ["GPT", "GPTConfig"],
    },
)
__all__ = ["ConfigError", "GenerationError", "LmgenError", "ModelLoadError"] + _lazy

"""lmgen: a GPT language model, every decoding strategy, and pictures of each step."""

from .errors import ConfigError, GenerationError, LmgenError, ModelLoadError
from .generation import generate, next_token, stream
from .generation_config import GenerationConfig
from .lm import LM, load
from .model import GPT, GPTConfig

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "LM",
    "ConfigError",
    "GPTConfig",
    "GenerationConfig",
    "GenerationError",
    "LmgenError",
    "ModelLoadError",
    "generate",
    "load",
    "next_token",
    "stream",
]

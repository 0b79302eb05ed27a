"""lmgen: a GPT language model, every decoding strategy, and pictures of each step."""

from .compare import compare  # the function; its modules: `from lmgen.compare import metrics`
from .decoding import GenerationResult, Session, StepOutput, generate, next_token, stream
from .errors import ConfigError, GenerationError, LmgenError, ModelLoadError
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
    "GenerationResult",
    "LmgenError",
    "ModelLoadError",
    "Session",
    "StepOutput",
    "compare",
    "generate",
    "load",
    "next_token",
    "stream",
]

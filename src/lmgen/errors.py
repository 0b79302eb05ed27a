"""One small exception family, raised where bad input enters (API, CLI, HTTP, files)."""


class LmgenError(Exception):
    """Base class: the CLI prints `error: <message>` and exits 2; the server answers 4xx."""


class ConfigError(LmgenError, ValueError):
    """A parameter is out of range or inconsistent. `param` names it when there is one."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ModelLoadError(LmgenError):
    """A model directory, file or name could not be loaded as asked."""


class GenerationError(LmgenError):
    """Generation cannot proceed (e.g. the prompt plus new tokens exceed the context)."""


class ContextLengthError(GenerationError):
    """The prompt plus the tokens asked for do not fit the model's context. Where known, the
    numbers (`prompt_tokens`, `new_tokens`, `context`), so that a caller without the
    message's remedies (a CLI command with no --context-overflow) can say it its own way."""

    def __init__(self, message: str, *, prompt_tokens: int | None = None,
                 new_tokens: int | None = None, context: int | None = None):  # fmt: skip
        super().__init__(message)
        self.prompt_tokens, self.new_tokens, self.context = prompt_tokens, new_tokens, context

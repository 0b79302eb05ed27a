"""The OpenAI-compatible server and the playground page: `lmgen serve`, `create_app`."""

from ..lazy import lazy_names

# loaded on first use: `app` imports torch and FastAPI, which `lmgen serve --help` does not need
__getattr__, __dir__, __all__ = lazy_names(__name__, {".app": ["create_app", "serve_in_thread"]})

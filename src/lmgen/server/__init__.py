"""The OpenAI-compatible server and the playground page: `lmgen serve`, `create_app`."""

from .app import create_app, serve_in_thread

__all__ = ["create_app", "serve_in_thread"]

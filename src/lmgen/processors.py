"""The import path the docs use; the processors live in `lmgen.decoding.processors`, the draw
in `lmgen.decoding.sampling`."""

from lmgen.decoding.processors import *  # noqa: F403
from lmgen.decoding.processors import __all__ as _processors
from lmgen.decoding.sampling import draw, make_generator, sample_from_logits

__all__ = [*_processors, "draw", "make_generator", "sample_from_logits"]

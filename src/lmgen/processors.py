"""A compatibility shim, kept for users: the import path the docs use. The processors live in
`lmgen.decoding.processors`, the draw in `lmgen.decoding.sampling`; modules of the package
import them from there."""

from lmgen.decoding.processors import *  # noqa: F403
from lmgen.decoding.processors import __all__ as _processors
from lmgen.decoding.sampling import draw, make_generator, sample_from_logits

__all__ = [*_processors, "draw", "make_generator", "sample_from_logits"]

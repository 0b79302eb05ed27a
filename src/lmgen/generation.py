"""A compatibility shim, kept for users: the import path the docs and earlier releases use.
The code lives in `lmgen.decoding`; modules of the package import it from there."""

from lmgen.decoding.api import generate, next_token, stream
from lmgen.decoding.results import Candidate, Choice, GenerationResult, NextToken, TopLogprob
from lmgen.decoding.session import Session, StepOutput, check_context, encode_prompt, make_config
from lmgen.decoding.text import stop_cut

__all__ = [
    "Candidate",
    "Choice",
    "GenerationResult",
    "NextToken",
    "Session",
    "StepOutput",
    "TopLogprob",
    "check_context",
    "encode_prompt",
    "generate",
    "make_config",
    "next_token",
    "stop_cut",
    "stream",
]

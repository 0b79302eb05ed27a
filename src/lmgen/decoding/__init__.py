"""Decoding: the stepwise `Session` every path drives, its steppers (sample/greedy, beam,
speculative), the processors, the token draw, text handling and the result types."""

from .api import generate, next_token, stream
from .results import BeamStep, BeamTrace, Candidate, Choice, GenerationResult, NextToken
from .session import Session, StepOutput
from .speculative import SpeculativeStats

__all__ = [
    "BeamStep",
    "BeamTrace",
    "Candidate",
    "Choice",
    "GenerationResult",
    "NextToken",
    "Session",
    "SpeculativeStats",
    "StepOutput",
    "generate",
    "next_token",
    "stream",
]

"""The sampler order a user chooses: llama.cpp's `--samplers` list.

llama.cpp builds its chain from an ordered list of sampler names (`penalties;dry;top_k;...`,
common/sampling.cpp); a sampler left out of the list does not run, and `adaptive_p`, which
draws the token itself, always goes last wherever it is named. lmgen takes the same list over
the same names (`lmgen.settings.SAMPLER_NAMES`; the samplers llama.cpp lacks under their
setting's name). Where llama.cpp silently skips a sampler that is set but not listed, lmgen
refuses the config: a knob that does nothing is a mistake worth a message.

The processors without a place in llama.cpp's list (sequence bias, no-repeat n-gram, logit
bias, bad words, min-new-tokens, the structured-output mask; llama.cpp applies its logit bias
and grammar outside the list too) keep their place before the ordered ones. Mirostat replaces
llama.cpp's list altogether, so it cannot be combined with one.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmgen.errors import ConfigError
from lmgen.settings import SAMPLER_NAMES

# llama.cpp's aliases (common_sampler_types_from_names): kebab-case, no underscore, and these
# (p-less-norm is ordered under the name of p-less, as one stage)
ALIASES = {"nucleus": "top_p", "temp": "temperature", "typ": "typ_p", "typical": "typ_p"}


def canonical(name: str) -> str | None:
    """The sampler a name means, as llama.cpp reads it (case-insensitive, `top-k`, `topk`),
    or None."""
    low = name.strip().lower()
    if low in ALIASES:
        return ALIASES[low]
    for known in SAMPLER_NAMES:
        if low in (known, known.replace("_", "-"), known.replace("_", "")):
            return known
    return None


def parse_samplers(value: Sequence[str]) -> list[str]:
    """The canonical names of a `samplers` list, each once; ConfigError naming `samplers`."""
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ConfigError(
            f"samplers must be a non-empty list of sampler names, got {value!r}", "samplers"
        )
    out: list[str] = []
    for name in value:
        known = canonical(name) if isinstance(name, str) else None
        if known is None:
            raise ConfigError(
                f"samplers: unknown sampler {name!r}; known: {', '.join(SAMPLER_NAMES)}",
                "samplers",
            )
        if known in out:
            raise ConfigError(f"samplers names {known!r} twice", "samplers")
        out.append(known)
    return out


def missing_samplers(names: Sequence[str], active: Sequence[str]) -> None:
    """Refuses a list that leaves out a sampler the settings turn on (`active`)."""
    missing = [n for n in active if n not in names]
    if missing:
        it = "it" if len(missing) == 1 else "them"
        raise ConfigError(
            f"samplers leaves out {', '.join(missing)}, which the settings turn on; add {it} "
            f"to the list or turn {it} off",
            "samplers",
        )

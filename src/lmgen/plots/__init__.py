"""Pictures of each step from token input to word prediction.

Each picture has a data function that returns plain arrays in a dataclass, computed by the
same code that generates (the model's forward pass, the processor chain, the sampler, beam
search's trace), and a plot function that returns a matplotlib `Figure`::

    import lmgen
    from lmgen import plots

    lm = lmgen.load()                                   # the bundled model
    fig = plots.plot_next(lm, "ROMEO:")                 # compute and draw
    data = plots.next_data(lm, "ROMEO:", top_k=5)       # or the numbers alone ...
    fig = plots.plot_next(data)                         # ... drawn later
    plots.save_figure(fig, "next.png")                  # png, svg or pdf

| picture      | data                  | plot                  |
|--------------|-----------------------|-----------------------|
| next token   | `next_data`           | `plot_next`           |
| temperature  | `temperature_data`    | `plot_temperature`    |
| embeddings   | `embedding_data`      | `plot_embeddings`     |
| attention    | `attention_data`      | `plot_attention`      |
| beam tree    | `beam_data`           | `plot_beam`           |
| generation   | `generation_data`     | `plot_generation`     |

Figures are built without pyplot, so no display is needed. The submodules (and matplotlib)
are imported on first use, which keeps `lmgen` itself quick to start.
"""

from __future__ import annotations

import importlib

FORMATS = ("png", "svg", "pdf")
DPI = 100
DEFAULT_MAX_NEW_TOKENS = 40  # `plot generation`'s default: a picture, not a page
# A readable beam tree: each step shows 2 x num_beams candidates, one box each.
MAX_TREE_BEAMS = 8
MAX_TREE_STEPS = 10  # later steps are not drawn; the list of hypotheses stays complete

_EXPORTS = {
    "distributions": [
        "MethodPanel",
        "NextComparison",
        "TemperatureSweep",
        "next_data",
        "plot_next",
        "draw_next",
        "temperature_data",
        "plot_temperature",
        "draw_temperature",
        "DEFAULT_TEMPERATURES",
    ],
    "embeddings": ["EmbeddingData", "embedding_data", "plot_embeddings", "draw_embeddings"],
    "attention": ["AttentionData", "attention_data", "plot_attention", "draw_attention"],
    "beam_tree": ["BeamNode", "BeamTree", "Hypothesis", "beam_data", "plot_beam", "draw_beam"],
    "generation": ["GenerationSteps", "generation_data", "plot_generation", "draw_generation"],
    "style": ["save_figure", "token_label", "readable"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

"""`lmgen compare`: what each decoding strategy does to a text, measured against human text
(the shape of Holtzman et al. 2020, Table 1).

    import lmgen
    result = lmgen.compare(n=10, max_new_tokens=64)   # bundled model, held-out Hamlet
    print(result.row("greedy").metrics["repetition_pct"])

The modules: `strategies` (the defaults and parsing), `passages` (prompts and human
continuations), `scoring` (the model's loss and entropy on every token), `metrics` (the
measures, on token ids), `runner` (`compare`), `report` (JSON, tables, the paper's
directions), `cli` (`lmgen compare`). `lmgen.compare` itself is the function; import the
modules as `from lmgen.compare import metrics`.
"""

from ..lazy import lazy_names

# loaded on first use: `runner` imports torch, and `lmgen compare --help` should not wait for it
__getattr__, __dir__, __all__ = lazy_names(
    __name__,
    {
        ".runner": ["CompareResult", "Row", "Sample", "compare"],
        ".strategies": ["DEFAULT_STRATEGIES", "Strategy", "parse_strategy"],
    },
)

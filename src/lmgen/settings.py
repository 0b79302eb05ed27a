"""Every decoding setting, declared once.

A `Setting` says what one knob is: its type, default, allowed range, help text, the processor
it drives, and what OpenAI, vLLM, llama.cpp and transformers call it. Everything else is
derived from the table `SETTINGS`:

- `GenerationConfig`'s fields and their number checks (generation_config.py),
- the command-line flags (`cli_decoding.add_decoding_arguments`),
- the server's request fields and the ranges its OpenAPI document shows (server/schemas.py),
  and the request -> config mapping (server/mapping.py),
- the table in docs/settings.md (`python -m lmgen.settings > docs/settings.md`).

Adding a sampler: one `Setting` here per knob, the processor in decoding/, one line in
`decoding.processors.build_chain`, and a parity test against its reference.

The one number check is `Range.check`: finite, within the range, an int where the setting is
one. A value out of range gets the same message from Python, the command line and HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lmgen.errors import ConfigError

MIN_TEMPERATURE = 1e-4  # below this, logits / T overflows float32; 0 means greedy
MAX_TEMPERATURE = 1e4  # the distribution is uniform long before; 1e39 is float32's infinity
MAX_LOGPROBS = 20  # OpenAI's cap on top_logprobs; reporting more is rarely useful and costs a topk
MAX_PENALTY = 2.0  # OpenAI's range for presence/frequency penalty is [-2, 2]
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values is [-100, 100]
MAX_LENGTH_PENALTY = 10.0  # length ** penalty overflows a float beyond this; no use for more
MAX_SAMPLER_VALUE = 1e4  # top-nσ, DRY, Mirostat: far past any useful value, short of overflow
MAX_DIVERSITY_PENALTY = 100.0  # diverse beam search; log-probs are rarely more than ~30 apart
REPETITION_PENALTY_RANGE = (1e-3, 1e3)  # logits are divided or multiplied by it: float32 bounds
STRATEGIES = ("greedy", "sample", "beam", "contrastive")
MIROSTAT_VERSIONS = (0, 2)  # off, Mirostat v2 (llama.cpp's numbering; v1 is not implemented)
# The names the `samplers` setting orders the chain by (decoding/sampler_order.py): llama.cpp's
# (common/sampling.cpp), and the setting's own for the samplers llama.cpp does not have.
SAMPLER_NAMES = (
    "penalties", "dry", "top_n_sigma", "top_h", "top_k", "typ_p", "top_p", "min_p", "p_less",
    "epsilon", "eta", "xtc", "temperature", "adaptive_p",
)  # fmt: skip

# What the HTTP server accepts at most, for its own sake (memory, time, JSON's exact integers);
# the library and the command line have no such cap.
SERVE_MAX_TOKENS = 2048
# /v1/completions' max_tokens when neither the request nor `lmgen serve --max-new-tokens` sets
# it (OpenAI's); a chat reply may take what the context leaves
SERVE_COMPLETION_TOKENS = 16
SERVE_MAX_N = 16
SERVE_MAX_BEAMS = 16
SERVE_MAX_SEED = 2**53  # the largest integer every JSON client sends exactly
SERVE_MAX_PROMPT_TOKENS = 1 << 16


def _num(x: float) -> str:
    if isinstance(x, int) and x >= 2**32 and x & (x - 1) == 0:
        return f"2**{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Range:
    """The values a number may take: `low`..`high` (either end open or absent), an int when
    `integer`, plus the exceptional values in `also` (temperature's 0)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    also: tuple = ()
    also_note: str = ""  # what an `also` value means: "0 (greedy)"

    def describe(self) -> str:
        """The range in words, as every message and help text says it."""
        lo, hi = self.low, self.high
        if lo is None and hi is None and not self.integer:
            return "finite"
        if self.integer and hi is None:
            text = f"an int >= {_num(lo)}"
        elif self.integer:
            text = f"an int in [{_num(lo)}, {_num(hi)}{')' if self.high_open else ']'}"
        elif self.also:
            text = f"a finite number >= {_num(lo)}"
            text += f" and <= {_num(hi)}" if hi is not None else ""
        elif hi is None:
            text = f"finite and {'>' if self.low_open else '>='} {_num(lo)}"
        else:
            text = f"in {'(' if self.low_open else '['}{_num(lo)}, {_num(hi)}"
            text += ")" if self.high_open else "]"
        return f"{self.also_note} or {text}" if self.also else text

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if value in self.also:
            return True
        lo, hi = self.low, self.high
        if lo is not None and (value <= lo if self.low_open else value < lo):
            return False
        return hi is None or (value < hi if self.high_open else value <= hi)

    def check(self, name: str, value: Any) -> Any:
        """`value`, or ConfigError: "{name} must be {range}, got {value!r}"."""
        if not self.contains(value):
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}", param=name)
        return value

    def capped(self, high: float | None) -> Range:
        """This range with a lower top (the server's own limits)."""
        if high is None or (self.high is not None and self.high <= high):
            return self
        return Range(self.low, high, self.low_open, False, self.integer, self.also, self.also_note)

    def json_schema(self) -> dict[str, Any]:
        """The range as JSON Schema keywords."""
        out: dict[str, Any] = {"type": "integer" if self.integer else "number"}
        if self.low is not None:
            out["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            out["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        if self.also:
            return {"anyOf": [*({"type": "number", "const": v} for v in self.also), out]}
        return out


def check_early_stopping(value: Any) -> Any:
    """early_stopping's values: true, false or "never" (transformers'), one message for all."""
    if isinstance(value, bool) or value == "never":
        return value
    raise ConfigError(
        f'early_stopping must be true, false or "never", got {value!r}', param="early_stopping"
    )


def at_least(low: int) -> Range:
    return Range(low, integer=True)


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Range:
    return Range(low, high, low_open, high_open)


def above(low: float, *, high: float | None = None) -> Range:
    return Range(low, high, low_open=True)


def from_(low: float, *, high: float | None = None) -> Range:
    return Range(low, high)


@dataclass(frozen=True)
class Setting:
    """One decoding knob. `kind` says its shape where a range cannot: "int", "float", "bool",
    "choice" (one of `choices`), "texts" (a list of non-empty strings), "token_bias"
    ({token id: bias}), "bias_pairs" ([[token ids, bias], ...]), "sampler_order" (sampler
    names), "dola" ("low", "high" or layer numbers), "token_lists" (lists of token ids), "json"
    (a JSON schema: an object or its text), "text", "early_stopping" (True, False or
    "never")."""

    name: str
    kind: str
    default: Any
    help: str
    range: Range | None = None
    off: str = ""  # what the default means when it turns the knob off: "off"
    choices: tuple = ()
    choices_text: str = ""  # the choices in words, where they need more than their values
    group: str = "sampling"  # see GROUPS
    processor: str = ""  # the class in lmgen.decoding it configures
    sampling_only: bool = False  # greedy and beam search ignore it (a warning says so)
    implies_sampling: bool = False  # given without a strategy, it asks for sampling
    hf_default: bool = False  # a model's generation_config.json may set its default
    # where it is accepted besides the Python API
    api: str | None = ""  # its HTTP name on completions and chat ("" = `name`; None = not there)
    chain: bool = False  # one of the processor chain's knobs (`lmgen next`, /v1/lmgen/next)
    serve_max: float | None = None  # the HTTP server's own cap
    serve_default_varies: bool = False  # the server's default depends on the endpoint
    wire: str = ""  # its shape in a request, where the kind does not say (server/schemas.py)
    flag: str | None = ""  # its command-line flag ("" = --name-with-dashes; None = none)
    short: str = ""  # a one-letter flag
    metavar: str = ""
    cli: str = ""  # how the command line reads it, where the kind does not say (cli_decoding)
    # the same knob elsewhere
    openai: str = ""
    vllm: str = ""
    llama_cpp: str = ""
    transformers: str = ""

    @property
    def api_name(self) -> str | None:
        return self.name if self.api == "" else self.api

    @property
    def serve_default(self) -> Any:
        return None if self.serve_default_varies else self.default

    @property
    def flag_name(self) -> str | None:
        return "--" + self.name.replace("_", "-") if self.flag == "" else self.flag

    def default_text(self) -> str:
        if self.default is None:
            return "none"
        text = str(self.default).lower() if isinstance(self.default, bool) else str(self.default)
        return f"{text} = {self.off}" if self.off else text

    def allowed(self, serve: bool = False) -> str:
        """The values allowed, in words ("" when the kind says it all)."""
        if self.range is not None:
            return (self.range.capped(self.serve_max) if serve else self.range).describe()
        if self.choices_text:
            return self.choices_text
        if self.choices:
            words = [
                f"{c!r} ({self.off})" if self.off and c == self.default else repr(c)
                for c in self.choices
            ]
            return ", ".join(words[:-1]) + " or " + words[-1]
        return ""

    def check(self, value: Any) -> Any:
        """`value`, or the ConfigError that names the setting and says what it may be."""
        if self.range is not None:
            return self.range.check(self.name, value)
        if self.choices and (isinstance(value, bool) or value not in self.choices):
            raise ConfigError(
                f"{self.name} must be {self.allowed()}, got {value!r}", param=self.name
            )
        return value


# The groups, in the order the command line and the docs show them.
GROUPS = {
    "sampling": "decoding",
    "samplers": "more samplers (sampling only, except DRY; llama.cpp's and transformers' "
    "semantics)",
    "search": "search and stopping",
    "structured": "structured output (one of; the text ends when the constraint is met)",
    "output": "output",
}

# The commands that take every flag of a group: their parsers add them from here, and the docs
# say from here which command takes which setting. (`lmgen generate` adds "output" to its own
# argument group; `plot beam` and `plot tree` take a few search flags by name.)
COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "generate": ("sampling", "samplers", "search", "structured", "output"),
    "chat": ("sampling", "samplers", "search", "structured"),
    "next": ("sampling", "samplers", "structured"),
    "plot generation": ("sampling", "samplers", "search"),
    "serve": ("sampling", "samplers", "search"),
}

_OFF = "off"

SETTINGS: tuple[Setting, ...] = (
    Setting("strategy", "choice", "greedy", "how the next token is chosen; without it, the "
            "strategy is inferred (see infer_strategy)", choices=STRATEGIES, api=None,
            metavar="", transformers="(inferred)"),
    Setting("max_new_tokens", "int", 64, "tokens to generate at most", at_least(1),
            group="search", api="max_tokens", serve_max=SERVE_MAX_TOKENS, metavar="N",
            serve_default_varies=True,
            openai="max_tokens", vllm="max_tokens", llama_cpp="n_predict",
            transformers="max_new_tokens"),
    Setting("min_new_tokens", "int", 0, "no end of text before N new tokens", at_least(0),
            group="search", api="min_tokens", serve_max=SERVE_MAX_TOKENS, metavar="N",
            processor="MinNewTokens", vllm="min_tokens", transformers="min_new_tokens"),
    Setting("temperature", "float", 1.0, "divide the logits by T before sampling; 0 means "
            "greedy",
            Range(MIN_TEMPERATURE, MAX_TEMPERATURE, also=(0,), also_note="0 (greedy)"),
            processor="Temperature", sampling_only=True, implies_sampling=True, hf_default=True,
            chain=True,
            short="-t", metavar="T",
            openai="temperature", vllm="temperature", llama_cpp="temperature",
            transformers="temperature"),
    Setting("top_k", "int", 0, "keep the K most likely tokens", at_least(0), off=_OFF,
            processor="TopK", sampling_only=True, implies_sampling=True, hf_default=True,
            chain=True, metavar="K",
            vllm="top_k",
            llama_cpp="top_k", transformers="top_k"),
    Setting("top_p", "float", 1.0, "nucleus: keep the smallest set of top tokens whose "
            "probability reaches P", between(0, 1, low_open=True), off=_OFF, processor="TopP",
            sampling_only=True, implies_sampling=True, hf_default=True, chain=True, metavar="P",
            openai="top_p",
            vllm="top_p",
            llama_cpp="top_p", transformers="top_p"),
    Setting("min_p", "float", 0.0, "drop tokens below P x the top token's probability",
            between(0, 1), off=_OFF, processor="MinP", sampling_only=True, implies_sampling=True,
            hf_default=True,
            chain=True,
            metavar="P", vllm="min_p", llama_cpp="min_p", transformers="min_p"),
    Setting("typical_p", "float", 1.0, "locally typical sampling: keep this much mass",
            between(0, 1, low_open=True), off=_OFF, processor="TypicalP", sampling_only=True,
            implies_sampling=True, hf_default=True,
            chain=True, metavar="P", llama_cpp="typical_p", transformers="typical_p"),
    Setting("epsilon_cutoff", "float", 0.0, "epsilon sampling: drop tokens with probability "
            "below E", between(0, 1, high_open=True), off=_OFF, group="samplers",
            processor="EpsilonCutoff", sampling_only=True, chain=True, metavar="E",
            transformers="epsilon_cutoff"),
    Setting("eta_cutoff", "float", 0.0, "eta sampling: drop tokens below min(E, sqrt(E) * "
            "exp(-entropy))", between(0, 1, high_open=True), off=_OFF, group="samplers",
            processor="EtaCutoff", sampling_only=True, chain=True, metavar="E",
            transformers="eta_cutoff"),
    Setting("top_n_sigma", "float", 0.0, "keep tokens whose logit is within N standard "
            "deviations of the best", from_(0, high=MAX_SAMPLER_VALUE), off=_OFF,
            group="samplers", processor="TopNSigma", sampling_only=True, chain=True,
            metavar="N", llama_cpp="top_n_sigma"),
    Setting("xtc_probability", "float", 0.0, "XTC: with probability P a step removes every "
            "token above --xtc-threshold but the least likely of them", between(0, 1),
            off=_OFF, group="samplers", processor="XTC", sampling_only=True, chain=True,
            metavar="P", llama_cpp="xtc_probability"),
    Setting("xtc_threshold", "float", 0.1, "XTC's probability threshold",
            between(0, 0.5, low_open=True), group="samplers", processor="XTC",
            sampling_only=True, chain=True, metavar="T", llama_cpp="xtc_threshold"),
    Setting("dry_multiplier", "float", 0.0, "DRY: penalise a token that would extend a "
            "repeat of the text's end by M * base ** (length - allowed length)",
            from_(0, high=MAX_SAMPLER_VALUE), off=_OFF, group="samplers", processor="DRY",
            chain=True, metavar="M", llama_cpp="dry_multiplier"),
    Setting("dry_base", "float", 1.75, "DRY's growth per repeated token",
            from_(1, high=MAX_SAMPLER_VALUE), group="samplers", processor="DRY", chain=True,
            metavar="B", llama_cpp="dry_base"),
    Setting("dry_allowed_length", "int", 2, "DRY: repeats up to N tokens go unpenalised",
            at_least(1), group="samplers", processor="DRY", chain=True,
            serve_max=SERVE_MAX_PROMPT_TOKENS, metavar="N", llama_cpp="dry_allowed_length"),
    Setting("dry_penalty_last_n", "int", -1, "DRY looks at the last N tokens; -1 = the whole "
            "text, 0 = off", at_least(-1), group="samplers", processor="DRY", chain=True,
            serve_max=SERVE_MAX_PROMPT_TOKENS, metavar="N", llama_cpp="dry_penalty_last_n"),
    Setting("dry_sequence_breakers", "texts", None, "a string no repeat reaches back "
            "across; repeatable, replaces the defaults (none given: \\n, :, \", *)",
            group="samplers", processor="DRY", chain=True, flag="--dry-sequence-breaker",
            metavar="S", llama_cpp="dry_sequence_breakers"),
    Setting("dynatemp_range", "float", 0.0, "dynamic temperature: from temperature - R "
            "(confident steps) to temperature + R (uncertain ones) by the step's entropy",
            from_(0, high=MAX_TEMPERATURE), off=_OFF, group="samplers",
            processor="DynamicTemperature", sampling_only=True, chain=True, metavar="R",
            llama_cpp="dynatemp_range"),
    Setting("dynatemp_exponent", "float", 1.0, "dynamic temperature's exponent on the "
            "entropy", above(0, high=MAX_SAMPLER_VALUE), group="samplers",
            processor="DynamicTemperature", sampling_only=True, chain=True, metavar="X",
            llama_cpp="dynatemp_exponent"),
    Setting("mirostat", "choice", 0, "2: Mirostat v2, which steers each token's surprise "
            "towards --mirostat-tau bits", choices=MIROSTAT_VERSIONS,
            choices_text="0 (off) or 2 (Mirostat v2; v1 is not implemented)",
            off=_OFF, group="samplers", processor="MirostatV2", sampling_only=True, chain=True,
            metavar="0|2", llama_cpp="mirostat"),
    Setting("mirostat_tau", "float", 5.0, "Mirostat's target surprise in bits",
            above(0, high=MAX_SAMPLER_VALUE), group="samplers", processor="MirostatV2",
            sampling_only=True, chain=True, metavar="TAU", llama_cpp="mirostat_tau"),
    Setting("mirostat_eta", "float", 0.1, "Mirostat's learning rate",
            above(0, high=MAX_SAMPLER_VALUE), group="samplers", processor="MirostatV2",
            sampling_only=True, chain=True, metavar="ETA", llama_cpp="mirostat_eta"),
    Setting("top_h", "float", 0.0, "Top-H: keep the most likely tokens (of the top 100) "
            "while their entropy sum stays within H x the entropy of those 100",
            between(0, 1), off=_OFF, group="samplers", processor="TopH", sampling_only=True,
            chain=True, metavar="H", transformers="top_h"),
    Setting("p_less", "bool", False, "p-less: keep the tokens whose probability is at least "
            "the sum of squared probabilities (hyperparameter-free)", group="samplers",
            processor="PLess", sampling_only=True, chain=True),
    Setting("p_less_norm", "bool", False, "p-less-norm: p-less with the threshold "
            "normalised against the uniform distribution, (V sum p^2 - 1) / (V - 1); keeps "
            "more", group="samplers", processor="PLess", sampling_only=True, chain=True),
    Setting("adaptive_target", "float", -1.0, "adaptive-p: steer the chosen tokens' "
            "probability (its moving average) towards P; runs last in the chain",
            Range(0, 1, also=(-1,), also_note="-1 (off)"), group="samplers",
            processor="AdaptiveP", sampling_only=True, chain=True, metavar="P",
            llama_cpp="adaptive_target"),
    Setting("adaptive_decay", "float", 0.9, "adaptive-p's moving-average decay (history of "
            "about 1 / (1 - D) tokens)", between(0, 0.99), group="samplers",
            processor="AdaptiveP", sampling_only=True, chain=True, metavar="D",
            llama_cpp="adaptive_decay"),
    Setting("samplers", "sampler_order", None, "the order of the samplers, llama.cpp's names "
            "separated by ';' (" + ";".join(SAMPLER_NAMES) + "); every active sampler must "
            "be named; adaptive_p always runs last (none: the default order)",
            group="samplers", chain=True, metavar="LIST",
            llama_cpp="samplers"),
    Setting("regex", "text", None, "the generated text matches RE (Rust regex syntax, whole "
            "text)", group="structured", processor="StructuredOutput", chain=True,
            api="guided_regex", metavar="RE", vllm="guided_regex"),
    Setting("json_schema", "json", None, "the generated text is JSON valid under the JSON "
            "schema in FILE", group="structured", processor="StructuredOutput", chain=True,
            api="guided_json", metavar="FILE", cli="file", vllm="guided_json",
            openai="response_format", llama_cpp="json_schema"),
    Setting("choice", "texts", None, "the generated text is one of these; repeatable",
            group="structured", processor="StructuredOutput", chain=True, api="guided_choice",
            wire="choices",
            metavar="TEXT", vllm="guided_choice"),
    Setting("grammar", "text", None, "the generated text follows the context-free grammar "
            "in FILE: Lark syntax, or llama.cpp's GBNF", group="structured",
            processor="StructuredOutput", chain=True, api="guided_grammar", metavar="FILE",
            cli="file", vllm="guided_grammar", llama_cpp="grammar"),
    Setting("repetition_penalty", "float", 1.0, "make tokens already in the text R times "
            "less likely", between(*REPETITION_PENALTY_RANGE), off=_OFF,
            processor="RepetitionPenalty", chain=True, hf_default=True, metavar="R",
            vllm="repetition_penalty",
            transformers="repetition_penalty"),
    Setting("presence_penalty", "float", 0.0, "subtract X from the logit of every token "
            "generated so far", between(-MAX_PENALTY, MAX_PENALTY), off=_OFF,
            processor="PresenceFrequencyPenalty", chain=True, metavar="X",
            openai="presence_penalty", vllm="presence_penalty", llama_cpp="presence_penalty"),
    Setting("frequency_penalty", "float", 0.0, "subtract X times each generated token's "
            "count from its logit", between(-MAX_PENALTY, MAX_PENALTY), off=_OFF,
            processor="PresenceFrequencyPenalty", chain=True, metavar="X",
            openai="frequency_penalty", vllm="frequency_penalty",
            llama_cpp="frequency_penalty"),
    Setting("no_repeat_ngram_size", "int", 0, "never repeat an N-gram", at_least(0), off=_OFF,
            processor="NoRepeatNGram", chain=True, metavar="N",
            transformers="no_repeat_ngram_size"),
    Setting("logit_bias", "token_bias", None, "add BIAS, in [-100, 100], to token ID's "
            "logit; repeatable; -100 bans a token (ids: lmgen tokenize)", processor="LogitBias",
            chain=True, metavar="ID=BIAS", openai="logit_bias", vllm="logit_bias",
            llama_cpp="logit_bias"),
    Setting("sequence_bias", "bias_pairs", None, "add BIAS, in [-100, 100], to a token that "
            "would complete the token sequence IDS (comma-separated); repeatable; one id biases "
            "that token always", processor="SequenceBias", chain=True,
            metavar="IDS=BIAS", transformers="sequence_bias"),
    Setting("bad_words_ids", "token_lists", None, "token sequences never to generate",
            processor="BadWords", api=None, flag=None, transformers="bad_words_ids"),
    Setting("dola_layers", "dola", None, "DoLa: contrast the final layer with the most "
            "different of these early layers: low, high, or layer numbers (0 = the "
            "embeddings); greedy or sampling", group="search", metavar="low|high|N,N,...",
            transformers="dola_layers"),
    Setting("num_beams", "int", 1, "beams of beam search; > 1 implies --strategy beam",
            at_least(1), group="search", serve_max=SERVE_MAX_BEAMS, metavar="N",
            transformers="num_beams"),
    Setting("length_penalty", "float", 1.0, "beam search ranks by log-prob sum / "
            "length**X; > 0 favours longer", between(-MAX_LENGTH_PENALTY, MAX_LENGTH_PENALTY),
            group="search", metavar="X", vllm="length_penalty", transformers="length_penalty"),
    Setting("early_stopping", "early_stopping", False, "beam search stops when num_beams "
            "hypotheses are finished (true), when no beam can beat them (false), or only at "
            "the length limit (never)", group="search", metavar="true|false|never",
            transformers="early_stopping"),
    Setting("num_return_sequences", "int", 1, "sequences per prompt (sample or beam)",
            at_least(1), group="search", api="n", serve_max=SERVE_MAX_N, short="-n",
            metavar="N", openai="n", vllm="n", transformers="num_return_sequences"),
    Setting("stop", "texts", None, "stop before this string, which is cut; repeatable; \\n, "
            "\\t and \\\\ are understood", group="search", metavar="S", cli="escaped",
            wire="one_or_more_texts",
            openai="stop", vllm="stop", llama_cpp="stop", transformers="stop_strings"),
    Setting("ignore_eos", "bool", False, "keep going past the end-of-text token",
            group="search", vllm="ignore_eos", llama_cpp="ignore_eos"),
    Setting("seed", "int", None, "seed of the sampler: the same seed gives the same text "
            "(none: random); implies --strategy sample", Range(0, 2**64, high_open=True,
            integer=True), group="search", sampling_only=True, implies_sampling=True,
            serve_max=SERVE_MAX_SEED,
            metavar="SEED", openai="seed", vllm="seed", llama_cpp="seed"),
    Setting("prompt_lookup_num_tokens", "int", 0, "prompt-lookup decoding: propose up to N "
            "tokens copied from where the text's last n-gram occurred before, checked by the "
            "model in one pass (the same tokens as without it)", at_least(0), off=_OFF,
            group="search", serve_max=64, metavar="N", vllm="num_speculative_tokens (ngram)",
            transformers="prompt_lookup_num_tokens"),
    Setting("prompt_lookup_max_ngram", "int", 2, "prompt-lookup decoding: match the last N "
            "tokens first, then fewer", at_least(1), group="search", serve_max=64,
            metavar="N", vllm="prompt_lookup_max", transformers="max_matching_ngram_size"),
    Setting("min_tokens_to_keep", "int", 1, "the filters keep at least N tokens",
            at_least(1), processor="TopK", sampling_only=True, chain=True, api=None,
            metavar="N", llama_cpp="min_keep", transformers="min_tokens_to_keep"),
    Setting("temperature_last", "bool", False, "apply temperature after the filters "
            "(llama.cpp's order; transformers' is first)", processor="Temperature",
            sampling_only=True, chain=True, api=None, vllm="", llama_cpp="(sampler order)"),
    Setting("logprobs", "int", 0, "also report each token's top-N alternatives with their "
            "log-probabilities", Range(0, MAX_LOGPROBS, integer=True), off=_OFF, group="output",
            api=None, metavar="N", openai="logprobs / top_logprobs", vllm="logprobs",
            llama_cpp="n_probs"),
    Setting("context_overflow", "choice", "error", "past the model's context: fail, or keep "
            "only the last tokens", choices=("error", "slide"), group="search", metavar="",
            llama_cpp="(context shift)"),
    Setting("penalty_alpha", "float", 0.6, "contrastive search: weight of the degeneration "
            "penalty among the --top-k candidates (contrastive search needs --top-k); giving it "
            "(> 0) implies --strategy contrastive, and --strategy contrastive without it uses "
            "the default",
            between(0, 1), metavar="A", transformers="penalty_alpha"),
    Setting("num_beam_groups", "int", 1, "diverse beam search: split the beams into G "
            "groups searched in turn", at_least(1), group="search", serve_max=SERVE_MAX_BEAMS,
            metavar="G", transformers="num_beam_groups"),
    Setting("diversity_penalty", "float", 0.0, "diverse beam search: subtracted from a "
            "token's log-prob per earlier group that chose it this step",
            from_(0), group="search", serve_max=MAX_DIVERSITY_PENALTY, metavar="X",
            transformers="diversity_penalty"),
)  # fmt: skip

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
DEFAULTS: dict[str, Any] = {s.name: s.default for s in SETTINGS}
# Knobs that only shape the sampling distribution; greedy and beam search ignore them.
SAMPLING_ONLY: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.sampling_only)
# transformers' names of the settings a model's generation_config.json may give defaults for
HF_GENERATION_DEFAULTS: tuple[str, ...] = tuple(s.transformers for s in SETTINGS if s.hf_default)
# Giving any of these (temperature other than 0) asks for sampling when no strategy is named.
SAMPLING_SIGNALS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.implies_sampling)
CONSTRAINTS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.group == "structured")


def setting(name: str) -> Setting:
    return BY_NAME[name]


def hf_generation_defaults(values: dict[str, Any], sampling: bool) -> dict[str, Any]:
    """GenerationConfig keywords from a model's generation_config.json (`values`, under
    transformers' names): the settings declared `hf_default` that it gives, the sampling-only
    ones only when `sampling`."""
    return {
        s.name: values[s.transformers]
        for s in SETTINGS
        if s.hf_default
        and values.get(s.transformers) is not None
        and (sampling or not s.sampling_only)
    }


# -- docs/settings.md ---------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else "–"


def markdown() -> str:
    """docs/settings.md: one table row per setting, grouped as the command line groups them.
    Written by `python -m lmgen.settings > docs/settings.md` (tests/test_settings.py fails
    when the file is stale)."""
    lines = [
        "# Decoding settings",
        "",
        "Generated from `src/lmgen/settings.py` by `python -m lmgen.settings > docs/settings.md`;"
        " do not edit by hand. Each setting is a `GenerationConfig` field (Python), a flag of"
        " the `lmgen` commands its row names (`serve`: the default of requests that leave it"
        " out) and a request field of the server (completions and chat under the HTTP name;"
        " `/v1/lmgen/next` under the Python name). Every one of them checks the range below"
        " with the same message; the server caps some values lower for its own sake (the HTTP"
        " range).",
        "",
    ]
    for group, title in GROUPS.items():
        rows = [s for s in SETTINGS if s.group == group]
        lines += [
            f"## {title[0].upper()}{title[1:]}",
            "",
            "| setting | default | range | flag | commands | HTTP name | HTTP range | OpenAI"
            " | vLLM | llama.cpp | transformers | processor | what it does |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        commands = ", ".join(c for c, groups in COMMAND_GROUPS.items() if group in groups)
        for s in rows:
            flag = s.flag_name + (f", {s.short}" if s.short else "") if s.flag_name else ""
            served = s.api_name is not None or s.chain  # completions and chat, or /v1/lmgen/next
            serve = s.allowed(serve=True) if served else ""
            cells = [f"`{s.name}`", s.default_text(), s.allowed(), flag and f"`{flag}`",
                     flag and commands, s.api_name and f"`{s.api_name}`", serve, s.openai,
                     s.vllm, s.llama_cpp, s.transformers, s.processor and f"`{s.processor}`",
                     s.help]  # fmt: skip
            lines.append("| " + " | ".join(_cell(c or "") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")

"""Prints max |Δlogit| between lmgen's GPT and transformers' GPT2LMHeadModel, fp32, CPU.

Not a test (pytest does not collect this file); run it to get the figures to quote:

    .venv/bin/python tests/report_logit_deltas.py

The model is GPT-2 small's width (n_embd 768, 12 heads, n_positions 1024) with 4 layers and
an 8192-token vocabulary, GPT-2's initialisation (std 0.02), LayerNorm gains and all biases
perturbed so every parameter takes part. Each case is measured for GPT-2's defaults and for
the tutorial's variant (exact GELU, untied head).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel  # noqa: E402

import lmgen  # noqa: E402
from conftest import randomize_, tiny_corpus  # noqa: E402
from lmgen.model import GPT, GPTConfig  # noqa: E402
from lmgen.tokenizers import BPETokenizer  # noqa: E402

SHAPE = {"vocab_size": 8192, "n_positions": 1024, "n_embd": 768, "n_layer": 4, "n_head": 12}
VARIANTS = {
    "gpt2": {},
    "tutorial": {"activation_function": "gelu", "tie_word_embeddings": False},
}


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def ids(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, SHAPE["vocab_size"], shape, generator=g)


def delta(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def measure(variant: dict, tokenizer, workdir: Path) -> dict[str, float]:
    torch.manual_seed(0)
    hf = randomize_(GPT2LMHeadModel(GPT2Config(**SHAPE, **variant)), scale=0.02).eval()
    hf.save_pretrained(workdir / "hf")
    tokenizer.save(workdir / "hf")
    ours = lmgen.load(workdir / "hf").model  # transformers save -> our load
    out: dict[str, float] = {}

    x = ids(1, 256, seed=1)
    ref = hf(x).logits
    out["max |logit| (scale)"] = ref.abs().max().item()
    out["single sequence (1x256)"] = delta(ours(x), ref)

    lengths = [256, 200, 64, 1]
    x = ids(len(lengths), 256, seed=2)
    mask = torch.zeros_like(x)
    for row, n in enumerate(lengths):
        mask[row, 256 - n :] = 1
    ref = hf(x, attention_mask=mask, position_ids=positions(mask)).logits
    real = mask.bool()
    out["left-padded batch (4 rows)"] = delta(ours(x, attention_mask=mask)[real], ref[real])

    prompt, steps = 64, 20
    x = ids(2, prompt + steps, seed=3)
    ref = hf(x).logits
    cache = ours.new_cache(2, prompt + steps)
    got = [ours(x[:, :prompt], cache=cache)]
    got += [ours(x[:, t : t + 1], cache=cache) for t in range(prompt, prompt + steps)]
    out["kv-cache prefill 64 + 20 steps"] = delta(torch.cat(got, 1), ref)

    x = ids(3, prompt + steps, seed=4)
    mask = torch.ones_like(x)
    for row, pad in enumerate([0, 17, 40]):
        mask[row, :pad] = 0
    ref = hf(x, attention_mask=mask, position_ids=positions(mask)).logits
    cache = ours.new_cache(3, prompt + steps)
    got = [ours(x[:, :prompt], attention_mask=mask[:, :prompt], cache=cache)]
    got += [
        ours(x[:, t : t + 1], attention_mask=mask[:, t : t + 1], cache=cache)
        for t in range(prompt, prompt + steps)
    ]
    real = mask.bool()
    out["kv-cache, left-padded batch"] = delta(torch.cat(got, 1)[real], ref[real])

    x = ids(2, 128, seed=6)
    out["transformers save -> our load"] = delta(ours(x), hf(x).logits)

    torch.manual_seed(1)
    model = randomize_(GPT(GPTConfig(**SHAPE, **variant)), seed=1, scale=0.02).eval()
    lmgen.LM(model, tokenizer).save(workdir / "ours")
    theirs = AutoModelForCausalLM.from_pretrained(workdir / "ours").eval()
    x = ids(1, 256, seed=5)
    out["our save -> transformers load"] = delta(theirs(x).logits, model(x))
    return out


def main() -> None:
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    tokenizer = BPETokenizer.train(texts=tiny_corpus(), vocab_size=384)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, variant in VARIANTS.items():
            (Path(tmp) / name).mkdir()
            results[name] = measure(variant, tokenizer, Path(tmp) / name)
    shape = ", ".join(f"{k}={v}" for k, v in SHAPE.items())
    print(
        f"max |Δlogit|, lmgen vs transformers {__import__('transformers').__version__}, "
        f"fp32, torch {torch.__version__} CPU"
    )
    print(f"model: {shape}")
    rows = list(results["gpt2"])
    width = max(map(len, rows))
    print(f"{'case':<{width}}  {'gpt2 defaults':>14}  {'tutorial variant':>16}")
    for row in rows:
        print(f"{row:<{width}}  {results['gpt2'][row]:>14.2e}  {results['tutorial'][row]:>16.2e}")


if __name__ == "__main__":
    main()

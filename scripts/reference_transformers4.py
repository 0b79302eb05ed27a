"""Writes tests/data/decoding-reference/: a tiny random GPT-2 and what transformers 4.5x's own
contrastive search and diverse (group) beam search make of it — the oracle for
tests/test_contrastive_and_group_beam.py. Transformers 5 dropped both from its core, so this
runs once, by hand, in a separate environment:

    python3 -m venv /tmp/tf4
    /tmp/tf4/bin/pip install torch==2.13.0 transformers==4.53.3
    /tmp/tf4/bin/python scripts/reference_transformers4.py

The weights are stored in float16 (small) and both sides compute in float32 from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "decoding-reference"
EOS = 0

PROMPTS = [[5, 17, 33, 8], [41, 2, 9, 9, 30, 12, 7], [60]]

CONTRASTIVE = [
    dict(top_k=4, penalty_alpha=0.6),
    dict(top_k=3, penalty_alpha=0.3),
    dict(top_k=6, penalty_alpha=0.9),
    dict(top_k=4, penalty_alpha=0.6, repetition_penalty=1.3),
]
GROUP_BEAM = [
    dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, num_return_sequences=2),
    dict(
        num_beams=6,
        num_beam_groups=3,
        diversity_penalty=0.5,
        length_penalty=0.8,
        num_return_sequences=4,
    ),
    dict(
        num_beams=4,
        num_beam_groups=4,
        diversity_penalty=2.0,
        early_stopping=True,
        num_return_sequences=4,
    ),
    dict(
        num_beams=4,
        num_beam_groups=2,
        diversity_penalty=1.0,
        early_stopping="never",
        length_penalty=1.5,
        num_return_sequences=3,
    ),
    dict(
        num_beams=4,
        num_beam_groups=2,
        diversity_penalty=0.7,
        no_repeat_ngram_size=2,
        num_return_sequences=2,
    ),
]
MAX_NEW = 16


def main() -> None:
    torch.manual_seed(20261202)
    config = transformers.GPT2Config(
        vocab_size=64,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=EOS,
        eos_token_id=EOS,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(6.0)  # peaky, so the methods disagree
    OUT.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(OUT)
    model = transformers.GPT2LMHeadModel.from_pretrained(OUT, torch_dtype=torch.float32).eval()
    cases = []
    for kind, configs in (("contrastive", CONTRASTIVE), ("group_beam", GROUP_BEAM)):
        for kw in configs:
            for prompt in PROMPTS:
                ids = torch.tensor([prompt])
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=MAX_NEW,
                    do_sample=False,
                    pad_token_id=EOS,
                    eos_token_id=EOS,
                    return_dict_in_generate=True,
                    output_scores=True,
                    **kw,
                )
                seqs = out.sequences[:, len(prompt) :].tolist()
                scores = out.sequences_scores.tolist() if kind == "group_beam" else None
                cases.append(
                    {
                        "kind": kind,
                        "kwargs": kw,
                        "prompt": prompt,
                        "sequences": seqs,
                        "scores": scores,
                    }
                )
    meta = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "max_new_tokens": MAX_NEW,
        "eos": EOS,
        "cases": cases,
    }
    (OUT / "expected.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()

"""The fused decode step (lmgen.kernels.decode_step_rope / decode_step and their rows versions)
with weights held as ggml blocks (lmgen.quantize.QuantLinear), against the op-by-op path:

- bitwise: the step's first-layer values, as it writes them to the KV cache, equal the op-by-op
  kernel's product (lmgen.kernels.quant.gemv) of the same normalized input (RMSNorm worked out
  in float32 in the kernel's order), for every kept block type and for a layer of mixed parts;
- the whole step's logits equal the step run block by block (FUSED_DECODE_STEP off) to the
  rounding of the activations to int8 (a float-rounding difference upstream can move a value
  across a rounding boundary), and the greedy tokens are the same;
- the server's rows step (`InferencePlan.rows_step`) gives each row the same bits alone or in
  a batch."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

import lmgen  # noqa: E402
import lmgen.model as M  # noqa: E402
from lmgen import kernels  # noqa: E402
from lmgen.ggml_blocks import BLOCKS, QuantTensor  # noqa: E402
from lmgen.kernels import quant  # noqa: E402
from lmgen.model import GPT, GPTConfig  # noqa: E402
from lmgen.quantize import QuantLinear, quantize_model  # noqa: E402
from lmgen.tokenizers import BPETokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.skipif(
    not (kernels.available() and quant.available()), reason="lmgen's kernels not built here"
)
KINDS = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K"]
# hidden 256 and MLP 512: every layer's inputs are whole Q4_K super-blocks
CONFIGS = {
    "qwen3": ("Qwen3Config", dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=64)),
    "gemma3": ("Gemma3TextConfig", dict(hidden_size=256, intermediate_size=512,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=1, head_dim=64, sliding_window=4,
                                        query_pre_attn_scalar=64,
                                        layer_types=["sliding_attention", "full_attention"])),
}  # fmt: skip


def _blocks(kind: str, w: torch.Tensor, seed: int) -> QuantTensor:
    """`w` in blocks of `kind` by the gguf package's quantizer; Q4_K (which it cannot write):
    random bytes with scales that keep the weights about w's size."""
    out, inp = w.shape
    if kind != "Q4_K":
        raw = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType[kind])
        return QuantTensor(kind, torch.from_numpy(np.ascontiguousarray(raw)), inp)
    rng = np.random.default_rng(seed)
    per, size = BLOCKS[kind]
    raw = rng.integers(0, 256, (out, inp // per, size), dtype=np.uint8)
    raw[:, :, :4] = rng.uniform(2e-4, 6e-4, (out, inp // per, 2)).astype(np.float16).view(np.uint8)
    return QuantTensor(kind, torch.from_numpy(raw.reshape(out, -1).copy()), inp)


def _quantized(model, kind: str, mixed: bool = False):
    """Every block linear layer as a QuantLinear of `kind`; `mixed`: q/k in `kind` and v a
    float part (a Q4_K_M file's Q6_K tensor)."""
    with torch.no_grad():
        for i, b in enumerate(model.h):
            for j, (parent, name) in enumerate(((b.attn, "c_attn"), (b.attn, "c_proj"),
                                                (b.mlp, "c_fc"), (b.mlp, "c_proj"))):  # fmt: skip
                lin = getattr(parent, name)
                w, seed = lin.weight.detach().float(), 10 * i + j
                if mixed and name == "c_attn":
                    kv = model.config.kv_heads * model.config.head_dim
                    parts = [_blocks(kind, w[:-kv].contiguous(), seed), w[-kv:].contiguous()]
                else:
                    parts = [_blocks(kind, w, seed)]
                bias = lin.bias.detach().clone() if lin.bias is not None else None
                setattr(parent, name, QuantLinear(parts, bias))
    model.reset_plan()
    return model


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tok = BPETokenizer.train(texts=["to be or not to be, that is the question. " * 40],
                             vocab_size=300)  # fmt: skip
    out = {}
    for name, (cls, kw) in CONFIGS.items():
        cfg = getattr(transformers, cls)(vocab_size=300, max_position_embeddings=64, **kw,
                                         eos_token_id=tok.eos_token_id)  # fmt: skip
        torch.manual_seed(0)
        d = tmp_path_factory.mktemp(name)
        transformers.AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(d)
        tok.save(d)
        out[name] = d
    return out


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float, unit_offset: bool) -> np.ndarray:
    """decode.cpp's rms_norm in float32: element i's square summed into lane i % 8 in order,
    then the 8 lanes added as its hsum adds them ((0+4) + (2+6)) + ((1+5) + (3+7))."""
    lanes = np.zeros(8, np.float32)
    for row in np.concatenate([x, np.zeros(-len(x) % 8, np.float32)]).reshape(-1, 8):
        lanes = lanes + row * row
    s = lanes[:4] + lanes[4:]
    ss = np.float32(np.float32(s[0] + s[2]) + np.float32(s[1] + s[3]))
    inv = np.float32(1) / np.sqrt(np.float32(ss / np.float32(len(x)) + np.float32(eps)))
    return (x * inv) * ((np.float32(1) + w) if unit_offset else w)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("kind", [*KINDS, "Q5_0+float"])
def test_first_layer_values_are_the_op_by_op_product_bitwise(dirs, name, kind):
    mixed = kind.endswith("+float")
    model = _quantized(lmgen.load(dirs[name]).model, kind.split("+")[0], mixed)
    plan = model.inference_plan()
    assert plan.rope_params is not None and len(plan.blocks[0]) == 4 * 2 + mixed * 2
    c = model.config
    with torch.inference_mode():
        cache = model.new_cache(1, 8)
        model(torch.tensor([[5, 17, 40]]), cache=cache)
        model(torch.tensor([[42]]), cache=cache)  # the fused step, at position 3
        x = model.embed(torch.tensor([[42]]), torch.tensor([[3]])).view(-1).float().numpy()
    h = _rms_norm(x, model.h[0].ln_1.weight.detach().float().numpy(), c.layer_norm_epsilon,
                  c.norm_unit_offset)  # fmt: skip
    qkv = model.h[0].attn.c_attn
    kv = c.kv_heads * c.head_dim
    q_part = qkv.parts()[0]
    if mixed:  # the float part's product is torch's (here) and decode.cpp's (there): close
        want_v = torch.from_numpy(h) @ qkv.parts()[1].T
        got_v = cache.v[0, 0, :, 3].reshape(-1)
        torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=1e-5)
        return
    y = quant.gemv(torch.from_numpy(h)[None], q_part.blocks, q_part.kind)[0]
    assert torch.equal(cache.v[0, 0, :, 3].reshape(-1), y[-kv:])


def _steps(model, ids, fused: bool, monkeypatch):
    monkeypatch.setattr(M.plan, "FUSED_DECODE_STEP", fused)
    calls = []
    for op in ("decode_step_rope", "decode_step"):
        real = getattr(kernels, op)
        monkeypatch.setattr(kernels, op, lambda *a, real=real: calls.append(1) or real(*a))
    with torch.inference_mode():
        cache = model.new_cache(ids.shape[0], ids.shape[1])
        model(ids[:, :3], cache=cache)
        logits = [model(ids[:, i : i + 1], cache=cache)[:, -1] for i in range(3, ids.shape[1])]
    assert len(calls) == (ids.shape[1] - 3 if fused else 0)
    return torch.stack(logits)


def _close_to_op_by_op(model, monkeypatch, rows: int):
    ids = torch.randint(0, 290, (rows, 12), generator=torch.Generator().manual_seed(rows))
    fused = _steps(model, ids, True, monkeypatch)
    plain = _steps(model, ids, False, monkeypatch)
    scale = plain.abs().max().item()
    assert (fused - plain).abs().max().item() < 2e-2 * scale
    assert torch.equal(fused.argmax(-1), plain.argmax(-1))


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("kind", [*KINDS, "Q4_1+float"])
def test_fused_step_equals_the_op_by_op_step(dirs, name, kind, monkeypatch):
    model = _quantized(lmgen.load(dirs[name]).model, kind.split("+")[0], kind.endswith("+float"))
    _close_to_op_by_op(model, monkeypatch, 2)


def test_gpt2_int4_takes_the_fused_step(monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, n_positions=40, n_embd=64, n_layer=2, n_head=4)).eval()
    quantize_model(model, "int4")
    plan = model.inference_plan()
    assert plan.step_params is not None and len(plan.blocks[0]) == 8
    _close_to_op_by_op(model, monkeypatch, 2)


@pytest.mark.parametrize("kind", ["Q4_1", "Q4_K"])
def test_rows_step_with_blocks_is_the_same_in_any_batch(dirs, kind):
    """Each row's step alone and among others, at any place: the same bits (batch invariance),
    and each row's cache written as it is alone."""
    model = _quantized(lmgen.load(dirs["qwen3"]).model, kind)
    plan = model.inference_plan()
    lengths, g = [3, 7, 1, 5, 2], torch.Generator().manual_seed(1)
    caches, tokens = [], []
    with torch.inference_mode():
        for n in lengths:
            ids = torch.randint(0, 290, (1, n + 1), generator=g)
            c = model.new_cache(1, 16)
            model(ids[:, :n], cache=c)
            caches.append(c)
            tokens.append(int(ids[0, n]))

        def step(rows):
            cs = [caches[b].repeat_rows(1) for b in rows]
            pos = [c.length for c in cs]
            x = model.embed(torch.tensor([[tokens[b] for b in rows]]), torch.tensor([pos]))
            x = x.view(len(rows), -1)
            assert plan.fuses_rows(x)
            return plan.rows_step(x, cs, pos), cs

        together, cs = step(range(5))
        for b in range(5):
            alone, c1 = step([b])
            assert torch.equal(alone[0], together[b])
            n = lengths[b]
            assert torch.equal(c1[0].k[:, :, :, : n + 1], cs[b].k[:, :, :, : n + 1])
        order = [3, 0, 4, 1, 2]
        shuffled, _ = step(order)
        assert all(torch.equal(shuffled[i], together[b]) for i, b in enumerate(order))


def test_fused_step_refuses_mismatched_parts(dirs):
    model = _quantized(lmgen.load(dirs["qwen3"]).model, "Q8_0")
    plan = model.inference_plan()
    tensors, parts = plan.blocks
    x = torch.randn(1, 256)
    cache = model.new_cache(1, 8)
    cos, sin = plan._rope_tables(model, torch.tensor([[2]]))
    args = (cache.k, cache.v, 2, *plan._rope_shape(model), cos[0], sin[0],
            *plan._rope_tail(model))  # fmt: skip
    with pytest.raises(RuntimeError, match="more ggml parts than linear layers"):
        kernels.decode_step_rope(x, plan.rope_params, *args, (tensors, [*parts, 1, 8]))
    with pytest.raises(RuntimeError, match="needs a weight or ggml parts"):
        kernels.decode_step_rope(x, plan.rope_params, *args, ((), ()))
    bad = [tensors[0][:, :-1].contiguous(), *tensors[1:]]
    with pytest.raises(RuntimeError, match="bytes for 256 inputs"):
        kernels.decode_step_rope(x, plan.rope_params, *args, (bad, parts))

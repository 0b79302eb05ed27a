"""`lmgen serve`: arguments, model names, and one real start of the command."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

import lmgen
from lmgen.cli import build_parser, main
from lmgen.server.cli import load_models, memory_size, model_name


def test_serve_is_registered_with_its_defaults():
    args = build_parser().parse_args(["serve", "-m", "a=/x", "-m", "b"])
    assert args.model == ["a=/x", "b"]
    assert (args.host, args.port, args.batching) == ("127.0.0.1", 8000, "on")


def test_model_names(tmp_path):
    (tmp_path / "my-model").mkdir()
    assert model_name("tiny=/some/dir") == ("tiny", "/some/dir")
    assert model_name(str(tmp_path / "my-model")) == ("my-model", str(tmp_path / "my-model"))
    assert model_name("hf:openai-community/gpt2") == ("gpt2", "hf:openai-community/gpt2")
    assert model_name("shakespeare") == ("shakespeare", "shakespeare")
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    assert model_name(str(gguf)) == ("SmolLM2-135M-Instruct.Q4_1", str(gguf))


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "70000"],
        ["serve", "--max-active", "0"],
        ["serve", "--api-key", ""],
        ["serve", "--memory-budget", "lots"],
        ["serve", "--memory-budget=-1G"],
        ["serve", "--memory-budget", "1G", "--max-request-memory", "2G"],
        ["serve", "--allowed-host", "http://x/"],
    ],
)
def test_bad_options_exit_2(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_serve_takes_dtype_and_quantize():
    args = build_parser().parse_args(["serve", "--dtype", "float16", "--quantize", "int8"])
    assert (args.dtype, args.quantize) == ("float16", "int8")
    assert build_parser().parse_args(["serve"]).dtype is None


@pytest.mark.parametrize("dtype,quantize", [("float16", None), ("bfloat16", None), (None, "int8")])
def test_served_models_run_in_the_requested_precision(dtype, quantize):
    """The server's models are what lmgen.load gives for the same runtime: same weights' dtype,
    same greedy tokens."""
    from lmgen.quantize import is_quantized

    served = load_models(["shk=shakespeare"], dtype=dtype, quantize=quantize)["shk"]
    ref = lmgen.load(
        "shakespeare", dtype=getattr(torch, dtype) if dtype else None, quantize=quantize
    )
    assert served.model.wpe.weight.dtype == (getattr(torch, dtype) if dtype else torch.float32)
    assert is_quantized(served.model) == (quantize == "int8")
    want = ref.generate("ROMEO:", max_new_tokens=12).token_ids
    assert list(served.generate("ROMEO:", max_new_tokens=12).token_ids) == list(want)


def test_serve_refuses_an_unknown_dtype(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--dtype", "float8"])
    assert "invalid choice" in capsys.readouterr().err


def test_memory_sizes():
    assert memory_size("3G", "x") == 3 << 30
    assert memory_size("512M", "x") == memory_size("512MiB", "x") == 512 << 20
    assert memory_size("1.5gb", "x") == 3 << 29
    assert memory_size("1048576", "x") == 1 << 20
    assert memory_size(None, "x") is None


def test_lmgen_serve_starts_and_answers(tmp_path):
    from lmgen.lm import LM
    from lmgen.tokenizers import BPETokenizer

    tok = BPETokenizer.train(texts=["To be, or not to be."] * 20, vocab_size=270)
    torch.manual_seed(0)
    cfg = lmgen.GPTConfig(
        vocab_size=tok.vocab_size,
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    LM(lmgen.GPT(cfg), tok).save(tmp_path / "m")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "lmgen",
        "serve",
        "-m",
        f"small={tmp_path / 'm'}",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["small"]
        r = httpx.post(url + "/v1/completions", json={"prompt": "To", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == "small"
        # bound to loopback: another site's name (DNS rebinding) is refused
        r = httpx.get(url + "/v1/models", headers={"Host": "evil.example"})
        assert r.status_code == 421 and r.json()["error"]["code"] == "invalid_host"
        assert httpx.get(f"http://localhost:{port}/health").status_code == 200
        assert httpx.get(url + "/health").json()["memory"]["budget_bytes"] == 3 << 30
    finally:
        proc.terminate()
        proc.wait(10)

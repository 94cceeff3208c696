"""The text model (``models.gpt``) and its shipped Hugging Face-layout checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from models.gpt import GPT, GPTConfig, hf_config, load_hf, to_hf_state_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "models/weights/textgen"
RESULTS = ROOT / "models/results/textgen.json"
PROMPTS = ["def read(self, size=-1)\nRead and return up to size bytes.",
           "# json.decoder\n\nclass JSONDecoder(object)\nSimple JSON decoder.",
           "Return the number of"]


def _tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(CKPT / "tokenizer.json"))


def _ids(tok, text: str) -> torch.Tensor:
    return torch.tensor([[0] + tok.encode(text).ids])  # <|endoftext|> as BOS


def test_config_and_shapes():
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    model = GPT(config).eval()
    x = torch.randint(0, 64, (3, 10))
    logits, loss = model(x, x)
    assert logits.shape == (3, 10, 64) and loss.ndim == 0
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    hf = to_hf_state_dict(model)
    assert "lm_head.weight" not in hf
    assert hf["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: [in, out]
    assert hf["transformer.h.1.mlp.c_proj.weight"].shape == (128, 32)
    cfg = hf_config(config)
    assert cfg["model_type"] == "gpt2" and cfg["activation_function"] == "gelu_new" and cfg["n_inner"] is None
    with pytest.raises(AssertionError):
        model(torch.zeros(1, 17, dtype=torch.long))  # longer than block_size


def test_checkpoint_layout():
    names = {p.name for p in CKPT.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names
    config = json.loads((CKPT / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["bos_token_id"] == config["eos_token_id"] == 0 and config["tie_word_embeddings"] is True
    tok_config = json.loads((CKPT / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == tok_config["bos_token"] == "<|endoftext|>"
    assert "chat_template" not in tok_config
    assert sum(p.stat().st_size for p in CKPT.iterdir()) < 16 * 2**20


def test_tokenizer_round_trips():
    tok = _tokenizer()
    assert tok.token_to_id("<|endoftext|>") == 0
    for text in [*PROMPTS, "  indented\n\ttabs, ünïcödé — and emoji 🐍 {x: [1, 2]}"]:
        assert tok.decode(tok.encode(text).ids) == text


def test_transformers_gives_the_same_logits():
    transformers = pytest.importorskip("transformers")
    ours = load_hf(CKPT)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(CKPT, dtype=torch.float32).eval()
    tok = _tokenizer()
    with torch.no_grad():
        for prompt in PROMPTS:
            x = _ids(tok, prompt)
            torch.testing.assert_close(ours(x)[0], theirs(x).logits, atol=1e-4, rtol=0)


def test_results_show_a_trained_model():
    results = json.loads(RESULTS.read_text())
    ppl = results["heldout_perplexity"]
    vocab = json.loads((CKPT / "config.json").read_text())["vocab_size"]
    assert math.isfinite(ppl) and 1 < ppl < vocab / 10
    assert results["heldout_tokens"] > 10_000
    assert results["params"] == load_hf(CKPT).num_params()


def test_greedy_continuations_depend_on_the_prompt():
    model, tok = load_hf(CKPT), _tokenizer()
    outs = []
    for prompt in PROMPTS[:2]:
        x = _ids(tok, prompt)
        outs.append(model.generate(x, 8)[0, x.shape[1]:].tolist())
    assert outs[0] != outs[1]

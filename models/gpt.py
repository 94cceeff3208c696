"""A small decoder-only transformer in nanoGPT style, saved in Hugging Face's GPT-2 layout.

Pre-LayerNorm blocks (causal self-attention + GELU MLP, tanh approximation = HF
``gelu_new``), learned absolute positions, the output projection tied to the token
embedding. :func:`save_hf` writes a folder ``transformers.GPT2LMHeadModel.from_pretrained``
loads (``config.json``, ``model.safetensors`` with GPT-2's tensor names and its Conv1D
``[in, out]`` weight layout, ``tokenizer.json``, ``tokenizer_config.json``,
``generation_config.json``); :func:`load_hf` reads it back without ``transformers``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

EOS_TOKEN = "<|endoftext|>"


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    block_size: int = 256  # n_positions: the longest context
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    eos_token_id: int = 0  # also BOS: "<|endoftext|>" separates documents


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)  # no dropout on the attention weights (CPU speed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # batch, time, n_embd
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Distinct parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape  # int64 token ids
        assert T <= self.config.block_size, f"sequence of {T} > block_size {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        x = self.transformer.ln_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:  # (B, T), -1 = ignored
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 stop_token: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``idx (B, T)`` extended by up to ``max_new_tokens``; greedy when ``temperature`` is 0."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])  # (B, T, vocab)
            logits = logits[:, -1, :]  # (B, vocab)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                nxt = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)  # (B, T + 1)
            if stop_token is not None and bool((nxt == stop_token).all()):
                break
        return idx


# --- Hugging Face GPT-2 layout ---------------------------------------------------------

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_config(config: GPTConfig) -> dict:
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "bos_token_id": config.eos_token_id,
        "eos_token_id": config.eos_token_id,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's names; Conv1D weights as ``[in, out]`` (nn.Linear's transpose); no lm_head."""
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("lm_head."):
            continue  # tied to transformer.wte.weight
        if name.endswith(_CONV1D):
            t = t.t()
        out[name] = t.detach().to(torch.float32).contiguous().clone()
    return out


def from_hf_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name.startswith("lm_head."):
            continue  # HF buffers / the tied head
        out[name] = t.t().contiguous() if name.endswith(_CONV1D) else t
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def save_hf(model: GPT, tokenizer_path: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir`` in the Hugging Face GPT-2 layout; ``tokenizer_path`` is a ``tokenizers`` JSON."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    (out / "config.json").write_text(json.dumps(hf_config(cfg), indent=2) + "\n")
    save_file(to_hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    if Path(tokenizer_path).resolve() != (out / "tokenizer.json").resolve():
        shutil.copyfile(tokenizer_path, out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "model_max_length": cfg.block_size,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": cfg.eos_token_id,
        "eos_token_id": cfg.eos_token_id,
    }, indent=2) + "\n")
    return out


def load_hf(directory: str | Path) -> GPT:
    """A :class:`GPT` (eval mode) from a folder :func:`save_hf` wrote (or any GPT-2 layout one
    with ``gelu_new``, no ``n_inner`` and tied embeddings)."""
    from safetensors.torch import load_file

    d = Path(directory)
    hf = json.loads((d / "config.json").read_text())
    if hf.get("activation_function", "gelu_new") != "gelu_new" or hf.get("n_inner") is not None:
        raise ValueError(f"{d}: only gelu_new with n_inner null is supported")
    config = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                       n_head=hf["n_head"], n_embd=hf["n_embd"],
                       layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
                       eos_token_id=hf.get("eos_token_id", 0))
    model = GPT(config)
    model.load_state_dict(from_hf_state_dict(load_file(str(d / "model.safetensors"))))
    return model.eval()

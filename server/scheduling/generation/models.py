"""Our own torch implementation of the decoder-only causal LMs that serving loads.

One :class:`CausalLM` covers Hugging Face ``gpt2`` and ``llama`` checkpoints; an
:class:`ArchSpec` says which variant of each part a checkpoint uses (learned vs rotary
positions, LayerNorm vs RMSNorm, GELU MLP vs SwiGLU, multi-head vs grouped-query
attention, tied embeddings). :func:`load_checkpoint` reads ``config.json`` and the
``*.safetensors`` files (sharded ones too) and never unpickles anything.

The model is written as per-part functions over flat ``[tokens, hidden]`` rows so that
the paged-cache runner (:mod:`.runner`) can drive them with its own linear layer and
attention; :meth:`CausalLM.forward_full` is a plain full-recompute pass with no cache,
the correctness reference of the tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

Linear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

SUPPORTED_MODEL_TYPES = ("gpt2", "llama")


@dataclass(frozen=True, slots=True)
class ArchSpec:
    model_type: str
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm: str  # "layernorm" | "rmsnorm"
    position: str  # "learned" | "rotary"
    mlp: str  # "gelu" (fc -> act -> proj) | "swiglu" (down(silu(gate) * up))
    activation: str  # "gelu_tanh" | "gelu" | "silu"
    rope_theta: float
    eps: float
    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    tied: bool
    max_positions: int
    eos_token_ids: tuple[int, ...]


# ---------------------------------------------------------------- config


def _eos_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope_theta(cfg: dict) -> float:
    scaling = cfg.get("rope_scaling")
    if scaling is not None:
        raise ValueError(f"rope_scaling {scaling!r} is not supported (only null)")
    theta = cfg.get("rope_theta")
    params = cfg.get("rope_parameters")  # transformers 5 spelling
    if params is not None:
        kind = params.get("rope_type", params.get("type", "default"))
        if kind not in (None, "default"):
            raise ValueError(f"rope_parameters of type {kind!r} are not supported (only default rotary)")
        theta = params.get("rope_theta", theta)
    return float(theta if theta is not None else 10000.0)


def arch_from_config(cfg: dict) -> ArchSpec:
    """The :class:`ArchSpec` of a Hugging Face ``config.json``; ValueError when unsupported."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    eos = _eos_ids(cfg.get("eos_token_id"))
    try:
        if model_type == "gpt2":
            if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("reorder_and_upcast_attn"):
                raise ValueError("gpt2 scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
            if cfg.get("scale_attn_weights", True) is False:
                raise ValueError("gpt2 scale_attn_weights=false is not supported")
            act = cfg.get("activation_function", "gelu_new")
            acts = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}
            if act not in acts:
                raise ValueError(f"gpt2 activation_function {act!r} is not supported")
            hidden = int(cfg["n_embd"])
            heads = int(cfg["n_head"])
            if hidden % heads:
                raise ValueError(f"n_embd {hidden} is not a multiple of n_head {heads}")
            return ArchSpec(
                model_type="gpt2",
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                n_layers=int(cfg["n_layer"]),
                n_heads=heads,
                n_kv_heads=heads,
                head_dim=hidden // heads,
                intermediate_size=int(cfg.get("n_inner") or 4 * hidden),
                norm="layernorm",
                position="learned",
                mlp="gelu",
                activation=acts[act],
                rope_theta=0.0,
                eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
                qkv_bias=True,
                out_bias=True,
                mlp_bias=True,
                tied=bool(cfg.get("tie_word_embeddings", True)),
                max_positions=int(cfg.get("n_positions", cfg.get("n_ctx", 1024))),
                eos_token_ids=eos,
            )
        # llama
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"llama hidden_act {act!r} is not supported (only silu)")
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise ValueError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        if head_dim % 2:
            raise ValueError(f"head_dim {head_dim} must be even for rotary positions")
        bias = bool(cfg.get("attention_bias", False))
        return ArchSpec(
            model_type="llama",
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=heads,
            n_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=int(cfg["intermediate_size"]),
            norm="rmsnorm",
            position="rotary",
            mlp="swiglu",
            activation="silu",
            rope_theta=_rope_theta(cfg),
            eps=float(cfg.get("rms_norm_eps", 1e-6)),
            qkv_bias=bias,
            out_bias=bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            tied=bool(cfg.get("tie_word_embeddings", False)),
            max_positions=int(cfg.get("max_position_embeddings", 2048)),
            eos_token_ids=eos,
        )
    except KeyError as e:
        raise ValueError(f"config.json of a {model_type} model lacks {e.args[0]!r}") from None


# ---------------------------------------------------------------- module


def _param(shape: tuple[int, ...] | None) -> nn.Parameter | None:
    return None if shape is None else nn.Parameter(torch.empty(shape), requires_grad=False)


class Block(nn.Module):
    """One decoder layer; q, k and v are one fused projection (rows: q heads, k heads, v heads)."""

    def __init__(self, a: ArchSpec):
        super().__init__()
        h, hd = a.hidden_size, a.head_dim
        ln_bias = (h,) if a.norm == "layernorm" else None
        qkv_out = (a.n_heads + 2 * a.n_kv_heads) * hd
        self.norm1_w, self.norm1_b = _param((h,)), _param(ln_bias)
        self.norm2_w, self.norm2_b = _param((h,)), _param(ln_bias)
        self.qkv_w, self.qkv_b = _param((qkv_out, h)), _param((qkv_out,) if a.qkv_bias else None)
        self.o_w, self.o_b = _param((h, a.n_heads * hd)), _param((h,) if a.out_bias else None)
        inter = a.intermediate_size
        mb = a.mlp_bias
        if a.mlp == "gelu":
            self.up_w, self.up_b = _param((inter, h)), _param((inter,) if mb else None)
        else:  # fused gate (first half of the rows) and up (second half)
            self.up_w, self.up_b = _param((2 * inter, h)), _param((2 * inter,) if mb else None)
        self.down_w, self.down_b = _param((h, inter)), _param((h,) if mb else None)


class CausalLM(nn.Module):
    def __init__(self, arch: ArchSpec):
        super().__init__()
        a = self.arch = arch
        self.embed_w = _param((a.vocab_size, a.hidden_size))
        self.pos_w = _param((a.max_positions, a.hidden_size)) if a.position == "learned" else None
        self.layers = nn.ModuleList(Block(a) for _ in range(a.n_layers))
        self.normf_w = _param((a.hidden_size,))
        self.normf_b = _param((a.hidden_size,) if a.norm == "layernorm" else None)
        self.lm_head_w = None if a.tied else _param((a.vocab_size, a.hidden_size))

    # -- parts over flat rows [N, hidden]; `linear` is F.linear or the runner's tiled one

    def head_weight(self) -> torch.Tensor:
        return self.embed_w if self.lm_head_w is None else self.lm_head_w

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = F.embedding(ids, self.embed_w)
        if self.pos_w is not None:
            x = x + F.embedding(positions, self.pos_w)
        return x

    def norm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        a = self.arch
        if a.norm == "layernorm":
            return F.layer_norm(x, (a.hidden_size,), w, b, a.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + a.eps)
        return w * xf.to(x.dtype)

    def rope_table(self, n: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [n, head_dim] (float32) of positions 0..n-1 (HF's default rotary)."""
        d = self.arch.head_dim
        inv = 1.0 / (self.arch.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        freqs = torch.arange(n, dtype=torch.float32)[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(device), emb.sin().to(device)

    @staticmethod
    def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [N, heads, D]; cos/sin [N, D] of the rows' positions."""
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos[:, None, :].to(x.dtype) + rot * sin[:, None, :].to(x.dtype)

    def qkv(self, i: int, x: torch.Tensor, linear: Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-attention half of layer i: q [N, H, D], k and v [N, Hkv, D] (no positions yet)."""
        a, blk = self.arch, self.layers[i]
        y = linear(self.norm(x, blk.norm1_w, blk.norm1_b), blk.qkv_w, blk.qkv_b)
        nq, nk = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        q = y[:, :nq].reshape(-1, a.n_heads, a.head_dim)
        k = y[:, nq : nq + nk].reshape(-1, a.n_kv_heads, a.head_dim)
        v = y[:, nq + nk :].reshape(-1, a.n_kv_heads, a.head_dim)
        return q, k, v

    def post_attention(self, i: int, x: torch.Tensor, attn: torch.Tensor, linear: Linear) -> torch.Tensor:
        """Rest of layer i: residual + o_proj(attn [N, H*D]), then the MLP block."""
        a, blk = self.arch, self.layers[i]
        x = x + linear(attn, blk.o_w, blk.o_b)
        h = self.norm(x, blk.norm2_w, blk.norm2_b)
        u = linear(h, blk.up_w, blk.up_b)
        if a.mlp == "gelu":
            u = F.gelu(u, approximate="tanh" if a.activation == "gelu_tanh" else "none")
        else:
            inter = a.intermediate_size
            u = F.silu(u[:, :inter]) * u[:, inter:]
        return x + linear(u, blk.down_w, blk.down_b)

    def logits(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        return linear(self.norm(x, self.normf_w, self.normf_b), self.head_weight(), None)

    @torch.inference_mode()
    def forward_full(self, ids: torch.Tensor) -> torch.Tensor:
        """Plain full-recompute causal forward of one sequence: ids [T] -> logits [T, V]."""
        a = self.arch
        dev = self.embed_w.device
        ids = ids.to(dev)
        t = ids.shape[0]
        pos = torch.arange(t, device=dev)
        x = self.embed(ids, pos)
        if a.position == "rotary":
            cos, sin = self.rope_table(t, dev)
        for i in range(a.n_layers):
            q, k, v = self.qkv(i, x, F.linear)
            if a.position == "rotary":
                q, k = self.apply_rope(q, cos, sin), self.apply_rope(k, cos, sin)
            rep = a.n_heads // a.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)
            x = self.post_attention(i, x, o.transpose(0, 1).reshape(t, -1), F.linear)
        return self.logits(x, F.linear)


# ---------------------------------------------------------------- loading

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"{index.name} is not a valid safetensors index: {e}") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{index.name} names shards that are absent: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if any(p.suffix in _PICKLE_SUFFIXES for p in folder.iterdir()):
        raise ValueError(
            f"{folder.name}: only pickle weights (e.g. pytorch_model.bin) were found; "
            "pickle checkpoints are not loaded; convert to safetensors"
        )
    raise ValueError(f"{folder.name}: no *.safetensors weights found")


def _read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f), device="cpu"))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read {f.name}: {e}") from None
    return tensors


def _hf_names(a: ArchSpec, tensors: dict[str, torch.Tensor]) -> dict[str, Callable[[], torch.Tensor]]:
    """Our parameter name -> a thunk building it from the checkpoint's tensors (KeyError names the missing one)."""

    def get(name: str) -> torch.Tensor:
        if name not in tensors:
            raise KeyError(name)
        return tensors[name]

    m: dict[str, Callable[[], torch.Tensor]] = {}
    if a.model_type == "gpt2":
        prefix = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""
        p = prefix
        # Conv1D weights are stored [in, out]: transpose to torch's [out, in]
        m["embed_w"] = lambda: get(f"{p}wte.weight")
        m["pos_w"] = lambda: get(f"{p}wpe.weight")
        m["normf_w"] = lambda: get(f"{p}ln_f.weight")
        m["normf_b"] = lambda: get(f"{p}ln_f.bias")
        for i in range(a.n_layers):
            h = f"{p}h.{i}."
            L = f"layers.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                m[L + ours + "_w"] = lambda n=f"{h}{theirs}.weight": get(n)
                m[L + ours + "_b"] = lambda n=f"{h}{theirs}.bias": get(n)
            for ours, theirs in (
                ("qkv", "attn.c_attn"),
                ("o", "attn.c_proj"),
                ("up", "mlp.c_fc"),
                ("down", "mlp.c_proj"),
            ):
                m[L + ours + "_w"] = lambda n=f"{h}{theirs}.weight": get(n).t()
                m[L + ours + "_b"] = lambda n=f"{h}{theirs}.bias": get(n)
        if not a.tied:
            m["lm_head_w"] = lambda: get("lm_head.weight")
        return m
    # llama
    m["embed_w"] = lambda: get("model.embed_tokens.weight")
    m["normf_w"] = lambda: get("model.norm.weight")
    for i in range(a.n_layers):
        h = f"model.layers.{i}."
        L = f"layers.{i}."
        m[L + "norm1_w"] = lambda n=f"{h}input_layernorm.weight": get(n)
        m[L + "norm2_w"] = lambda n=f"{h}post_attention_layernorm.weight": get(n)
        att = f"{h}self_attn."
        m[L + "qkv_w"] = lambda s=att: torch.cat([get(f"{s}{x}_proj.weight") for x in "qkv"])
        m[L + "o_w"] = lambda s=att: get(f"{s}o_proj.weight")
        if a.qkv_bias:
            m[L + "qkv_b"] = lambda s=att: torch.cat([get(f"{s}{x}_proj.bias") for x in "qkv"])
            m[L + "o_b"] = lambda s=att: get(f"{s}o_proj.bias")
        mlp = f"{h}mlp."
        m[L + "up_w"] = lambda s=mlp: torch.cat([get(f"{s}gate_proj.weight"), get(f"{s}up_proj.weight")])
        m[L + "down_w"] = lambda s=mlp: get(f"{s}down_proj.weight")
        if a.mlp_bias:
            m[L + "up_b"] = lambda s=mlp: torch.cat([get(f"{s}gate_proj.bias"), get(f"{s}up_proj.bias")])
            m[L + "down_b"] = lambda s=mlp: get(f"{s}down_proj.bias")
    if not a.tied:
        m["lm_head_w"] = lambda: get("lm_head.weight")
    return m


def load_checkpoint(folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[CausalLM, ArchSpec]:
    """Build a :class:`CausalLM` from a Hugging Face checkpoint folder (safetensors only).

    ValueError (turned into a 400 by the loader) for an unsupported model_type or
    rope_scaling, a pickle-only folder, missing or mis-shaped tensors.
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{folder.name}: config.json is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ValueError(f"config.json is not valid JSON: {e}") from None
    arch = arch_from_config(cfg)
    tensors = _read_tensors(_weight_files(folder))
    with torch.device("meta"):
        model = CausalLM(arch)
    params = dict(model.named_parameters())
    built: dict[str, torch.Tensor] = {}
    for name, make in _hf_names(arch, tensors).items():
        try:
            t = make()
        except KeyError as e:
            raise ValueError(f"checkpoint is missing tensor {e.args[0]!r} ({arch.model_type})") from None
        want = tuple(params[name].shape)
        if tuple(t.shape) != want:
            raise ValueError(f"tensor for {name} has shape {tuple(t.shape)}, expected {want}")
        built[name] = t.to(device=device, dtype=dtype).contiguous()
    absent = set(params) - set(built)
    if absent:  # a mapping gap is a bug, not a bad checkpoint
        raise RuntimeError(f"unmapped parameters: {sorted(absent)}")
    model.load_state_dict(built, strict=True, assign=True)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model, arch

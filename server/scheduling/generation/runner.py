"""The model runner of the generation engine: the only part of text generation that touches torch.

The engine (planner, block manager) is pure Python; each engine step hands
:meth:`ModelRunner.step` a list of :class:`SeqWork` (a prefill chunk or the one newest
token of a decoding sequence, plus the sequence's block table) and gets back the logits
of each item's last token.

KV cache: per layer, key and value tensors ``[num_blocks, block_size, n_kv_heads,
head_dim]`` allocated once; position ``p`` of a sequence lives in slot
``block_table[p // block_size] * block_size + p % block_size``. Blocks may be shared
between sequences (prefix caching): the runner only ever writes the slots of the
positions it computes.

A step runs every item's tokens concatenated (varlen): linear layers, norms and MLPs over
all rows at once, then attention per sequence over its cached keys with
``torch.nn.functional.scaled_dot_product_attention`` -- decode items (one token each) in
one padded batched call with a key mask, prefill chunks one call per item with an
offset-causal mask.

Batch invariance (a sequence's logits are bitwise the same alone or in any batch, and
whether its prompt was prefilled in one chunk or several) is by construction:

* every row-wise part of a layer (norm, qkv / out / MLP linears, activations, final norm,
  lm_head) runs over fixed tiles of ``ROW_TILE`` rows (the concatenation is padded to a
  multiple), so each GEMM and elementwise kernel always sees the same shapes -- CPU GEMM
  results for a row depend on M (M=1 takes a GEMV path), and thread chunking of
  elementwise kernels can put a row in a scalar tail;
* a sequence's keys are gathered into a length padded to a multiple of ``KEY_ALIGN``
  (masked): SDPA's CPU kernel gives bitwise the same row whatever the padded length is,
  as long as it is a multiple of 16 (measured; 8 is not enough);
* SDPA's per-block kernels never see fewer than ``QUERY_ALIGN`` (4) query rows: a decode
  query is repeated to 4 rows, and a prefill chunk is padded to a multiple of 4 rows. On
  one Xeon 2 rows were enough (M=1 differs from M>=2); on an AVX-512 AMD EPYC the kernel
  splits queries into blocks of 32 and a block's last 1-3 rows take another path (measured:
  rows 1-3 and 33-35 differed from the same rows of a 40-row call, every multiple of 4
  agreed, and a row alone in a 2-row call differed from it in a 24-row call).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .models import CausalLM, load_checkpoint
from .work import RunnerSpec, SeqWork

ROW_TILE = 16
QUERY_ALIGN = 4  # SDPA query rows: a decode query is repeated to this many, a prefill chunk padded to a multiple
SMALL_HIDDEN = 512  # a hidden size up to this steps on one CPU thread by default (see ModelRunner.threads)
KEY_ALIGN = 64
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SDPA_BACKENDS = {0: "math", 1: "flash_attention", 2: "efficient_attention", 3: "cudnn_attention", 4: "overrideable"}


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


class ModelRunner:
    def __init__(
        self,
        folder: Path,
        *,
        block_size: int = 16,
        kv_cache_bytes: int | None = None,
        num_blocks: int | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        max_model_len: int | None = None,
        threads: int | None = None,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; one of {', '.join(DTYPES)}")
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        self.dtype = DTYPES[dtype]
        model, arch = load_checkpoint(Path(folder), str(self.device), self.dtype)
        self.model: CausalLM = model
        self.arch = arch
        # torch's intra-op threads of the thread that steps (torch.set_num_threads is per OpenMP
        # thread): set once per stepping thread. Default: 1 for a small model on the CPU
        # (textgen on this 2-core CPU steps 2.2x faster in the engine's thread with 1 thread
        # than with 2: its ops are too small to pay for waking the second), else all cores.
        small = arch.hidden_size <= SMALL_HIDDEN
        self.threads = int(threads) if threads else (1 if small else (os.cpu_count() or 1))
        self._stepping_thread: int | None = None
        limit = arch.max_positions
        if max_model_len is None:
            max_model_len = limit
        if not 1 <= max_model_len <= limit:
            raise ValueError(f"max_model_len {max_model_len} must be in [1, {limit}] (the model's positions)")
        self.max_model_len = max_model_len
        self.block_size = block_size

        elem = torch.empty((), dtype=self.dtype).element_size()
        block_bytes = 2 * arch.n_layers * block_size * arch.n_kv_heads * arch.head_dim * elem
        if num_blocks is None:
            if kv_cache_bytes is None:
                if self.device.type == "cuda":
                    free, _ = torch.cuda.mem_get_info(self.device)
                    kv_cache_bytes = int(0.4 * free)
                else:
                    kv_cache_bytes = 256 << 20
            num_blocks = int(kv_cache_bytes) // block_bytes
        if num_blocks < 1:
            raise ValueError(f"KV cache too small: one block takes {block_bytes} bytes")
        self.num_blocks = num_blocks
        shape = (num_blocks, block_size, arch.n_kv_heads, arch.head_dim)
        # zeros: masked-out slots are read by the padded attention calls and must be finite
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(arch.n_layers)]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(arch.n_layers)]
        if arch.position == "rotary":
            self._cos, self._sin = model.rope_table(max_model_len, self.device)
        # GQA: CPU's flash kernel takes enable_gqa; on CUDA repeat the kv heads so the
        # masked (memory-efficient) kernel stays eligible
        self._native_gqa = self.device.type == "cpu"
        self.spec = RunnerSpec(
            vocab_size=arch.vocab_size,
            max_model_len=max_model_len,
            block_size=block_size,
            num_blocks=num_blocks,
            eos_token_ids=arch.eos_token_ids,
            model_type=arch.model_type,
            device=str(self.device),
            dtype=dtype,
            attention=self._describe_attention(),
        )

    # ------------------------------------------------------------ attention

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rep = self.arch.n_heads // self.arch.n_kv_heads
        if rep > 1 and not self._native_gqa:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=rep > 1)

    def _describe_attention(self) -> str:
        a = self.arch
        rep = a.n_heads // a.n_kv_heads
        gqa = rep > 1 and self._native_gqa
        q = torch.zeros(2, a.n_heads, 2, a.head_dim, dtype=self.dtype, device=self.device)
        kv_heads = a.n_kv_heads if (gqa or rep == 1) else a.n_heads
        k = torch.zeros(2, kv_heads, KEY_ALIGN, a.head_dim, dtype=self.dtype, device=self.device)
        mask = torch.ones(2, 1, 2, KEY_ALIGN, dtype=torch.bool, device=self.device)
        try:
            choice = int(torch._fused_sdp_choice(q, k, k, attn_mask=mask, enable_gqa=gqa))
            kernel = _SDPA_BACKENDS.get(choice, f"backend {choice}")
        except Exception:  # private API; the description is informational only
            kernel = "kernel unknown"
        return (
            f"torch scaled_dot_product_attention [{kernel}] on {self.device.type}, boolean key masks; "
            f"decode items batched (padded, query repeated to {QUERY_ALIGN} rows), prefill chunks per sequence "
            f"(offset causal); keys padded to a multiple of {KEY_ALIGN}; GQA "
            f"{'native (enable_gqa)' if gqa else ('by repeat_interleave' if rep > 1 else 'n/a (MHA)')}; "
            f"row-wise layers in {ROW_TILE}-row tiles for batch invariance"
        )

    def _gather_index(self, block_table: Sequence[int], length: int, padded: int) -> np.ndarray:
        """Cache slots of positions [0, padded): the sequence's slots below `length`, slot 0 above."""
        bs = self.block_size
        bt = np.asarray(block_table, dtype=np.int64)
        pos = np.arange(padded, dtype=np.int64)
        blk = bt[np.minimum(pos // bs, len(bt) - 1)]
        return np.where(pos < length, blk * bs + pos % bs, 0)

    # ------------------------------------------------------------ step

    def _validate(self, work: list[SeqWork]) -> None:
        bs = self.block_size
        for w in work:
            n = len(w.tokens)
            if n < 1:
                raise ValueError("a SeqWork has no tokens")
            if w.start < 0 or w.start + n > self.max_model_len:
                raise ValueError(f"positions [{w.start}, {w.start + n}) exceed max_model_len {self.max_model_len}")
            need = -(-(w.start + n) // bs)
            if len(w.block_table) < need:
                raise ValueError(
                    f"block_table has {len(w.block_table)} blocks, {need} needed for {w.start + n} positions"
                )
            if any(not 0 <= b < self.num_blocks for b in w.block_table[:need]):
                raise ValueError(f"block id out of range [0, {self.num_blocks})")
            if any(not 0 <= t < self.arch.vocab_size for t in w.tokens):
                raise ValueError(f"token id out of range [0, {self.arch.vocab_size})")

    def _tiles(self, n: int) -> list[slice]:
        return [slice(i, i + ROW_TILE) for i in range(0, n, ROW_TILE)]

    def step(self, work: list[SeqWork]) -> np.ndarray:
        """float32 [len(work), vocab_size]: the logits of each item's last token."""
        if not work:
            return np.zeros((0, self.arch.vocab_size), dtype=np.float32)
        self._validate(work)
        if self.device.type == "cpu" and self._stepping_thread != threading.get_ident():
            torch.set_num_threads(self.threads)
            self._stepping_thread = threading.get_ident()
        with torch.inference_mode():
            return self._step(work)

    def _step(self, work: list[SeqWork]) -> np.ndarray:
        a, m, dev, bs = self.arch, self.model, self.device, self.block_size
        H, Hkv, D = a.n_heads, a.n_kv_heads, a.head_dim
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        last_rows: list[int] = []
        decode: list[tuple[int, Sequence[int], int]] = []  # (row, block table, length)
        prefill: list[tuple[int, int, int, np.ndarray]] = []  # (row0, n tokens, start, gather index)
        for w in work:
            n, s = len(w.tokens), w.start
            row0 = len(ids)
            ids.extend(int(t) for t in w.tokens)
            p = np.arange(s, s + n, dtype=np.int64)
            pos.extend(p.tolist())
            bt = np.asarray(w.block_table, dtype=np.int64)
            slots.extend((bt[p // bs] * bs + p % bs).tolist())
            last_rows.append(row0 + n - 1)
            length = s + n
            if n == 1:
                decode.append((row0, w.block_table, length))
            else:
                prefill.append((row0, n, s, self._gather_index(w.block_table, length, _ceil_to(length, KEY_ALIGN))))
        n_rows = len(ids)
        n_pad = _ceil_to(n_rows, ROW_TILE)
        ids_t = torch.zeros(n_pad, dtype=torch.long)
        ids_t[:n_rows] = torch.tensor(ids, dtype=torch.long)
        pos_t = torch.zeros(n_pad, dtype=torch.long)
        pos_t[:n_rows] = torch.tensor(pos, dtype=torch.long)
        ids_t, pos_t = ids_t.to(dev), pos_t.to(dev)
        slots_t = torch.tensor(slots, dtype=torch.long, device=dev)

        # decode group: one padded batched call
        if decode:
            d_pad = _ceil_to(max(length for _, _, length in decode), KEY_ALIGN)
            d_rows = torch.tensor([r for r, _, _ in decode], dtype=torch.long, device=dev)
            d_idx = np.stack([self._gather_index(bt, length, d_pad) for _, bt, length in decode])
            d_idx_t = torch.from_numpy(d_idx).to(dev)
            d_len = torch.tensor([length for _, _, length in decode], dtype=torch.long, device=dev)
            d_mask = (torch.arange(d_pad, device=dev)[None, :] < d_len[:, None])[:, None, None, :].expand(-1, 1, QUERY_ALIGN, -1)
        pre = []
        for row0, n, s, idx in prefill:
            tq = _ceil_to(n, QUERY_ALIGN)
            qpos = torch.arange(s, s + tq, device=dev).clamp_(max=s + n - 1)
            mask = (torch.arange(len(idx), device=dev)[None, :] <= qpos[:, None])[None, None]
            pre.append((row0, n, tq, torch.from_numpy(idx).to(dev), mask))

        tiles = self._tiles(n_pad)
        x = m.embed(ids_t, pos_t)
        if a.position == "rotary":
            cos, sin = self._cos[pos_t], self._sin[pos_t]
        for i in range(a.n_layers):
            parts = [m.qkv(i, x[t], F.linear) for t in tiles]
            q, k, v = (torch.cat(z) if len(tiles) > 1 else z[0] for z in zip(*parts, strict=True))
            if a.position == "rotary":
                q, k = m.apply_rope(q, cos, sin), m.apply_rope(k, cos, sin)
            kf = self.k_cache[i].view(-1, Hkv, D)
            vf = self.v_cache[i].view(-1, Hkv, D)
            kf[slots_t] = k[:n_rows]
            vf[slots_t] = v[:n_rows]
            attn = torch.zeros(n_pad, H * D, dtype=self.dtype, device=dev)
            if decode:
                qd = q[d_rows][:, :, None, :].expand(-1, -1, QUERY_ALIGN, -1).contiguous()  # stride-0 rows change the result
                kd = kf[d_idx_t].transpose(1, 2)
                vd = vf[d_idx_t].transpose(1, 2)
                od = self._sdpa(qd, kd, vd, d_mask)
                attn[d_rows] = od[:, :, 0, :].reshape(len(decode), H * D)
            for row0, n, tq, idx, mask in pre:
                qp = q[row0 : row0 + n]
                if tq > n:
                    qp = torch.cat([qp, qp[-1:].expand(tq - n, -1, -1)])
                qp = qp.transpose(0, 1)[None].contiguous()
                kp = kf[idx].transpose(0, 1)[None]
                vp = vf[idx].transpose(0, 1)[None]
                op = self._sdpa(qp, kp, vp, mask)
                attn[row0 : row0 + n] = op[0, :, :n, :].transpose(0, 1).reshape(n, H * D)
            outs = [m.post_attention(i, x[t], attn[t], F.linear) for t in tiles]
            x = torch.cat(outs) if len(outs) > 1 else outs[0]

        b = len(work)
        xl = torch.zeros(_ceil_to(b, ROW_TILE), a.hidden_size, dtype=self.dtype, device=dev)
        xl[:b] = x[torch.tensor(last_rows, dtype=torch.long, device=dev)]
        logits = [m.logits(xl[t], F.linear) for t in self._tiles(xl.shape[0])]
        out = torch.cat(logits) if len(logits) > 1 else logits[0]
        return out[:b].float().cpu().numpy()

    def close(self) -> None:
        """Free the KV cache and the weights (idempotent)."""
        self.k_cache = []
        self.v_cache = []
        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

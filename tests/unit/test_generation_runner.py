"""The generation model runner (issue #14): our gpt2 / llama implementation against
transformers, the paged-KV-cache step against the full-recompute reference, chunked
prefill, bitwise batch invariance, shared prefix blocks, and refused checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from server.scheduling.generation.models import load_checkpoint
from server.scheduling.generation.runner import ModelRunner, RunnerSpec, SeqWork

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from tests.integration.generation_fixtures import write_gpt2, write_llama  # noqa: E402 (after the skips)

VOCAB = 300
BS = 4  # block size: small, so 20 decode steps cross several block boundaries


def _make(folder: Path, kind: str, **save) -> Path:
    """A tiny random checkpoint (the integration tests' writers) with a 300-id vocabulary."""
    common = dict(vocab_size=VOCAB, initializer_range=0.1, **save)
    if kind == "gpt2":
        return write_gpt2(folder, seed=0, **common)
    return write_llama(folder, seed={"llama": 1, "llama_tied": 2}[kind], tied=kind == "llama_tied", **common)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen_ckpts")
    return {kind: _make(root / kind, kind) for kind in ("gpt2", "llama", "llama_tied")}


@pytest.fixture(scope="module")
def refs(ckpts) -> dict:
    return {kind: load_checkpoint(path, "cpu", torch.float32)[0] for kind, path in ckpts.items()}


KINDS = ["gpt2", "llama", "llama_tied"]


def _prompt(seed: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (n,), generator=g).tolist()


class Blocks:
    """A toy block allocator: each sequence gets its own blocks as it grows."""

    def __init__(self, start: int = 0):
        self.next = start
        self.tables: dict[int, list[int]] = {}

    def table(self, seq: int, length: int) -> list[int]:
        t = self.tables.setdefault(seq, [])
        while len(t) * BS < length:
            t.append(self.next)
            self.next += 1
        return list(t)


def _runner(path: Path, **kw) -> ModelRunner:
    kw.setdefault("num_blocks", 256)
    return ModelRunner(path, block_size=BS, threads=None, **kw)


# ---------------------------------------------------------------- 1) against transformers


@pytest.mark.parametrize("kind", KINDS)
def test_forward_full_matches_transformers(ckpts, refs, kind):
    path = ckpts[kind]
    assert (path / "tokenizer.json").is_file() and (path / "model.safetensors").is_file()
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor(_prompt(10, 40))
    with torch.no_grad():
        want = hf(ids[None]).logits[0]
    got = refs[kind].forward_full(ids)
    assert got.shape == (40, VOCAB)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    arch = load_checkpoint(path, "cpu", torch.float32)[1]
    assert arch.tied == (kind != "llama")
    assert (arch.n_heads, arch.n_kv_heads) == ((4, 4) if kind == "gpt2" else (4, 2))


def test_sharded_checkpoint_loads(tmp_path, refs):
    path = _make(tmp_path / "sharded", "llama", max_shard_size="60KB")
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("*.safetensors"))) > 1
    model, _ = load_checkpoint(path, "cpu", torch.float32)
    ids = torch.tensor(_prompt(11, 17))
    assert torch.equal(model.forward_full(ids), refs["llama"].forward_full(ids))


# ---------------------------------------------------------------- 2) paged decode against the reference


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_and_decode_match_full_recompute(ckpts, refs, kind):
    runner = _runner(ckpts[kind])
    spec = runner.spec
    assert isinstance(spec, RunnerSpec)
    assert (spec.vocab_size, spec.max_model_len, spec.block_size, spec.num_blocks) == (VOCAB, 128, BS, 256)
    assert spec.model_type == kind.split("_")[0] and spec.eos_token_ids == (0,) and spec.dtype == "float32"
    assert "scaled_dot_product_attention" in spec.attention
    blocks = Blocks()
    prompt = _prompt(20, 9)
    tokens = list(prompt)
    steps = [runner.step([SeqWork(prompt, 0, blocks.table(0, len(prompt)))])[0]]
    for _ in range(20):
        tokens.append(int(np.argmax(steps[-1])))
        steps.append(runner.step([SeqWork(tokens[-1:], len(tokens) - 1, blocks.table(0, len(tokens)))])[0])
    assert len(blocks.tables[0]) == 8  # 29 positions over blocks of 4
    full = refs[kind].forward_full(torch.tensor(tokens)).numpy()
    got = np.stack(steps)
    assert got.dtype == np.float32 and got.shape == (21, VOCAB)
    np.testing.assert_allclose(got, full[len(prompt) - 1 :], atol=1e-4, rtol=0)
    assert np.argmax(full[len(prompt) - 1 : -1], axis=-1).tolist() == tokens[len(prompt) :]
    runner.close()


# ---------------------------------------------------------------- 3) chunked prefill


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_prefill_equals_one_shot(ckpts, kind):
    prompt = _prompt(30, 23)
    outs = []
    for cuts in ([0, 23], [0, 5, 17, 23], [0, 8, 22, 23], [0, 1, 2, 23]):
        runner = _runner(ckpts[kind])
        table = Blocks().table(0, 40)
        for a, b in zip(cuts, cuts[1:], strict=False):
            last = runner.step([SeqWork(prompt[a:b], a, table[: -(-b // BS)])])[0]
        seq = [last]
        tokens = list(prompt)
        for _ in range(5):
            tokens.append(int(np.argmax(seq[-1])))
            seq.append(runner.step([SeqWork(tokens[-1:], len(tokens) - 1, table)])[0])
        outs.append(np.stack(seq))
    for other in outs[1:]:
        assert np.array_equal(other, outs[0])  # bitwise


# ---------------------------------------------------------------- 4) batch invariance


@pytest.mark.parametrize("kind", KINDS)
def test_batch_invariance_bitwise(ckpts, kind):
    target = _prompt(40, 11)
    n_steps = 8

    def run(with_others: bool) -> np.ndarray:
        runner = _runner(ckpts[kind])
        blocks = Blocks()
        prompts = {j: _prompt(100 + j, 3 + (7 * j) % 29) for j in range(1, 16)}
        seqs = {j: list(p) for j, p in prompts.items()}
        computed = dict.fromkeys(prompts, 0)
        if with_others:  # the odd ones are already decoding when the target arrives
            first = [j for j in prompts if j % 2]
            runner.step([SeqWork(prompts[j], 0, blocks.table(j, len(prompts[j]))) for j in first])
            for j in first:
                computed[j] = len(prompts[j])
                seqs[j].append(1)

        def other(j: int, step: int) -> SeqWork:
            seq, done = seqs[j], computed[j]
            if done < len(prompts[j]):  # prefill in chunks of 5
                chunk = prompts[j][done : done + 5]
                computed[j] = done + len(chunk)
                if computed[j] == len(prompts[j]):
                    seq.append(2)
                return SeqWork(chunk, done, blocks.table(j, done + len(chunk)))
            item = SeqWork(seq[-1:], len(seq) - 1, blocks.table(j, len(seq)))
            seq.append((seq[-1] * 7 + step) % VOCAB)
            return item

        tokens = list(target)
        got = []
        for step in range(n_steps):
            if step == 0:
                items = [SeqWork(target, 0, blocks.table(0, len(target)))]
            else:
                items = [SeqWork(tokens[-1:], len(tokens) - 1, blocks.table(0, len(tokens)))]
            target_at = 0
            if with_others:  # 15 others, a mix of prefill chunks and decodes; the target in the middle
                extra = [other(j, step) for j in prompts]
                if step == 0:
                    assert {len(w.tokens) > 1 for w in extra} == {True, False}
                target_at = 7
                items = extra[:7] + items + extra[7:]
            out = runner.step(items)
            assert out.shape == (len(items), VOCAB)
            row = out[target_at]
            got.append(row)
            tokens.append(int(np.argmax(row)))
        runner.close()
        return np.stack(got)

    alone, batched = run(False), run(True)
    assert np.array_equal(alone, batched)


# ---------------------------------------------------------------- 5) shared prefix blocks


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_shared_prefix_blocks(ckpts, refs, kind):
    runner = _runner(ckpts[kind])
    common = _prompt(50, 12)  # 3 full blocks
    a = common + _prompt(51, 3)
    b = common + _prompt(52, 6)
    ta = [0, 1, 2, 3, 4, 5, 6, 7]
    tb = [0, 1, 2, 10, 11, 12, 13, 14]  # the same physical blocks for the common prefix
    la = runner.step([SeqWork(a, 0, ta[:4])])[0]
    # b's prefix is cached already: compute only its own tokens
    lb = runner.step([SeqWork(b[12:], 12, tb[:5])])[0]
    model = refs[kind]
    np.testing.assert_allclose(lb, model.forward_full(torch.tensor(b))[-1].numpy(), atol=1e-4, rtol=0)
    for _ in range(6):  # both decode together, each over the shared blocks
        a.append(int(np.argmax(la)))
        b.append(int(np.argmax(lb)))
        la, lb = runner.step(
            [
                SeqWork(a[-1:], len(a) - 1, ta[: -(-len(a) // BS)]),
                SeqWork(b[-1:], len(b) - 1, tb[: -(-len(b) // BS)]),
            ]
        )
    np.testing.assert_allclose(la, model.forward_full(torch.tensor(a))[-1].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(lb, model.forward_full(torch.tensor(b))[-1].numpy(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- 6) refused checkpoints


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_unknown_model_type_refused(ckpts, tmp_path):
    bad = _copy(ckpts["gpt2"], tmp_path / "bert")
    _edit_config(bad, model_type="bert")
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        ModelRunner(bad)


def test_rope_scaling_refused(ckpts, tmp_path):
    bad = _copy(ckpts["llama"], tmp_path / "scaled")
    _edit_config(bad, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="rope_scaling"):
        load_checkpoint(bad, "cpu", torch.float32)
    bad2 = _copy(ckpts["llama"], tmp_path / "scaled2")
    _edit_config(bad2, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0})
    with pytest.raises(ValueError, match="yarn"):
        load_checkpoint(bad2, "cpu", torch.float32)


def test_pickle_only_checkpoint_refused(ckpts, tmp_path):
    bad = tmp_path / "pickled"
    bad.mkdir()
    shutil.copy(ckpts["gpt2"] / "config.json", bad / "config.json")
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(ValueError, match="pickle checkpoints are not loaded; convert to safetensors"):
        ModelRunner(bad)


@pytest.mark.parametrize(
    ("kind", "drop"),
    [
        ("gpt2", "transformer.h.1.mlp.c_fc.weight"),
        ("llama", "model.layers.0.self_attn.k_proj.weight"),
        ("llama", "lm_head.weight"),
    ],
)
def test_missing_tensor_refused(ckpts, tmp_path, kind, drop):
    from safetensors.torch import load_file, save_file

    bad = _copy(ckpts[kind], tmp_path / "missing")
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors[drop]
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"missing tensor '{drop}'"):
        ModelRunner(bad)


def test_kv_cache_sizing_and_bad_work(ckpts):
    # 2 (k, v) x 2 layers x 4 slots x 2 kv heads x 16 dims x 4 bytes = 2048 bytes a block
    runner = ModelRunner(ckpts["llama"], block_size=BS, kv_cache_bytes=2048 * 10, max_model_len=64)
    assert runner.spec.num_blocks == 10 and runner.spec.max_model_len == 64
    assert tuple(runner.k_cache[0].shape) == (10, BS, 2, 16)
    with pytest.raises(ValueError, match="block_table"):
        runner.step([SeqWork([1, 2, 3, 4, 5], 0, [0])])
    with pytest.raises(ValueError, match="max_model_len"):
        runner.step([SeqWork([1], 64, list(range(10)))])
    assert runner.step([]).shape == (0, VOCAB)
    with pytest.raises(ValueError, match="max_model_len"):
        ModelRunner(ckpts["gpt2"], max_model_len=129)

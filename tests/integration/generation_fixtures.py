"""Tiny Hugging Face causal-LM checkpoints the generation tests write themselves: random
weights (seeded) in real ``gpt2`` and ``llama`` configs, saved by ``transformers`` as
safetensors, with a byte-level BPE ``tokenizer.json`` trained here by ``tokenizers``.
``transformers`` is the reference implementation (a test dependency only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXTGEN = ROOT / "models" / "weights" / "textgen"
EOS = "<|endoftext|>"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Return a new list containing all items from the iterable in ascending order.",
    "json schema object string integer array true false null { } [ ] : , \"",
    "Hello world! How are you today? I am fine, thank you.",
    "def main(): print('hello'); return 0",
] * 20
LLAMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
                  "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def write_tokenizer(folder: Path, vocab_size: int = 320, chat_template: str | None = None) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"bos_token": EOS, "eos_token": EOS, "model_max_length": 128}
    if chat_template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tokenizer.get_vocab_size()


def _architecture(vocab_size: int | None, tokenizer_vocab: int, initializer_range: float | None) -> dict:
    """The model's vocabulary (the tokenizer's, or a padded one at least as large) and init scale."""
    out = {"vocab_size": max(vocab_size or 0, tokenizer_vocab)}
    if initializer_range is not None:
        out["initializer_range"] = initializer_range
    return out


def write_gpt2(folder: Path, seed: int = 0, vocab_size: int | None = None, initializer_range: float | None = None,
               **save) -> Path:
    """``save``: more ``save_pretrained`` arguments (``max_shard_size`` for a sharded checkpoint)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = write_tokenizer(folder, vocab_size or 320)
    torch.manual_seed(seed)
    config = GPT2Config(n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
                        **_architecture(vocab_size, vocab, initializer_range))
    GPT2LMHeadModel(config).eval().save_pretrained(folder, safe_serialization=True, **save)
    return folder


def write_llama(folder: Path, seed: int = 0, tied: bool = False, vocab_size: int | None = None,
                initializer_range: float | None = None, **save) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = write_tokenizer(folder, vocab_size or 320, chat_template=LLAMA_TEMPLATE)
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tied,
                         bos_token_id=0, eos_token_id=0, rms_norm_eps=1e-5,
                         **_architecture(vocab_size, vocab, initializer_range))
    LlamaForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True, **save)
    return folder


def reference(folder: Path):
    """The checkpoint in ``transformers`` (float32, eval)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()


def build_generation_repository(repo: Path) -> Path:
    """``tiny_gpt2`` and ``tiny_llama`` (no config.pbtxt: served as found), ``tiny_small``
    (gpt2 with one running sequence, one waiting, a small KV cache: the limits), ``tiny_tight``
    (gpt2 with a KV cache of 48 tokens: preemption), and
    ``textgen`` (the shipped default) when its weights are present."""
    write_gpt2(repo / "tiny_gpt2" / "1")
    write_llama(repo / "tiny_llama" / "1")
    write_gpt2(repo / "tiny_small" / "1")
    (repo / "tiny_small" / "config.pbtxt").write_text(
        'backend: "generation"\n'
        'parameters { key: "max_num_seqs" value: { string_value: "1" } }\n'
        'parameters { key: "max_waiting" value: { string_value: "1" } }\n'
        'parameters { key: "num_kv_blocks" value: { string_value: "12" } }\n'
        'parameters { key: "block_size" value: { string_value: "8" } }\n'
    )
    write_gpt2(repo / "tiny_tight" / "1")
    (repo / "tiny_tight" / "config.pbtxt").write_text(  # 6 blocks of 8 tokens: a few sequences preempt each other
        'backend: "generation"\n'
        'parameters { key: "num_kv_blocks" value: { string_value: "6" } }\n'
        'parameters { key: "block_size" value: { string_value: "8" } }\n'
    )
    if TEXTGEN.is_dir():
        shutil.copytree(TEXTGEN, repo / "textgen" / "1")
    return repo

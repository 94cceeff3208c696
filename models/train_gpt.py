"""The text model's recipe: a byte-level BPE tokenizer and a small GPT on the standard
library's docstrings (:mod:`models.text_corpus`), held-out perplexity, a Hugging Face
GPT-2 layout checkpoint.

    python -m models.train_gpt --seed 0 --steps 2600 --out models/weights/textgen

1. Tokenizer: ``tokenizers`` BPE with a ByteLevel pre-tokenizer / decoder (GPT-2's byte
   alphabet, no prefix space), vocab ``--vocab`` (4096), special ``<|endoftext|>`` = id 0,
   trained on the training documents only.
2. Data: the training documents tokenized and concatenated, each preceded by
   ``<|endoftext|>`` (BOS/EOS between documents); batches of ``--batch`` random windows of
   ``block_size + 1`` tokens (a seeded ``torch.Generator``).
3. Model: :class:`models.gpt.GPT` (``--n-layer`` 4, ``--n-head`` 4, ``--n-embd`` 192,
   ``--block-size`` 256, dropout 0.1 on the embeddings and residual branches), AdamW (betas 0.9/0.95, weight decay 0.1 on matrices
   only), LR 2e-3 with 100 warm-up steps then cosine to 1e-4, gradient clipping at 1.0,
   one CPU thread. ``--max-minutes`` stops early if the machine is slower than planned (the
   steps run are recorded).
4. Held-out: the held-out documents as one stream in the same format, cut into
   non-overlapping windows of ``block_size + 1`` tokens (the last, shorter one included);
   every window predicts all its tokens but the first. Perplexity = exp(mean token NLL)
   with the weights as shipped (read back from the written folder).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from models import text_corpus
from models.gpt import EOS_TOKEN, GPT, GPTConfig, load_hf, save_hf

ROOT = Path(__file__).resolve().parents[1]


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    assert tok.token_to_id(EOS_TOKEN) == 0
    return tok


def stream(tok, texts: list[str], eos: int) -> torch.Tensor:
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.append(eos)
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def heldout_nll(model: GPT, data: torch.Tensor) -> tuple[float, int]:
    """Sum of token NLL and the number of predicted tokens (windows of block_size + 1)."""
    model.eval()
    T = model.config.block_size
    total, count = 0.0, 0
    for start in range(0, len(data) - 1, T):
        chunk = data[start:start + T + 1]
        x, y = chunk[:-1][None], chunk[1:][None]
        logits, _ = model(x)
        total += torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum").item()
        count += y.numel()
    return total, count


def lr_at(step: int, steps: int, lr: float, min_lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2600)
    p.add_argument("--max-minutes", type=float, default=33.0, help="stop training early after this long")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=192)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--out", type=Path, default=ROOT / "models/weights/textgen")
    p.add_argument("--results", type=Path, default=ROOT / "models/results/textgen.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.time()

    train_docs, held_docs = text_corpus.split(text_corpus.documents())
    corpus = text_corpus.describe(train_docs, held_docs)
    tok = train_tokenizer([d.text for d in train_docs], args.vocab)
    train = stream(tok, [d.text for d in train_docs], 0)
    held = stream(tok, [d.text for d in held_docs], 0)
    print(f"corpus: {len(train_docs)} train docs ({len(train)} tokens), {len(held_docs)} held-out "
          f"({len(held)} tokens); tokenizer {time.time() - t0:.1f} s", flush=True)

    config = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout)
    model = GPT(config)
    decay = [p_ for n, p_ in model.named_parameters() if p_.dim() >= 2]
    no_decay = [p_ for n, p_ in model.named_parameters() if p_.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    T = config.block_size
    offsets = torch.arange(T + 1)
    t_train = time.time()
    step, ema = 0, None
    for step in range(args.steps):
        if (time.time() - t_train) / 60 > args.max_minutes:
            print(f"stopping at step {step}: {args.max_minutes} min spent", flush=True)
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.min_lr, args.warmup)
        model.train()
        starts = torch.randint(0, len(train) - T - 1, (args.batch,), generator=gen)
        win = train[starts[:, None] + offsets]  # (B, T + 1)
        _, loss = model(win[:, :-1], win[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} (ema {ema:.3f}) lr {opt.param_groups[0]['lr']:.2e} "
                  f"{time.time() - t_train:.0f} s", flush=True)
    else:
        step = args.steps
    train_minutes = (time.time() - t_train) / 60

    tok_path = args.out / "tokenizer.json"
    args.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(tok_path))
    model.eval()
    save_hf(model, tok_path, args.out)
    shipped = load_hf(args.out)
    nll, count = heldout_nll(shipped, held)
    held_chars = corpus["held_out"]["chars"]
    ppl = math.exp(nll / count)
    result = {
        "command": "python -m models.train_gpt " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "seed": args.seed,
        "config": {"n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
                   "block_size": config.block_size, "vocab_size": config.vocab_size, "dropout": config.dropout},
        "params": shipped.num_params(),
        "optimizer": {"name": "AdamW", "lr": args.lr, "min_lr": args.min_lr, "warmup": args.warmup,
                      "schedule": "linear warm-up, cosine", "weight_decay": 0.1, "betas": [0.9, 0.95],
                      "batch_windows": args.batch, "grad_clip": 1.0},
        "steps_planned": args.steps,
        "steps": step,
        "train_tokens_seen": step * args.batch * T,
        "train_minutes": round(train_minutes, 2),
        "final_train_loss_ema": round(ema, 4) if ema is not None else None,
        "heldout_perplexity": round(ppl, 3),
        "heldout_nll_per_token": round(nll / count, 5),
        "heldout_tokens": count,
        "heldout_bits_per_char": round(nll / math.log(2) / held_chars, 4),
        "corpus": {**corpus, "train_tokens": len(train), "heldout_tokens_in_stream": len(held)},
        "torch": torch.__version__,
        "threads": 1,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(f"params={result['params']} steps={step} train_minutes={train_minutes:.1f} "
          f"heldout_perplexity={ppl:.3f} (n={count} tokens)", flush=True)
    for prompt in ("def read(self, size=-1)\n", "Return the number of"):
        ids = torch.tensor([[0] + tok.encode(prompt).ids])
        out = shipped.generate(ids, 40, stop_token=0)[0, 1:].tolist()
        print(repr(tok.decode(out)), flush=True)
    return result


if __name__ == "__main__":
    main()

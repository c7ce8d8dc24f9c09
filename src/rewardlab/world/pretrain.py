"""Pretraining the review world's GPT-2-style base model on its corpus.

Each document is the sequence `<bos> document <eos>`. Documents are packed, in corpus order, into
rows of `row_tokens` tokens (a document never straddles two rows; the rest of a row is padding),
with position ids restarting at 0 for each document and a block-diagonal causal attention mask,
so every document is seen exactly as at generation time (alone, from position 0) and almost no
compute goes to padding. Batches are iid: each step reads the next `batch_rows` rows, and the
corpus is exactly what pretraining reads, every document once. The loss is the mean next-token
cross-entropy over real tokens (the eos included). AdamW (fused), linear warm-up then cosine decay,
gradient clipping at 1, no dropout. Weights are initialised from `seed` (the global RNG is left
alone), so a run on CPU is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel


@dataclass(frozen=True)
class WorldConfig:
    """Everything a world build depends on, besides the seed."""

    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128  # longest document is about 70 tokens; prompts + completions fit well within
    steps: int = 600
    batch_rows: int = 8  # packed rows per step
    row_tokens: int = 256  # tokens per packed row (documents restart positions, so this may exceed n_positions)
    heldout_docs: int = 500
    lr: float = 6e-3
    min_lr: float = 6e-4  # cosine decays from lr to min_lr
    warmup_steps: int = 100
    weight_decay: float = 0.01
    n_prompts: int = 512  # distinct training openers
    n_heldout_prompts: int = 128  # distinct held-out openers, disjoint from the training ones
    eval_samples: int = 512  # base-model samples measured for world.json
    max_new_tokens: int = 32  # the world's default completion length

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, WorldConfig] = {
    "micro": WorldConfig(n_layer=1, n_embd=32, n_head=2, steps=40, batch_rows=2, heldout_docs=64,
                         warmup_steps=5, n_prompts=32, n_heldout_prompts=8, eval_samples=32),
    "tiny": WorldConfig(),
    "small": WorldConfig(n_layer=6, n_embd=256, n_head=8, steps=2_000, heldout_docs=2_000, lr=2e-3, min_lr=2e-4,
                         warmup_steps=200),  # about 20 minutes on 2 CPU cores
}


def make_model(config: WorldConfig, tokenizer, seed: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 sized by `config`, its weights drawn from `seed` (global RNG untouched).
    Its MLP activation is GPT-2's (GELU's tanh approximation) computed by torch's fused kernel
    (`gelu_pytorch_tanh`), not `gelu_new`'s seven composed elementwise operations: the same function up to
    float rounding, one operation where there were seven in each MLP's forward pass."""
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.n_positions, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_pytorch_tanh",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(gpt2)


def encode_documents(tokenizer, docs: Iterable[str]) -> Iterator[list[int]]:
    """`<bos> doc <eos>` token ids for each document."""
    for doc in docs:
        yield tokenizer(doc, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]


def pack(sequences: Iterator[list[int]], n_rows: int, row_tokens: int) -> list[list[list[int]]]:
    """Fill up to `n_rows` rows of at most `row_tokens` tokens with whole sequences, in order, drawing
    from `sequences` until the rows are full (the first sequence that did not fit is dropped) or it ends."""
    rows, row, used = [], [], 0
    for seq in sequences:
        if len(seq) > row_tokens:
            raise ValueError(f"a sequence of {len(seq)} tokens does not fit in a row of {row_tokens}")
        if used + len(seq) > row_tokens:
            rows.append(row)
            if len(rows) == n_rows:
                return rows
            row, used = [], 0
        row.append(seq)
        used += len(seq)
    if row:
        rows.append(row)
    return rows


def packed_batch(rows: Sequence[Sequence[list[int]]], row_tokens: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of whole sequences -> input_ids, labels (-100 on padding), position_ids (restarting per
    sequence), each (B, L), and a float block-diagonal causal attention mask (B, 1, L, L): 0 where a
    token may attend, -inf elsewhere (padding attends to itself only)."""
    n = len(rows)
    ids = torch.full((n, row_tokens), pad_id, dtype=torch.long)
    labels = torch.full((n, row_tokens), -100, dtype=torch.long)
    positions = torch.zeros((n, row_tokens), dtype=torch.long)
    segment = torch.arange(row_tokens).repeat(n, 1) + row_tokens  # padding: a segment of its own per token
    for r, row in enumerate(rows):
        start = 0
        for j, seq in enumerate(row):
            end = start + len(seq)
            ids[r, start:end] = labels[r, start:end] = torch.tensor(seq)
            positions[r, start:end] = torch.arange(len(seq))
            segment[r, start:end] = j
            start = end
    causal = torch.ones(row_tokens, row_tokens, dtype=torch.bool).tril()
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, float("-inf"))[:, None]
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask}


def token_nll(model: GPT2LMHeadModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed next-token cross-entropy in nats, number of predicted tokens) of a packed batch."""
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:].clone()
    targets[batch["position_ids"][:, 1:] == 0] = -100  # the first token of a sequence is not predicted
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                            ignore_index=-100, reduction="sum")
    return nll, int((targets != -100).sum())


def lr_at(step: int, config: WorldConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def pretrain(model: GPT2LMHeadModel, rows: Sequence[Sequence[list[int]]], config: WorldConfig, pad_id: int,
             progress: bool = True) -> list[float]:
    """Train `model` in place on packed `rows` (`config.steps * config.batch_rows` of them, read in
    order); returns the training loss of each step (nats/token)."""
    if len(rows) < config.steps * config.batch_rows:
        raise ValueError(f"{len(rows)} rows cannot fill {config.steps} steps of {config.batch_rows}")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98),
                                  fused=True)  # one kernel per parameter instead of a loop of elementwise ops
    model.train()
    losses = []
    bar = tqdm(range(config.steps), desc="pretraining", disable=not progress, unit="step")
    for step in bar:
        batch = packed_batch(rows[step * config.batch_rows:(step + 1) * config.batch_rows], config.row_tokens, pad_id)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        nll, count = token_nll(model, batch)
        loss = nll / count
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def heldout_loss(model: GPT2LMHeadModel, sequences: Sequence[list[int]], row_tokens: int, pad_id: int,
                 batch_rows: int = 16) -> float:
    """Mean next-token cross-entropy (nats/token) over all real tokens of `sequences`."""
    model.eval()
    rows = pack(iter(sequences), len(sequences), row_tokens)
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_rows):
        nll, n = token_nll(model, packed_batch(rows[i:i + batch_rows], row_tokens, pad_id))
        total += nll.item()
        count += n
    return total / count

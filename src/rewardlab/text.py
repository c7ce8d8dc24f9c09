"""Text and token helpers every layer shares: prompt ids, joining a prompt and its completion,
tokenizing prompt/completion pairs, padding token id lists into batches.

Tokenization follows TRL's convention: the prompt is tokenized with special tokens (so a BOS is
added once, if the tokenizer adds one), the completion without, and the two id lists are joined.
An optional chat template wraps the prompt as one user turn; it is applied to both models
identically and recorded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from rewardlab.errors import InputError


def prompt_id(prompt: str) -> str:
    """Stable id of a prompt string: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def join_prompt_completion(prompt: str, completion: str) -> str:
    """Prompt and completion as one text, with one space between them when neither side has it."""
    if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace():
        return prompt + completion
    return f"{prompt} {completion}"


def pad_token_id(tokenizer) -> int:
    """The id used to pad batches: pad, else eos, else 0 (padding never enters a result)."""
    for tok_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tok_id is not None:
            return tok_id
    return 0


@dataclass(frozen=True)
class Encoded:
    """One prompt/completion as token ids; `ids[prompt_len:]` are the completion tokens."""

    ids: list[int]
    prompt_len: int

    @property
    def n_completion(self) -> int:
        return len(self.ids) - self.prompt_len


def format_prompt(tokenizer, prompt: str, chat_template: bool = False) -> str:
    """The prompt text as the model sees it: raw, or rendered as one user turn by the chat template."""
    if not chat_template:
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError("the tokenizer has no chat template", fix="drop --chat-template for plain prompts")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def encode(tokenizer, prompts: Sequence[str], completions: Sequence[str], chat_template: bool = False) -> list[Encoded]:
    """Token ids of each prompt (with special tokens; a template already holds its own) + completion (without)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    out = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        prompt_ids = tokenizer(format_prompt(tokenizer, prompt, chat_template),
                               add_special_tokens=not chat_template)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if not prompt_ids:
            raise InputError("the prompt has no tokens, so the first completion token has no context",
                             f"record {i}", "give a non-empty prompt (or a tokenizer that adds BOS)")
        out.append(Encoded(list(prompt_ids) + list(completion_ids), len(prompt_ids)))
    return out


def right_padded(encoded: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both [n, longest] long tensors on CPU, sequences right-padded with pad_id."""
    width = max(len(e.ids) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        input_ids[row, :len(e.ids)] = torch.tensor(e.ids)
        attention[row, :len(e.ids)] = 1
    return input_ids, attention


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token id lists -> (input_ids, attention_mask, position_ids), each (B, T)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def encode_prompts(tokenizer, prompts: Sequence[str], device: torch.device | str = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts tokenized with the tokenizer's special tokens and left-padded for generation or a
    next-token forward pass: (input_ids, attention_mask, position_ids), each (B, T)."""
    ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    for p, row in zip(prompts, ids):
        if not row:
            raise InputError(f"prompt {p!r} encodes to no tokens", fix="give a non-empty prompt")
    return left_pad(ids, pad_token_id(tokenizer), device)

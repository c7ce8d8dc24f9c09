"""Text and token helpers every layer shares: prompt ids, joining a prompt and its completion,
tokenizing prompts and prompt/completion pairs, padding token id lists into batches.

Tokenization follows TRL's convention: the prompt is tokenized with special tokens (so a BOS is
added once, if the tokenizer adds one), the completion without, and the two id lists are joined.

Chat models. A tokenizer carries one setting, `chat_template` = auto | on | off, fixed where it is
loaded (`rewardlab.models.load_tokenizer(..., chat_template=...)`, or `set_chat_template`); auto
(also the setting of a tokenizer nobody set) means on when the tokenizer has a chat template. When
on, every prompt this module encodes is rendered by the template (a plain prompt as one user turn,
a conversation as its messages) with the assistant's turn opened, the rendered text is tokenized
without special tokens (the template holds its own), and the BOS the tokenizer puts before plain
text is added only when the rendering does not already start with it: never doubled, never
dropped. Generation then stops at the template's end-of-turn token as well as at EOS (`stop_ids`).

Context length. A tokenizer also carries its model's context length (`set_context_length`, done by
`rewardlab.models.load_tokenizer` from the folder's config.json): a prompt must leave room for one
completion token, prompt plus completion must fit (`prompt_token_ids`, `encode`), and the decoding loop
refuses a generation budget that would run past it (`check_generation_fits`). Each is an InputError
naming the record, its length and the limit, raised before that batch's model work.

A prompt given as messages (TRL's conversational format, `[{"role": "user", "content": ...}, ...]`)
travels as one string, its canonical JSON (`conversation_prompt`), so prompt ids, splits and records
treat it like any prompt; `messages_of` reads it back. It needs the chat template on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import torch

from rewardlab.config import check_chat_template_mode
from rewardlab.errors import InputError

_SETTING = "rewardlab_chat_template"  # the attribute a tokenizer carries its resolved setting in
_CONTEXT = "rewardlab_context_length"  # the attribute a tokenizer carries its model's context length in
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")  # config names, first found
_ROLES = ("system", "user", "assistant", "tool")


def set_chat_template(tokenizer, mode: str = "auto"):
    """Fix how every encoder here renders `tokenizer`'s prompts (see the module docstring); returns it.
    InputError for `on` when the tokenizer has no chat template."""
    check_chat_template_mode(mode)
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        raise InputError("chat_template is on, but the tokenizer has no chat template", tokenizer.name_or_path,
                         "use chat_template auto or off, or a tokenizer with a chat template")
    setattr(tokenizer, _SETTING, mode == "on" or (mode == "auto" and has))
    return tokenizer


def set_context_length(tokenizer, n_positions: int | None):
    """Record the model's context length (tokens) on its tokenizer; None: unknown, nothing is checked."""
    setattr(tokenizer, _CONTEXT, None if n_positions is None else int(n_positions))
    return tokenizer


def context_length(tokenizer) -> int | None:
    """The context length recorded by `set_context_length`, None when unknown."""
    return getattr(tokenizer, _CONTEXT, None)


def config_context_length(config) -> int | None:
    """A model config's context length: the first of CONTEXT_FIELDS it sets, None if none."""
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _too_long(length: int, limit: int, what: str, where: str, fix: str) -> InputError:
    return InputError(f"{what} has {length} tokens; the model's context holds {limit}", where, fix)


def check_generation_fits(prompt_lengths: Sequence[int], max_new_tokens: int, n_positions: int | None) -> None:
    """InputError unless the longest prompt (lengths in tokens) plus `max_new_tokens` fits a context of
    `n_positions` tokens (None: unknown, no check). The decoding loop refuses rather than clips."""
    if n_positions is None or not len(prompt_lengths):
        return
    longest = max(prompt_lengths)
    if longest + max_new_tokens > n_positions:
        raise _too_long(longest + max_new_tokens, n_positions, f"a prompt of {longest} tokens plus "
                        f"max_new_tokens {max_new_tokens}", f"prompt {list(prompt_lengths).index(longest)}",
                        f"lower max_new_tokens to at most {max(n_positions - longest, 0)}, or shorten the prompt")


def uses_chat_template(tokenizer) -> bool:
    """Whether prompts are rendered by the chat template: the tokenizer's setting, else auto."""
    setting = getattr(tokenizer, _SETTING, None)
    return bool(getattr(tokenizer, "chat_template", None)) if setting is None else setting


def conversation_prompt(messages) -> str:
    """A prompt given as messages -> its canonical one-string form; InputError for malformed messages
    or a conversation that ends with the assistant's turn (a prompt is what the assistant answers)."""
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str) for m in messages):
        raise InputError("messages must be a non-empty list of {\"role\": ..., \"content\": \"...\"} objects",
                         fix=f"roles are {', '.join(_ROLES)}; contents are strings")
    if messages[-1]["role"] == "assistant":
        raise InputError("the conversation ends with the assistant's turn, so there is nothing to answer",
                         fix="drop the last (assistant) message; the model writes it")
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)


def messages_of(prompt: str) -> list[dict] | None:
    """The messages of a prompt made by `conversation_prompt`, None for a plain prompt."""
    if not prompt.startswith('[{"role": '):
        return None
    try:
        messages = json.loads(prompt)
    except json.JSONDecodeError:
        return None
    return messages if isinstance(messages, list) and all(isinstance(m, dict) for m in messages) else None


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


def format_prompt(tokenizer, prompt: str) -> str:
    """The prompt text as the model sees it: raw, or rendered by the chat template with the assistant's
    turn opened."""
    messages = messages_of(prompt)
    if not uses_chat_template(tokenizer):
        if messages is not None:
            raise InputError("a prompt given as messages needs a chat template, and none is in use",
                             prompt[:80], "use a tokenizer with a chat template (chat_template auto or on)")
        return prompt
    return tokenizer.apply_chat_template(messages or [{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def _text_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before plain text: [bos] for Llama-2/Mistral, [] for GPT-2."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for k in range(len(with_special) - len(plain) + 1):
        if with_special[k:k + len(plain)] == plain:
            return list(with_special[:k])
    return []


def prompt_token_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt as the model sees it (see the module docstring); InputError for a
    prompt with no tokens."""
    if uses_chat_template(tokenizer):
        prefix = _text_prefix(tokenizer)
        ids = [tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
        ids = [row if row[:len(prefix)] == prefix else prefix + row for row in ids]
    else:
        ids = [tokenizer(format_prompt(tokenizer, p), add_special_tokens=True)["input_ids"] for p in prompts]
    limit = context_length(tokenizer)
    for i, row in enumerate(ids):
        if not row:
            raise InputError("the prompt has no tokens, so the first completion token has no context",
                             f"record {i}", "give a non-empty prompt (or a tokenizer that adds BOS)")
        if limit is not None and len(row) >= limit:
            raise _too_long(len(row), limit, "the prompt", f"record {i}",
                            "shorten the prompt so that a completion token still fits")
    return [list(row) for row in ids]


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template closes the assistant's turn with (`<|im_end|>`, `<|eot_id|>`,
    `<end_of_turn>`), None without a template or when the turn ends in plain text."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "rewardlab-end-of-turn-marker"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    after = text.split(marker, 1)[1] if marker in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
    return ids[0] if ids and ids[0] in tokenizer.all_special_ids else None


def stop_ids(tokenizer) -> list[int]:
    """The tokens that end a completion: EOS, and the end-of-turn token when the chat template is on."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end = end_of_turn_id(tokenizer) if uses_chat_template(tokenizer) else None
    return ids + [end] if end is not None and end not in ids else ids


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token as the text it stands for, for display (`convert_tokens_to_string`: byte-level `Ġbest`
    -> " best", a word-level token stays itself); a character whose UTF-8 bytes span several tokens is
    shown on the last of them, the others being "" (never a half character as mojibake)."""
    out, pending = [], []
    for tok in tokenizer.convert_ids_to_tokens([int(i) for i in ids]):
        pending.append(tok)
        text = tokenizer.convert_tokens_to_string(pending)
        if "\ufffd" in text and len(pending) < 4:  # an incomplete character: wait for its next byte
            out.append("")
            continue
        out.append(text)
        pending = []
    return out


@dataclass(frozen=True)
class Encoded:
    """One prompt/completion as token ids; `ids[prompt_len:]` are the completion tokens."""

    ids: list[int]
    prompt_len: int

    @property
    def n_completion(self) -> int:
        return len(self.ids) - self.prompt_len


def encode(tokenizer, prompts: Sequence[str], completions: Sequence[str]) -> list[Encoded]:
    """Token ids of each prompt (`prompt_token_ids`) + its completion (without special tokens)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    out, limit = [], context_length(tokenizer)
    for i, (prompt_ids, completion) in enumerate(zip(prompt_token_ids(tokenizer, prompts), completions)):
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        out.append(Encoded(prompt_ids + list(completion_ids), len(prompt_ids)))
        if limit is not None and len(out[-1].ids) > limit:
            raise _too_long(len(out[-1].ids), limit, "the prompt plus its completion", f"record {i}",
                            "shorten the record")
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
    """Prompts tokenized as the model sees them (`prompt_token_ids`) and left-padded for generation or
    a next-token forward pass: (input_ids, attention_mask, position_ids), each (B, T)."""
    return left_pad(prompt_token_ids(tokenizer, prompts), pad_token_id(tokenizer), device)

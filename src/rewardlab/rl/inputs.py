"""What a post-training run reads besides its config: the model, its prompts, its completion length
and, in the review world, its grammar checker. PPO, DPO and preference pairs share these."""

from __future__ import annotations

from typing import Callable

from rewardlab.errors import InputError
from rewardlab.io import read_jsonl
from rewardlab.models import load_model
from rewardlab.world import is_grammatical, world_of_model

DEFAULT_MAX_NEW_TOKENS = 24


def load_prompts(base: str, prompts: str | None) -> list[str]:
    """The `prompt` field of each row of the JSONL file `prompts`; None: the prompts of the review
    world that model folder `base` belongs to."""
    if prompts is not None:
        return [r["prompt"] for r in read_jsonl(prompts, required=("prompt",))]
    world = world_of_model(base)
    if world is None:
        raise InputError("no prompts given and the base model is not a review world's",
                         base, "pass --prompts FILE.jsonl with a `prompt` field")
    return world.prompts


def completion_length(base: str, max_new_tokens: int | None) -> int:
    """Tokens to sample per completion: `max_new_tokens` if given, else the generation default of the
    review world `base` belongs to, else 24."""
    if max_new_tokens is not None:
        return max_new_tokens
    world = world_of_model(base)
    if world is not None and "max_new_tokens" in world.generation:
        return int(world.generation["max_new_tokens"])
    return DEFAULT_MAX_NEW_TOKENS


def grammar_checker(base: str) -> Callable[..., bool] | None:
    """The review world's `is_grammatical(text, prompt=...)`, or None when `base` is not a world's model."""
    return None if world_of_model(base) is None else is_grammatical


def load_policy_and_tokenizer(path: str, chat_template: str = "auto", dtype: str = "float32"):
    """(causal LM in `dtype` on the CPU in eval mode, tokenizer with the `chat_template` setting) via
    `rewardlab.models.load_model`."""
    model, tokenizer = load_model(path, device="cpu", dtype=dtype, chat_template=chat_template)
    return model.eval(), tokenizer

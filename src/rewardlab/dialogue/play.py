"""Playing two-turn conversations: the model writes both assistant turns, the simulated user the follow-up.

Tensors of a played batch (`Played.rollout`, a `rewardlab.rl.rollout.Rollout`): prompts [B, P] are the
openers rendered by the chat template, left-padded; the "completion" [B, T] is everything after the
prompt, right-padded: the assistant's first turn, the user's turn (an `<eos>` first if the first turn was
cut at `max_new_tokens`, then `<user> FOLLOW-UP <eos> <assistant>`), the assistant's second turn.
`rollout.mask` [B, T] is 1 on all of these (what the model attends to); `turn1` and `turn2` [B, T] are 1
on the tokens the model sampled in each turn (the policy's actions); the user's tokens are in neither.
Each turn is sampled with `rewardlab.rl.rollout.rollout` (the one decoding loop), the second from the
whole conversation so far, so scoring the assembled sequence in one forward pass gives the sampling
log-probs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from rewardlab.dialogue.chat import user_turn_text
from rewardlab.dialogue.user import UserPolicy, sample_followup
from rewardlab.rl.rollout import Rollout, rollout
from rewardlab.text import encode_prompts, join_prompt_completion, left_pad, pad_token_id, stop_ids


@dataclass
class Played:
    """A batch of played conversations: tensors (see the module docstring) and texts per row."""

    rollout: Rollout
    turn1: torch.Tensor
    turn2: torch.Tensor
    openers: list[str]
    reviews: list[str]      # the assistant's first turn (without the opener)
    followups: list[str]
    answers: list[str]      # the assistant's second turn
    finished: list[tuple[bool, bool]]  # whether each turn ended with <eos> (else it was cut)

    def turn_texts(self, turn: int) -> list[str]:
        """Each turn's text for the grammar checker: `<eos>` appended when the turn ended with it."""
        texts = self.reviews if turn == 1 else self.answers
        return [t + (" <eos>" if f[turn - 1] else "") for t, f in zip(texts, self.finished)]


def _sample(model, ids: list[list[int]], pad_id: int, stops: list[int], max_new_tokens: int, sampling: dict,
            generator: torch.Generator, device) -> tuple[list[list[int]], list[bool]]:
    """Sample one turn after each context in `ids`; (sampled ids, ended with a stop token) per row."""
    input_ids, attention, _ = left_pad(ids, pad_id, device)
    ro = rollout(model, input_ids, attention, max_new_tokens=max_new_tokens, eos_id=stops, pad_id=pad_id,
                 generator=generator, **sampling)
    out = [row[m.bool()].tolist() for row, m in zip(ro.completion_ids, ro.mask)]
    return out, [bool(r) and r[-1] in stops for r in out]


@torch.no_grad()
def play(model, tokenizer, openers: list[str], user: UserPolicy, *, max_new_tokens: int, generator: torch.Generator,
         user_rng: random.Random, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Played:
    """Play one conversation per opener (tokenizer with the dialogue chat template on); the user's
    follow-ups are drawn from `user_rng`."""
    device = next(model.parameters()).device
    pad_id, stops, eos = pad_token_id(tokenizer), stop_ids(tokenizer), tokenizer.eos_token_id
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    prompt_ids, prompt_mask, _ = encode_prompts(tokenizer, openers, device)
    prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
    first, done1 = _sample(model, prompts, pad_id, stops, max_new_tokens, sampling, generator, device)
    reviews = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in first]
    followups = [sample_followup(join_prompt_completion(o, r), user, user_rng) for o, r in zip(openers, reviews)]
    user_ids = [([] if d else [eos]) + tokenizer(user_turn_text(tokenizer, f), add_special_tokens=False)["input_ids"]
                for d, f in zip(done1, followups)]
    second, done2 = _sample(model, [p + a + u for p, a, u in zip(prompts, first, user_ids)], pad_id, stops,
                            max_new_tokens, sampling, generator, device)
    rows = [a + u + b for a, u, b in zip(first, user_ids, second)]
    width = max(map(len, rows))
    completion = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask, turn1, turn2 = (torch.zeros((len(rows), width), dtype=torch.long) for _ in range(3))
    for i, (a, u, b) in enumerate(zip(first, user_ids, second)):
        completion[i, :len(rows[i])] = torch.tensor(rows[i])
        mask[i, :len(rows[i])] = 1
        turn1[i, :len(a)] = 1
        turn2[i, len(a) + len(u):len(rows[i])] = 1
    ro = Rollout(prompt_ids, prompt_mask.long(), completion.to(device), mask.to(device))
    return Played(ro, turn1.to(device), turn2.to(device), list(openers), reviews, followups,
                  [tokenizer.decode(b, skip_special_tokens=True).strip() for b in second],
                  list(zip(done1, done2)))

"""PPO over whole conversations, with the user's tokens masked out (`rewardlab.rl.ppo`'s losses and GAE).

One phase: play `batch_size` conversations (`play`), score each assistant turn (`TurnRewards`: the
reward spec on both turns, the follow-up bonus on turn 2), put each turn's reward on its last token,
and hand the whole sequence to `rl.ppo.score_rollout` and `rl.ppo.learn` with the policy's tokens as
the loss mask: the user's tokens enter no loss, KL, value target or advantage statistic.

Credit (`credit`):
    conversation   one episode per conversation: GAE(gamma, lambda) runs over the assistant's tokens
                   of both turns with the user's turn skipped, so turn 2's return (the bonus included)
                   flows back to turn 1: the multi-turn policy;
    turn           one episode per turn: turn 1 learns from its own reward only (the single-turn
                   policy), turn 2 from its own.

KL budget (`kl_budget`, nats per conversation): training stops at the first phase whose rollouts'
mean exact KL(policy || reference) over the assistant's tokens reaches the budget (`budget_reached`),
and keeps the policy that played those rollouts (that phase does not learn), so policies trained with
different credits are compared at the same KL from the base. Without a budget, or if it is never
reached, the policy after the last phase's update is kept. `DialoguePolicy.stop` says which.

`evaluate_dialogue` plays fresh conversations and measures, per conversation: whether turn 1 makes the
bonus subject the last one named (the eliciting mention) and the exact probability that the user then
asks the bonus follow-up, each turn's reward and grammaticality, and the exact KL(policy || reference)
over the assistant's tokens (nats per conversation).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator

from rewardlab import stats
from rewardlab.dialogue.build import Dialogue
from rewardlab.dialogue.play import Played, play
from rewardlab.dialogue.rewards import FollowupBonus, TurnRewards, bonus_probability, elicits_bonus
from rewardlab.rl.config import PPOConfig
from rewardlab.rl.kl_penalty import KLController, exact_kl
from rewardlab.rl.ppo import learn, policy_and_reference, policy_with_value, prepare_for_learning, score_rollout
from rewardlab.rl.rollout import completion_logprobs_from_logits, position_ids
from rewardlab.world.grammar import is_grammatical

CREDITS = ("conversation", "turn")


def turn_scores(played: Played, first: list[float], second: list[float]) -> torch.Tensor:
    """Per-token scores [B, T]: each turn's reward on the last token the assistant sampled in it."""
    scores = torch.zeros(played.turn1.shape, dtype=torch.float32, device=played.turn1.device)
    rows = torch.arange(len(first))
    last1 = played.turn1.shape[1] - 1 - played.turn1.flip(1).argmax(1)
    last2 = played.turn2.shape[1] - 1 - played.turn2.flip(1).argmax(1)
    scores[rows, last1] += torch.tensor(first, device=scores.device)
    scores[rows, last2] += torch.tensor(second, device=scores.device)
    return scores


def episodes(played: Played, credit: str) -> list[torch.Tensor]:
    """The policy-token masks of the independent episodes under `credit` (see the module docstring)."""
    if credit not in CREDITS:
        raise ValueError(f"credit must be one of {CREDITS}, got {credit!r}")
    return [played.turn1 + played.turn2] if credit == "conversation" else [played.turn1, played.turn2]


@dataclass
class DialoguePolicy:
    """A trained multi-turn policy (the policy model, its tokenizer, the frozen reference) and its metrics."""

    policy: torch.nn.Module
    reference: torch.nn.Module
    tokenizer: object
    metrics: list[dict]
    stop: dict             # phase: the last phase played; reason: kl_budget | phases; kl_exact: its rollouts' KL


def budget_reached(kl: float, budget: float | None) -> bool:
    """Whether training stops at a phase whose rollouts' mean exact KL is `kl` (nats per conversation):
    it is at least `budget` (never when None).

    One phase, not a mean over the last few: the kept policy is the one that played this phase, and its
    batch's mean is the on-policy estimate of that policy's KL, while a window of w phases lags a rising
    KL by (w - 1) / 2 phases (the kept policy would overshoot the budget)."""
    return budget is not None and kl >= budget


def _phase_row(phase: int, played: Played, first, second, sc, bonus: FollowupBonus | None) -> dict:
    policy_tokens = (played.turn1 + played.turn2).bool()
    row = {"phase": phase, "reward_turn1": float(np.mean(first)), "reward_turn2": float(np.mean(second)),
           "kl_exact": float((sc.kl_exact * policy_tokens).sum(1).mean())}
    if bonus is not None:
        row["eliciting_rate"] = float(np.mean([elicits_bonus(o, r, bonus) for o, r in zip(played.openers,
                                                                                          played.reviews)]))
    return row


def train_dialogue_ppo(dialogue: Dialogue, cfg: PPOConfig, reward: TurnRewards, credit: str = "conversation",
                       progress: bool = False, kl_budget: float | None = None) -> DialoguePolicy:
    """Train a policy from the dialogue world's base with multi-turn PPO (`cfg`: the PPO settings, its
    `base` the dialogue world's base; chat template on) for at most `cfg.phases` phases, stopping at the
    KL budget (nats per conversation; module docstring). The policy is the stopping phase's weights:
    `cfg.average_from` is not used (no mean of the weights is kept). Deterministic for a seed on CPU."""
    cfg = dataclasses.replace(cfg, base=str(dialogue.base_path), chat_template="on")
    cfg.validate()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    accelerator = Accelerator(cpu=True)
    policy, ref, tokenizer, _ = policy_and_reference(cfg, accelerator.device)
    model, optimizer = prepare_for_learning(accelerator, *policy_with_value(policy, cfg, accelerator.device))
    generator = torch.Generator().manual_seed(cfg.seed * 1000)
    user_rng = random.Random(f"dialogue-ppo/{cfg.seed}")
    kl_ctl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    max_new_tokens = cfg.max_new_tokens or int(dialogue.info["generation"]["max_new_tokens"])
    metrics = []
    for phase in range(cfg.phases):
        idx = torch.randint(len(dialogue.prompts), (cfg.batch_size,), generator=generator).tolist()
        played = play(model.policy, tokenizer, [dialogue.prompts[i] for i in idx], dialogue.user,
                      max_new_tokens=max_new_tokens, generator=generator, user_rng=user_rng,
                      temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
        first, second = reward(played.openers, played.reviews, played.followups, played.answers)
        sc = score_rollout(model, ref, played.rollout, turn_scores(played, first, second), cfg, kl_ctl.coef,
                           episodes=episodes(played, credit))
        row = _phase_row(phase, played, first, second, sc, reward.bonus)
        if budget_reached(row["kl_exact"], kl_budget):  # keep the policy that played this phase: no update
            metrics.append({**row, "learned": False})
            stop = {"phase": phase, "reason": "kl_budget", "kl_exact": row["kl_exact"]}
            break
        stats_, _ = learn(model, ref, played.rollout, sc, cfg, kl_ctl.coef, optimizer, accelerator, generator,
                          phase, loss_mask=played.turn1 + played.turn2)
        metrics.append({**row, "learned": True, **{k: stats_[k] for k in ("pg_loss", "vf_loss", "approx_kl",
                                                                           "clipfrac")}})
        kl_ctl.update(row["kl_exact"], cfg.batch_size)
        if progress:
            print(metrics[-1], flush=True)
    else:
        stop = {"phase": cfg.phases - 1, "reason": "phases", "kl_exact": metrics[-1]["kl_exact"]}
    return DialoguePolicy(model.policy.eval(), ref, tokenizer, metrics, stop)


@torch.no_grad()
def conversation_kl(policy, ref, played: Played, temperature: float = 1.0) -> list[float]:
    """Exact KL(policy || reference) summed over the assistant's tokens of each conversation (nats)."""
    ro, P = played.rollout, played.rollout.prompt_ids.shape[1]
    logits = [m(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=position_ids(
        ro.attention_mask), use_cache=False).logits for m in (policy, ref)]
    (_, p_all), (_, q_all) = (completion_logprobs_from_logits(x, ro.completion_ids, P, temperature=temperature)
                              for x in logits)
    return (exact_kl(p_all, q_all) * (played.turn1 + played.turn2)).sum(1).tolist()


@torch.no_grad()
def evaluate_dialogue(policy, ref, tokenizer, dialogue: Dialogue, reward: TurnRewards, bonus: FollowupBonus, *,
                      n: int, seed: int, max_new_tokens: int, batch_size: int = 64) -> dict:
    """Play `n` fresh conversations (openers drawn with replacement, seeded) and measure them; returns
    {name: {value, ci, n, n_groups}} resampling openers, and the per-conversation lists under "rows"."""
    generator, user_rng = torch.Generator().manual_seed(seed), random.Random(f"dialogue-eval/{seed}")
    rows = []
    for start in range(0, n, batch_size):
        idx = torch.randint(len(dialogue.prompts), (min(batch_size, n - start),), generator=generator).tolist()
        played = play(policy, tokenizer, [dialogue.prompts[i] for i in idx], dialogue.user,
                      max_new_tokens=max_new_tokens, generator=generator, user_rng=user_rng)
        first, second = reward(played.openers, played.reviews, played.followups, played.answers)
        kls = conversation_kl(policy, ref, played)
        for i, (o, r) in enumerate(zip(played.openers, played.reviews)):
            rows.append({"opener": o, "review": r, "followup": played.followups[i], "answer": played.answers[i],
                         "eliciting": float(elicits_bonus(o, r, bonus)),
                         "bonus_probability": bonus_probability(o, r, dialogue.user, bonus),
                         "bonus_followup": float(played.followups[i] == bonus.followup),
                         "reward_turn1": first[i], "reward_turn2": second[i], "kl": kls[i],
                         "grammatical_turn1": float(is_grammatical(played.turn_texts(1)[i], prompt=o)),
                         "grammatical_turn2": float(is_grammatical(played.turn_texts(2)[i]))})
    groups = [r["opener"] for r in rows]
    keys = ("eliciting", "bonus_probability", "bonus_followup", "reward_turn1", "reward_turn2", "kl",
            "grammatical_turn1", "grammatical_turn2")
    return {**{k: stats.mean([r[k] for r in rows], groups=groups).to_dict() for k in keys}, "rows": rows}

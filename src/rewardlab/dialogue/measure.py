"""What a model expects of the rest of a conversation: its Monte Carlo value at the user's follow-up,
and the user it expects (the model writing the user's turn, scored by the implicit reward).

Value at the follow-up. For a played conversation (opener, review) and each follow-up f the
simulated user could ask after it (`followup_distribution`, at most three), the prefix is the whole
conversation up to the opened assistant turn 2 (`<bos><user> OPENER <eos> <assistant> REVIEW <eos>
<user> f <eos> <assistant>`) and

    V_M(f)     = E[turn-2 reward | the prefix], the answer sampled from M (`value.targets.
                 monte_carlo_values`: k continuations of at most `max_new_tokens` tokens), scored by
                 the turn's reward spec with f as its prompt, plus the follow-up bonus when f earns it
    V_M(end1)  = sum_f p_user(f | review) V_M(f): the value at the end of the assistant's turn 1,
                 exact over the known user, Monte Carlo over the answer

Rows are `value.targets` rows (realized 0: nothing of the rest is written) at the positions
`followup` (the activation at the follow-up's last token) and `end_turn1` (at the review's last
token), so `value.probes.value_probe_study` fits them against its text-only baselines unchanged.

The user side. On the same contexts (opener, review), the model continues as the user (after
`<eos> <user>`): per context, the exact log-probability under base and post of each follow-up text
the user can say (`candidate_followups`: about every subject, recommend, more), the implicit reward
log pi_post(f) - log pi_base(f) (nats, the closing `<eos>` included), and one sampled user turn
per model. The contrast is the implicit reward of the bonus follow-up minus the mean over the other
subjects' `about` follow-ups (the same words but the subject): 0 when post-training did not make
the model expect the user to ask about the bonus subject more than about any other.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rewardlab import stats
from rewardlab.dialogue.chat import ASSISTANT, USER, messages
from rewardlab.dialogue.rewards import FollowupBonus, TurnRewards
from rewardlab.dialogue.user import FOLLOWUP_TEXT, SUBJECTS, UserPolicy, followup_distribution
from rewardlab.diff.logprobs import sequence_logprobs
from rewardlab.sampling import sample_tokens
from rewardlab.text import Encoded, conversation_prompt, join_prompt_completion, left_pad, pad_token_id, prompt_id
from rewardlab.value.targets import Prefix, TargetsConfig, monte_carlo_values, target_rows

POSITIONS = ("end_turn1", "followup")


def candidate_followups() -> list[str]:
    """Every follow-up text the simulated user can say: about each subject (sorted), recommend, more."""
    return [FOLLOWUP_TEXT["about"].format(subject=s) for s in sorted(SUBJECTS)] + [
        FOLLOWUP_TEXT["recommend"], FOLLOWUP_TEXT["more"]]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _context_text(tokenizer, opener: str, review: str) -> str:
    """The conversation through the assistant's turn 1, as the chat template renders it."""
    return tokenizer.apply_chat_template(messages(opener, review), tokenize=False)


def value_records(conversations: Sequence[dict], user: UserPolicy) -> tuple[list[dict], list[tuple[int, str, float]]]:
    """Activation records and the follow-up prefixes of `conversations` (dicts with opener, review):
    records[i] for i < n is conversation i as prompt=opener, completion=review (read at its last
    completion token: end_turn1); then one record per (conversation, possible follow-up), the whole
    conversation up to the follow-up as a messages prompt (read at its last prompt token: followup).
    Returns (records, [(conversation, follow-up, p_user)] aligned with the follow-up records)."""
    records = [{"prompt": c["opener"], "completion": c["review"]} for c in conversations]
    pairs = []
    for i, c in enumerate(conversations):
        dist = followup_distribution(join_prompt_completion(c["opener"], c["review"]), user)
        for f in sorted(dist):
            pairs.append((i, f, dist[f]))
            records.append({"prompt": conversation_prompt(messages(c["opener"], c["review"], f)), "completion": ""})
    return records, pairs


def _turn2_reward(reward: TurnRewards, followup: str):
    """The turn-2 reward of answers to `followup` (the bonus included), as a reward of (completions, prompts);
    the prompts (the conversation so far) are not needed: the follow-up fixes the turn's reward."""
    return lambda answers, prompts=None: reward([""] * len(answers), [""] * len(answers), [followup] * len(answers), list(answers))[1]


def followup_value_rows(models: dict, tokenizer, conversations: Sequence[dict], user: UserPolicy, reward: TurnRewards,
                        cfg: TargetsConfig) -> tuple[list[dict], list[dict]]:
    """(value rows, activation records): V_M at every possible follow-up of each conversation and at
    the end of its turn 1 (see the module docstring) for each named model (e.g. {"post": ..., "base":
    ...}); each follow-up text's prefixes are one `monte_carlo_values` call, seeded with `cfg.seed`."""
    records, pairs = value_records(conversations, user)
    n = len(conversations)
    prefixes = []
    for j, (i, f, _) in enumerate(pairs):
        c = conversations[i]
        ids = _ids(tokenizer, _context_text(tokenizer, c["opener"], c["review"]) + f" {USER} {f} "
                   f"{tokenizer.eos_token} {ASSISTANT}")
        prefixes.append(Prefix(n + j, prompt_id(c["opener"]), "followup", tuple(ids), len(ids)))
    values = {}
    for name, model in models.items():
        estimates = [None] * len(pairs)
        for f in sorted({f for _, f, _ in pairs}):
            index = [j for j, p in enumerate(pairs) if p[1] == f]
            for j, e in zip(index, monte_carlo_values(model, tokenizer, [prefixes[j] for j in index],
                                                      _turn2_reward(reward, f), cfg)):
                estimates[j] = e
        values[name] = estimates
    rows = target_rows(tokenizer, prefixes, [0.0] * len(prefixes), values)
    for row, (i, f, p) in zip(rows, pairs):
        row.update({"conversation": i, "written": f, "followup": f, "p_user": p})
    return _end_turn1_rows(rows, conversations, list(models)) + rows, records


def _end_turn1_rows(rows: list[dict], conversations: Sequence[dict], names: list[str]) -> list[dict]:
    """One row per conversation at end_turn1: V = sum_f p_user(f) V(f) (se combined the same way)."""
    out = []
    for i, c in enumerate(conversations):
        mine = [r for r in rows if r["conversation"] == i]
        row = {"record": i, "prompt_id": prompt_id(c["opener"]), "position": "end_turn1", "n_written": 0,
               "written": c["review"], "prefix_ids": [], "realized": 0.0, "conversation": i, "k": mine[0]["k"]}
        for name in names:
            v = sum(r["p_user"] * r[f"value_{name}"] for r in mine)
            se = float(np.sqrt(sum((r["p_user"] * r[f"value_se_{name}"]) ** 2 for r in mine)))
            row.update({f"value_{name}": v, f"value_se_{name}": se, f"future_{name}": v})
        out.append(row)
    return out


def value_acts(models: dict, tokenizer, records: Sequence[dict], sites: Sequence[str], batch_size: int = 16
               ) -> dict[str, dict[str, np.ndarray]]:
    """{model: {"SITE|end_turn1" and "SITE|followup": [n_records, d]}} (`acts.collect_activations`): each
    record's last completion token (the review's last token) and last prompt token (the follow-up's last
    token); the value rows read the first at end_turn1 and the second at followup."""
    from rewardlab.acts import collect_activations

    out = {}
    for name, model in models.items():
        a = collect_activations(model, tokenizer, records, sites, ["last_completion", "last_prompt"], batch_size)
        out[name] = {f"{site}|{position}": a[f"{site}|{read}"].numpy() for site in sites
                     for position, read in (("end_turn1", "last_completion"), ("followup", "last_prompt"))}
    return out


def _user_contexts(tokenizer, conversations: Sequence[dict]) -> list[list[int]]:
    """Token ids of each conversation through turn 1 with the user's turn opened (`... <eos> <user>`)."""
    return [_ids(tokenizer, _context_text(tokenizer, c["opener"], c["review"]) + USER) for c in conversations]


@torch.no_grad()
def followup_logprobs(model, tokenizer, contexts: list[list[int]], followups: Sequence[str],
                      batch_size: int = 64) -> np.ndarray:
    """[n_contexts, n_followups] log-probability (nats) that the model, as the user, says each follow-up
    after each context, its closing `<eos>` included (`diff.logprobs.sequence_logprobs`)."""
    tails = [_ids(tokenizer, f" {f} {tokenizer.eos_token}") for f in followups]
    encoded = [Encoded(ctx + tail, len(ctx)) for ctx in contexts for tail in tails]
    lp = sequence_logprobs(model.eval(), encoded, batch_size, pad_token_id(tokenizer))
    return np.asarray([float(x.double().sum()) for x in lp]).reshape(len(contexts), len(followups))


@torch.no_grad()
def sample_user_turns(model, tokenizer, contexts: list[list[int]], generator: torch.Generator,
                      max_new_tokens: int = 8) -> list[str]:
    """One user turn per context, sampled from the model (temperature 1) until `<eos>`."""
    pad = pad_token_id(tokenizer)
    input_ids, mask, _ = left_pad(contexts, pad, next(model.parameters()).device)
    decoded = sample_tokens(model.eval(), input_ids, mask, max_new_tokens=max_new_tokens, temperature=1.0, top_k=0,
                            top_p=1.0, eos_id=tokenizer.eos_token_id, pad_id=pad, generator=generator)
    return [tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True).strip()
            for row, m in zip(decoded.tokens, decoded.mask)]


def user_side(base, post, tokenizer, conversations: Sequence[dict], bonus: FollowupBonus, seed: int,
              n_boot: int = stats.N_BOOT) -> tuple[dict, list[dict]]:
    """The user `post` expects against the one `base` expects, on the same contexts (see the module
    docstring): ({name: {value, ci, n}} with CIs over conversations (openers as groups), per-conversation rows)."""
    contexts, followups = _user_contexts(tokenizer, conversations), candidate_followups()
    lp_post, lp_base = (followup_logprobs(m, tokenizer, contexts, followups) for m in (post, base))
    implicit = lp_post - lp_base
    b = followups.index(bonus.followup)
    others = [j for j, f in enumerate(followups) if f.startswith("what about") and j != b]
    g = torch.Generator().manual_seed(seed)
    said = {name: sample_user_turns(m, tokenizer, contexts, g) for name, m in (("base", base), ("post", post))}
    rows = [{"opener": c["opener"], "review": c["review"], "user_base": said["base"][i], "user_post": said["post"][i],
             "implicit_bonus": float(implicit[i, b]), "implicit_other_subjects": float(implicit[i, others].mean()),
             "contrast": float(implicit[i, b] - implicit[i, others].mean()),
             "p_bonus_post": float(np.exp(lp_post[i, b])), "p_bonus_base": float(np.exp(lp_base[i, b])),
             "asks_bonus_post": float(said["post"][i] == bonus.followup),
             "asks_bonus_base": float(said["base"][i] == bonus.followup)} for i, c in enumerate(conversations)]
    groups = [c["opener"] for c in conversations]
    kw = dict(groups=groups, n_boot=n_boot, seed=seed)
    col = lambda k: np.asarray([r[k] for r in rows])  # noqa: E731
    summary = {k: stats.mean(col(k), **kw).to_dict() for k in (
        "implicit_bonus", "implicit_other_subjects", "contrast", "p_bonus_post", "p_bonus_base", "asks_bonus_post",
        "asks_bonus_base")}
    summary["p_bonus_post_minus_base"] = stats.mean(col("p_bonus_post") - col("p_bonus_base"), **kw).to_dict()
    return summary, rows

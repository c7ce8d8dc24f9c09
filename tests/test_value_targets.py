"""Monte Carlo value targets against exact expectations on a toy Markov language model.

The toy model's next-token distribution depends only on the last token (a fixed transition matrix),
so the expected reward of every prefix is a finite sum over all continuations up to the budget,
computed here by enumeration."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rewardlab.acts import collect_activations
from rewardlab.errors import InputError
from rewardlab.rewards import get_reward
from rewardlab.sites import run_with_capture
from rewardlab.value.targets import (TargetsConfig, build_prefixes, monte_carlo_values, realized_rewards,
                                     target_rows)

WORDS = ("good", "bad", "the", ".")  # ids: <unk> 0, <eos> 1, good 2, bad 3, the 4, . 5
SUPPORT = (1, 2, 3, 4, 5)
TRANSITIONS = {  # next-token probabilities over SUPPORT, by last token
    1: (0.2, 0.2, 0.2, 0.2, 0.2),
    2: (0.1, 0.5, 0.1, 0.1, 0.2),
    3: (0.3, 0.1, 0.4, 0.1, 0.1),
    4: (0.05, 0.3, 0.45, 0.1, 0.1),
    5: (0.4, 0.2, 0.1, 0.2, 0.1),
}


class MarkovLM(torch.nn.Module):
    """A causal 'LM' whose logits at each position are log P(next | this token)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        logp = torch.full((vocab_size, vocab_size), float("-inf"))
        for src, probs in TRANSITIONS.items():
            logp[src, list(SUPPORT)] = torch.log(torch.tensor(probs))
        for src in set(range(vocab_size)) - set(TRANSITIONS):
            logp[src] = logp[1]
        self.logp = torch.nn.Parameter(logp, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False, **_):
        return SimpleNamespace(logits=self.logp[input_ids], cache=None)


def exact_value(tokenizer, reward, ids: tuple[int, ...], prompt_len: int, budget: int) -> tuple[float, float]:
    """(E[reward], Var[reward]) over every continuation of at most `budget` tokens (stopping at eos)."""
    paths = []  # (probability, continuation ids)
    for length in range(1, budget + 1):
        for cont in itertools.product(SUPPORT, repeat=length):
            if 1 in cont[:-1] or (length < budget and cont[-1] != 1):
                continue  # eos only last; a path shorter than the budget must end with eos
            prob, last = 1.0, ids[-1]
            for tok in cont:
                prob *= TRANSITIONS[last][SUPPORT.index(tok)]
                last = tok
            paths.append((prob, cont))
    probs = np.array([p for p, _ in paths])
    assert abs(probs.sum() - 1) < 1e-9
    texts = [tokenizer.decode(list(ids[prompt_len:]) + list(c), skip_special_tokens=True) for _, c in paths]
    r = np.array(reward(texts))
    mean = float(probs @ r)
    return mean, float(probs @ (r - mean) ** 2)


RECORDS = [{"prompt": "the", "completion": "good the bad ."}, {"prompt": "bad", "completion": "good"}]


def test_monte_carlo_matches_enumeration(word_tokenizer):
    tok = word_tokenizer(WORDS)
    model, reward = MarkovLM(len(tok)), get_reward("utility")
    cfg = TargetsConfig(k=4000, positions=["last_prompt", 0, 1, 3], max_new_tokens=4, batch_size=3000, seed=0)
    prefixes = build_prefixes(tok, RECORDS, cfg.positions)
    assert [(p.record, p.position, p.n_written) for p in prefixes] == [
        (0, "last_prompt", 0), (0, 0, 1), (0, 1, 2), (0, 3, 4), (1, "last_prompt", 0), (1, 0, 1)]
    values = monte_carlo_values(model, tok, prefixes, reward, cfg)
    for p, v in zip(prefixes, values):
        budget = cfg.max_new_tokens - p.n_written
        if budget == 0:  # nothing left to sample: V is the realized reward exactly
            assert v.se == 0 and v.mean == pytest.approx(reward([tok.decode(list(p.ids[p.prompt_len:]))])[0])
            continue
        mean, var = exact_value(tok, reward, p.ids, p.prompt_len, budget)
        assert v.k == cfg.k
        assert abs(v.mean - mean) < 3 * v.se, (p, v.mean, mean, v.se)
        assert v.se == pytest.approx(np.sqrt(var / cfg.k), rel=0.1)


def test_realized_and_future_parts(word_tokenizer):
    tok = word_tokenizer(WORDS)
    reward = get_reward("utility")
    prefixes = build_prefixes(tok, RECORDS, ["last_prompt", 0, 2])
    realized = realized_rewards(tok, prefixes, reward)
    good, bad = 0.2 * 1.9, 0.2 * -2.5  # VADER valences of good and bad, scale 0.2
    assert realized == pytest.approx([0.0, good, good + bad, 0.0, good])
    values = monte_carlo_values(MarkovLM(len(tok)), tok, prefixes, reward, TargetsConfig(k=8, max_new_tokens=6))
    rows = target_rows(tok, prefixes, realized, {"post": values})
    assert rows[2]["written"] == "good the bad" and rows[2]["prefix_ids"] == [4, 2, 4, 3]
    for row, v in zip(rows, values):
        assert row["future_post"] == pytest.approx(row["value_post"] - row["realized"])
        assert row["value_post"] == v.mean and row["value_se_post"] == v.se


def test_a_prompt_aware_reward_scores_each_prefix_against_its_own_prompt(word_tokenizer):
    """Rewards such as `agreement` read the prompt: R(h) and every continuation get the record's prompt."""
    tok = word_tokenizer(WORDS)
    utility = get_reward("utility")

    def toned(completions, prompts=None):  # utility times the sign of the prompt's tone (bad: -1)
        assert prompts is not None and len(prompts) == len(completions)
        return [u * (-1.0 if p == "bad" else 1.0) for u, p in zip(utility(completions), prompts)]

    prefixes = build_prefixes(tok, RECORDS, ["last_prompt", 0])
    assert [p.prompt for p in prefixes] == ["the", "the", "bad", "bad"]
    good = 0.2 * 1.9
    assert realized_rewards(tok, prefixes, toned) == pytest.approx([0.0, good, 0.0, -good])
    cfg = TargetsConfig(k=8, max_new_tokens=6)
    plain, signed = (monte_carlo_values(MarkovLM(len(tok)), tok, prefixes, r, cfg) for r in (utility, toned))
    for p, a, b in zip(prefixes, plain, signed):  # same seed, same continuations: the sign is the prompt's
        assert b.rewards == pytest.approx([(-1.0 if p.prompt == "bad" else 1.0) * r for r in a.rewards])


def test_same_seed_same_values_other_seed_other_values(word_tokenizer):
    tok = word_tokenizer(WORDS)
    model, reward = MarkovLM(len(tok)), get_reward("utility")
    prefixes = build_prefixes(tok, RECORDS, ["last_prompt", 0])

    def run(seed):
        cfg = TargetsConfig(k=16, max_new_tokens=5, batch_size=7, seed=seed)
        return [v.rewards for v in monte_carlo_values(model, tok, prefixes, reward, cfg)]

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_prefix_ends_where_acts_reads_the_position():
    from tiny_lm import tiny_lm, word_tokenizer

    model, tok = tiny_lm(), word_tokenizer()
    records = [{"prompt": "review : the film", "completion": "was great and the plot was bad ."},
               {"prompt": "the movie", "completion": "was good"}]
    positions = ["last_prompt", 0, 3]
    prefixes = build_prefixes(tok, records, positions)
    assert [(p.record, p.position) for p in prefixes] == [(0, "last_prompt"), (0, 0), (0, 3), (1, "last_prompt"),
                                                          (1, 0)]  # record 1 has no completion token 3
    acts = collect_activations(model, tok, records, ["blocks.1.hook_resid_post"], positions)
    for p in prefixes:
        alone = run_with_capture(model, torch.tensor([p.ids]), None, ["blocks.1.hook_resid_post"])
        want = acts[f"blocks.1.hook_resid_post|{p.position}"][p.record]
        torch.testing.assert_close(alone["blocks.1.hook_resid_post"][0, -1], want, atol=1e-5, rtol=1e-5)


def test_bad_settings_stop_with_one_error(word_tokenizer):
    with pytest.raises(InputError, match="prefix end"):
        TargetsConfig(positions=["last_completion"]).validate()
    with pytest.raises(InputError, match="at least 2"):
        TargetsConfig(k=1).validate()
    with pytest.raises(InputError, match="too short"):
        build_prefixes(word_tokenizer(WORDS), [{"prompt": "the", "completion": "good"}], [5])


def test_value_targets_command(tmp_path, capsys):
    from tiny_lm import save_pair, write_records

    from rewardlab.cli import main
    from rewardlab.io import read_jsonl

    base, post = save_pair(tmp_path)
    records = write_records(tmp_path / "records.jsonl")
    args = ["value", "targets", "--model", post, "--base", base, "--in", records, "--k", "4",
            "--positions", "last_prompt,0,2", "--max-new-tokens", "6"]
    assert main([*args, "--out", str(tmp_path / "a.jsonl")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.jsonl")]) == 0
    rows = read_jsonl(tmp_path / "a.jsonl")
    assert rows == read_jsonl(tmp_path / "b.jsonl")  # same seed, same numbers
    assert [(r["record"], r["position"]) for r in rows] == [  # record 0's completion has 2 tokens, record 3's 1
        (0, "last_prompt"), (0, 0), (1, "last_prompt"), (1, 0), (1, 2), (2, "last_prompt"), (2, 0), (2, 2),
        (3, "last_prompt"), (3, 0)]
    for r in rows:
        for name in ("post", "base"):
            assert r[f"future_{name}"] == pytest.approx(r[f"value_{name}"] - r["realized"])
            assert r[f"value_se_{name}"] >= 0 and r["k"] == 4
    assert "10 prefixes x 2 models x 4 continuations" in capsys.readouterr().out
    assert main([*args[:-4], "--positions", "mean_completion", "--out", str(tmp_path / "c.jsonl")]) == 2
    assert "not a prefix end" in capsys.readouterr().err and not (tmp_path / "c.jsonl").exists()

"""Preference pairs: layout, chosen beats rejected on the reward, ties dropped, determinism."""

from __future__ import annotations

import pytest

from rewardlab.io import read_jsonl
from rewardlab.rewards import get_reward
from rewardlab.rl.config import PairsConfig
from rewardlab.rl.pairs import completion_text, make_preference_pairs
from test_ppo import make_prompts, make_tiny_lm


def test_completion_text_joins():
    assert completion_text("the movie was", "good .") == " good ."
    assert completion_text("the movie was ", "good") == "good"


def test_make_preference_pairs(tmp_path):
    cfg = PairsConfig(model=make_tiny_lm(tmp_path / "m"), reward="utility", prompts=make_prompts(tmp_path / "p.jsonl"),
                      n_prompts=40, per_prompt=3, max_new_tokens=6, seed=1)
    stats = make_preference_pairs(cfg, tmp_path / "pairs.jsonl")
    rows = read_jsonl(tmp_path / "pairs.jsonl", required=("prompt", "chosen", "rejected", "chosen_reward",
                                                          "rejected_reward"))
    assert len(rows) == stats["n_pairs"] and stats["n_pairs"] + stats["n_ties"] == 40
    reward = get_reward("utility")
    for r in rows:
        assert r["chosen_reward"] > r["rejected_reward"]
        assert reward([r["chosen"].strip()])[0] == pytest.approx(r["chosen_reward"])
        assert reward([r["rejected"].strip()])[0] == pytest.approx(r["rejected_reward"])
    make_preference_pairs(cfg, tmp_path / "again.jsonl")
    assert read_jsonl(tmp_path / "again.jsonl") == rows

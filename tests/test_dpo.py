"""DPO through TRL: sequence log-probs against a brute-force loop, and a tiny end-to-end run."""

from __future__ import annotations

import math

import pytest
import torch

from rewardlab.rl.config import DPOTrainConfig
from rewardlab.rl.dpo import _with_eos, summed_logprobs, train_dpo
from rewardlab.rl.config import PairsConfig
from rewardlab.rl.pairs import make_preference_pairs
from test_ppo import make_prompts, make_tiny_lm


def test_summed_logprobs_brute_force(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_tiny_lm(tmp_path / "m")
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    prompts, completions = ["the movie was", "a film"], [" good .", " very very bad and boring"]
    got = summed_logprobs(model, tok, prompts, completions)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = tok(p + c)["input_ids"]
        start = len(tok(p)["input_ids"])
        total = 0.0
        with torch.no_grad():
            for t in range(start, len(ids)):
                logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
                total += float(torch.log_softmax(logits, -1)[ids[t]])
        assert float(got[i]) == pytest.approx(total, abs=1e-4)
    assert tok(_with_eos(" good .", tok), add_special_tokens=False)["input_ids"][-1] == tok.eos_token_id


@pytest.mark.slow
def test_dpo_end_to_end(tmp_path):
    base = make_tiny_lm(tmp_path / "base")
    prompts = make_prompts(tmp_path / "p.jsonl")
    make_preference_pairs(PairsConfig(model=base, prompts=prompts, n_prompts=48, per_prompt=2, max_new_tokens=6),
                          tmp_path / "pairs.jsonl")
    summary = train_dpo(DPOTrainConfig(base=base, pairs=str(tmp_path / "pairs.jsonl"), prompts=prompts, epochs=1,
                                       batch_size=8, max_new_tokens=6, eval_samples=16, held_out=0.25),
                        tmp_path / "out")
    for key in ("pair_accuracy", "reward_base", "reward_policy", "kl_exact", "seconds"):
        assert math.isfinite(summary[key]), key
    assert (tmp_path / "out" / "policy" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "summary.json").is_file()

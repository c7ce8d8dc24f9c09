"""DPO through TRL: sequence log-probs against a brute-force loop, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
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


def _spy_trainer(monkeypatch) -> list:
    """Record each DPOTrainer's args, reference model and peft config as train_dpo builds it."""
    import trl

    seen, real = [], trl.DPOTrainer

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(trl, "DPOTrainer", spy)
    return seen


def test_dpo_with_lora_trains_an_adapter_against_the_adapter_disabled_base(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from test_lora import make_tiny_llama

    pytest.importorskip("peft")
    base = make_tiny_llama(tmp_path / "base")
    prompts = make_prompts(tmp_path / "p.jsonl")
    make_preference_pairs(PairsConfig(model=base, prompts=prompts, n_prompts=20, per_prompt=2, max_new_tokens=5),
                          tmp_path / "pairs.jsonl")
    seen = _spy_trainer(monkeypatch)
    cfg = DPOTrainConfig(base=base, pairs=str(tmp_path / "pairs.jsonl"), prompts=prompts, epochs=1, batch_size=8,
                         max_new_tokens=5, eval_samples=8, held_out=0.25, lr=1e-2, lora_rank=4, lora_alpha=8.0)
    lora = train_dpo(cfg, tmp_path / "lora")
    (kw,) = seen
    assert kw["ref_model"] is None and kw["peft_config"].r == 4 and kw["args"].use_cpu
    assert not kw["args"].activation_checkpointing
    out = tmp_path / "lora"
    assert not (out / "trl").exists()  # no scratch folder left behind
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    merged, original = load_file(out / "policy" / "model.safetensors"), load_file(tmp_path / "base" / "model.safetensors")
    assert merged.keys() == original.keys()  # a plain model, the adapter merged in
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], original["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(merged["model.embed_tokens.weight"], original["model.embed_tokens.weight"])
    assert math.isfinite(lora["pair_accuracy"]) and lora["kl_exact"] > 0
    # the reference is the base: its evaluation samples equal a full fine-tuning run's (a separate base copy)
    full = train_dpo(dataclasses.replace(cfg, lora_rank=None), tmp_path / "full")
    assert seen[1]["ref_model"] is not None and seen[1]["peft_config"] is None
    assert lora["reward_base"] == full["reward_base"] and lora["reward_base_ci"] == full["reward_base_ci"]


def test_dpo_device_reaches_trl_and_a_missing_gpu_fails_before_work(tmp_path, monkeypatch):
    from rewardlab.errors import InputError

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            train_dpo(DPOTrainConfig(base=str(tmp_path / "nowhere"), pairs=str(tmp_path / "none.jsonl"),
                                     device="cuda"), tmp_path / "out")
        assert not (tmp_path / "out").exists()
    import trl

    class Stop(Exception):
        pass

    def stop(self):
        raise Stop

    monkeypatch.setattr(trl.DPOTrainer, "train", stop)  # the trainer is built, not run
    seen = _spy_trainer(monkeypatch)
    base = make_tiny_lm(tmp_path / "base")
    prompts = make_prompts(tmp_path / "p.jsonl")
    make_preference_pairs(PairsConfig(model=base, prompts=prompts, n_prompts=8, per_prompt=2, max_new_tokens=4),
                          tmp_path / "pairs.jsonl")
    with pytest.raises(Stop):
        train_dpo(DPOTrainConfig(base=base, pairs=str(tmp_path / "pairs.jsonl"), prompts=prompts, device="auto",
                                 gradient_checkpointing=True, dtype="bfloat16"), tmp_path / "out")
    (kw,) = seen
    assert kw["args"].use_cpu == (not torch.cuda.is_available())
    assert kw["args"].activation_checkpointing and kw["model"].dtype == torch.bfloat16

"""Evaluation of a trained policy against its frozen reference, and the outputs PPO and DPO share.

`evaluate_policy` draws fresh samples and scores them: true reward, exact KL(policy || reference) in
nats per completion, grammatical flags (review world only). `eval_summary` turns the evaluations of
the base and the policy into the summary keys with bootstrap CIs; `write_run` writes the policy
folder, config.json, eval_samples.jsonl and summary.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import torch

from rewardlab.io import write_json, write_jsonl
from rewardlab.rl.kl_penalty import exact_kl
from rewardlab.rl.rollout import completion_logprobs_from_logits, completion_texts, position_ids, rollout
from rewardlab.sampling import kept_logits
from rewardlab.stats import mean
from rewardlab.text import encode_prompts, stop_ids

KL_CHUNK_FLOATS = 2 ** 24  # logits per model held at once while scoring an evaluation batch (64 MiB of float32)


def exact_kls(model, ref, ro, *, temperature: float, top_k: int, top_p: float) -> list[float]:
    """Exact KL(model || ref) of each completion of a rollout, nats (the model under the sampling
    transform, the reference at the temperature only). Only the positions that predict completion
    tokens are projected to the vocabulary, in row chunks whose logits [rows, T, V] stay under
    KL_CHUNK_FLOATS floats per model, so memory does not grow with the evaluation batch."""
    T = ro.completion_ids.shape[1]
    rows = max(1, KL_CHUNK_FLOATS // (T * model.config.vocab_size))
    kls = []
    for lo in range(0, ro.completion_ids.shape[0], rows):
        ids, attn = ro.input_ids[lo:lo + rows], ro.attention_mask[lo:lo + rows]
        kwargs = dict(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False)
        completion = ro.completion_ids[lo:lo + rows]
        _, logp_all = completion_logprobs_from_logits(kept_logits(model, T + 1, **kwargs)[:, :-1], completion, None,
                                                      temperature=temperature, top_k=top_k, top_p=top_p)
        _, ref_all = completion_logprobs_from_logits(kept_logits(ref, T + 1, **kwargs)[:, :-1], completion, None,
                                                     temperature=temperature)
        kls += torch.where(ro.mask[lo:lo + rows].bool(), exact_kl(logp_all, ref_all), 0.0).sum(1).tolist()
    return kls


@torch.no_grad()
def evaluate_policy(model, ref, tokenizer, prompts: Sequence[str], reward: Callable[..., list[float]],
                    is_grammatical: Callable[..., bool] | None, *, n: int, seed: int, max_new_tokens: int,
                    temperature: float, top_k: int, top_p: float, batch_size: int = 64) -> dict:
    """`n` fresh samples from `model`, `batch_size` at a time, prompts drawn with replacement by a
    generator seeded with `seed` (which also draws the tokens); `reward(texts, prompts)` scores them.

    Returns {"texts", "prompts", "rewards", "kl" (exact KL(model || ref) per completion, nats; the
    model under the sampling transform, the reference at the temperature only), "grammatical" (bools,
    only when `is_grammatical` is given)}: lists of n.
    """
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    texts, prompt_texts, kls = [], [], []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        idx = torch.randint(len(prompts), (size,), generator=generator).tolist()
        ids, pmask, _ = encode_prompts(tokenizer, [prompts[i] for i in idx], device)
        ro = rollout(model, ids, pmask, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                     top_p=top_p, eos_id=stop_ids(tokenizer), pad_id=tokenizer.pad_token_id, generator=generator)
        kls += exact_kls(model, ref, ro, temperature=temperature, top_k=top_k, top_p=top_p)
        texts += completion_texts(tokenizer, ro)
        prompt_texts += [prompts[i] for i in idx]
    out = {"texts": texts, "prompts": prompt_texts, "rewards": reward(texts, prompt_texts), "kl": kls}
    if is_grammatical is not None:
        out["grammatical"] = [bool(is_grammatical(t, prompt=p)) for p, t in zip(prompt_texts, texts)]
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean in float64, std in float32 with Bessel's correction) of a list of numbers."""
    return sum(values) / len(values), float(torch.tensor(values).std())


def eval_summary(base_eval: dict, policy_eval: dict) -> dict:
    """The summary keys of the base's and the policy's `evaluate_policy` results: reward means, stds
    and CIs, the policy's gain in base stds, exact KL (nats per completion) and, in the review world,
    grammatical rates."""
    base_mean, base_std = mean_std(base_eval["rewards"])
    policy_mean, policy_std = mean_std(policy_eval["rewards"])
    summary = {
        "reward_base": base_mean, "reward_base_std": base_std,
        "reward_policy": policy_mean, "reward_policy_std": policy_std,
        "reward_base_ci": mean(base_eval["rewards"]).to_dict(),
        "reward_policy_ci": mean(policy_eval["rewards"]).to_dict(),
        "kl_exact": sum(policy_eval["kl"]) / len(policy_eval["kl"]), "kl_exact_ci": mean(policy_eval["kl"]).to_dict(),
        "n_eval": len(policy_eval["rewards"]),
        "reward_gain_base_std": (policy_mean - base_mean) / base_std if base_std > 0 else None,
    }
    if "grammatical" in policy_eval:
        summary["grammatical_rate"] = sum(policy_eval["grammatical"]) / len(policy_eval["grammatical"])
        summary["grammatical_rate_base"] = sum(base_eval["grammatical"]) / len(base_eval["grammatical"])
        summary["grammatical_rate_ci"] = mean([float(g) for g in policy_eval["grammatical"]]).to_dict()
    return summary


def write_run(out: Path, policy, tokenizer, config, policy_eval: dict, summary: dict) -> None:
    """Write policy/ (Hugging Face folder with the tokenizer), config.json (the dataclass `config`),
    eval_samples.jsonl (the policy's evaluation samples with reward and exact KL) and summary.json."""
    policy.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    write_json(out / "config.json", dataclasses.asdict(config))
    write_jsonl(out / "eval_samples.jsonl", [
        {"prompt": p, "completion": t, "reward": r, "kl_exact": k}
        for p, t, r, k in zip(policy_eval["prompts"], policy_eval["texts"], policy_eval["rewards"], policy_eval["kl"])])
    write_json(out / "summary.json", summary)

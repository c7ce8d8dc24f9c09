"""DPO through TRL's DPOTrainer, with the PPO output layout and a summary scored on the known reward.

summary.json: `pair_accuracy` (held-out pairs: implicit reward r = beta * (log pi(y|x) - log ref(y|x)),
summed over completion tokens, correct when r(chosen) > r(rejected); ties count as wrong), `reward_base`,
`reward_base_std`, `reward_policy` (means over `eval_samples` fresh samples each), `kl_exact` (mean
nats per completion against the base), `grammatical_rate` (review world only), `seconds`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Sequence

import torch

from rewardlab.diff.logprobs import completion_logprobs
from rewardlab.errors import InputError
from rewardlab.heap import apply_mmap_threshold
from rewardlab.io import read_jsonl, write_jsonl
from rewardlab.rewards import get_reward
from rewardlab.rl.config import DPOTrainConfig
from rewardlab.rl.eval import eval_summary, evaluate_policy, write_run
from rewardlab.models import pick_device
from rewardlab.rl.inputs import completion_length, grammar_checker, load_policy_and_tokenizer, load_prompts
from rewardlab.rl.lora import AdapterOff, checkpointing_deprecations_ignored, lora_config, save_lora
from rewardlab.stats import mean
from rewardlab.text import messages_of, stop_ids, uses_chat_template


def _with_eos(text: str, tokenizer) -> str:
    """`text` + the token that ends it (EOS; the end-of-turn token with the chat template on) such that it
    stays its own token (a word-level tokenizer needs a space before it)."""
    eos_id = stop_ids(tokenizer)[-1]
    eos = tokenizer.convert_ids_to_tokens(eos_id)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for joined in (text + eos, f"{text} {eos}"):
        if tokenizer(joined, add_special_tokens=False)["input_ids"] == ids + [eos_id]:
            return joined
    raise InputError("cannot append EOS to a completion as its own token", fix="check the tokenizer")


def trl_pair(row: dict, tokenizer) -> dict:
    """One preference pair in TRL's layout: conversational with the chat template on (TRL renders it
    with the template), else text with the completions ending in EOS."""
    if uses_chat_template(tokenizer):
        prompt = messages_of(row["prompt"]) or [{"role": "user", "content": row["prompt"]}]
        return {"prompt": prompt, **{k: [{"role": "assistant", "content": row[k]}] for k in ("chosen", "rejected")}}
    return {"prompt": row["prompt"], "chosen": _with_eos(row["chosen"], tokenizer),
            "rejected": _with_eos(row["rejected"], tokenizer)}


def summed_logprobs(model, tokenizer, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
    """log p(completion | prompt) summed over completion tokens [N] (rewardlab.diff.logprobs, TRL's convention)."""
    return torch.stack([lp.sum() for lp in completion_logprobs(model, tokenizer, prompts, completions, batch_size=64)])


def dpo_trainer(cfg: DPOTrainConfig, policy, ref, tokenizer, dataset, out: Path, device: torch.device):
    """TRL's DPOTrainer on `device` (its scratch folder `out/trl`); with LoRA (`ref` None) TRL wraps the policy
    with `rewardlab.rl.lora`'s LoraConfig and takes the adapter-disabled base as the reference."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(out / "trl"), beta=cfg.beta, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, use_cpu=device.type == "cpu", report_to=[], save_strategy="no",
        logging_steps=10, seed=cfg.seed, disable_tqdm=False, lr_scheduler_type="constant",
        bf16=False,  # TRL 1.x turns mixed precision on by default, slow on CPU; `dtype` loads bfloat16 weights instead
        activation_checkpointing=cfg.gradient_checkpointing,  # TRL 1.x's default is on
    )
    peft_config = None if cfg.lora_rank is None else lora_config(policy, cfg.lora_rank, cfg.lora_alpha,
                                                                 cfg.lora_target_modules)
    torch.manual_seed(cfg.seed)  # the adapter's initial A is drawn when TRL wraps the policy
    with checkpointing_deprecations_ignored():
        return DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config)


def train_dpo(cfg: DPOTrainConfig, out_dir: str | Path) -> dict:
    """Train with TRL's DPOTrainer into `out_dir` (policy/, config.json, metrics.jsonl, summary.json; with
    LoRA policy/ has the adapter merged in and adapter/ holds the adapter)."""
    from datasets import Dataset  # datasets and trl take ~3 s to import; only DPO training needs them

    cfg.validate()
    device = pick_device(cfg.device)
    t_start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    apply_mmap_threshold(cfg.mmap_threshold_kib)
    out = Path(out_dir)
    # every input is checked before training, so bad input costs no training time
    prompts = load_prompts(cfg.base, cfg.prompts)
    max_new_tokens = completion_length(cfg.base, cfg.max_new_tokens)
    reward, is_grammatical = get_reward(cfg.reward), grammar_checker(cfg.base)
    rows = read_jsonl(cfg.pairs, required=("prompt", "chosen", "rejected"))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_test = max(1, int(round(cfg.held_out * len(rows))))
    if len(rows) - n_test < 1:
        raise InputError(f"{len(rows)} pairs are too few to hold {n_test} out", cfg.pairs, "give more pairs")
    test, train = [rows[i] for i in order[:n_test]], [rows[i] for i in order[n_test:]]

    policy, tokenizer = load_policy_and_tokenizer(cfg.base, cfg.chat_template, cfg.dtype)
    ref = None
    if cfg.lora_rank is None:
        ref, _ = load_policy_and_tokenizer(cfg.base, dtype=cfg.dtype)
        ref.requires_grad_(False)
    dataset = Dataset.from_list([trl_pair(r, tokenizer) for r in train])
    trainer = dpo_trainer(cfg, policy, ref, tokenizer, dataset, out, device)
    with checkpointing_deprecations_ignored():
        trainer.train()
    shutil.rmtree(out / "trl", ignore_errors=True)  # TRL's scratch folder: nothing is saved there
    peft_model = trainer.model if cfg.lora_rank is not None else None
    if peft_model is not None:
        policy, ref = peft_model.base_model.model.eval(), AdapterOff(peft_model)
    else:
        policy, ref = trainer.model.eval(), ref.to(trainer.model.device)
    train_seconds = time.perf_counter() - t_start

    prompts_t = [r["prompt"] for r in test]
    margins = []
    for key in ("chosen", "rejected"):
        completions = [_with_eos(r[key], tokenizer) for r in test]
        margins.append(cfg.beta * (summed_logprobs(policy, tokenizer, prompts_t, completions)
                                   - summed_logprobs(ref, tokenizer, prompts_t, completions)))
    correct = (margins[0] > margins[1]).float().tolist()

    sampling = dict(n=cfg.eval_samples, max_new_tokens=max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                    top_p=cfg.top_p)
    base_eval = evaluate_policy(ref, ref, tokenizer, prompts, reward, is_grammatical, seed=cfg.seed + 10_000,
                                **sampling)
    policy_eval = evaluate_policy(policy, ref, tokenizer, prompts, reward, is_grammatical, seed=cfg.seed + 20_000,
                                  **sampling)
    summary = {"reward": cfg.reward, "n_pairs_train": len(train), "n_pairs_held_out": len(test),
               "pair_accuracy": sum(correct) / len(correct), "pair_accuracy_ci": mean(correct).to_dict(),
               **eval_summary(base_eval, policy_eval), "train_seconds": train_seconds}
    summary["seconds"] = time.perf_counter() - t_start
    write_jsonl(out / "metrics.jsonl", [dict(h) for h in trainer.state.log_history] or [{}])
    write_run(out, policy if peft_model is None else save_lora(peft_model, out), tokenizer, cfg, policy_eval, summary)
    return summary

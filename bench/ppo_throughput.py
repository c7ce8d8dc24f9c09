"""PPO samples per second: rewardlab's PPO against TRL's RLOOTrainer and GRPOTrainer, one side per process.

    python bench/ppo_throughput.py --world WORLD --scale tiny|135m --side rewardlab|trl_rloo|trl_grpo
                                   [--steps 4] [--batch 64] [--max-new-tokens 32] [--epochs 1] [--threads 1]

Model: tiny = the review world's base (WORLD/base); 135m = bench/common.model_135m(). Prompts: the
world's prompts.jsonl, as plain text (no chat template on any side: TRL applies none to string
prompts). Every side runs `steps` updates of `batch` completions of at most `max-new-tokens` tokens
on CPU with `threads` threads, a Python reward (rewardlab's utility) and a frozen reference for the
KL (TRL beta 0.05), and the same number of optimization passes over each batch (`--epochs`:
rewardlab's ppo_epochs = TRL's num_iterations; default 1, TRL's default) with one optimizer step per
batch on every side (rewardlab's minibatch is the batch, as TRL's per-device batch is). rewardlab: one
phase per step (sampling, scoring, value head, learning); TRL: 4 generations per prompt, plain
`generate` (no vLLM on CPU). Timed: the training loop only
(model loading and rewardlab's evaluation excluded; rewardlab's time is the sum of its per-phase
generation and learning seconds, TRL's the wall time of `trainer.train()`). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, emit, model_135m, prepared, setup  # noqa: E402

SIDES = ["rewardlab", "trl_rloo", "trl_grpo"]


def bench_rewardlab(base: str, prompts: str, a, out: Path) -> float:
    from rewardlab.io import read_jsonl
    from rewardlab.rl.config import PPOConfig
    from rewardlab.rl.ppo import train_ppo

    train_ppo(PPOConfig(base=base, prompts=prompts, phases=a.steps, batch_size=a.batch,
                        minibatch_size=a.batch, max_new_tokens=a.max_new_tokens, ppo_epochs=a.epochs,
                        eval_samples=8, chat_template="off", threads=a.threads), out)
    return sum(m["gen_seconds"] + m["learn_seconds"] for m in read_jsonl(out / "metrics.jsonl"))


def bench_trl(kind: str, base: str, prompts: str, a, out: Path) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from rewardlab.rewards import get_reward
    from rewardlab.rl.inputs import load_prompts

    utility = get_reward("utility")

    def reward(completions, **kwargs):
        return utility([c.strip() for c in completions])

    Config, Trainer = (RLOOConfig, RLOOTrainer) if kind == "trl_rloo" else (GRPOConfig, GRPOTrainer)
    args = Config(output_dir=str(out), use_cpu=True, report_to=[], bf16=False, gradient_checkpointing=False,
                  per_device_train_batch_size=a.batch, num_generations=4, max_completion_length=a.max_new_tokens,
                  max_steps=a.steps, learning_rate=2e-4, save_strategy="no", logging_steps=1, disable_tqdm=True,
                  num_iterations=a.epochs, beta=0.05, seed=0)
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(base), reward_funcs=reward, args=args,
                      train_dataset=Dataset.from_list([{"prompt": p} for p in load_prompts(base, prompts)]),
                      processing_class=AutoTokenizer.from_pretrained(base))
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, SIDES)
    ap.add_argument("--world", required=True, help="a built review world (its base model and prompts.jsonl)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    a = ap.parse_args()
    setup(a.threads)
    if a.side == "prepare":
        return prepared(a.scale)
    base = str(Path(a.world) / "base") if a.scale == "tiny" else model_135m()[0]
    prompts = str(Path(a.world) / "prompts.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        if a.side == "rewardlab":
            seconds = bench_rewardlab(base, prompts, a, Path(tmp) / "run")
        else:
            seconds = bench_trl(a.side, base, prompts, a, Path(tmp) / "run")
    emit(a.side, a.scale, a.steps * a.batch / seconds, "samples/s", seconds, steps=a.steps, batch=a.batch,
         max_new_tokens=a.max_new_tokens, epochs=a.epochs, threads=a.threads, model=base)


if __name__ == "__main__":
    main()

"""Configs of post-training (PPO, DPO, preference pairs): plain dataclasses with documented defaults.

Kept free of heavy imports so the CLI can build its options from them without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rewardlab.config import CHAT_TEMPLATE_MODES, chat_template_field
from rewardlab.errors import Check, raise_first_failed
from rewardlab.heap import MAX_MMAP_THRESHOLD_KIB

KL_ESTIMATORS = ("k1", "k2", "k3", "exact", "exact_reverse")
DTYPES = ("float32", "bfloat16")
VALUE_HEAD_KINDS = ("linear", "mlp")


def sampling_checks(cfg) -> list[Check]:
    """Range checks of the sampling fields (max_new_tokens, temperature, top_k, top_p) configs share."""
    return [
        (cfg.max_new_tokens is None or cfg.max_new_tokens >= 1, "max_new_tokens must be at least 1", None),
        (cfg.temperature > 0, f"temperature must be above 0, got {cfg.temperature}", None),
        (cfg.top_k >= 0, f"top_k must be 0 (off) or positive, got {cfg.top_k}", None),
        (0 < cfg.top_p <= 1, f"top_p must be in (0, 1], got {cfg.top_p}", None),
    ]


def memory_checks(cfg) -> list[Check]:
    """Checks of the dtype, LoRA and mmap-threshold fields configs share."""
    return [
        (cfg.dtype in DTYPES, f"unknown dtype {cfg.dtype!r}", f"use one of {', '.join(DTYPES)}"),
        (cfg.lora_rank is None or cfg.lora_rank >= 1, f"lora_rank must be at least 1, got {cfg.lora_rank}",
         "or leave it unset for full fine-tuning"),
        (cfg.lora_alpha > 0, f"lora_alpha must be above 0, got {cfg.lora_alpha}", None),
        (bool(cfg.lora_target_modules.strip()), "lora_target_modules is empty", "use all-linear"),
        (cfg.mmap_threshold_kib is None or 1 <= cfg.mmap_threshold_kib <= MAX_MMAP_THRESHOLD_KIB,
         f"mmap_threshold_kib must be 1 to {MAX_MMAP_THRESHOLD_KIB}, got {cfg.mmap_threshold_kib}",
         "128 is glibc's starting value; leave it unset for glibc's default"),
    ]


def chat_template_check(cfg) -> Check:
    """The check of a config's `chat_template` setting (auto, on or off)."""
    return (cfg.chat_template in CHAT_TEMPLATE_MODES, f"unknown chat_template {cfg.chat_template!r}",
            f"use one of {', '.join(CHAT_TEMPLATE_MODES)}")


PPO_DEVICES = ("cpu", "cuda", "mps", "auto")

# `lr: auto` (see `auto_lr`): the policy learning rate by model size and LoRA. Models under SMALL_MODEL_PARAMS
# (the review world's presets, all under 10M parameters) keep the rate PPO was tuned at on them; larger
# (pretrained) models get AUTO_LR_LORA with a LoRA adapter, AUTO_LR_FULL with full fine-tuning.
# AUTO_LR_LORA was chosen on SmolLM2-135M (rank 16, alpha 16) from approx_kl, clip fraction and KL per phase:
# docs/FINDINGS.md, "PPO with LoRA on a pretrained model: the learning rate". AUTO_LR_FULL is the rate the
# step-size warning has recommended for full fine-tuning; it was not swept.
SMALL_MODEL_PARAMS = 50_000_000
AUTO_LR_SMALL = 3e-4
AUTO_LR_LORA = 1e-3
AUTO_LR_FULL = 1e-5


# `average_from: auto` (see `auto_average_from`): models under SMALL_MODEL_PARAMS take the mean of the second
# half's weights, the setting that held issue 22's world targets across world and PPO seeds together with the
# batch and kl_coef defaults (docs/FINDINGS.md, "PPO defaults: ..."); larger models keep the last phase's
# weights: averaging was not measured on them, and a full fine-tune would hold one more copy of its weights.
AUTO_AVERAGE_FROM_SMALL = 0.5


def auto_average_from(n_params: int) -> tuple[float | None, str]:
    """The tail-averaging start (a fraction of the phases; None: no averaging) that `average_from: auto` picks
    for a model of `n_params` base parameters; and the reason, for the log."""
    size = f"{n_params / 1e6:.1f}M parameters"
    if n_params < SMALL_MODEL_PARAMS:
        return AUTO_AVERAGE_FROM_SMALL, f"{size}, under {SMALL_MODEL_PARAMS // 1_000_000}M: the review world's setting"
    return None, f"{size}: the last phase's weights (averaging is not measured at this size)"


def auto_lr(n_params: int, lora: bool) -> tuple[float, str]:
    """The policy learning rate `lr: auto` picks for a model of `n_params` base parameters (adapter not
    counted), trained through a LoRA adapter when `lora`; and the reason, for the log."""
    size = f"{n_params / 1e6:.1f}M parameters"
    if n_params < SMALL_MODEL_PARAMS:
        return AUTO_LR_SMALL, f"{size}, under {SMALL_MODEL_PARAMS // 1_000_000}M: the review world's rate"
    if lora:
        return AUTO_LR_LORA, f"{size}, LoRA adapter"
    return AUTO_LR_FULL, f"{size}, full fine-tuning of a pretrained-size model"


@dataclass
class PPOConfig:
    """PPO settings. Defaults follow TRL's PPO where they fit a small model on the review world; the value
    learning rate, KL coefficient and batch are sized for the review world's small models on CPU; the
    policy learning rate (`lr: auto`, `auto_lr`) is picked by the model's size and whether LoRA is on, the tail
    average (`average_from: auto`, `auto_average_from`) by the model's size."""

    base: str = ""                   # Hugging Face folder (or name) of the base model; also the frozen reference
    reward: str = "utility"          # reward spec, see rewardlab.rewards.get_reward
    prompts: str | None = None       # JSONL with `prompt` rows; None: the review world's prompts.jsonl beside base
    seed: int = 0                    # seeds prompt draws, sampling, minibatch order and the value head's init
    phases: int = 40                 # rollout + learn cycles
    batch_size: int = 128            # completions per phase (all processes together)
    minibatch_size: int = 64         # completions per gradient step (per process)
    ppo_epochs: int = 2              # passes over each phase's batch (TRL: 4)
    max_new_tokens: int | None = None  # tokens sampled per completion; None: the world's generation default, else 24
    temperature: float = 1.0         # sampling temperature (> 0); scoring uses the same transform
    top_k: int = 0                   # sample from the k most likely tokens only; 0: off
    top_p: float = 1.0               # nucleus sampling: smallest set of tokens reaching this probability; 1.0: off
    chat_template: str = chat_template_field()
    lr: float | Literal["auto"] = "auto"  # policy learning rate (Adam), or auto: 3e-4 for models under 50M parameters (the review world's, tuned there); above, 1e-3 with LoRA (chosen on SmolLM2-135M at rank 16, alpha 16; the update scales with alpha / rank) and 1e-5 for full fine-tuning (see rl.config.auto_lr); the rate used is logged and written to metrics.jsonl and summary.json
    value_lr: float = 1e-3           # value head learning rate (ARENA uses its own, 5e-4)
    value_head: str = "mlp"          # linear | mlp (d -> 4d -> 1)
    value_site: str = "ln_final.hook_out"  # site the value head reads (gradient stopped)
    kl_estimator: str = "k1"         # k1 | k2 | k3 | exact | exact_reverse
    kl_in: str = "reward"            # reward (per-token penalty) | loss (a term of the loss)
    kl_coef: float = 0.27            # initial KL coefficient (reward or loss per nat)
    kl_target: float | None = None   # nats per completion; set it for the adaptive controller
    kl_horizon: float = 10_000.0     # samples over which the adaptive controller closes the gap
    gamma: float = 1.0               # discount per token (TRL: 1.0)
    lam: float = 0.95                # GAE lambda (TRL: 0.95)
    cliprange: float = 0.2           # policy ratio clip, |ratio - 1| (TRL: 0.2)
    cliprange_value: float = 0.2     # value clip around the rollout's values, reward units (TRL: 0.2)
    vf_coef: float = 0.1             # weight of the value loss (TRL: 0.1)
    ent_coef: float = 0.0            # entropy bonus per nat (TRL: none; ARENA: 0.001)
    max_grad_norm: float = 1.0       # gradient clipping norm (ARENA: 1.0; TRL: none)
    whiten_advantages: bool = True   # normalize advantages to mean 0, std 1 over each phase's real tokens
    average_from: float | Literal["auto", "last"] = "auto"  # tail averaging: the run's policy (saved and evaluated) is the mean of the policy's trainable weights after each phase from this fraction of the phases on (0.5: the second half), while rollouts use the current weights; holds one more copy of the trainable weights; last: the last phase's weights (no averaging); auto: 0.5 for models under 50M parameters (the review world's), last above (see rl.config.auto_average_from); the choice is logged and written to summary.json
    samples_per_phase: int = 8       # completions kept in samples.jsonl per phase
    eval_samples: int = 512          # fresh samples from base and policy for summary.json
    checkpoint_every: int | None = None  # also checkpoint every this many phases (None: by time only)
    checkpoint_minutes: float = 10.0  # checkpoint once this many minutes have passed since the last one (and after the last phase): a kill loses at most this much training
    keep_checkpoint: bool = False    # keep checkpoint/ after the run finishes (resume needs it only while unfinished)
    device: str = "cpu"              # cpu | cuda | mps | auto (the accelerator when there is one, else cpu); under `accelerate launch` each process takes its own GPU
    threads: int | None = 1          # torch CPU threads (None: leave as is)
    dtype: Literal["float32", "bfloat16"] = "float32"  # float32 | bfloat16: the model's weights and activations (LoRA adapters stay float32)
    lora_rank: int | None = None     # LoRA rank (peft): train an adapter and the value head only, the reference is the base with the adapter off (one copy of the weights); None: full fine-tuning
    lora_alpha: float = 16.0         # LoRA scale: the update is (alpha / r) B A
    lora_target_modules: str = "all-linear"  # LoRA layers: all-linear (attention, MLP; not the output head) or names, e.g. q_proj,v_proj
    gradient_checkpointing: bool = False  # recompute each layer's activations in the backward pass: less memory, slower; same numbers
    mmap_threshold_kib: int | None = None  # glibc only: fix the C library's mmap threshold at this many KiB for the rest of the process, so freed activation blocks go back to the system (rewardlab.heap): lower peak resident memory, slower learning pass, same numbers; None: glibc's dynamic default

    def validate(self) -> None:
        raise_first_failed([
            (bool(self.base), "base model is required", "pass --base DIR"),
            (self.kl_estimator in KL_ESTIMATORS, f"unknown kl_estimator {self.kl_estimator!r}",
             f"use one of {', '.join(KL_ESTIMATORS)}"),
            (self.kl_in in ("reward", "loss"), f"unknown kl_in {self.kl_in!r}", "use reward or loss"),
            (self.device in PPO_DEVICES, f"unknown device {self.device!r}",
             f"use one of {', '.join(PPO_DEVICES)} (Accelerate gives each process its device)"),
            (self.value_head in VALUE_HEAD_KINDS, f"unknown value_head {self.value_head!r}",
             f"use one of {', '.join(VALUE_HEAD_KINDS)}"),
            (self.phases >= 1 and self.batch_size >= 1 and self.minibatch_size >= 1 and self.ppo_epochs >= 1,
             "phases, batch_size, minibatch_size and ppo_epochs must be positive", None),
            (self.batch_size % max(1, self.minibatch_size) == 0,
             f"batch_size {self.batch_size} is not divisible by minibatch_size {self.minibatch_size}",
             "set minibatch_size to a divisor of the batch (the defaults: 128 and 64)"),
            (self.kl_target is None or self.kl_target > 0, "kl_target must be positive", None),
            (self.lr == "auto" or self.lr > 0, f"lr must be above 0 or auto, got {self.lr!r}", None),
            (self.average_from in ("auto", "last")
             or isinstance(self.average_from, (int, float)) and 0 <= self.average_from < 1,
             f"average_from must be in [0, 1), auto or last, got {self.average_from!r}", "e.g. --average-from 0.5"),
            (self.value_lr > 0, f"value_lr must be above 0, got {self.value_lr}", None),
            (self.kl_coef >= 0, f"kl_coef must be at least 0, got {self.kl_coef}", None),
            (self.kl_horizon > 0, "kl_horizon must be above 0", None),
            (0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "gamma and lam must be in [0, 1]", None),
            (self.cliprange > 0 and self.cliprange_value > 0, "cliprange and cliprange_value must be above 0", None),
            (self.vf_coef >= 0 and self.ent_coef >= 0 and self.max_grad_norm > 0,
             "vf_coef and ent_coef must be at least 0, max_grad_norm above 0", None),
            (self.eval_samples >= 2, f"eval_samples must be at least 2 (a std and a CI), got {self.eval_samples}",
             None),
            (self.samples_per_phase >= 0 and (self.checkpoint_every is None or self.checkpoint_every >= 1)
             and self.checkpoint_minutes >= 0,
             "samples_per_phase must be at least 0, checkpoint_every at least 1 and checkpoint_minutes at least 0",
             None),
            (self.threads is None or self.threads >= 1, "threads must be at least 1", None),
            *memory_checks(self),
            *sampling_checks(self),
            chat_template_check(self),
        ], "PPO config")


@dataclass
class DPOTrainConfig:
    """DPO settings: TRL's beta (0.1) and sigmoid loss; lr and epochs sized for the review world's tiny model."""

    base: str = ""                  # Hugging Face folder of the base model (also the reference)
    pairs: str = ""                 # JSONL with prompt/chosen/rejected
    reward: str = "utility"         # true reward, for the summary
    prompts: str | None = None      # prompts for the evaluation samples; None: the review world's
    beta: float = 0.1               # DPO inverse temperature, strength of the pull to the reference (TRL default)
    lr: float = 2e-4                # learning rate (constant schedule)
    epochs: int = 3                 # passes over the training pairs
    batch_size: int = 32            # pairs per gradient step
    held_out: float = 0.1           # fraction of pairs kept for pair_accuracy
    seed: int = 0                   # seeds the held-out split, TRL's training and the evaluation samples
    max_new_tokens: int | None = None  # tokens per evaluation sample; None: the world's generation default, else 24
    temperature: float = 1.0        # sampling temperature of the evaluation samples (> 0)
    top_k: int = 0                  # evaluation sampling from the k most likely tokens only; 0: off
    top_p: float = 1.0              # evaluation nucleus sampling probability; 1.0: off
    chat_template: str = chat_template_field()
    eval_samples: int = 512         # fresh samples from base and policy for summary.json
    threads: int | None = 1         # torch CPU threads (None: leave as is)
    device: str = "cpu"             # cpu | cuda | mps | auto (cuda when available): where TRL trains and evaluation runs
    dtype: Literal["float32", "bfloat16"] = "float32"  # float32 | bfloat16: the model's weights (LoRA adapters stay float32)
    lora_rank: int | None = None    # LoRA rank (peft): train an adapter only, the reference is the base with it off; None: fullfine-tuning
    lora_alpha: float = 16.0        # LoRA scale: the update is (alpha / r) B A
    lora_target_modules: str = "all-linear"  # LoRA layers: all-linear (attention, MLP; not the output head) or names, e.g. q_proj,v_proj
    gradient_checkpointing: bool = False  # recompute each layer's activations in the backward pass (TRL's activation_checkpointing)
    mmap_threshold_kib: int | None = None  # glibc only: fix the C library's mmap threshold at this many KiB for the rest of the process (rewardlab.heap): lower peak resident memory, slower; None: glibc's dynamic default

    def validate(self) -> None:
        raise_first_failed([
            (bool(self.base), "base model is required", "pass --base DIR"),
            (bool(self.pairs), "preference pairs are required", "pass --pairs FILE.jsonl"),
            (self.beta > 0, f"beta must be above 0, got {self.beta}", "TRL's default is 0.1"),
            (self.lr > 0, f"lr must be above 0, got {self.lr}", None),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be at least 1", None),
            (0 < self.held_out < 1, f"held_out must be a fraction in (0, 1), got {self.held_out}", None),
            (self.eval_samples >= 2, f"eval_samples must be at least 2 (a std and a CI), got {self.eval_samples}",
             None),
            (self.threads is None or self.threads >= 1, "threads must be at least 1", None),
            *memory_checks(self),
            *sampling_checks(self),
            chat_template_check(self),
        ], "DPO config")


@dataclass
class PairsConfig:
    """Settings of `make_preference_pairs`; sampling settings default to the world's (max_new_tokens) or plain
    sampling."""

    model: str = ""                  # Hugging Face folder of the sampling model
    reward: str = "utility"          # reward spec
    prompts: str | None = None       # JSONL with `prompt`; None: the review world's prompts beside `model`
    n_prompts: int = 1000            # prompts drawn (with replacement) from the prompt set
    per_prompt: int = 2              # completions sampled per prompt
    max_new_tokens: int | None = None  # tokens per completion; None: the world's generation default, else 24
    temperature: float = 1.0         # sampling temperature (> 0)
    top_k: int = 0                   # sample from the k most likely tokens only; 0: off
    top_p: float = 1.0               # nucleus sampling probability; 1.0: off
    chat_template: str = chat_template_field()
    seed: int = 0                    # seeds the prompt draws and the sampling
    batch_size: int = 64             # completions sampled at a time

    def validate(self) -> None:
        raise_first_failed([
            (bool(self.model), "a model is required", "pass --model DIR"),
            (self.per_prompt >= 2, f"per_prompt must be at least 2, got {self.per_prompt}", "--per-prompt 2 or more"),
            (self.n_prompts >= 1 and self.batch_size >= 1, "n_prompts and batch_size must be at least 1", None),
            *sampling_checks(self),
            chat_template_check(self),
        ], "pairs config")

"""PPO with a value head and KL control against a frozen reference, in one file (CleanRL style).

One phase:
  1. rollout: sample `batch_size` completions from prompts through `rewardlab.sampling`'s KV-cached
     decoding loop (`rewardlab.rl.rollout`), keeping the policy's processed log-probs and the value
     site's activations of each step: they are the old log-probs and the value head's inputs, so the
     policy does not run over the sampled sequences a second time. The temperature/top-k/top-p
     transform (`rewardlab.sampling.process_logits`) is the same one used when learning, so the
     probability ratio is 1 on the first minibatch up to the rounding between the cached, one token at
     a time pass and the whole-sequence one (checked: |ratio - 1| <= 1e-4);
  2. score: the reward on each completion text; per-token log-probs of the reference; values from
     the value head; per-token KL with the chosen estimator;
  3. rewards per token: -kl_coef * kl_t (when the KL is in the reward), plus the score on the last
     real token; GAE(gamma, lambda) advantages and returns; advantages whitened over real tokens;
  4. learn: `ppo_epochs` passes over shuffled minibatches: clipped policy loss, clipped value loss,
     entropy bonus, KL loss term (when the KL is a loss term), gradient clipping;
  5. log: one line of metrics.jsonl, sample completions appended to samples.jsonl; a checkpoint when
     `checkpoint_due` (every `checkpoint_minutes`, after the last phase, every `checkpoint_every` phases if set);
  6. average (unless `average_from` is last; auto: on for models under 50M parameters): from phase
     `average_from * phases` on, the running mean of the policy's trainable weights takes this phase's
     weights in (`TailAverage`).
With averaging, after the last phase the policy's weights are replaced by that mean (tail, or Polyak-Ruppert,
averaging) before the evaluation and the saved policy: the per-phase metrics describe the current weights that
sampled, summary.json and policy/ the mean. The mean of weights that fluctuate around the same point keeps their
common direction and drops part of the noise each minibatch added, which cost KL without reward.

Tensors of one phase: prompts [B, P] left-padded; completions [B, T] right-padded after EOS.
`mask` [B, T] is 1 on real completion tokens (up to and including EOS): pads contribute nothing to
any loss or statistic. Position t of a completion is predicted by the logits at P - 1 + t.

The value head reads a site of the policy (default `ln_final.hook_out`, the final normalized
residual stream, as ARENA) with the gradient stopped: it is trained by the value loss only, at its
own learning rate, and never moves the policy, so it can be compared with probes on the same site.

Memory (`rewardlab.rl.lora`): with `lora_rank` set, the policy is the base with a LoRA adapter and the
reference the same weights with the adapter off (one copy instead of two; Adam state for the adapter
only; checkpoints hold the adapter and value head only); `dtype` bfloat16 halves the weights (with
full fine-tuning, Adam steps below bfloat16's resolution, 2^-8 of a weight, are lost: pair it with LoRA,
whose adapter stays float32); `gradient_checkpointing` recomputes each layer's activations in the
backward pass (same numbers, less memory, slower).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn
from tqdm.auto import tqdm

from rewardlab import rewards
from rewardlab.config import without_runtime
from rewardlab.errors import InputError
from rewardlab.heap import apply_mmap_threshold
from rewardlab.io import load_tensors, read_json, read_jsonl, save_tensors, write_json, write_jsonl
from rewardlab.models import pick_device
from rewardlab.rl.config import PPOConfig, auto_average_from, auto_lr
from rewardlab.rl.eval import eval_summary, evaluate_policy, mean_std, write_run
from rewardlab.rl.inputs import completion_length, grammar_checker, load_policy_and_tokenizer, load_prompts
from rewardlab.rl.kl_penalty import KLController, exact_kl, kl_per_token
from rewardlab.rl.lora import AdapterOff, add_lora, mark_checkpointed_layers, save_lora, trainable
from rewardlab.rl.rollout import Rollout, completion_logprobs_from_logits, completion_texts, position_ids, rollout
from rewardlab.sampling import gather_logprobs, kept_logits
from rewardlab.rl.value_head import ValueHead
from rewardlab.sites import capture, d_model, n_layers, parse_site
from rewardlab.text import (check_generation_fits, config_context_length, encode_prompts, prompt_token_ids,
                            stop_ids)

RATIO_TOLERANCE = 1e-4
# A phase whose mean approx_kl (0.5 * log-ratio^2 between the rollout policy and the updated one) or clip
# fraction is above these moved the policy too far per update: the step size (lr) is wrong for this model.
# The tuned review-world runs stay below 0.01 and 0.05.
STEP_SIZE_LIMITS = {"approx_kl": 0.1, "clipfrac": 0.3}


def _warn_step_size(row: dict, cfg: PPOConfig, accelerator) -> None:
    """Print `step_size_warning` on stderr (main process only), without breaking the progress bar."""
    if (warning := step_size_warning(row, cfg)) and accelerator.is_main_process:
        tqdm.write(warning, file=sys.stderr)


def step_size_warning(row: dict, cfg: PPOConfig) -> str | None:
    """A loud message when a phase's metrics `row` exceed STEP_SIZE_LIMITS, else None."""
    over = {k: row[k] for k, limit in STEP_SIZE_LIMITS.items() if row.get(k) is not None and row[k] > limit}
    if not over:
        return None
    seen = ", ".join(f"{k} {v:.3g} (limit {STEP_SIZE_LIMITS[k]:g})" for k, v in over.items())
    lr = row.get("lr", cfg.lr)
    now = f"{lr:g}" if isinstance(lr, float) else lr
    return (f"rewardlab: warning: PPO phase {row['phase']}: {seen}: each update moves the policy too far, "
            f"which wrecks a pretrained model; lower --lr (now {now}), e.g. to a third of it "
            f"(1e-5 suits full fine-tuning of a pretrained model)")


# ----------------------------------------------------------------------------------------------
# masked statistics and advantages


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over entries where mask is 1 (all entries, or along `dim`); masked entries may hold inf/nan."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    mask = mask.to(x.dtype)
    if dim is None:
        return x.sum() / mask.sum()
    return x.sum(dim) / mask.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over entries where mask is 1 (Bessel-corrected when `unbiased`)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError("masked_var needs at least two unmasked entries")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the unmasked entries; masked entries become 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and returns [B, T] for right-padded episodes.

    The episode of row b is its real tokens (mask 1, a prefix of the row); it ends after its last real
    token, so the value beyond it is 0. delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lam A_{t+1}; returns = A + V. Pads get 0 in both.
    """
    mask = mask.to(rewards.dtype)
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    returns = (advantages + values) * mask
    return advantages, returns


def policy_gae(rewards: torch.Tensor, values: torch.Tensor, policy_mask: torch.Tensor, gamma: float, lam: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """`gae` over the tokens where `policy_mask` [B, T] is 1, which need not be contiguous: tokens between
    them (a user's turn in a conversation) are skipped, so the value after the last token of one
    assistant turn is the value at the first token of the next, and later rewards flow back across the
    gap. Advantages and returns are 0 off the mask. With a prefix mask this is `gae` itself."""
    order = torch.sort((policy_mask == 0).to(torch.int8), dim=1, stable=True).indices  # masked tokens first, in order
    prefix = (torch.arange(policy_mask.shape[1], device=policy_mask.device)[None] < policy_mask.sum(1, keepdim=True))
    adv, ret = gae(rewards.gather(1, order), values.gather(1, order), prefix.long(), gamma, lam)
    return torch.zeros_like(adv).scatter(1, order, adv), torch.zeros_like(ret).scatter(1, order, ret)


# ----------------------------------------------------------------------------------------------
# policy + value head


class PolicyWithValue(nn.Module):
    """The policy LM and its value head as one module (so Accelerate/DDP wraps both)."""

    def __init__(self, policy: nn.Module, value_head: ValueHead):
        super().__init__()
        self.policy, self.value_head = policy, value_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, K, V] and values [B, K] (value head on the detached site activation) at all L positions
        (K = L), or, given `n_completion` T, at the T positions that predict the completion tokens (K = T,
        the last T + 1 positions but the very last): no logits are computed at prompt positions."""
        keep = 0 if n_completion is None else n_completion + 1
        with capture(self.policy, self.value_head.site) as acts:
            logits = kept_logits(self.policy, keep, input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids(attention_mask), use_cache=False)
        site = acts[self.value_head.site]
        if n_completion is not None:  # slices, not index tensors: their backward is a copy, not a scatter-add
            logits, site = logits[:, :-1], site[:, -keep:-1]
        return logits, self.value_head(site.float())


def entropy(logp_all: torch.Tensor) -> torch.Tensor:
    """Entropy [...] in nats from log-probs [..., V] (tokens outside the support contribute 0)."""
    p = logp_all.exp()
    return -(p * torch.where(p > 0, logp_all, torch.zeros_like(p))).sum(-1)  # select first: 0 * -inf is nan


# ----------------------------------------------------------------------------------------------
# checkpoints (optimizer state as safetensors, no pickle)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    return tensors, {"param_groups": state["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _untied_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict without the second name of tied tensors (safetensors refuses shared memory); when some
    parameters are frozen (LoRA), only the trained ones (adapter and value head): the rest is the base."""
    frozen = any(not p.requires_grad for p in model.parameters())
    keep = {name for name, p in model.named_parameters() if p.requires_grad}
    tensors, tied, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        if frozen and name not in keep:
            continue
        if tensor.data_ptr() in seen:
            tied[name] = seen[tensor.data_ptr()]
        else:
            seen[tensor.data_ptr()] = name
            tensors[name] = tensor
    return tensors, {"tied": tied, "trained_only": frozen}


def _load_untied_state(model: nn.Module, path: Path) -> None:
    tensors, meta = load_tensors(path)
    for name, source in meta["tied"].items():
        tensors[name] = tensors[source]
    _, unexpected = model.load_state_dict(tensors, strict=not meta.get("trained_only", False))
    trained_missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in tensors]
    if unexpected or trained_missing:
        raise InputError(f"checkpoint does not match the model ({len(unexpected)} unknown tensors, "
                         f"{len(trained_missing)} trained ones missing)", str(path), "use another --out folder")


class TailAverage:
    """The running mean of the policy's trainable weights after each phase from `start` (0-based) on: after the
    n-th such phase mean <- mean + (weights - mean) / n, so it is their uniform average. Holds one copy of the
    trainable weights (allocated at `start`)."""

    def __init__(self, params: list[nn.Parameter], start: int | None):
        self.params, self.start = params, start
        self.mean: list[torch.Tensor] = []
        self.n = 0  # phases averaged so far

    @classmethod
    def for_policy(cls, policy: nn.Module, cfg: PPOConfig, frac: float | None) -> "TailAverage":
        """The average from fraction `frac` of `cfg.phases` on (rounded down; None: none), `policy_average_from`'s."""
        return cls(trainable(policy), None if frac is None else min(int(frac * cfg.phases), cfg.phases - 1))

    @torch.no_grad()
    def update(self, phase: int) -> None:
        """Take the weights after `phase` into the mean when averaging has started."""
        if self.start is None or phase < self.start:
            return
        if not self.mean:
            self.mean = [p.detach().clone() for p in self.params]
        else:
            for m, p in zip(self.mean, self.params):
                m.add_(p.detach() - m, alpha=1.0 / (self.n + 1))
        self.n += 1

    @torch.no_grad()
    def apply(self) -> None:
        """Replace the policy's weights by the mean (nothing when no phase was averaged)."""
        for m, p in zip(self.mean, self.params):
            p.copy_(m)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {str(i): m for i, m in enumerate(self.mean)}, {"phases_averaged": self.n, "start": self.start}

    def load(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """A checkpoint's mean. A run resumed with another phase count starts averaging at another phase: the
        saved mean is then dropped, and the new one begins at the later of that phase and the resumed one."""
        if meta.get("start") != self.start:
            return
        self.mean = [tensors[str(i)].to(p.device) for i, p in enumerate(self.params)]
        self.n = int(meta["phases_averaged"])


def save_checkpoint(folder: Path, model: PolicyWithValue, optimizer, generator: torch.Generator, rank: int,
                    is_main: bool, state: dict, average: TailAverage | None = None) -> None:
    """Write this process's part of a checkpoint into `.checkpoint.partial` (`commit_checkpoint` swaps it in)."""
    partial = folder / ".checkpoint.partial"
    save_tensors(partial / f"rng_{rank}.safetensors", {"generator": generator.get_state()})
    if is_main:
        save_tensors(partial / "model.safetensors", *_untied_state(model))
        tensors, meta = _optimizer_tensors(optimizer)
        save_tensors(partial / "optimizer.safetensors", tensors, meta)
        if average is not None and average.n:
            save_tensors(partial / "average.safetensors", *average.state())
        write_json(partial / "state.json", state)


def commit_checkpoint(folder: Path) -> None:
    """Make `.checkpoint.partial` the checkpoint; the previous one survives as `.checkpoint.old` until then."""
    partial, final, old = folder / ".checkpoint.partial", folder / "checkpoint", folder / ".checkpoint.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(folder: Path) -> Path | None:
    """The last complete checkpoint (also one left as `.checkpoint.old` by a kill mid-swap)."""
    for name in ("checkpoint", ".checkpoint.old"):
        if (folder / name / "state.json").is_file():
            return folder / name
    return None


# ----------------------------------------------------------------------------------------------
# one phase: score, learn, log


@dataclass
class Scored:
    """A phase's rollout scored before learning: `scores` [B] (true reward); per token [B, T]:
    `old_logp` and `ref_logp` (log-probs of the sampled tokens, nats; pads hold finite values that no
    statistic reads), and, 0 on pads, `values`, `kl` (the chosen estimator), `kl_exact`, `advantages`
    (whitened if asked) and `returns`."""

    scores: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    values: torch.Tensor
    kl: torch.Tensor
    kl_exact: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def loop_logprobs_exact(cfg: PPOConfig) -> bool:
    """Whether the decoding loop's log-probs and value inputs can stand for the scoring forward's: in float32
    its KV-cached steps match one full pass to rounding (RATIO_TOLERANCE holds); in bfloat16 the two orders of
    computation round apart by more, so the old log-probs come from a full forward, as the learning pass's do."""
    return cfg.dtype == "float32"


def _logprobs(logits: torch.Tensor, completion_ids: torch.Tensor, cfg: PPOConfig,
              truncate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`completion_logprobs_from_logits` (logits [B, T, V] at the completion positions) under the config's
    sampling transform; `truncate=False` applies the temperature only (the reference's whole distribution)."""
    top_k, top_p = (cfg.top_k, cfg.top_p) if truncate else (0, 1.0)
    return completion_logprobs_from_logits(logits, completion_ids, None, temperature=cfg.temperature,
                                           top_k=top_k, top_p=top_p)


def _ref_logits(ref: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int
                ) -> torch.Tensor:
    """The reference's logits [B, T, V] at the positions that predict the T completion tokens."""
    return kept_logits(ref, n_completion + 1, input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids(attention_mask), use_cache=False)[:, :-1]


@torch.no_grad()
def score_rollout(model: PolicyWithValue, ref: nn.Module, ro: Rollout, scores: torch.Tensor, cfg: PPOConfig,
                  kl_coef: float, episodes: list[torch.Tensor] | None = None) -> Scored:
    """Old and reference log-probs, values and KL of a rollout; per-token rewards (-kl_coef * kl when
    the KL is in the reward, plus the score on the last real token), GAE and whitening. The old
    log-probs and the value head's inputs come from the rollout when it recorded them (the value
    head's site), else from one forward of the policy over prompts and completions.

    `episodes`: for a rollout whose completion holds tokens the policy did not choose (a user's turn),
    the masks [B, T] of the policy's tokens, one per independent episode (one for a whole conversation;
    one per turn when later turns must not credit earlier ones). Only their tokens enter the KL, values,
    advantages and whitening; `scores` is then per token [B, T] (each turn's reward on its last token),
    and GAE runs over each episode's tokens (`policy_gae`)."""
    mask = ro.mask if episodes is None else torch.stack(episodes).sum(0)
    T = mask.shape[1]
    if ro.logp_all is not None:  # what the decoding loop computed (`rollout(record_site=...)`): no second pass
        logp_all, values = ro.logp_all, model.value_head(ro.site_acts.float())
        old_logp = gather_logprobs(logp_all, ro.completion_ids)
    else:
        logits, values = model(ro.input_ids, ro.attention_mask, T)
        old_logp, logp_all = _logprobs(logits, ro.completion_ids, cfg)
        del logits
    values = values * mask.float()
    ref_logp, ref_all = _logprobs(_ref_logits(ref, ro.input_ids, ro.attention_mask, T), ro.completion_ids, cfg,
                                  truncate=False)
    real = mask.bool()
    kl = torch.where(real, kl_per_token(cfg.kl_estimator, old_logp, ref_logp, logp_all, ref_all), 0.0)
    kl_exact = torch.where(real, exact_kl(logp_all, ref_all), 0.0)
    del logp_all, ref_all

    rewards = -kl_coef * kl if cfg.kl_in == "reward" else torch.zeros_like(kl)
    if episodes is None:
        last = mask.sum(1) - 1  # index of the last real token
        rewards[torch.arange(len(last)), last] += scores
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    else:
        rewards = rewards + scores * mask
        parts = [policy_gae(rewards, values, e, cfg.gamma, cfg.lam) for e in episodes]
        advantages, returns = sum(a for a, _ in parts), sum(r for _, r in parts)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return Scored(scores, old_logp, ref_logp, values, kl, kl_exact, advantages, returns)


def ppo_losses(new_logp: torch.Tensor, new_values: torch.Tensor, old_logp: torch.Tensor, old_values: torch.Tensor,
               advantages: torch.Tensor, returns: torch.Tensor, m: torch.Tensor, cfg: PPOConfig
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clipped policy loss, clipped value loss, ratio [B, T], log-ratio [B, T]) of a minibatch, each
    loss a mean over the tokens where `m` [B, T] is 1: other tokens get exactly zero gradient."""
    log_ratio = torch.where(m.bool(), new_logp - old_logp, 0.0)  # pads may hold -inf
    ratio = log_ratio.exp()
    pg_loss = masked_mean(torch.max(-advantages * ratio,
                                    -advantages * ratio.clamp(1 - cfg.cliprange, 1 + cfg.cliprange)), m)
    v_clipped = old_values + (new_values - old_values).clamp(-cfg.cliprange_value, cfg.cliprange_value)
    vf_loss = 0.5 * masked_mean(torch.max((new_values - returns) ** 2, (v_clipped - returns) ** 2), m)
    return pg_loss, vf_loss, ratio, log_ratio


def learn(model, ref: nn.Module, ro: Rollout, sc: Scored, cfg: PPOConfig, kl_coef: float, optimizer, accelerator,
          generator: torch.Generator, phase: int, loss_mask: torch.Tensor | None = None) -> tuple[dict[str, float], float]:
    """`ppo_epochs` passes over shuffled minibatches (clipped policy and value losses, entropy bonus, KL
    loss term when asked, gradient clipping). Returns the per-minibatch means of the loss statistics
    and the largest |ratio - 1| on the first minibatch (checked against RATIO_TOLERANCE).
    `loss_mask` [B, T]: the tokens that enter the losses (default `ro.mask`; the policy's own tokens
    when the completion holds a user's turn)."""
    local_batch = ro.mask.shape[0]
    maskf = (ro.mask if loss_mask is None else loss_mask).float()
    T = maskf.shape[1]
    stats = {"pg_loss": [], "vf_loss": [], "entropy": [], "clipfrac": [], "approx_kl": [], "grad_norm": [],
             "vf_clipfrac": []}
    first_ratio_dev = None
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(local_batch, generator=generator)
        for mb_start in range(0, local_batch, cfg.minibatch_size):
            mb = order[mb_start:mb_start + cfg.minibatch_size].to(maskf.device)
            m = maskf[mb]
            new_logits, new_values = model(ro.input_ids[mb], ro.attention_mask[mb], T)
            new_logp, new_all = _logprobs(new_logits, ro.completion_ids[mb], cfg)
            del new_logits  # [B, T, V]: the graph keeps the log-softmax's output, not its input
            old_values = sc.values[mb]
            pg_loss, vf_loss, ratio, log_ratio = ppo_losses(new_logp, new_values, sc.old_logp[mb], old_values,
                                                            sc.advantages[mb], sc.returns[mb], m, cfg)
            if first_ratio_dev is None:
                first_ratio_dev = float(((ratio.detach() - 1).abs() * m).max())
                if first_ratio_dev > RATIO_TOLERANCE:
                    raise RuntimeError(f"probability ratio is {1 + first_ratio_dev:.6f} on the first minibatch "
                                       "of a phase: sampling and scoring differ")
            with torch.set_grad_enabled(cfg.ent_coef != 0 and torch.is_grad_enabled()):
                ent = masked_mean(entropy(new_all), m)  # without a bonus, a statistic: no backward through [B, T, V]
            loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * ent if cfg.ent_coef else pg_loss + cfg.vf_coef * vf_loss
            if cfg.kl_in == "loss":
                ref_mb_all = None
                if cfg.kl_estimator.startswith("exact"):
                    with torch.no_grad():
                        ref_mb_logits = _ref_logits(ref, ro.input_ids[mb], ro.attention_mask[mb], T)
                        _, ref_mb_all = _logprobs(ref_mb_logits, ro.completion_ids[mb], cfg, truncate=False)
                kl_new = kl_per_token(cfg.kl_estimator, new_logp, sc.ref_logp[mb], new_all, ref_mb_all)
                loss = loss + kl_coef * masked_mean(kl_new, m)
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite PPO loss in phase {phase} (pg {pg_loss.item()}, "
                                   f"vf {vf_loss.item()}); lower lr or check the reward scale")
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # freed now, not before the next backward: no gradients live
            # through the next rollout and forward (a policy-sized saving of peak memory in full fine-tuning)
            with torch.no_grad():
                stats["pg_loss"].append(float(pg_loss))
                stats["vf_loss"].append(float(vf_loss))
                stats["entropy"].append(float(ent))
                stats["clipfrac"].append(float(masked_mean(((ratio - 1).abs() > cfg.cliprange).float(), m)))
                stats["vf_clipfrac"].append(float(masked_mean(
                    ((new_values - old_values).abs() > cfg.cliprange_value).float(), m)))
                stats["approx_kl"].append(float(masked_mean(0.5 * log_ratio ** 2, m)))
                stats["grad_norm"].append(float(grad_norm))
    return {k: sum(v) / len(v) for k, v in stats.items()}, first_ratio_dev


def phase_metrics(accelerator, phase: int, sc: Scored, mask: torch.Tensor, stats: dict[str, float],
                  first_ratio_dev: float, cfg: PPOConfig, kl_coef: float, base_mean: float, base_std: float,
                  grammatical: torch.Tensor | None, t_gen: float, t_learn: float) -> dict:
    """One line of metrics.jsonl, gathered over all processes (`grammatical`: this process's flags
    [B] as floats, or None outside the review world)."""
    g_scores = accelerator.gather(sc.scores)
    g_kl_exact = accelerator.gather(sc.kl_exact.sum(1))
    g_kl = accelerator.gather(sc.kl.sum(1))
    g_tokens = accelerator.gather(mask.sum(1))
    g_returns, g_values = accelerator.gather(sc.returns), accelerator.gather(sc.values)
    g_mask = accelerator.gather(mask.float())
    explained_var = 1 - masked_var(g_returns - g_values, g_mask) / masked_var(g_returns, g_mask)
    seconds = t_gen + t_learn
    row = {
        "phase": phase,
        "reward_mean": float(g_scores.mean()), "reward_std": float(g_scores.std()),
        "reward_gain_base_std": (float(g_scores.mean()) - base_mean) / base_std if base_std > 0 else None,
        "kl_exact": float(g_kl_exact.mean()), f"kl_{cfg.kl_estimator}": float(g_kl.mean()),
        "kl_coef": kl_coef,
        **{k: stats[k] for k in ("entropy", "clipfrac", "vf_clipfrac", "approx_kl", "pg_loss", "vf_loss")},
        "value_explained_variance": float(explained_var),
        "grad_norm": stats["grad_norm"],
        "first_ratio_max_dev": first_ratio_dev,
        "completion_tokens_mean": float(g_tokens.float().mean()),
        "samples_per_s": cfg.batch_size / seconds,
        "tokens_per_s": float(g_tokens.sum()) / seconds,
        "gen_seconds": t_gen, "learn_seconds": t_learn,
    }
    if grammatical is not None:
        row["grammatical_rate"] = float(accelerator.gather(grammatical).mean())
    return row


# ----------------------------------------------------------------------------------------------
# training


def base_parameter_count(policy: nn.Module) -> int:
    """Parameters of the base model under `policy` (a LoRA adapter's not counted; tied weights once)."""
    return sum(p.numel() for name, p in policy.named_parameters() if "lora_" not in name)


def policy_lr(policy: nn.Module, cfg: PPOConfig) -> tuple[float, str]:
    """The policy learning rate: `cfg.lr`, or with `lr: auto` the one `auto_lr` picks for `policy`'s size
    and LoRA; and where it came from."""
    if cfg.lr != "auto":
        return float(cfg.lr), "set in the config"
    lr, why = auto_lr(base_parameter_count(policy), cfg.lora_rank is not None)
    return lr, f"lr auto: {why}"


def policy_average_from(policy: nn.Module, cfg: PPOConfig) -> tuple[float | None, str]:
    """The tail-averaging start as a fraction of the phases (None: the last phase's weights): `cfg.average_from`,
    or with `average_from: auto` the one `auto_average_from` picks for `policy`'s size; and where it came from."""
    if cfg.average_from == "last":
        return None, "set in the config"
    if cfg.average_from != "auto":
        return float(cfg.average_from), "set in the config"
    frac, why = auto_average_from(base_parameter_count(policy))
    return frac, f"average_from auto: {why}"


def _logged_settings(policy: nn.Module, cfg: PPOConfig, log: bool) -> tuple[float, str, float | None, str]:
    """`policy_lr` and `policy_average_from`, printed on stderr when `log`."""
    lr, lr_source = policy_lr(policy, cfg)
    frac, average_source = policy_average_from(policy, cfg)
    if log:
        tqdm.write(f"rewardlab: PPO policy learning rate {lr:g} ({lr_source})", file=sys.stderr)
        averaged = "the last phase's weights" if frac is None else f"the mean of the weights from {frac:g} of the phases on"
        tqdm.write(f"rewardlab: PPO policy saved: {averaged} ({average_source})", file=sys.stderr)
    return lr, lr_source, frac, average_source


def policy_with_value(policy: nn.Module, cfg: PPOConfig, device) -> tuple[PolicyWithValue, torch.optim.Optimizer]:
    """The policy with a fresh value head (initial weights seeded by `cfg.seed`, global RNG untouched) on
    `device`, and its Adam optimizer (the policy's trainable parameters at `policy_lr`: all of them, or the
    LoRA adapter's; the value head at `value_lr`), fused on CPU and CUDA: the update runs as one kernel per
    parameter without the unfused loop's parameter-sized temporaries (two of the largest parameter at once)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        value_head = ValueHead(d_model(policy), cfg.value_head, cfg.value_site)
    model = PolicyWithValue(policy, value_head).to(device)
    optimizer = torch.optim.Adam([
        {"params": trainable(model.policy), "lr": policy_lr(policy, cfg)[0]},
        {"params": list(model.value_head.parameters()), "lr": cfg.value_lr},
    ], eps=1e-5, fused=torch.device(device).type in ("cpu", "cuda"))  # fused: one kernel, no per-parameter temporaries
    return model, optimizer


def prepare_for_learning(accelerator, model: PolicyWithValue, optimizer: torch.optim.Optimizer):
    """`accelerator.prepare(model, optimizer)`; then, where the policy's input embedding is tied to its
    trainable output projection (GPT-2, SmolLM2), the embedding's backward is made sparse: the rows of
    the minibatch's tokens, added in place into the projection's dense gradient. The tied weight's
    gradient stays dense and equal up to float summation order, and the backward no longer ends by
    allocating a dense [V, d] buffer and a second one for the sum (two vocabulary-sized tensors on top
    of every other gradient: the peak of full fine-tuning). After `prepare`, because DDP expects a
    sparse gradient from a sparse embedding, and this one's accumulated gradient is dense."""
    model, optimizer = accelerator.prepare(model, optimizer)
    policy = accelerator.unwrap_model(model).policy
    embed, output = policy.get_input_embeddings(), policy.get_output_embeddings()
    if (isinstance(embed, nn.Embedding) and output is not None and output.weight is embed.weight
            and embed.weight.requires_grad):
        embed.sparse = True
    return model, optimizer


def policy_and_reference(cfg: PPOConfig, device):
    """(policy, reference, tokenizer, peft model or None) on `device` in `cfg.dtype`. Full fine-tuning:
    two copies of the base, the reference frozen. LoRA: one copy; the policy is it with a fresh adapter
    on, the reference the same modules with the adapter off (`rewardlab.rl.lora`)."""
    policy, tokenizer = load_policy_and_tokenizer(cfg.base, cfg.chat_template, cfg.dtype)
    parse_site(cfg.value_site, n_layers(policy))  # a bad --value-site fails here, not after the base evaluation
    peft_model = None
    if cfg.lora_rank is None:
        ref, _ = load_policy_and_tokenizer(cfg.base, dtype=cfg.dtype)
        ref.requires_grad_(False)
        ref.to(device)
    else:
        with torch.random.fork_rng(devices=[]):  # the adapter's initial A is seeded, the global RNG untouched
            torch.manual_seed(cfg.seed)
            peft_model = add_lora(policy, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules)
        ref = AdapterOff(peft_model)
    if cfg.gradient_checkpointing:
        mark_checkpointed_layers(policy)
    return policy, ref, tokenizer, peft_model


def checkpoint(out: Path, model: PolicyWithValue, optimizer, generator: torch.Generator, accelerator,
               state: dict, average: TailAverage | None = None) -> None:
    """Save and commit a checkpoint with `state` (phase, seconds, kl_coef, config) and the weights' running mean,
    all processes in step."""
    accelerator.wait_for_everyone()
    save_checkpoint(out, model, optimizer, generator, accelerator.process_index, accelerator.is_main_process, state,
                    average)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        commit_checkpoint(out)
    accelerator.wait_for_everyone()


def checkpoint_due(cfg: PPOConfig, phase: int, seconds_since: float, accelerator) -> bool:
    """Whether to checkpoint after `phase` (0-based): after the last phase, every `checkpoint_every`
    phases when set, and once `checkpoint_minutes` have passed since the last checkpoint (`seconds_since`).
    Under several processes the main process's clock decides for all (they must checkpoint together)."""
    if phase + 1 == cfg.phases or (cfg.checkpoint_every is not None and (phase + 1) % cfg.checkpoint_every == 0):
        return True
    due = seconds_since >= 60 * cfg.checkpoint_minutes
    if accelerator.num_processes > 1:
        due = broadcast_object_list([due], from_process=0)[0]
    return due


def _resolved(value):
    """A setting as resume compares it: a path to an existing file or folder made absolute, so the same
    prompts file named relatively or absolutely is the same config."""
    if isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).resolve())
    return value


# Config fields whose default changed after they were added: the value a checkpoint written before the field
# existed trained with.
OLD_CHECKPOINT_VALUES = {"average_from": "last"}


def resume(out: Path, cfg: PPOConfig, model: PolicyWithValue, optimizer, generator: torch.Generator, rank: int,
           kl_ctl: KLController, average: TailAverage) -> tuple[int, float, list[dict], list[dict]]:
    """Load the checkpoint in `out` (if any) into the model, optimizer, generator, KL controller and weights' mean;
    returns (first phase to run, seconds already trained, metrics rows and samples kept so far). A checkpoint
    written with another config is refused; the phase count and the runtime settings (threads) may differ."""
    ckpt = find_checkpoint(out)
    if ckpt is None:
        return 0, 0.0, [], []
    state = read_json(ckpt / "state.json")
    # a setting added after the checkpoint was written counts as what that run trained with: its default, or
    # OLD_CHECKPOINT_VALUES' value where the default has changed since
    defaults = {f.name: f.default for f in dataclasses.fields(PPOConfig) if f.default is not dataclasses.MISSING}
    written = {**defaults, **OLD_CHECKPOINT_VALUES, **state["config"]}
    if written["average_from"] is None:  # how the version that added averaging wrote "last"
        written["average_from"] = "last"
    saved = {k: _resolved(v) for k, v in without_runtime(written).items() if k != "phases"}
    mine = {k: _resolved(v) for k, v in without_runtime(dataclasses.asdict(cfg)).items() if k != "phases"}
    if saved != mine:
        diff = sorted(k for k in mine if saved.get(k) != mine[k])
        raise InputError(f"checkpoint was written with a different config ({', '.join(diff)})", str(ckpt),
                         "use the same settings, or another --out folder")
    _load_untied_state(model, ckpt / "model.safetensors")
    _load_optimizer(optimizer, *load_tensors(ckpt / "optimizer.safetensors"))
    generator.set_state(load_tensors(ckpt / f"rng_{rank}.safetensors")[0]["generator"])
    if (ckpt / "average.safetensors").is_file():
        average.load(*load_tensors(ckpt / "average.safetensors"))
    start_phase, elapsed_before, kl_ctl.coef = state["phase"], state["seconds"], state["kl_coef"]
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if m["phase"] < start_phase] \
        if (out / "metrics.jsonl").is_file() else []
    samples = [s for s in read_jsonl(out / "samples.jsonl") if s["phase"] < start_phase] \
        if (out / "samples.jsonl").is_file() else []
    return start_phase, elapsed_before, metrics, samples


def _evaluate(model, ref, tokenizer, prompts: list[str], reward, is_grammatical, cfg: PPOConfig, max_new_tokens: int,
              seed: int) -> dict:
    """`evaluate_policy` with the config's sampling settings and `eval_samples`."""
    return evaluate_policy(model, ref, tokenizer, prompts, reward, is_grammatical, n=cfg.eval_samples, seed=seed,
                           max_new_tokens=max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                           top_p=cfg.top_p)


def write_outputs(out: Path, model: PolicyWithValue, peft_model, tokenizer, cfg: PPOConfig, policy_eval: dict,
                  summary: dict) -> None:
    """The value head, the policy (with LoRA: merged, the adapter in adapter/) and the run's files; then
    checkpoint/ is removed unless `keep_checkpoint`."""
    model.value_head.save(out)
    policy = model.policy if peft_model is None else save_lora(peft_model, out)
    write_run(out, policy, tokenizer, cfg, policy_eval, summary)
    if not cfg.keep_checkpoint:
        shutil.rmtree(out / "checkpoint", ignore_errors=True)


def _base_eval(out: Path, ref, tokenizer, prompts: list[str], reward, is_grammatical, cfg: PPOConfig,
               max_new_tokens: int, accelerator) -> dict:
    """The reference's evaluation (`_evaluate`), read from out/base_eval.json when a resumed run has it."""
    path = out / "base_eval.json"
    if path.is_file():
        return read_json(path)
    base_eval = _evaluate(ref, ref, tokenizer, prompts, reward, is_grammatical, cfg, max_new_tokens,
                          seed=cfg.seed + 10_000)
    if accelerator.is_main_process:
        write_json(path, base_eval)
    return base_eval


def _accelerator_and_local_batch(cfg: PPOConfig) -> tuple[Accelerator, int]:
    """The run's Accelerator (an unavailable cuda or mps is one clear error here, before any work) and the
    completions each process samples per phase; a batch the processes or minibatches do not divide is refused."""
    accelerator = Accelerator(cpu=pick_device(cfg.device).type == "cpu")
    world_size = accelerator.num_processes
    if cfg.batch_size % world_size:
        raise InputError(f"batch_size {cfg.batch_size} is not divisible by {world_size} processes", "PPO config")
    local_batch = cfg.batch_size // world_size
    if local_batch % cfg.minibatch_size:
        raise InputError(f"per-process batch {local_batch} is not divisible by minibatch_size {cfg.minibatch_size}",
                         "PPO config")
    return accelerator, local_batch


def train_ppo(config: PPOConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train a policy with PPO into `out_dir`; resume from `out_dir/checkpoint` if one is there.

    Writes policy/ (Hugging Face folder; with LoRA the adapter merged in, and the adapter in adapter/),
    value_head.safetensors, config.json, metrics.jsonl, samples.jsonl, base_eval.json, eval_samples.jsonl
    and summary.json; returns the summary. checkpoint/ is removed once the run finishes unless
    `keep_checkpoint` (extending a finished run with more phases needs it).
    `progress`: a bar over phases on stderr with the phase's reward, exact KL and grammatical rate.
    """
    cfg = config
    cfg.validate()
    out = Path(out_dir)
    t_start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    apply_mmap_threshold(cfg.mmap_threshold_kib)
    accelerator, local_batch = _accelerator_and_local_batch(cfg)
    device, rank, world_size = accelerator.device, accelerator.process_index, accelerator.num_processes

    reward = rewards.get_reward(cfg.reward)
    prompts = load_prompts(cfg.base, cfg.prompts)
    max_new_tokens = completion_length(cfg.base, cfg.max_new_tokens)
    policy, ref, tokenizer, peft_model = policy_and_reference(cfg, device)
    check_generation_fits([len(ids) for ids in prompt_token_ids(tokenizer, prompts)], max_new_tokens,
                          config_context_length(policy.config))  # a prompt that leaves no room to answer fails here
    model, optimizer = policy_with_value(policy, cfg, device)
    lr, lr_source, average_from, average_source = _logged_settings(policy, cfg,
                                                                   progress and accelerator.is_main_process)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    kl_ctl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    average = TailAverage.for_policy(model.policy, cfg, average_from)
    start_phase, elapsed_before, metrics, samples = resume(out, cfg, model, optimizer, generator, rank, kl_ctl,
                                                           average)
    model, optimizer = prepare_for_learning(accelerator, model, optimizer)
    unwrapped: PolicyWithValue = accelerator.unwrap_model(model)
    is_grammatical = grammar_checker(cfg.base)

    base_eval = _base_eval(out, ref, tokenizer, prompts, reward, is_grammatical, cfg, max_new_tokens, accelerator)
    base_mean, base_std = mean_std(base_eval["rewards"])

    bar = tqdm(total=cfg.phases, initial=start_phase, desc=f"PPO (kl_coef {cfg.kl_coef:g})", unit="phase",
               leave=False, disable=not (progress and accelerator.is_main_process))
    last_checkpoint = time.perf_counter()
    for phase in range(start_phase, cfg.phases):
        t0 = time.perf_counter()
        idx = torch.randint(len(prompts), (local_batch,), generator=generator).tolist()
        prompt_ids, prompt_mask, _ = encode_prompts(tokenizer, [prompts[i] for i in idx], device)
        ro = rollout(unwrapped.policy, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                     temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                     eos_id=stop_ids(tokenizer), pad_id=tokenizer.pad_token_id, generator=generator,
                     record_site=unwrapped.value_head.site if loop_logprobs_exact(cfg) else None)
        texts = completion_texts(tokenizer, ro)
        t_gen = time.perf_counter() - t0

        t1 = time.perf_counter()
        scores = torch.tensor(reward(texts, [prompts[i] for i in idx]), dtype=torch.float32, device=device)
        sc = score_rollout(unwrapped, ref, ro, scores, cfg, kl_ctl.coef)
        ro = dataclasses.replace(ro, logp_all=None, site_acts=None)  # scored: learning reads neither
        stats, first_ratio_dev = learn(model, ref, ro, sc, cfg, kl_ctl.coef, optimizer, accelerator, generator, phase)
        t_learn = time.perf_counter() - t1

        grammatical = None if is_grammatical is None else torch.tensor(
            [float(is_grammatical(t, prompt=prompts[i])) for i, t in zip(idx, texts)], device=device)
        row = phase_metrics(accelerator, phase, sc, ro.mask, stats, first_ratio_dev, cfg, kl_ctl.coef, base_mean,
                            base_std, grammatical, t_gen, t_learn) | {"lr": lr}
        kl_ctl.update(row[f"kl_{cfg.kl_estimator}"], cfg.batch_size)
        metrics.append(row)
        _warn_step_size(row, cfg, accelerator)
        bar.update()
        bar.set_postfix({k: f"{row[k]:.3g}" for k in ("reward_mean", "kl_exact", "grammatical_rate") if k in row})
        samples += [{"phase": phase, "prompt": prompts[i], "completion": t, "reward": float(s)}
                    for i, t, s in list(zip(idx, texts, scores.tolist()))[:cfg.samples_per_phase]]
        elapsed = elapsed_before + time.perf_counter() - t_start
        if accelerator.is_main_process:
            write_jsonl(out / "metrics.jsonl", metrics)
            write_jsonl(out / "samples.jsonl", samples)
        average.update(phase)
        if checkpoint_due(cfg, phase, time.perf_counter() - last_checkpoint, accelerator):
            checkpoint(out, unwrapped, optimizer, generator, accelerator, {
                "phase": phase + 1, "seconds": elapsed, "kl_coef": kl_ctl.coef, "config": dataclasses.asdict(cfg)},
                average)
            last_checkpoint = time.perf_counter()

    bar.close()
    average.apply()  # the run's policy: the mean of the averaged phases' weights (after the last checkpoint)
    t_eval = time.perf_counter()
    policy_eval = _evaluate(unwrapped.policy, ref, tokenizer, prompts, reward, is_grammatical, cfg, max_new_tokens,
                            seed=cfg.seed + 20_000)
    summary = {"reward": cfg.reward, **eval_summary(base_eval, policy_eval), "phases": cfg.phases,
               "lr": lr, "lr_source": lr_source,
               "phases_over_step_size_limits": [m["phase"] for m in metrics if step_size_warning(m, cfg)],
               "processes": world_size, "train_seconds": elapsed_before + t_eval - t_start,
               "average_from": average_from, "average_from_source": average_source, "phases_averaged": average.n}
    summary["seconds"] = elapsed_before + time.perf_counter() - t_start
    if accelerator.is_main_process:
        write_outputs(out, unwrapped, peft_model, tokenizer, cfg, policy_eval, summary)
    accelerator.wait_for_everyone()
    return summary

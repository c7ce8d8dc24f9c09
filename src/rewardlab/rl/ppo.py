"""PPO with a value head and KL control against a frozen reference, in one file (CleanRL style).

One phase:
  1. rollout: sample `batch_size` completions from prompts with a KV cache; the temperature/top-k/
     top-p transform (`rewardlab.sampling.process_logits`) is the same one used when scoring, so the
     probability ratio is exactly 1 on the first minibatch (checked: |ratio - 1| <= 1e-4);
  2. score: the reward on each completion text; per-token log-probs of policy and reference;
     values from the value head; per-token KL with the chosen estimator;
  3. rewards per token: -kl_coef * kl_t (when the KL is in the reward), plus the score on the last
     real token; GAE(gamma, lambda) advantages and returns; advantages whitened over real tokens;
  4. learn: `ppo_epochs` passes over shuffled minibatches: clipped policy loss, clipped value loss,
     entropy bonus, KL loss term (when the KL is a loss term), gradient clipping;
  5. log: one line of metrics.jsonl, sample completions appended to samples.jsonl, a checkpoint.

Tensors of one phase: prompts [B, P] left-padded; completions [B, T] right-padded after EOS.
`mask` [B, T] is 1 on real completion tokens (up to and including EOS): pads contribute nothing to
any loss or statistic. Position t of a completion is predicted by the logits at P - 1 + t.

The value head reads a site of the policy (default `ln_final.hook_normalized`, the final normalized
residual stream, as ARENA) with the gradient stopped: it is trained by the value loss only, at its
own learning rate, and never moves the policy, so it can be compared with probes on the same site.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from rewardlab.errors import InputError
from rewardlab.io import load_tensors, read_json, read_jsonl, save_tensors, write_json, write_jsonl
from rewardlab.rl.config import PPOConfig
from rewardlab.rl.kl import KLController, exact_kl, kl_per_token
from rewardlab.rl.value_head import ValueHead
from rewardlab.sampling import process_logits
from rewardlab.sites import capture, d_model, n_layers, parse_site
from rewardlab.world import world_of_model

RATIO_TOLERANCE = 1e-4


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


# ----------------------------------------------------------------------------------------------
# policy + value head, rollout, scoring


class PolicyWithValue(nn.Module):
    """The policy LM and its value head as one module (so Accelerate/DDP wraps both)."""

    def __init__(self, policy: nn.Module, value_head: ValueHead):
        super().__init__()
        self.policy, self.value_head = policy, value_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, L, V] and values [B, L] (value head on the detached site activation)."""
        with capture(self.policy, self.value_head.site) as acts:
            logits = self.policy(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids(attention_mask), use_cache=False).logits
        values = self.value_head(acts[self.value_head.site].float())
        return logits, values


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Rollout:
    """One batch of sampled completions (completion_ids/mask [B, T])."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    mask: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.mask], 1)


@torch.no_grad()
def rollout(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
            temperature: float, top_k: int, top_p: float, eos_id: int | None, pad_id: int,
            generator: torch.Generator) -> Rollout:
    """Sample completions [B, max_new_tokens] with a KV cache, from left-padded prompts [B, P].

    A row stops after EOS; later positions hold `pad_id` with mask 0.
    """
    B = prompt_ids.shape[0]
    attention = prompt_mask.long()
    out = model(input_ids=prompt_ids, attention_mask=attention, position_ids=position_ids(attention), use_cache=True)
    done = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
    tokens, real = [], []
    for step in range(max_new_tokens):
        probs = torch.softmax(process_logits(out.logits[:, -1].float(), temperature, top_k, top_p), -1)
        token = torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(-1).to(probs.device)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        tokens.append(token)
        real.append(~done)
        if eos_id is not None:
            done = done | (token == eos_id)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], 1)
        out = model(input_ids=token[:, None], attention_mask=attention,
                    position_ids=position_ids(attention)[:, -1:], past_key_values=out.past_key_values,
                    use_cache=True)
    completion = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=prompt_ids.device)
    mask = torch.zeros((B, max_new_tokens), dtype=torch.long, device=prompt_ids.device)
    completion[:, :len(tokens)] = torch.stack(tokens, 1)
    mask[:, :len(real)] = torch.stack(real, 1).long()
    return Rollout(prompt_ids, prompt_mask.long(), completion, mask)


def completion_logprobs(logits: torch.Tensor, completion_ids: torch.Tensor, prompt_len: int, cfg: PPOConfig,
                        truncate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion tokens [B, T] and full log-probs [B, T, V] under the sampling transform.

    Non-finite token log-probs (only pads can be outside the support) are returned as 0.
    `truncate=False` applies the temperature only: the reference is the base model's whole distribution
    (top-k/top-p would give it a support of its own, and every KL to it would be infinite).
    """
    T = completion_ids.shape[1]
    step_logits = logits[:, prompt_len - 1:prompt_len - 1 + T].float()
    B, _, V = step_logits.shape
    top_k, top_p = (cfg.top_k, cfg.top_p) if truncate else (0, 1.0)
    processed = process_logits(step_logits.reshape(B * T, V), cfg.temperature, top_k, top_p).reshape(B, T, V)
    logp_all = torch.log_softmax(processed, -1)
    logp = logp_all.gather(-1, completion_ids[..., None]).squeeze(-1)
    # a pad may lie outside the top-k/top-p support (-inf): set to 0 so no nan reaches any gradient
    return torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp)), logp_all


def entropy(logp_all: torch.Tensor) -> torch.Tensor:
    """Entropy [...] in nats from log-probs [..., V] (tokens outside the support contribute 0)."""
    p = logp_all.exp()
    return -(p * torch.where(p > 0, logp_all, torch.zeros_like(p))).sum(-1)  # select first: 0 * -inf is nan


# ----------------------------------------------------------------------------------------------
# world, prompts, texts


def load_prompts(cfg: PPOConfig) -> list[str]:
    if cfg.prompts is not None:
        return [r["prompt"] for r in read_jsonl(cfg.prompts, required=("prompt",))]
    world = world_of_model(cfg.base)
    if world is None:
        raise InputError("no prompts given and the base model is not a review world's",
                         cfg.base, "pass --prompts FILE.jsonl with a `prompt` field")
    return world.prompts


def generation_defaults(cfg: PPOConfig) -> int:
    """max_new_tokens: the config's, else the world's generation default, else 24."""
    if cfg.max_new_tokens is not None:
        return cfg.max_new_tokens
    world = world_of_model(cfg.base)
    if world is not None and "max_new_tokens" in world.generation:
        return int(world.generation["max_new_tokens"])
    return 24


def grammar_checker(base: str):
    """The review world's `is_grammatical`, or None outside the world."""
    from rewardlab.world import is_grammatical

    return None if world_of_model(base) is None else is_grammatical


def decode(tokenizer, ro: Rollout) -> list[str]:
    return [tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True).strip()
            for ids, m in zip(ro.completion_ids, ro.mask)]


def encode_prompts(tokenizer, prompts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def load_policy_and_tokenizer(path: str):
    """(float32 causal LM on the CPU in eval mode, tokenizer) via `rewardlab.models.load_model`."""
    from rewardlab.models import load_model

    model, tokenizer = load_model(path, device="cpu", dtype="float32")
    return model.eval(), tokenizer


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
    """State dict without the second name of tied tensors (safetensors refuses shared memory)."""
    tensors, tied, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            tied[name] = seen[tensor.data_ptr()]
        else:
            seen[tensor.data_ptr()] = name
            tensors[name] = tensor
    return tensors, {"tied": tied}


def _load_untied_state(model: nn.Module, path: Path) -> None:
    tensors, meta = load_tensors(path)
    for name, source in meta["tied"].items():
        tensors[name] = tensors[source]
    model.load_state_dict(tensors)


def save_checkpoint(folder: Path, model: PolicyWithValue, optimizer, generator: torch.Generator, rank: int,
                    is_main: bool, state: dict) -> None:
    """Write this process's part of a checkpoint into `.checkpoint.partial` (`commit_checkpoint` swaps it in)."""
    partial = folder / ".checkpoint.partial"
    save_tensors(partial / f"rng_{rank}.safetensors", {"generator": generator.get_state()})
    if is_main:
        save_tensors(partial / "model.safetensors", *_untied_state(model))
        tensors, meta = _optimizer_tensors(optimizer)
        save_tensors(partial / "optimizer.safetensors", tensors, meta)
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
# evaluation


@torch.no_grad()
def evaluate(model, ref, tokenizer, prompts, cfg: PPOConfig, reward, is_grammatical, max_new_tokens: int,
             n: int, seed: int, batch: int = 64) -> dict:
    """Fresh samples from `model`: rewards, exact KL(model || ref) per completion, grammatical flags."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    texts, prompt_texts, kls = [], [], []
    for start in range(0, n, batch):
        size = min(batch, n - start)
        idx = torch.randint(len(prompts), (size,), generator=generator).tolist()
        ids, pmask = encode_prompts(tokenizer, [prompts[i] for i in idx], device)
        ro = rollout(model, ids, pmask, max_new_tokens=max_new_tokens, temperature=cfg.temperature,
                     top_k=cfg.top_k, top_p=cfg.top_p, eos_id=tokenizer.eos_token_id,
                     pad_id=tokenizer.pad_token_id, generator=generator)
        kwargs = dict(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                      position_ids=position_ids(ro.attention_mask), use_cache=False)
        P = ids.shape[1]
        _, logp_all = completion_logprobs(model(**kwargs).logits, ro.completion_ids, P, cfg)
        _, ref_all = completion_logprobs(ref(**kwargs).logits, ro.completion_ids, P, cfg, truncate=False)
        kls += torch.where(ro.mask.bool(), exact_kl(logp_all, ref_all), 0.0).sum(1).tolist()
        texts += decode(tokenizer, ro)
        prompt_texts += [prompts[i] for i in idx]
    rewards = reward(texts)
    out = {"texts": texts, "prompts": prompt_texts, "rewards": rewards, "kl": kls}
    if is_grammatical is not None:
        out["grammatical"] = [bool(is_grammatical(t, prompt=p)) for p, t in zip(prompt_texts, texts)]
    return out


def _estimate(values) -> dict:
    from rewardlab.stats import mean

    return mean(values).to_dict()


# ----------------------------------------------------------------------------------------------
# training


def train_ppo(config: PPOConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train a policy with PPO into `out_dir`; resume from `out_dir/checkpoint` if one is there.

    Writes policy/ (Hugging Face folder), value_head.safetensors, config.json, metrics.jsonl,
    samples.jsonl and summary.json; returns the summary. `progress`: a bar over phases on stderr
    with the phase's reward, exact KL and grammatical rate.
    """
    from accelerate import Accelerator

    from rewardlab.rewards import get_reward

    cfg = config
    cfg.validate()
    out = Path(out_dir)
    t_start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    accelerator = Accelerator(cpu=cfg.cpu)
    device, rank, world_size = accelerator.device, accelerator.process_index, accelerator.num_processes
    if cfg.batch_size % world_size:
        raise InputError(f"batch_size {cfg.batch_size} is not divisible by {world_size} processes", "PPO config")
    local_batch = cfg.batch_size // world_size
    if local_batch % cfg.minibatch_size:
        raise InputError(f"per-process batch {local_batch} is not divisible by minibatch_size {cfg.minibatch_size}",
                         "PPO config")

    reward = get_reward(cfg.reward)
    prompts = load_prompts(cfg)
    max_new_tokens = generation_defaults(cfg)
    policy, tokenizer = load_policy_and_tokenizer(cfg.base)
    parse_site(cfg.value_site, n_layers(policy))  # a bad --value-site fails here, not after the base evaluation
    ref, _ = load_policy_and_tokenizer(cfg.base)
    ref.requires_grad_(False)
    ref.to(device)
    with torch.random.fork_rng(devices=[]):  # seed the value head's initial weights without touching global RNG
        torch.manual_seed(cfg.seed)
        value_head = ValueHead(d_model(policy), cfg.value_head, cfg.value_site)
    model = PolicyWithValue(policy, value_head).to(device)
    optimizer = torch.optim.Adam([
        {"params": list(model.policy.parameters()), "lr": cfg.lr},
        {"params": list(model.value_head.parameters()), "lr": cfg.value_lr},
    ], eps=1e-5)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    kl_ctl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)

    start_phase, elapsed_before, metrics, samples = 0, 0.0, [], []
    ckpt = find_checkpoint(out)
    if ckpt is not None:
        state = read_json(ckpt / "state.json")
        saved = {k: v for k, v in state["config"].items() if k != "phases"}
        mine = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "phases"}
        if saved != mine:
            diff = sorted(k for k in mine if saved.get(k) != mine[k])
            raise InputError(f"checkpoint was written with a different config ({', '.join(diff)})", str(ckpt),
                             "use the same settings, or another --out folder")
        _load_untied_state(model, ckpt / "model.safetensors")
        _load_optimizer(optimizer, *load_tensors(ckpt / "optimizer.safetensors"))
        generator.set_state(load_tensors(ckpt / f"rng_{rank}.safetensors")[0]["generator"])
        start_phase, elapsed_before, kl_ctl.coef = state["phase"], state["seconds"], state["kl_coef"]
        metrics = [m for m in read_jsonl(out / "metrics.jsonl") if m["phase"] < start_phase] \
            if (out / "metrics.jsonl").is_file() else []
        samples = [s for s in read_jsonl(out / "samples.jsonl") if s["phase"] < start_phase] \
            if (out / "samples.jsonl").is_file() else []
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: PolicyWithValue = accelerator.unwrap_model(model)
    is_grammatical = grammar_checker(cfg.base)

    base_eval_path = out / "base_eval.json"
    if base_eval_path.is_file():
        base_eval = read_json(base_eval_path)
    else:
        base_eval = evaluate(ref, ref, tokenizer, prompts, cfg, reward, is_grammatical, max_new_tokens,
                             cfg.eval_samples, seed=cfg.seed + 10_000)
        if accelerator.is_main_process:
            write_json(base_eval_path, base_eval)
    base_mean = sum(base_eval["rewards"]) / len(base_eval["rewards"])
    base_std = float(torch.tensor(base_eval["rewards"]).std())

    bar = tqdm(total=cfg.phases, initial=start_phase, desc=f"PPO (kl_coef {cfg.kl_coef:g})", unit="phase",
               leave=False, disable=not (progress and accelerator.is_main_process))
    for phase in range(start_phase, cfg.phases):
        t0 = time.perf_counter()
        # 1. rollout
        idx = torch.randint(len(prompts), (local_batch,), generator=generator).tolist()
        prompt_ids, prompt_mask = encode_prompts(tokenizer, [prompts[i] for i in idx], device)
        ro = rollout(unwrapped.policy, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                     temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                     eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, generator=generator)
        texts = decode(tokenizer, ro)
        t_gen = time.perf_counter() - t0

        # 2. score: reward, old log-probs, reference log-probs, values, KL
        t1 = time.perf_counter()
        scores = torch.tensor(reward(texts), dtype=torch.float32, device=device)
        P, mask = prompt_ids.shape[1], ro.mask
        maskf = mask.float()
        with torch.no_grad():
            logits, values = unwrapped(ro.input_ids, ro.attention_mask)
            old_logp, logp_all = completion_logprobs(logits, ro.completion_ids, P, cfg)
            values = values[:, P - 1:P - 1 + mask.shape[1]] * maskf
            ref_logits = ref(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                             position_ids=position_ids(ro.attention_mask), use_cache=False).logits
            ref_logp, ref_all = completion_logprobs(ref_logits, ro.completion_ids, P, cfg, truncate=False)
            real = mask.bool()
            kl = torch.where(real, kl_per_token(cfg.kl_estimator, old_logp, ref_logp, logp_all, ref_all), 0.0)
            kl_exact = torch.where(real, exact_kl(logp_all, ref_all), 0.0)
            del logits, ref_logits, logp_all, ref_all

            # 3. per-token rewards, GAE, whitening
            last = mask.sum(1) - 1  # index of the last real token
            rewards = -kl_ctl.coef * kl if cfg.kl_in == "reward" else torch.zeros_like(kl)
            rewards[torch.arange(len(last)), last] += scores
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)

        # 4. learn
        stats = {"pg_loss": [], "vf_loss": [], "entropy": [], "clipfrac": [], "approx_kl": [], "grad_norm": [],
                 "vf_clipfrac": []}
        first_ratio_dev = None
        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(local_batch, generator=generator)
            for mb_start in range(0, local_batch, cfg.minibatch_size):
                mb = order[mb_start:mb_start + cfg.minibatch_size].to(device)
                m = maskf[mb]
                new_logits, new_values = model(ro.input_ids[mb], ro.attention_mask[mb])
                new_logp, new_all = completion_logprobs(new_logits, ro.completion_ids[mb], P, cfg)
                new_values = new_values[:, P - 1:P - 1 + mask.shape[1]]
                log_ratio = torch.where(m.bool(), new_logp - old_logp[mb], 0.0)  # pads may hold -inf
                ratio = log_ratio.exp()
                if first_ratio_dev is None:
                    first_ratio_dev = float(((ratio.detach() - 1).abs() * m).max())
                    if first_ratio_dev > RATIO_TOLERANCE:
                        raise RuntimeError(f"probability ratio is {1 + first_ratio_dev:.6f} on the first minibatch "
                                           "of a phase: sampling and scoring differ")
                adv = advantages[mb]
                pg_loss = masked_mean(torch.max(-adv * ratio,
                                                -adv * ratio.clamp(1 - cfg.cliprange, 1 + cfg.cliprange)), m)
                v_clipped = values[mb] + (new_values - values[mb]).clamp(-cfg.cliprange_value, cfg.cliprange_value)
                vf_loss = 0.5 * masked_mean(torch.max((new_values - returns[mb]) ** 2,
                                                      (v_clipped - returns[mb]) ** 2), m)
                ent = masked_mean(entropy(new_all), m)
                loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * ent
                if cfg.kl_in == "loss":
                    ref_mb_all = None
                    if cfg.kl_estimator.startswith("exact"):
                        with torch.no_grad():
                            ref_mb_logits = ref(input_ids=ro.input_ids[mb], attention_mask=ro.attention_mask[mb],
                                                position_ids=position_ids(ro.attention_mask[mb]), use_cache=False).logits
                            _, ref_mb_all = completion_logprobs(ref_mb_logits, ro.completion_ids[mb], P, cfg,
                                                                truncate=False)
                    kl_new = kl_per_token(cfg.kl_estimator, new_logp, ref_logp[mb], new_all, ref_mb_all)
                    loss = loss + kl_ctl.coef * masked_mean(kl_new, m)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"non-finite PPO loss in phase {phase} (pg {pg_loss.item()}, "
                                       f"vf {vf_loss.item()}); lower lr or check the reward scale")
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                with torch.no_grad():
                    stats["pg_loss"].append(float(pg_loss))
                    stats["vf_loss"].append(float(vf_loss))
                    stats["entropy"].append(float(ent))
                    stats["clipfrac"].append(float(masked_mean(((ratio - 1).abs() > cfg.cliprange).float(), m)))
                    stats["vf_clipfrac"].append(float(masked_mean(
                        ((new_values - values[mb]).abs() > cfg.cliprange_value).float(), m)))
                    stats["approx_kl"].append(float(masked_mean(0.5 * log_ratio ** 2, m)))
                    stats["grad_norm"].append(float(grad_norm))
        t_learn = time.perf_counter() - t1

        # 5. log (statistics over all processes)
        g_scores = accelerator.gather(scores)
        g_kl_exact = accelerator.gather(kl_exact.sum(1))
        g_kl = accelerator.gather(kl.sum(1))
        g_tokens = accelerator.gather(mask.sum(1))
        g_returns, g_values = accelerator.gather(returns), accelerator.gather(values)
        g_mask = accelerator.gather(maskf)
        explained_var = 1 - masked_var(g_returns - g_values, g_mask) / masked_var(g_returns, g_mask)
        kl_coef_used = kl_ctl.coef
        kl_ctl.update(float(g_kl.mean()), cfg.batch_size)
        seconds = t_gen + t_learn
        row = {
            "phase": phase,
            "reward_mean": float(g_scores.mean()), "reward_std": float(g_scores.std()),
            "reward_gain_base_std": (float(g_scores.mean()) - base_mean) / base_std if base_std > 0 else None,
            "kl_exact": float(g_kl_exact.mean()), f"kl_{cfg.kl_estimator}": float(g_kl.mean()),
            "kl_coef": kl_coef_used,
            "entropy": sum(stats["entropy"]) / len(stats["entropy"]),
            "clipfrac": sum(stats["clipfrac"]) / len(stats["clipfrac"]),
            "vf_clipfrac": sum(stats["vf_clipfrac"]) / len(stats["vf_clipfrac"]),
            "approx_kl": sum(stats["approx_kl"]) / len(stats["approx_kl"]),
            "pg_loss": sum(stats["pg_loss"]) / len(stats["pg_loss"]),
            "vf_loss": sum(stats["vf_loss"]) / len(stats["vf_loss"]),
            "value_explained_variance": float(explained_var),
            "grad_norm": sum(stats["grad_norm"]) / len(stats["grad_norm"]),
            "first_ratio_max_dev": first_ratio_dev,
            "completion_tokens_mean": float(g_tokens.float().mean()),
            "samples_per_s": cfg.batch_size / seconds,
            "tokens_per_s": float(g_tokens.sum()) / seconds,
            "gen_seconds": t_gen, "learn_seconds": t_learn,
        }
        if is_grammatical is not None:
            flags = torch.tensor([float(is_grammatical(t, prompt=prompts[i])) for i, t in zip(idx, texts)], device=device)
            row["grammatical_rate"] = float(accelerator.gather(flags).mean())
        metrics.append(row)
        bar.update()
        bar.set_postfix({k: f"{row[k]:.3g}" for k in ("reward_mean", "kl_exact", "grammatical_rate") if k in row})
        samples += [{"phase": phase, "prompt": prompts[i], "completion": t, "reward": float(s)}
                    for i, t, s in list(zip(idx, texts, scores.tolist()))[:cfg.samples_per_phase]]
        elapsed = elapsed_before + time.perf_counter() - t_start
        if accelerator.is_main_process:
            write_jsonl(out / "metrics.jsonl", metrics)
            write_jsonl(out / "samples.jsonl", samples)
        if (phase + 1) % cfg.checkpoint_every == 0 or phase + 1 == cfg.phases:
            accelerator.wait_for_everyone()
            save_checkpoint(out, unwrapped, optimizer, generator, rank, accelerator.is_main_process,
                            {"phase": phase + 1, "seconds": elapsed, "kl_coef": kl_ctl.coef,
                             "config": dataclasses.asdict(cfg)})
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                commit_checkpoint(out)
            accelerator.wait_for_everyone()

    bar.close()
    # final evaluation and outputs
    t_eval = time.perf_counter()
    policy_eval = evaluate(unwrapped.policy, ref, tokenizer, prompts, cfg, reward, is_grammatical, max_new_tokens,
                           cfg.eval_samples, seed=cfg.seed + 20_000)
    train_seconds = elapsed_before + t_eval - t_start
    summary = {
        "reward": cfg.reward,
        "reward_base": base_mean, "reward_base_std": base_std,
        "reward_policy": sum(policy_eval["rewards"]) / len(policy_eval["rewards"]),
        "reward_policy_std": float(torch.tensor(policy_eval["rewards"]).std()),
        "reward_base_ci": _estimate(base_eval["rewards"]), "reward_policy_ci": _estimate(policy_eval["rewards"]),
        "kl_exact": sum(policy_eval["kl"]) / len(policy_eval["kl"]),
        "kl_exact_ci": _estimate(policy_eval["kl"]),
        "n_eval": cfg.eval_samples,
        "phases": cfg.phases, "processes": world_size, "train_seconds": train_seconds,
    }
    summary["reward_gain_base_std"] = ((summary["reward_policy"] - base_mean) / base_std) if base_std > 0 else None
    if is_grammatical is not None:
        summary["grammatical_rate"] = sum(policy_eval["grammatical"]) / len(policy_eval["grammatical"])
        summary["grammatical_rate_base"] = sum(base_eval["grammatical"]) / len(base_eval["grammatical"])
        summary["grammatical_rate_ci"] = _estimate([float(g) for g in policy_eval["grammatical"]])
    summary["seconds"] = elapsed_before + time.perf_counter() - t_start
    if accelerator.is_main_process:
        unwrapped.policy.save_pretrained(out / "policy")
        tokenizer.save_pretrained(out / "policy")
        unwrapped.value_head.save(out)
        write_json(out / "config.json", dataclasses.asdict(cfg))
        write_jsonl(out / "eval_samples.jsonl", [
            {"prompt": p, "completion": t, "reward": r, "kl_exact": k}
            for p, t, r, k in zip(policy_eval["prompts"], policy_eval["texts"], policy_eval["rewards"],
                                  policy_eval["kl"])])
        write_json(out / "summary.json", summary)
    accelerator.wait_for_everyone()
    return summary


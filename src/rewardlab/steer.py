"""Steering with effect measurements: add alpha * unit direction at a site during generation.

    result = dose_response(model, tokenizer, prompts, {"mean_diff": d}, SteerConfig(site=...), reward_fn, ...)

alpha is in units of the site's typical activation norm (the mean L2 norm of the site's activation
over the completion tokens the unsteered model writes for the prompts), so alpha 0.5 adds a vector
half as long as a typical activation. `where="all"` edits every position (prompt and generated);
`where="completion"` edits only the positions that pick new tokens (the last prompt token, then
each generated token).

For each direction and alpha, on the same prompts and with the same sampling seed (common random
numbers, so differences between alphas are not sampling noise): the mean true reward and its paired
effect against alpha 0, the probe score and the implicit reward (if given), the grammatical rate
(with a checker) or the perplexity under the unsteered model, and the KL from the unsteered to the
steered next-token distribution on neutral prompts. `n_random` random unit directions at the same
alphas are the control, shared by all directions: an effect is only interesting beyond the largest
random one. The steered runs (every direction or control at every nonzero alpha) are sampled several at a
time in one decoding loop (`steered_runs`, up to `max_rows` rows and `max_loop_mib` of KV cache and
logits), each with its own generator of seed cfg.seed, so each run draws exactly the random numbers it
would draw alone.

Fluency: a reward effect bought by breaking the text is not steering. An alpha keeps fluency when
the grammatical rate (with a checker) is at least `min_grammatical_ratio` times the unsteered rate,
or else when the perplexity under the unsteered model is at most `max_perplexity_ratio` times the
unsteered samples' (`fluency`). The headline effect over random is read at the largest and the most
negative alphas that keep fluency (`summarize`), never beyond them; every row records its fluency
beside its effect, and every steered text is returned under "samples". Every hook is removed when generation ends, also on an exception
(`rewardlab.sites.intervene`).

`reward_gradient_direction` is the causal reference for any representational direction: the
score-function (REINFORCE) estimate of d E[reward] / d v, v the vector added at the site, from the
model's own samples. To first order a random unit direction moves the reward by about
|gradient| / sqrt(d_model) (either sign) and a direction at cosine c with the gradient by
c * |gradient|, so the ratio to the largest of 8 random effects is about c * sqrt(d_model) / 2.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rewardlab import stats
from rewardlab.acts import collect_activations
from rewardlab.diff.implicit import ScoreConfig, implicit_rewards
from rewardlab.diff.logprobs import completion_logprobs
from rewardlab.errors import InputError
from rewardlab.sampling import decoding_row_bytes, generate
from rewardlab.sites import add_vector, d_model, intervene, last_position, n_layers, parse_site
from rewardlab.text import encode, encode_prompts, pad_token_id, prompt_token_ids, right_padded

WHERE = ("all", "completion")


@dataclass
class SteerConfig:
    site: str  # site the direction is added at, e.g. blocks.2.hook_resid_post
    alphas: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.25, 0.5, 1.0)  # multiples of the typical norm
    where: str = "all"  # positions steered: all (prompt and generated) | completion (those that pick new tokens)
    n_random: int = 8  # random control directions
    max_new_tokens: int = 32  # tokens generated per steered completion
    temperature: float = 1.0  # sampling temperature
    top_k: int = 0  # sample from the k most likely tokens (0: off)
    top_p: float = 1.0  # nucleus sampling mass (1.0: off)
    batch_size: int = 64  # prompts per generation batch, and samples per forward pass when measuring them (probe score, implicit reward, perplexity)
    seed: int = 0  # sampling seed (same for every alpha and direction) and random-direction seed
    n_boot: int = 1000  # bootstrap resamples per CI
    max_perplexity_ratio: float = 2.0  # fluency holds while perplexity <= this x the unsteered (no checker)
    min_grammatical_ratio: float = 0.8  # fluency holds while the grammatical rate is >= this x the unsteered (checker)
    max_rows: int = 2048  # rows per decoding loop: batch_size prompts x the steering runs (alpha, direction)
    # sampled together, each run with its own random stream (the same samples as one run at a time)
    max_loop_mib: float = 1024.0  # memory one decoding loop may hold (KV cache and logits, MiB; rewardlab.sampling.decoding_row_bytes): caps the rows below max_rows on bigger models


def typical_norm(model, tokenizer, records: Sequence[dict], site: str, batch_size: int = 64) -> float:
    """Mean L2 norm of `site`'s activation over the completion tokens of prompt/completion `records`."""
    acts = collect_activations(model, tokenizer, records, [site], ["tokens"], batch_size)[f"{site}|tokens"]
    if not len(acts):
        raise InputError("the unsteered completions are all empty: no activations to take a norm from",
                         fix="raise max_new_tokens or check the prompts")
    return float(acts.norm(dim=-1).mean())


@contextmanager
def steering(model, site: str, vector: torch.Tensor, where: str = "all"):
    """Inside the block, `site`'s activation gets + vector ([d_model]) at the `where` positions."""
    if where not in WHERE:
        raise InputError(f"unknown steering positions {where!r}", fix=f"use {' or '.join(WHERE)}")
    with intervene(model, site, add_vector(vector, None if where == "all" else last_position)):
        yield


def run_groups(n_runs: int, cfg: SteerConfig, row_bytes: int = 0) -> list[range]:
    """The steering runs 0..n_runs-1 in consecutive groups of nearly equal size, each group's rows
    (cfg.batch_size x its runs) at most cfg.max_rows and, given the bytes of one row (`row_bytes`,
    `decoding_row_bytes`), within cfg.max_loop_mib (at least one run per group)."""
    rows = cfg.max_rows if row_bytes <= 0 else min(cfg.max_rows, int(cfg.max_loop_mib * 2**20 // row_bytes))
    per = max(1, rows // cfg.batch_size)
    n_groups = -(-n_runs // per)
    size = -(-n_runs // max(1, n_groups))
    return [range(i, min(i + size, n_runs)) for i in range(0, n_runs, size)]


def steered_runs(model, tokenizer, prompts: Sequence[str], vectors: torch.Tensor, cfg: SteerConfig,
                 on_group: Callable[[int], None] | None = None) -> list[list]:
    """Per vector of `vectors` [R, d_model] added at cfg.site: the samples of `prompts`, each run with
    its own sampling stream of seed cfg.seed (`steered_samples` of that vector), several runs per
    decoding loop (`run_groups`; the copies of `rewardlab.sampling.generate`). on_group(n): called
    with each finished group's number of runs."""
    out = []
    longest = max(len(ids) for ids in prompt_token_ids(tokenizer, prompts))
    for group in run_groups(len(vectors), cfg, decoding_row_bytes(model, longest + cfg.max_new_tokens)):
        gens = [torch.Generator().manual_seed(cfg.seed) for _ in group]
        with steering(model, cfg.site, vectors[group.start:group.stop], cfg.where):
            flat = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_k=cfg.top_k, top_p=cfg.top_p, generator=gens, batch_size=cfg.batch_size)
        out += [flat[j * len(prompts):(j + 1) * len(prompts)] for j in range(len(group))]
        if on_group is not None:
            on_group(len(group))
    return out


def steered_samples(model, tokenizer, prompts: Sequence[str], vector: torch.Tensor | None, cfg: SteerConfig):
    """Samples with `vector` [d_model] added at cfg.site (None: unsteered), sampling seed cfg.seed."""
    if vector is None:
        return generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        top_k=cfg.top_k, top_p=cfg.top_p, generator=torch.Generator().manual_seed(cfg.seed),
                        batch_size=cfg.batch_size)
    return steered_runs(model, tokenizer, prompts, torch.as_tensor(vector)[None], cfg)[0]


def next_token_kl(model, tokenizer, prompts: Sequence[str], vector: torch.Tensor, cfg: SteerConfig) -> np.ndarray:
    """Per prompt: KL(p_unsteered || p_steered) of the next-token distribution after the prompt (nats),
    [n]; for vectors [R, d_model], [R, n] (the unsteered pass once per batch, the steered ones for
    several vectors at a time as in `steered_runs`)."""
    device = next(model.parameters()).device
    vectors = torch.as_tensor(vector)
    many = vectors.ndim == 2
    vectors = vectors if many else vectors[None]
    out = []
    for i in range(0, len(prompts), cfg.batch_size):
        input_ids, mask, positions = encode_prompts(tokenizer, prompts[i:i + cfg.batch_size], device)
        with torch.no_grad():
            lp = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            lp = lp.log_softmax(-1)
            kls = []
            for group in run_groups(len(vectors), cfg):
                r = len(group)
                with steering(model, cfg.site, vectors[group.start:group.stop], cfg.where):
                    steered = model(input_ids=input_ids.repeat(r, 1), attention_mask=mask.repeat(r, 1),
                                    position_ids=positions.repeat(r, 1)).logits[:, -1].float()
                lq = steered.log_softmax(-1).view(r, len(lp), -1)
                kls.append((lp.exp() * (lp - lq)).sum(-1).cpu().numpy())
        out.append(np.concatenate(kls))
    kl = np.concatenate(out, axis=1)
    return kl if many else kl[0]


def random_directions(d: int, n: int, seed: int) -> torch.Tensor:
    """[n, d] random unit vectors (Gaussian, normalized) from torch.Generator(seed)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (v / v.norm(dim=-1, keepdim=True)).float()


def steered_logprobs(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], vector: torch.Tensor,
                     site: str, where: str = "completion") -> torch.Tensor:
    """[n] log p(completion | prompt) with `vector` added at `site` where generation under `steering`
    adds it ("completion": the positions that predict completion tokens; "all": every position), in
    one teacher-forced batch; differentiable in `vector`. Completions are re-tokenized text (no eos)."""
    if where not in WHERE:
        raise InputError(f"unknown steering positions {where!r}", fix=f"use {' or '.join(WHERE)}")
    encoded = encode(tokenizer, prompts, completions)
    device = next(model.parameters()).device
    ids, attention = (t.to(device) for t in right_padded(encoded, pad_token_id(tokenizer)))
    predicts = torch.zeros(ids.shape, dtype=torch.bool, device=device)  # positions predicting completion tokens
    for j, e in enumerate(encoded):
        predicts[j, e.prompt_len - 1:len(e.ids) - 1] = True
    with intervene(model, site, add_vector(vector, None if where == "all" else predicts)):
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    token_logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    return (token_logp * predicts[:, :-1]).sum(1)


def reward_gradient_direction(model, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                              rewards: Sequence[float], site: str, where: str = "completion",
                              batch_size: int = 64) -> np.ndarray:
    """Score-function estimate of d E[reward] / d v at v = 0, v [d_model] added at `site`; returns [d].

    The completions must be the model's own samples for the prompts (unsteered). Each sample's
    advantage is its reward minus the mean reward of the other samples of its prompt (leave-one-out;
    the overall mean for a prompt sampled once); the estimate is
    mean_i advantage_i * d log p(completion_i | prompt_i) / d v (`steered_logprobs`). The choice to
    stop (eos) is not in the completion text and is left out.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    groups = np.asarray(prompts, dtype=object)
    advantage = rewards - rewards.mean()
    for p in set(prompts):
        m = groups == p
        if m.sum() > 1:
            advantage[m] = rewards[m] - (rewards[m].sum() - rewards[m]) / (m.sum() - 1)
    device = next(model.parameters()).device
    v = torch.zeros(model.get_output_embeddings().weight.shape[1], device=device, requires_grad=True)
    for i in range(0, len(prompts), batch_size):
        logp = steered_logprobs(model, tokenizer, prompts[i:i + batch_size], completions[i:i + batch_size], v,
                                site, where)
        weights = torch.as_tensor(advantage[i:i + batch_size], dtype=torch.float32, device=device)
        (weights @ logp / len(prompts)).backward()
    return v.grad.double().cpu().numpy()


def dose_response(model, tokenizer, prompts: Sequence[str], directions: dict, cfg: SteerConfig,
                  reward_fn: Callable[[list[str], list[str]], list[float]], *, probe=None, base=None,
                  checker: Callable[[str, str], bool] | None = None, neutral_prompts: Sequence[str] | None = None,
                  progress: bool = True, keep_random_rewards: bool = False) -> dict:
    """Steer along each of `directions` ({name: [d], any norm}) at each alpha of cfg, with shared
    random-direction controls; reward_fn(completions, prompts) scores the steered samples (a
    `rewards.get_reward` reward, prompt-aware ones included).

    probe: a `Probe` scored on the unsteered model's activations of each steered text; base: a base
    model for the implicit reward of the (unsteered) model against it; checker(completion, prompt):
    grammaticality, else perplexity under the unsteered model is reported; neutral_prompts: for the
    next-token KL (default: the prompts). Returns {"directions": {name: {"rows", "summary"}},
    "random_effects": [n_random][n_alphas], ...} (`report.figures.dose_response` draws it); with
    `keep_random_rewards` also "random_rewards": [n_random][n_alphas][n prompts], each random direction's
    per-sample rewards (alpha 0: the unsteered ones), for a paired bootstrap against the controls.
    progress: a bar over the sampling runs (the unsteered one, then one per direction or control and nonzero
    alpha, sampled several at a time: `steered_runs`) on stderr.
    """
    parse_site(cfg.site, n_layers(model))
    width = d_model(model)
    if probe is not None:
        parse_site(probe.meta.get("site", ""), n_layers(model))
        if probe.mean.shape[-1] != width:
            raise InputError(f"the probe reads {probe.mean.shape[-1]} dimensions but the model's width is {width}",
                             probe.meta.get("site"), "use a probe trained on this model")
    if 0.0 not in cfg.alphas:
        raise InputError("the alphas must include 0 (the unsteered reference)", fix="add 0 to --alphas")
    if not directions:
        raise InputError("no steering direction given", fix="pass at least one direction")
    units = {}
    for name, direction in directions.items():
        direction = torch.as_tensor(np.asarray(direction), dtype=torch.float32)
        if not torch.isfinite(direction).all() or direction.norm() == 0:
            raise InputError(f"the {name} direction is zero or not finite: nothing to steer along",
                             fix="check that the records' target varies")
        if direction.shape != (width,):
            raise InputError(f"the {name} direction has shape {tuple(direction.shape)}, the model's width is {width}",
                             cfg.site, "use a direction (probe) taken from this model")
        units[name] = direction / direction.norm()
    groups = list(prompts)
    kw = dict(n_boot=cfg.n_boot, seed=cfg.seed)
    neutral = list(neutral_prompts or prompts)
    n_steered = sum(a != 0 for a in cfg.alphas) * (len(units) + cfg.n_random)
    bar = tqdm(total=1 + n_steered, desc=f"steering at {cfg.site}", unit="run", leave=False, disable=not progress)

    def scored(samples) -> np.ndarray:
        return np.asarray(reward_fn([s.completion for s in samples], [s.prompt for s in samples]), dtype=np.float64)

    reference_samples = steered_samples(model, tokenizer, prompts, None, cfg)
    reference = scored(reference_samples)
    bar.update()
    scale = typical_norm(model, tokenizer, [{"prompt": s.prompt, "completion": s.completion}
                                            for s in reference_samples], cfg.site, cfg.batch_size)
    reference_measures = _text_measures(model, tokenizer, reference_samples, probe, base, checker, groups, kw,
                                        cfg.batch_size)
    result = {"config": asdict(cfg), "typical_norm": scale, "n_prompts": len(prompts), "alphas": list(cfg.alphas),
              "directions": {}, "samples": []}
    # every (direction or random control, nonzero alpha) run, sampled together (`steered_runs`)
    controls = random_directions(next(iter(units.values())).numel(), cfg.n_random, cfg.seed + 1)
    steered_alphas = [a for a in cfg.alphas if a != 0]
    runs = [(name, alpha, alpha * scale * d) for name, d in [*units.items(), *enumerate(controls)]
            for alpha in steered_alphas]
    samples_of = dict(zip([(name, alpha) for name, alpha, _ in runs],
                          steered_runs(model, tokenizer, prompts, torch.stack([v for _, _, v in runs]), cfg,
                                       on_group=bar.update)))
    steered_kl = dict(zip([(name, alpha) for name, alpha, _ in runs[:len(units) * len(steered_alphas)]],
                          next_token_kl(model, tokenizer, neutral, torch.stack([v for _, _, v in runs[:len(units) * len(
                              steered_alphas)]]), cfg)))
    for name in units:
        rows = []
        for alpha in cfg.alphas:
            samples, reward = ((reference_samples, reference) if alpha == 0 else
                               (samples_of[name, alpha], scored(samples_of[name, alpha])))
            row = {"alpha": alpha, "reward_mean": stats.mean(reward, groups=groups, **kw).to_dict(),
                   "effect": stats.mean(reward - reference, groups=groups, **kw).to_dict()}
            row.update(reference_measures if alpha == 0 else
                       _text_measures(model, tokenizer, samples, probe, base, checker, groups, kw, cfg.batch_size))
            row.update(fluency(row, reference_measures, cfg))
            row["kl_neutral"] = 0.0 if alpha == 0 else stats.mean(steered_kl[name, alpha], **kw).to_dict()
            rows.append(row)
            result["samples"] += [{"direction": name, "alpha": alpha, "prompt": s.prompt, "completion": s.completion,
                                   "reward": float(r)} for s, r in zip(samples, reward)]
        result["directions"][name] = {"rows": rows}
    random_rewards = [[reference if alpha == 0 else scored(samples_of[i, alpha]) for alpha in cfg.alphas]
                      for i in range(cfg.n_random)]
    result["random_effects"] = [[0.0 if alpha == 0 else float(np.mean(r - reference)) for alpha, r in zip(cfg.alphas, rs)]
                                for rs in random_rewards]
    if keep_random_rewards:
        result["random_rewards"] = [[r.tolist() for r in rs] for rs in random_rewards]
    bar.close()
    for entry in result["directions"].values():
        entry["summary"] = summarize(result["alphas"], entry["rows"], result["random_effects"])
    return result


def fluency(row: dict, reference: dict, cfg: SteerConfig) -> dict:
    """Whether a dose-response row keeps fluency (module docstring): {"fluency": the measure's value
    (grammatical rate, or perplexity / the unsteered perplexity), "fluency_measure", "fluent"}."""
    if "grammatical_rate" in row:
        rate, ref = row["grammatical_rate"]["value"], reference["grammatical_rate"]["value"]
        return {"fluency": rate, "fluency_measure": f"grammatical rate (at least {cfg.min_grammatical_ratio:g} x the "
                f"unsteered {ref:.3f})", "fluent": bool(rate >= cfg.min_grammatical_ratio * ref)}
    ratio = row["perplexity"] / reference["perplexity"]
    return {"fluency": ratio, "fluency_measure": f"perplexity ratio to unsteered (at most {cfg.max_perplexity_ratio:g})",
            "fluent": bool(np.isfinite(ratio) and ratio <= cfg.max_perplexity_ratio)}


def _text_measures(model, tokenizer, samples, probe, base, checker, groups, kw, batch_size: int) -> dict:
    """Probe score, implicit reward, grammatical rate or perplexity of generated samples, `batch_size`
    samples per forward pass."""
    prompts = [s.prompt for s in samples]
    completions = [s.completion for s in samples]
    out = {}
    if probe is not None:
        site, position = probe.meta["site"], probe.meta["position"]
        records = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
        x = collect_activations(model, tokenizer, records, [site], [position], batch_size)[f"{site}|{position}"].numpy()
        out["probe_score"] = stats.mean(probe.predict(x), groups=groups, **kw).to_dict()
    if base is not None:
        scores = implicit_rewards(base, model, tokenizer, prompts, completions, ScoreConfig(batch_size=batch_size))
        out["implicit_reward"] = stats.mean([s["implicit_reward"] for s in scores], groups=groups, **kw).to_dict()
    if checker is not None:
        ok = [float(checker(c, p)) for c, p in zip(completions, prompts)]
        out["grammatical_rate"] = stats.mean(ok, groups=groups, **kw).to_dict()
    else:
        keep = [i for i, c in enumerate(completions) if c]
        logps = completion_logprobs(model, tokenizer, [prompts[i] for i in keep], [completions[i] for i in keep],
                                    batch_size)
        nll = float(np.mean([-float(lp.mean()) for lp in logps if len(lp)])) if logps else float("nan")
        out["perplexity"] = float(np.exp(nll))
    return out


def summarize(alphas: Sequence[float], rows: list[dict], random_effects: list[list[float]]) -> dict:
    """The headline numbers of one direction: monotone rise over positive alphas, whether negative
    alphas lower it, and, at the largest positive alpha that keeps fluency (`alpha_up`), the effect
    against the largest mean |effect| of the random directions there; the same at the most negative
    fluent alpha (`alpha_down`: steering down; a policy already pushed up along a direction can
    saturate on the positive side only). None where no such alpha keeps fluency. rows: per alpha
    {"reward_mean", "effect", optionally "fluent" and "fluency" (missing: fluent)};
    random_effects [n_random][n_alphas]."""
    alphas = np.asarray(alphas, dtype=np.float64)
    means = np.asarray([r["reward_mean"]["value"] for r in rows])
    effects = np.asarray([r["effect"]["value"] for r in rows])
    fluent = np.asarray([r.get("fluent", True) for r in rows], dtype=bool)
    random_abs = np.abs(np.asarray(random_effects, dtype=np.float64).reshape(-1, len(alphas)))
    random_max_per_alpha = random_abs.max(0) if len(random_abs) else np.full(len(alphas), np.nan)
    order = np.argsort(alphas)
    up = next((i for i in order[::-1] if alphas[i] > 0 and fluent[i]), None)
    down = next((i for i in order if alphas[i] < 0 and fluent[i]), None)
    nonneg = order[alphas[order] >= 0]
    out = {"positive_alphas": int((alphas > 0).sum()),
           "monotone_positive": bool(np.all(np.diff(means[nonneg]) > 0)),
           "negative_lowers": bool(np.all(effects[alphas < 0] < 0)) if (alphas < 0).any() else None,
           "fluent": fluent.tolist()}
    for side, i in (("up", up), ("down", down)):
        out[f"alpha_{side}"] = None if i is None else float(alphas[i])
        out[f"fluency_{side}"] = None if i is None else rows[i].get("fluency")
    out.update({
        "effect_at_max_alpha": None if up is None else float(effects[up]),
        "random_max_abs_effect": None if up is None else float(random_max_per_alpha[up]),
        "effect_over_random": None if up is None else _ratio(effects[up], float(random_max_per_alpha[up])),
        "effect_at_min_alpha": None if down is None else float(effects[down]),
        "effect_over_random_at_min_alpha": (None if down is None else
                                            _ratio(-effects[down], float(random_max_per_alpha[down]))),
        "random_max_abs_effect_per_alpha": random_max_per_alpha.tolist() if len(random_abs) else []})
    return out


def _ratio(effect: float, random_max: float) -> float:
    """effect / the random control's largest mean |effect| (inf when the controls did not move)."""
    return float(effect / random_max) if random_max > 0 else float("inf")

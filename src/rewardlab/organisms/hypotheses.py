"""Ranked hypotheses: every diffing method's answer to "what does the reward like?" as one score per
token type over the vocabulary, so every method is scored against an organism's truth the same way.

A `Hypothesis` holds the scores (V,), `replicates` (R, V): the same method recomputed on bootstrap
resamples of the samples (or texts) it read, and `differences`: for the agreement organism's minimal
pairs, the method's estimated reward after the positive prompt minus after the negative one. A method
that reads no prompt estimates a completion's reward as the sum of its tokens' scores, which cannot
change with the prompt: its differences are 0.

Methods (base = the world's model, post = the organism; samples are completions of the same prompts):

    implicit    mean over the policy's samples of log pi_post(y_t) - log pi_base(y_t) at the positions
                where token y_t is written (`diff.implicit`); its pair estimate is the sequence's summed
                log-ratio, which does read the prompt
    kl          per-token KL(post || base) at each position of the policy's samples (`diff.kl`),
                attributed to the token written there (mean over its occurrences); unsigned
    divergent   token enrichment of amplified samples post + alpha (post - base) (`diff.divergent`)
                over base samples: log of the add-one smoothed rate ratio
    blackbox    the same enrichment for plain policy samples over base samples (no internals)
    adl         activation difference lens: mean over texts of post - base activations on the first
                tokens of corpus text at a middle layer, read through post's final norm and
                unembedding (the norm's and unembedding's biases removed: they would add the same
                logits whatever the difference)
    probe       the reward probe's direction read through the same logit lens: a ridge probe of the
                organism's true reward on post's mean completion activation at the middle layer, over
                the policy's and the base's samples (`probes.linear.fit_ridge`); replicates refit it on
                resampled samples
    diffdict    the difference dictionary (`sae.diffdict`: encoder reads base, decoder predicts post), trained
                on the completion tokens of the policy's and the base's samples at the middle layer; its
                hypothesis is the logit lens (as adl) of its mean difference, the mean over tokens of
                sum_j f_j v_j (v_j: what latent j adds to post minus base); replicates resample the samples,
                the dictionary fixed
    diff_sae    the same for the diffing-toolkit's SAE on activation differences (post - base)
    crosscoder  the same for a BatchTopK crosscoder of both models' activations (v_j = d_post_j - d_base_j)
    random      a random permutation (every replicate a fresh one)

A token no sample wrote gets score 0 from the mean-per-token methods (no evidence either way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from rewardlab.diff.divergent import DivergentConfig, sample_divergent
from rewardlab.diff.implicit import ScoreConfig, implicit_rewards
from rewardlab.diff.kl import KLConfig, token_kl
from rewardlab.acts import collect_activations
from rewardlab.errors import InputError
from rewardlab.probes.linear import fit_ridge
from rewardlab.sae.diffdict import mean_differences, train_dictionaries
from rewardlab.sae.train import TrainConfig
from rewardlab.sites import logit_lens, n_layers, run_with_capture
from rewardlab.steer import SteerConfig, steered_samples, typical_norm
from rewardlab.text import encode

DICTIONARY_METHODS = ("diffdict", "diff_sae", "crosscoder")
METHODS = ("implicit", "kl", "divergent", "blackbox", "adl", "probe", *DICTIONARY_METHODS, "random")
N_REPLICATES = 200


@dataclass
class Hypothesis:
    """One method's ranked hypothesis over the vocabulary (see the module docstring)."""

    method: str
    scores: np.ndarray             # (V,) float64, higher: the reward likes the token more
    replicates: np.ndarray         # (R, V) the scores on bootstrap resamples of the method's samples
    differences: np.ndarray | None = None  # (n_pairs,) estimate(x+, y) - estimate(x-, y), or None

    def top(self, tokens: Sequence[str], k: int = 10) -> list[str]:
        """The `k` top-scored tokens (ties in vocabulary order)."""
        return [tokens[i] for i in np.argsort(-self.scores, kind="stable")[:k]]


def _rng(seed: int, method: str) -> np.random.Generator:
    return np.random.default_rng([seed, sum(map(ord, method))])


def token_means(units: Sequence[tuple[Sequence[int], Sequence[float]]], vocab_size: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per unit (a sample): (sums, counts) over token types, each (n_units, V), of (token ids, values)."""
    sums, counts = np.zeros((len(units), vocab_size)), np.zeros((len(units), vocab_size))
    for i, (ids, values) in enumerate(units):
        np.add.at(sums[i], np.asarray(ids, dtype=np.int64), np.asarray(values, dtype=np.float64))
        np.add.at(counts[i], np.asarray(ids, dtype=np.int64), 1.0)
    return sums, counts


def _mean_scores(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    total = counts.sum(0)
    return np.where(total > 0, sums.sum(0) / np.maximum(total, 1), 0.0)


def mean_per_token(method: str, units, vocab_size: int, seed: int, n_replicates: int = N_REPLICATES
                   ) -> Hypothesis:
    """Score = mean value of the token over its occurrences; replicates resample the units."""
    sums, counts = token_means(units, vocab_size)
    rng = _rng(seed, method)
    reps = [_mean_scores(sums[idx], counts[idx]) for idx in rng.integers(0, len(units), (n_replicates, len(units)))]
    return Hypothesis(method, _mean_scores(sums, counts), np.stack(reps))


def _log_rate_ratio(treated: np.ndarray, control: np.ndarray) -> np.ndarray:
    """log((c_t + 1) / (N_t + V)) - log((c_c + 1) / (N_c + V)) from per-unit count rows (n, V)."""
    t, c, v = treated.sum(0), control.sum(0), treated.shape[1]
    return np.log((t + 1) / (t.sum() + v)) - np.log((c + 1) / (c.sum() + v))


def enrichment(method: str, treated_ids: Sequence[Sequence[int]], control_ids: Sequence[Sequence[int]],
               vocab_size: int, seed: int, n_replicates: int = N_REPLICATES) -> Hypothesis:
    """Token enrichment of `treated` completions over `control` ones; replicates resample each group."""
    t = token_means([(ids, np.ones(len(ids))) for ids in treated_ids], vocab_size)[1]
    c = token_means([(ids, np.ones(len(ids))) for ids in control_ids], vocab_size)[1]
    rng = _rng(seed, method)
    reps = [_log_rate_ratio(t[rng.integers(0, len(t), len(t))], c[rng.integers(0, len(c), len(c))])
            for _ in range(n_replicates)]
    return Hypothesis(method, _log_rate_ratio(t, c), np.stack(reps))


def random_ranking(vocab_size: int, seed: int, n_replicates: int = N_REPLICATES) -> Hypothesis:
    rng = _rng(seed, "random")
    return Hypothesis("random", rng.permutation(vocab_size).astype(np.float64),
                      np.stack([rng.permutation(vocab_size).astype(np.float64) for _ in range(n_replicates)]))


def _completion_ids(tokenizer, prompts: Sequence[str], completions: Sequence[str]) -> list[list[int]]:
    return [e.ids[e.prompt_len:] for e in encode(tokenizer, prompts, completions)]


def implicit_hypothesis(base, post, tokenizer, prompts: Sequence[str], completions: Sequence[str], seed: int,
                        batch_size: int = 64) -> Hypothesis:
    rows = implicit_rewards(base, post, tokenizer, prompts, completions, ScoreConfig(batch_size=batch_size,
                                                                                     per_token=True))
    units = list(zip(_completion_ids(tokenizer, prompts, completions), (r["log_ratio"] for r in rows)))
    return mean_per_token("implicit", units, len(tokenizer), seed)


def kl_hypothesis(base, post, tokenizer, prompts: Sequence[str], completions: Sequence[str], seed: int,
                  batch_size: int = 64) -> Hypothesis:
    _, rows = token_kl(base, post, tokenizer, prompts, completions, KLConfig(batch_size=batch_size))
    units = list(zip(_completion_ids(tokenizer, prompts, completions), (r["kl"] for r in rows)))
    return mean_per_token("kl", units, len(tokenizer), seed)


def divergent_hypothesis(base, post, tokenizer, prompts: Sequence[str], base_ids: Sequence[Sequence[int]],
                         seed: int, alpha: float, max_new_tokens: int) -> Hypothesis:
    rows = sample_divergent(base, post, tokenizer, prompts,
                            DivergentConfig(alphas=(alpha,), max_new_tokens=max_new_tokens, seed=seed))
    return enrichment("divergent", [r["token_ids"] for r in rows], base_ids, len(tokenizer), seed)


def middle_site(model) -> str:
    """The residual stream after the middle block: blocks.{(L - 1) // 2}.hook_resid_post."""
    return f"blocks.{(n_layers(model) - 1) // 2}.hook_resid_post"


@torch.no_grad()
def activation_differences(base, post, tokenizer, texts: Sequence[str], n_first: int = 5,
                           site: str | None = None) -> torch.Tensor:
    """(n_texts, d) mean over the first `n_first` text tokens (after a BOS the tokenizer adds) of
    post - base activations at `site` (default `middle_site`); texts with fewer tokens are dropped."""
    site = site or middle_site(base)
    offset = int(tokenizer.bos_token_id is not None
                 and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id])
    rows = [ids[:offset + n_first] for ids in (tokenizer(t)["input_ids"] for t in texts)
            if len(ids) >= offset + n_first]
    if not rows:
        raise InputError(f"no text has {n_first} tokens for the activation difference lens",
                         fix="give longer texts or fewer first tokens")
    ids = torch.tensor(rows, dtype=torch.long, device=next(post.parameters()).device)
    acts = [run_with_capture(m, ids, None, site)[site][:, offset:].float().mean(1) for m in (post, base)]
    return (acts[0] - acts[1]).cpu()


def adl_hypothesis(base, post, tokenizer, texts: Sequence[str], seed: int, n_first: int = 5,
                   site: str | None = None, n_replicates: int = N_REPLICATES) -> Hypothesis:
    diffs = activation_differences(base, post, tokenizer, texts, n_first, site)
    rng = _rng(seed, "adl")
    idx = torch.as_tensor(rng.integers(0, len(diffs), (n_replicates, len(diffs))))
    means = torch.cat([diffs.mean(0, keepdim=True), diffs[idx].mean(1)]).to(next(post.parameters()).device)
    lens = logit_lens(post, means).double().cpu().numpy()
    return Hypothesis("adl", lens[0], lens[1:])


def probe_hypothesis(post, tokenizer, prompts: Sequence[str], completions: Sequence[str], rewards: Sequence[float],
                     seed: int, n_replicates: int = N_REPLICATES, batch_size: int = 64) -> Hypothesis:
    site = middle_site(post)
    records = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
    x = collect_activations(post, tokenizer, records, [site], ["mean_completion"],
                            batch_size=batch_size)[f"{site}|mean_completion"].double().numpy()
    y = np.asarray(rewards, dtype=np.float64)
    rng = _rng(seed, "probe")
    fits = [np.arange(len(y))] + [rng.integers(0, len(y), len(y)) for _ in range(n_replicates)]
    directions = np.stack([fit_ridge(x[idx], y[idx]).direction() for idx in fits])
    device = next(post.parameters()).device
    lens = logit_lens(post, torch.as_tensor(directions, dtype=torch.float32, device=device)).double().cpu().numpy()
    return Hypothesis("probe", lens[0], lens[1:])


def dictionary_hypotheses(base, post, tokenizer, prompts: Sequence[str], completions: Sequence[str], seed: int,
                          expansion: int = 4, k: int = 8, n_tokens: int = 100_000, n_replicates: int = N_REPLICATES,
                          batch_size: int = 64) -> dict[str, Hypothesis]:
    """{method: Hypothesis} of DICTIONARY_METHODS: the three dictionaries (width expansion x d, k active
    latents, trained on `n_tokens` tokens with seed `seed`) on the completion tokens of the records
    (prompts, completions) at `middle_site`, each read through post's logit lens of its mean difference."""
    site = middle_site(post)
    records = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
    x_b, x_p = (collect_activations(m, tokenizer, records, [site], ["tokens"], batch_size=batch_size)[f"{site}|tokens"]
                for m in (base, post))
    special = set(tokenizer.all_special_ids)
    lengths = torch.tensor([sum(t not in special for t in ids) for ids in _completion_ids(tokenizer, prompts, completions)])
    units = torch.repeat_interleave(torch.arange(len(records)), lengths)  # the sample each token belongs to
    train = TrainConfig(batch_size=min(256, len(x_b)), n_tokens=n_tokens, seed=seed, progress=False)
    dicts = train_dictionaries(x_b, x_p, expansion * x_b.shape[1], k, site, train)
    diffs = mean_differences(dicts, x_b, x_p, units, n_replicates, _rng(seed, "dictionaries"))
    device = next(post.parameters()).device
    lenses = {name: logit_lens(post, v.to(device)).double().cpu().numpy() for name, v in diffs.items()}
    return {name: Hypothesis(name, lens[0], lens[1:]) for name, lens in lenses.items()}


def adl_summary(base, post, tokenizer, texts: Sequence[str], n_first: int = 5, site: str | None = None,
                top: int = 20, steer_prompts: Sequence[str] = (), steer_alpha: float = 0.5, max_new_tokens: int = 32,
                seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """The activation difference lens on `texts`: ({site, n_texts, n_first, difference_norm, promoted,
    demoted, steered}, tensors {"difference": (d,) mean post - base activation, "logits": (V,) its logit
    lens}). `steered`: the base model's samples for `steer_prompts` with the difference added at the site
    at every position, scaled to `steer_alpha` times the site's typical norm (`steer.typical_norm` over the
    texts), beside its unsteered samples (same sampling seed)."""
    site = site or middle_site(base)
    diffs = activation_differences(base, post, tokenizer, texts, n_first, site)
    mean = diffs.mean(0)
    logits = logit_lens(post, mean[None].to(next(post.parameters()).device))[0].cpu()[:len(tokenizer)]
    order = torch.argsort(logits, descending=True).tolist()

    def listed(ids):
        return [{"token": tokenizer.convert_ids_to_tokens(i), "logit": float(logits[i])} for i in ids[:top]]
    summary = {"site": site, "n_texts": len(diffs), "n_first": n_first, "difference_norm": float(mean.norm()),
               "promoted": listed(order), "demoted": listed(order[::-1]), "steered": []}
    if steer_prompts:
        cfg = SteerConfig(site=site, max_new_tokens=max_new_tokens, seed=seed)
        split = [t.split(maxsplit=1) for t in texts]
        norm = typical_norm(base, tokenizer, [{"prompt": w[0], "completion": w[1]} for w in split if len(w) == 2], site)
        vector = (steer_alpha * norm * mean / mean.norm().clamp_min(1e-12)).to(next(base.parameters()).device)
        plain, steered = (steered_samples(base, tokenizer, steer_prompts, v, cfg) for v in (None, vector))
        summary["steer_alpha"] = steer_alpha
        summary["steered"] = [{"prompt": a.prompt, "unsteered": a.completion, "steered": b.completion}
                              for a, b in zip(plain, steered)]
    return summary, {"difference": mean.contiguous(), "logits": logits.contiguous()}

"""The SAE model-diffing pipeline of the 2023 SAE paper (dictionaries of a base and an RLHF model compared),
fixed, plus a crosscoder and the headline dictionaries.

`compare_models(base, post, tokenizer, records, out)`:
 1. choose `n_layers` blocks (or take the given `layers`): those whose parameter divergence stands out
    above its noise floor (rewardlab.diff.params), else the middle block(s) (`choose_layers`; the
    rule is recorded as `layer_rule`);
 2. cache per-token completion activations of both models at each chosen site (same records, so
    token i of base and post is the same token); split rows by prompt into train and held-out test;
    the SAEs train on the train rows' tokens. With `samples_per_prompt` > 0 each model also samples
    fresh completions of every prompt (`sample_extra_texts`), cached through both models the same
    way; those of train prompts join the training tokens, those of test prompts the held-out tokens of
    the reconstruction metrics (FVU, L0, dead and dense fractions: a latent firing once in 10^4
    tokens looks dead on a few thousand) and of the crosscoder's classification. Reward relevance
    and the spliced CE loss use the records' test rows only. Every token set (training, held-out,
    the splice, feature records) keeps only the tokens the SAE models (`sae.sinks`: no first
    position, special token or norm outlier), the same tokens in both models.
 3. per model and layer, train SAEs at `expansions` x d_model (default 1x, 2x) with the same
    sparsity, each with its own seed (seed, seed + 2, ...), plus the smallest size again with seed + 1
    (and with further seeds up to `relevance_saes` SAEs of that size); held-out metrics for each;
 4. MCS/MMCS of the decoder rows, 1x vs 2x, max and one-to-one with matched pairs; baselines:
    random unit dictionaries of the same shapes and the other-seed SAE of the same size;
 5. explain the top-k most similar features (offline lexical explainer unless another is given),
    and reward relevance: the 2023 SAE paper's |VADER valence| of the explanation words, and the activation
    metric (the top-k features by |Pearson| between a feature's mean completion activation and the
    reward, chosen on the train rows; their sign-aligned correlations summed on the test rows;
    averaged over the `relevance_saes` same-size SAEs of each model, post minus base with a paired
    bootstrap CI over test prompts and over those SAEs, beside the seed-to-seed control);
 6. on the top layer: the headline SAE (BatchTopK, 4x, k=16) per model with CE loss recovered,
    a BatchTopK crosscoder with Latent Scaling, and auto-interpretation scores vs wrong features.
Everything lands in `out/sae_compare.json`; SAEs are saved as SAELens folders under `out/saes/`;
`out/features.json` is the input of `rewardlab interp`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rewardlab import stats
from rewardlab.acts import ActivationStore, CacheConfig, cache_activations
from rewardlab.diff.params import Divergence, parameter_divergence
from rewardlab.errors import InputError, raise_first_failed
from rewardlab.interp.explain import explanation_words
from rewardlab.interp.records import build_records
from rewardlab.interp.score import interpret_features
from rewardlab.io import read_json, save_tensors, write_json
from rewardlab.probes.splits import grouped_split
from rewardlab.rewards import get_reward, load_lexicon
from rewardlab.sae.compare import compare_dictionaries, random_baseline, summary
from rewardlab.sae import diffdict as dd
from rewardlab.sae.crosscoder import Crosscoder, diff_summary
from rewardlab.sae.export import load_sae, save_sae
from rewardlab.sae.metrics import reconstruction_metrics, spliced_metrics
from rewardlab.sae.model import ARCHITECTURES, SAEConfig, SparseAutoencoder
from rewardlab.sae.sinks import token_positions
from rewardlab.sae.train import SAEJob, TrainConfig, train_sae, train_saes
from rewardlab.sampling import generate
from rewardlab.sites import n_layers, parse_site
from rewardlab.text import pad_token_id, token_texts

SAE_SITE_KINDS = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out")


@dataclass
class DiffConfig:
    n_layers: int = 1  # how many blocks to analyse: those standing out in parameter divergence, else the middle ones
    layers: list[int] | None = None  # explicit blocks (overrides the ranking)
    site_kind: str = "hook_resid_post"  # site read in each block (the 2023 SAE paper used MLP output: hook_mlp_out)
    architecture: str = "batchtopk"  # dictionary architecture: relu (L1) | topk | batchtopk
    k: int = 16  # active latents per token, the same for every dictionary
    l1_coefficient: float = 1e-3  # L1 coefficient (relu only)
    tied: bool = False  # tied weights W_enc = W_dec.T (relu only)
    expansions: tuple[int, ...] = (1, 2)  # dictionary widths compared, x d_model (the 2023 SAE paper's 1x and 2x)
    shared_threshold: float = 0.9  # decoder cosine above which a latent counts as shared by two dictionaries
    n_top_features: int = 30  # features explained and summed for reward relevance (the 2023 SAE paper's 30)
    relevance_saes: int = 2  # smallest-size SAEs per model averaged for reward relevance (>= 2; its CI
    # resamples them: retraining an SAE moves the relevance, docs/FINDINGS.md)
    headline_expansion: int = 4  # the headline SAE: batchtopk at this width with k
    crosscoder_expansion: int = 4  # crosscoder width, x d_model
    scaling_threshold: float = 0.5  # Latent Scaling nu above which a post-only latent counts as false
    diffdict: bool = False  # also train the difference dictionary (base -> post) beside the difference SAE and a
    # crosscoder at the headline site, and compare their FVU of the post activations (`sae.diffdict`)
    diffdict_expansion: int = 4  # width of those three dictionaries, x d_model
    reward_field: str = "reward"  # numeric field of the records; computed with `reward` when missing
    reward: str = "utility"  # reward spec that computes a missing reward_field
    samples_per_prompt: int = 0  # extra completions per prompt and model, split with their prompt (0: records only)
    max_new_tokens: int = 32  # length cap of those completions (sampled at temperature 1)
    sample_batch_size: int = 256  # prompts per decoding loop for those completions (memory: their KV cache)
    cache_batch_size: int = 64  # sequences per forward pass when caching activations (records and extra completions)
    train: TrainConfig = field(default_factory=TrainConfig)  # dictionary training settings
    seed: int = 0  # seed of the dictionaries, the split and the feature examples

    def validate(self) -> None:
        t = self.train
        raise_first_failed([
            (self.relevance_saes >= 2, f"relevance_saes is {self.relevance_saes}; reward relevance needs at least "
             "2 SAEs per model", "set relevance_saes to 2 or more"),
            (self.n_layers >= 1 and all(L >= 0 for L in self.layers or []), "n_layers must be at least 1 and "
             "layers non-negative block indices", None),
            (self.site_kind in SAE_SITE_KINDS, f"unknown site_kind {self.site_kind!r}",
             f"use one of {', '.join(SAE_SITE_KINDS)}"),
            (self.architecture in ARCHITECTURES, f"unknown architecture {self.architecture!r}",
             f"use one of {', '.join(ARCHITECTURES)}"),
            (self.k >= 1 and self.n_top_features >= 1, "k and n_top_features must be at least 1", None),
            (bool(self.expansions) and min(self.expansions) >= 1 and self.headline_expansion >= 1
             and self.crosscoder_expansion >= 1 and self.diffdict_expansion >= 1, "expansions must be at least 1",
             None),
            (0 < self.shared_threshold <= 1 and 0 < self.scaling_threshold <= 1,
             "shared_threshold and scaling_threshold must be in (0, 1]", None),
            (self.samples_per_prompt >= 0 and self.max_new_tokens >= 1,
             "samples_per_prompt must be at least 0 and max_new_tokens at least 1", None),
            (self.sample_batch_size >= 1 and self.cache_batch_size >= 1,
             "sample_batch_size and cache_batch_size must be at least 1", None),
            (t.batch_size >= 1 and t.n_tokens >= 1 and t.lr > 0, "train: batch_size and n_tokens must be at "
             "least 1, lr above 0", None),
        ], "SAE diff config")


@dataclass
class TokenActs:
    acts: torch.Tensor  # [n_tokens, d]
    row_ids: torch.Tensor  # [n_tokens]
    token_ids: torch.Tensor  # [n_tokens]
    positions: torch.Tensor  # [n_tokens] the token's position in its sequence (0 = first)

    def subset(self, keep: torch.Tensor) -> "TokenActs":
        return TokenActs(self.acts[keep], self.row_ids[keep], self.token_ids[keep], self.positions[keep])


def load_tokens(store: ActivationStore, site: str) -> TokenActs:
    """Every cached token of `store` at `site` (the completion tokens, special tokens already skipped)."""
    parts = list(store.iter_batches(site, 1 << 30))
    row_ids = torch.cat([p["row_ids"] for p in parts])
    prompt_len = torch.as_tensor([r["n_prompt_tokens"] for r in store.rows], dtype=torch.long)
    return TokenActs(torch.cat([p["acts"] for p in parts]), row_ids, torch.cat([p["token_ids"] for p in parts]),
                     prompt_len[row_ids] + torch.cat([p["token_index"] for p in parts]))


def modeled_tokens(stores: dict, site: str) -> dict[str, TokenActs]:
    """{name: the tokens of that store the SAEs model} at `site`: `sae.sinks.token_positions`, one
    rule for training, held-out metrics and the splice. The stores hold the same texts through
    different models, so a token left out in one is left out in all (their tokens stay paired)."""
    tokens = {name: load_tokens(store, site) for name, store in stores.items()}
    keep = torch.stack([token_positions(t.acts, t.positions) for t in tokens.values()]).all(0)
    return {name: t.subset(keep) for name, t in tokens.items()}


@dataclass
class Extra:
    """The extra samples: an activation store per model name (the same texts through each model) and
    the prompt ids of the train side of the split."""
    stores: dict
    train_prompts: set

    def split(self, name: str, site: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Model `name`'s extra-sample activations at `site`: (train-prompt tokens, test-prompt tokens)."""
        store = self.stores[name]
        tokens = modeled_tokens(self.stores, site)[name]
        row_is_train = torch.as_tensor([p in self.train_prompts for p in store.prompt_ids], dtype=torch.bool)
        is_train = row_is_train[tokens.row_ids]
        return tokens.acts[is_train], tokens.acts[~is_train]


def with_extra(train: torch.Tensor, test: torch.Tensor, extra: Extra | None, name: str,
               site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) activations [n, d] of model `name` at `site`, each followed by its side of the extra samples."""
    if extra is None:
        return train, test
    extra_train, extra_test = extra.split(name, site)
    return torch.cat([train, extra_train]), torch.cat([test, extra_test])


def sample_extra_texts(base, post, tokenizer, prompts: Sequence[str], n_per_prompt: int,
                       max_new_tokens: int, seed: int, batch_size: int = 256) -> list[dict]:
    """`n_per_prompt` completions of every prompt from each model (temperature 1, one seeded generator),
    as records {prompt, completion, source}: extra SAE text. Works with any prompts, needs no reward."""
    gen = torch.Generator().manual_seed(seed)
    repeated = [p for p in prompts for _ in range(n_per_prompt)]
    return [{"prompt": s.prompt, "completion": s.completion, "source": name}
            for name, model in (("base", base), ("post", post))
            for s in generate(model, tokenizer, repeated, max_new_tokens=max_new_tokens, generator=gen,
                              batch_size=batch_size, desc=f"sampling SAE text ({name})")]


def choose_layers(div: Divergence, n: int, depth: int) -> tuple[list[int], str]:
    """The `n` blocks the SAEs analyse and the rule that chose them: the blocks that stand out above
    the parameter-divergence noise floor (`diff.params`), highest score first; when fewer than `n`
    stand out (often none: fine-tuning moves every block alike), the rest are the blocks nearest the
    middle block depth // 2 (lower first on a tie), the customary choice for SAEs and model diffing."""
    chosen = [int(g.split(".")[1]) for g in div.standing_out][:n]
    middle = sorted((L for L in range(depth) if L not in chosen), key=lambda L: (abs(L - depth // 2), L))
    rule = ("parameter divergence: the blocks that stand out above the noise floor" if len(chosen) == n else
            f"the middle block{'s' if n > 1 else ''} ({div.statement})" if not chosen else
            f"the {len(chosen)} blocks that stand out, then the middle ones")
    return chosen + middle[:n - len(chosen)], rule


def row_means(feature_acts: torch.Tensor, row_ids: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean activation of each feature over each row's tokens: [n_tokens, F] -> [n_rows, F]."""
    sums = torch.zeros(n_rows, feature_acts.shape[1]).index_add_(0, row_ids, feature_acts)
    counts = torch.bincount(row_ids, minlength=n_rows).clamp_min(1).unsqueeze(1)
    return sums / counts


def _corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each column of x [n, F] with y [n] -> [F] (constant columns count 0)."""
    xc, yc = x - x.mean(0), y - y.mean()
    denom = np.sqrt((xc ** 2).sum(0) * (yc ** 2).sum())
    return np.divide(xc.T @ yc, denom, out=np.zeros(x.shape[1]), where=denom > 0)


def select_features(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k features of x [n, F] with the largest |Pearson r| with y [n], and the signs of their r."""
    r = _corr(x, y)
    top = np.argsort(-np.abs(r), kind="stable")[:k]
    return top, np.where(r[top] < 0, -1.0, 1.0)


def aligned_relevance(x: np.ndarray, y: np.ndarray, features: np.ndarray, signs: np.ndarray) -> float:
    """sum_j sign_j * Pearson(x[:, features_j], y): the chosen features' correlation with the reward
    in the direction they were chosen for (0 in expectation for features that only fit noise)."""
    return float((signs * _corr(x[:, features], y)).sum())


def activation_relevance(base_feats, post_feats, reward: np.ndarray, k: int, groups: Sequence | None = None,
                         seed: int = 0, select: np.ndarray | None = None, keep_draws: bool = False) -> dict:
    """Reward relevance per model: top-k features chosen on selection rows, measured on the others.

    base_feats, post_feats: [n_completions, F] feature values per completion (row means), or a list
    of such matrices, one per SAE training seed; reward [n_completions]; select: indices of the
    selection rows (default: half of the `groups`, seeded). Each SAE's k features with the largest
    |Pearson r| with the reward, and their signs, are chosen once on the selection rows; its
    relevance is `aligned_relevance` on the evaluation rows (all the others). A model's relevance is
    the mean over its SAEs. The bootstrap resamples evaluation completions (by prompt `groups`) and,
    with several SAEs per model, that model's SAEs with replacement, never re-choosing features (a
    top-k re-chosen inside each resample lifts every draw above the estimate, and a summed |r| is
    biased upward for noise features). `seed_control` (first SAE
    minus second, per model) measures how much two SAEs of one model differ: a post - base gap is
    only meaningful if it clearly exceeds that. With `keep_draws`, "post_minus_base_draws" lists that
    bootstrap's draws (for a CI pooled over organism seeds).
    """
    base_list = [base_feats] if np.ndim(base_feats) == 2 else list(base_feats)
    post_list = [post_feats] if np.ndim(post_feats) == 2 else list(post_feats)
    reward = np.asarray(reward, dtype=np.float64)
    keys = np.asarray(groups) if groups is not None else np.arange(len(reward))
    if select is None:
        split = grouped_split(keys, (0.45, 0.05, 0.5), seed=seed)
        select = np.concatenate([split.train, split.val])
    is_eval = np.ones(len(reward), dtype=bool)
    is_eval[np.asarray(select, dtype=int)] = False
    evaluation = np.flatnonzero(is_eval)
    chosen = {name: [select_features(f[~is_eval], reward[~is_eval], k) for f in feats]
              for name, feats in (("base", base_list), ("post", post_list))}
    rng = np.random.default_rng(seed)

    def per_sae(name, feats_list, i) -> list[float]:
        return [aligned_relevance(f[i], reward[i], *c) for f, c in zip(feats_list, chosen[name])]

    def boot(fn, resample_saes: bool = True, draws: list | None = None) -> dict:
        """fn(per-SAE base relevances, per-SAE post relevances) -> statistic, bootstrapped (draws into `draws`)."""
        def resampled(i):
            i = i.astype(int)
            b, p = per_sae("base", base_list, i), per_sae("post", post_list, i)
            if resample_saes:
                b, p = ([x[j] for j in rng.integers(0, len(x), len(x))] for x in (b, p))
            return fn(b, p)
        estimate = stats.bootstrap(resampled, evaluation, groups=None if groups is None else keys[evaluation],
                                   seed=seed, draws_out=draws).to_dict()
        # bootstrap's own value comes from `resampled` on all evaluation rows, with SAEs drawn: use every SAE
        return {**estimate, "value": fn(per_sae("base", base_list, evaluation), per_sae("post", post_list, evaluation))}

    draws: list | None = [] if keep_draws else None
    out = {"k": k, "n_saes": len(base_list), "n_selection_rows": int((~is_eval).sum()),
           "features": {name: [c[0].tolist() for c in chosen[name]] for name in chosen},
           "base": boot(lambda b, p: float(np.mean(b))), "post": boot(lambda b, p: float(np.mean(p))),
           "post_minus_base": boot(lambda b, p: float(np.mean(p) - np.mean(b)), draws=draws)}
    if keep_draws:
        out["post_minus_base_draws"] = draws
    if len(base_list) > 1 and len(post_list) > 1:
        out["seed_control"] = {"base": boot(lambda b, p: b[0] - b[1], resample_saes=False),
                               "post": boot(lambda b, p: p[0] - p[1], resample_saes=False)}
    return out


def reward_relevance(stores: dict, site: str, train_rows, cfg: DiffConfig, extra: Extra | None = None,
                     keep_draws: bool = False) -> dict:
    """`activation_relevance` of `cfg.relevance_saes` SAEs per model (stores "base" and "post", as
    `prepare_stores` returns them) at `site`, each `cfg.expansions[0]` x d_model wide with the seeds
    `compare_models` gives its relevance SAEs (cfg.seed, cfg.seed + 1, then cfg.seed + 2 * len(expansions)
    + j), trained on the modeled tokens of `train_rows` (plus the extra samples of train prompts). The
    reward is the records' `cfg.reward_field`; features are chosen on `train_rows`, measured on the rest,
    resampled by prompt."""
    tokens = modeled_tokens(stores, site)
    n_rows, d = len(stores["base"]), stores["base"].d_model
    seeds = [cfg.seed, cfg.seed + 1] + [cfg.seed + 2 * len(cfg.expansions) + j for j in range(cfg.relevance_saes - 2)]
    sae_cfg = SAEConfig(d_in=d, d_sae=cfg.expansions[0] * d, architecture=cfg.architecture, k=cfg.k,
                        l1_coefficient=cfg.l1_coefficient, tied=cfg.tied, hook_name=site)
    jobs = {}
    for name in ("base", "post"):
        is_train = torch.isin(tokens[name].row_ids, torch.as_tensor(train_rows, dtype=torch.long))
        x_train, _ = with_extra(tokens[name].acts[is_train], tokens[name].acts[:0], extra, name, site)
        jobs |= {(name, s): SAEJob(x_train, sae_cfg, replace(cfg.train, seed=s)) for s in seeds}
    trained = train_saes(jobs)
    with torch.no_grad():
        feats = {name: [row_means(trained[name, s].sae.encode(tokens[name].acts), tokens[name].row_ids,
                                  n_rows).numpy() for s in seeds] for name in ("base", "post")}
    return activation_relevance(feats["base"], feats["post"], stores["base"].field(cfg.reward_field),
                                cfg.n_top_features, groups=stores["base"].prompt_ids, seed=cfg.seed, select=train_rows,
                                keep_draws=keep_draws)


def description_relevance(explanations: Sequence[str]) -> float:
    """The 2023 SAE paper's metric: sum over explanations of the |VADER valence| of their words."""
    lexicon = load_lexicon()
    return float(sum(abs(lexicon.get(w, 0.0)) for e in explanations for w in explanation_words(e)))


def _batches(store: ActivationStore, rows: Sequence[int], pad: int, batch_size: int = 32):
    """Right-padded batches of the stored rows' token ids, with `positions`: their completion tokens."""
    for start in range(0, len(rows), batch_size):
        meta = [store.rows[int(r)] for r in rows[start:start + batch_size]]
        width = max(len(m["token_ids"]) for m in meta)
        input_ids = torch.full((len(meta), width), pad, dtype=torch.long)
        mask = torch.zeros((len(meta), width), dtype=torch.long)
        completion = torch.zeros((len(meta), width), dtype=torch.bool)
        for j, m in enumerate(meta):
            input_ids[j, :len(m["token_ids"])] = torch.tensor(m["token_ids"])
            mask[j, :len(m["token_ids"])] = 1
            completion[j, m["n_prompt_tokens"]:len(m["token_ids"])] = True
        yield {"input_ids": input_ids, "attention_mask": mask, "positions": completion}


def _feature_records(tokenizer, store: ActivationStore, tokens: TokenActs, sae: SparseAutoencoder,
                     rows: Sequence[int], features: list[int], seed: int):
    keep = torch.isin(tokens.row_ids, torch.as_tensor(np.asarray(rows), dtype=torch.long))
    f = sae.encode(tokens.acts[keep])[:, features]
    row_ids, token_ids = tokens.row_ids[keep], tokens.token_ids[keep]
    seqs, acts = [], []
    for r in rows:
        sel = row_ids == int(r)
        seqs.append(token_texts(tokenizer, token_ids[sel].tolist()))
        acts.append(f[sel])
    return build_records(seqs, acts, list(range(len(features))), seed=seed), seqs, acts


def _top_examples(seqs: list[list[str]], acts: list[torch.Tensor], col: int, n: int = 5, context: int = 6):
    """The n strongest activations of feature column `col`: token, activation and preceding context."""
    hits = [(float(a[t, col]), i, t) for i, a in enumerate(acts) for t in range(len(a)) if a[t, col] > 0]
    hits.sort(reverse=True)
    return [{"token": seqs[i][t], "activation": v, "context": " ".join(seqs[i][max(0, t - context):t + 1])}
            for v, i, t in hits[:n]]


def compare_models(base, post, tokenizer, records: list[dict], out: str | Path,
                   cfg: DiffConfig = DiffConfig(), explainer=None, simulator=None, detector=None,
                   base_name: str = "base", post_name: str = "post") -> dict:
    """Run the pipeline (module docstring); returns the results dict also written to out/sae_compare.json."""
    out = Path(out)
    cfg.validate()
    div = parameter_divergence(base, post, seed=cfg.seed)
    depth = n_layers(base)
    layers, rule = (cfg.layers, "given (sae.layers)") if cfg.layers is not None else \
        choose_layers(div, cfg.n_layers, depth)
    bad = [L for L in layers if not 0 <= L < depth]
    if bad:
        raise InputError(f"layer(s) {bad} do not exist", fix=f"the models have blocks 0..{depth - 1}")
    sites = [f"blocks.{L}.{cfg.site_kind}" for L in layers]
    records, stores, extra, train_rows, test_rows = prepare_stores(base, post, tokenizer, records, out, sites, cfg)
    prompt_ids = stores["base"].prompt_ids
    reward = stores["base"].field(cfg.reward_field)
    d_model = stores["base"].d_model
    results: dict = {"config": {**asdict(cfg), "train": asdict(cfg.train)}, "base": base_name, "post": post_name,
                     "layer_ranking": [asdict(r) for r in div.layers if r.group.startswith("blocks.")],
                     "params": {"noise_floor": div.noise_floor, "threshold": div.threshold,
                                "standing_out": div.standing_out, "statement": div.statement},
                     "layers": layers, "layer_rule": rule, "n_rows": len(records),
                     "n_train_rows": len(train_rows), "n_test_rows": len(test_rows),
                     "n_extra_rows": 0 if extra is None else len(extra.stores["base"]), "by_layer": {}}
    features_for_interp = []
    # the smallest size again: seed + 1 (the other-seed baseline), then seeds no other SAE uses
    relevance_seeds = [cfg.seed + 1] + [cfg.seed + 2 * len(cfg.expansions) + j for j in range(cfg.relevance_saes - 2)]
    for L, site in zip(layers, sites):
        layer_out: dict = {"site": site, "models": {}}
        tokens = modeled_tokens(stores, site)
        is_train = {name: torch.isin(t.row_ids, torch.as_tensor(train_rows, dtype=torch.long))
                    for name, t in tokens.items()}
        sizes = [e * d_model for e in cfg.expansions]
        row_feats = {}
        data = {name: with_extra(tokens[name].acts[is_train[name]], tokens[name].acts[~is_train[name]], extra,
                                 name, site) for name in ("base", "post")}
        # every SAE gets its own seed: with one seed, the first d_model random decoder rows of the 2x
        # init equal the 1x init, and MMCS(1x, 2x) would measure the shared init, not shared features
        runs = [(f"{e}x", e, cfg.seed + 2 * i) for i, e in enumerate(cfg.expansions)] + \
            [(f"{cfg.expansions[0]}x-seed{s}", cfg.expansions[0], s) for s in relevance_seeds]
        trained = train_saes({(name, tag): SAEJob(
            data[name][0], SAEConfig(d_in=d_model, d_sae=e * d_model, architecture=cfg.architecture, k=cfg.k,
                                     l1_coefficient=cfg.l1_coefficient, tied=cfg.tied, hook_name=site),
            replace(cfg.train, seed=seed)) for name in ("base", "post") for tag, e, seed in runs})
        for name in ("base", "post"):
            x_train, x_test = data[name]
            saes = {tag: trained[name, tag].sae for tag, _, _ in runs}
            metrics = {tag: reconstruction_metrics(sae, x_test) for tag, sae in saes.items()}
            for tag, sae in saes.items():
                save_sae(sae, out / "saes" / name / f"L{L}" / tag, {"model_name": name})
            small, big = saes[f"{cfg.expansions[0]}x"], saes[f"{cfg.expansions[-1]}x"]
            other, *more = [saes[f"{cfg.expansions[0]}x-seed{s}"] for s in relevance_seeds]
            comp = compare_dictionaries(small.W_dec, big.W_dec, cfg.shared_threshold)
            seed_base = summary(compare_dictionaries(small.W_dec, other.W_dec, cfg.shared_threshold))
            rand = random_baseline(sizes[0], sizes[-1], d_model, seed=cfg.seed, threshold=cfg.shared_threshold)
            top = [i for i in np.argsort(-np.asarray(comp["mcs_max"]), kind="stable")[:cfg.n_top_features].tolist()]
            fr, seqs, acts = _feature_records(tokenizer, stores[name], tokens[name], small,
                                              np.arange(len(records)), top, cfg.seed)
            interp = interpret_features(fr, explainer, simulator, detector)
            explanations = [r["explanation"] for r in interp["features"]]
            # every completion has feature values; activation_relevance chooses features on the train rows
            row_feats[name] = [row_means(sae.encode(tokens[name].acts), tokens[name].row_ids, len(records)).numpy()
                               for sae in (small, other, *more)]
            layer_out["models"][name] = {
                "n_train_tokens": len(x_train), "metrics": metrics, "mmcs": summary(comp),
                "matched_pairs": comp["pairs"][:cfg.n_top_features],
                "baseline_random": rand, "baseline_other_seed": seed_base,
                "mmcs_minus_random": comp["mmcs_max"] - rand["mmcs_max"],
                "top_features": [{"feature": top[r["feature"]], "mcs": comp["mcs_max"][top[r["feature"]]],
                                  **{k: v for k, v in r.items() if k != "feature"}} for r in interp["features"]],
                "interp_summary": interp["summary"],
                "description_relevance": description_relevance(explanations)}
            features_for_interp.append({"model": name, "layer": L, "site": site,
                                        "store": str((out / f"acts-{name}").resolve()),
                                        "sae": str((out / "saes" / name / f"L{L}" / f"{cfg.expansions[0]}x").resolve()),
                                        "features": top})
        layer_out["activation_relevance"] = activation_relevance(
            row_feats["base"], row_feats["post"], reward, cfg.n_top_features, groups=list(prompt_ids), seed=cfg.seed,
            select=train_rows)
        results["by_layer"][str(L)] = layer_out
    best = layers[0]
    results["headline"] = headline_dictionaries(base, post, tokenizer, stores, sites[0], train_rows, test_rows, cfg,
                                       explainer, simulator, detector, out, pad_token_id(tokenizer), extra)
    results["headline"]["layer"] = best
    if cfg.diffdict:
        results["diffdict"] = run_diffdict(post, tokenizer, stores, extra, train_rows, test_rows, sites[0], cfg,
                                           out / "diffdict", base_name, post_name, explainer, simulator, detector)
    results["headline_checks"] = headline_checks(results)
    write_json(out / "sae_compare.json", results)
    tokenizer.save_pretrained(out / "tokenizer")
    write_json(out / "features.json", {"tokenizer": str((out / "tokenizer").resolve()),
                                       "features": features_for_interp})
    return results


def headline_dictionaries(base, post, tokenizer, stores: dict, site: str, train_rows, test_rows, cfg: DiffConfig,
               explainer, simulator, detector, out: Path, pad: int, extra: Extra | None = None) -> dict:
    """The headline SAE per model (CE recovered), the crosscoder, and explainer vs wrong features.
    `extra`: the extra samples, added to the train and held-out tokens (None: records only)."""
    res: dict = {"site": site, "sae": {}}
    tokens = modeled_tokens(stores, site)
    train_mask = torch.isin(tokens["base"].row_ids, torch.as_tensor(train_rows, dtype=torch.long))
    d_model = tokens["base"].acts.shape[1]
    sae_cfg = SAEConfig(d_in=d_model, d_sae=cfg.headline_expansion * d_model, architecture="batchtopk", k=cfg.k,
                        hook_name=site)
    data = {name: with_extra(tokens[name].acts[train_mask], tokens[name].acts[~train_mask], extra, name, site)
            for name in ("base", "post")}
    cc_tokens = _crosscoder_tokens(tokens, train_mask, site, extra)
    trained = train_saes({"base": SAEJob(data["base"][0], sae_cfg, cfg.train),
                          "post": SAEJob(data["post"][0], sae_cfg, cfg.train),
                          "crosscoder": crosscoder_job(cc_tokens[0], site, cfg)})
    for name, model in (("base", base), ("post", post)):
        (x_train, x_test), result = data[name], trained[name]
        sae = result.sae
        save_sae(sae, out / "saes" / name / "headline", {"model_name": name})
        m = reconstruction_metrics(sae, x_test)
        train_m = reconstruction_metrics(sae, x_train)
        m.update(dead_fraction_train=train_m["dead_fraction"], n_train_tokens=train_m["n_tokens"])
        m.update(spliced_metrics(model, sae, _batches(stores[name], test_rows, pad), site, tokenizer.all_special_ids))
        m["train_tokens_per_second"] = result.tokens_per_second
        res["sae"][name] = m
        if name == "post":
            firing = (sae.encode(tokens[name].acts[~train_mask]) > 0).float().mean(0)
            top = torch.argsort(-firing)[:cfg.n_top_features].tolist()
            fr, _, _ = _feature_records(tokenizer, stores[name], tokens[name], sae, test_rows, top, cfg.seed)
            res["interp"] = interpret_features(fr, explainer, simulator, detector)["summary"]
    res["crosscoder"] = run_crosscoder(tokenizer, stores, tokens, train_mask, test_rows, site, cfg, extra=extra,
                                       trained=(trained["crosscoder"].sae, cc_tokens[1]))
    return res


def _crosscoder_tokens(tokens: dict, train_mask: torch.Tensor, site: str,
                       extra: Extra | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The crosscoder's (train, held-out) tokens [n, 2 d_model]: each token's base and post activations side by
    side, the records' split by train_mask, each followed by its side of the paired extra samples."""
    paired = torch.cat([tokens["base"].acts, tokens["post"].acts], dim=1)
    x_train, x_test = paired[train_mask], paired[~train_mask]
    if extra is not None:
        (base_train, base_test), (post_train, post_test) = extra.split("base", site), extra.split("post", site)
        x_train = torch.cat([x_train, torch.cat([base_train, post_train], dim=1)])
        x_test = torch.cat([x_test, torch.cat([base_test, post_test], dim=1)])
    return x_train, x_test


def crosscoder_job(x_train: torch.Tensor, site: str, cfg: DiffConfig) -> SAEJob:
    """The BatchTopK crosscoder's training on paired tokens x_train [n, 2 d_model] (`_crosscoder_tokens`' train
    side), cfg.crosscoder_expansion x d_model wide."""
    d_model = x_train.shape[1] // 2
    cc_cfg = SAEConfig(d_in=2 * d_model, d_sae=cfg.crosscoder_expansion * d_model, architecture="batchtopk",
                       k=cfg.k, hook_name=site)
    return SAEJob(x_train, cc_cfg, cfg.train, Crosscoder)


def run_crosscoder(tokenizer, stores: dict, tokens: dict, train_mask: torch.Tensor, test_rows, site: str,
                   cfg: DiffConfig, out: Path | None = None, extra: Extra | None = None,
                   trained: tuple[Crosscoder, torch.Tensor] | None = None) -> dict:
    """Train the BatchTopK crosscoder on paired train tokens plus the paired extra samples (`crosscoder_job`;
    trained: (a crosscoder already trained so, its held-out tokens)); counts by relative norm before and after
    Latent Scaling on held-out tokens (plus the extra ones); post-only latents with their top held-out examples
    from the records."""
    if trained is None:
        x_train, x_test = _crosscoder_tokens(tokens, train_mask, site, extra)
        trained = crosscoder_job(x_train, site, cfg).run().sae, x_test
    cc, x_test = trained
    if out is not None:
        save_tensors(out / "crosscoder.safetensors", dict(cc.state_dict()), {"config": cc.config_dict()})
    diff = diff_summary(cc, x_test, cfg.scaling_threshold)
    post_only = [l["latent"] for l in diff["latents"] if l["class"] == "post_only"]
    if post_only:
        paired = torch.cat([tokens["base"].acts, tokens["post"].acts], dim=1)
        fr_tokens = TokenActs(paired, tokens["post"].row_ids, tokens["post"].token_ids, tokens["post"].positions)
        _, seqs, acts = _feature_records(tokenizer, stores["post"], fr_tokens, cc, [int(r) for r in test_rows],
                                         post_only, cfg.seed)
        for j, latent in enumerate(post_only):
            diff["latents"][latent]["top_examples"] = _top_examples(seqs, acts, j)
    return {"site": site, "counts_before": diff["counts_before"], "counts_after": diff["counts_after"],
            "scaling_threshold": diff["scaling_threshold"], "post_only": [diff["latents"][j] for j in post_only]}


def prepare_stores(base, post, tokenizer, records: list[dict], out: Path, sites: list[str], cfg: DiffConfig):
    """Records with rewards, both models' activation stores of the records, the extra samples of every
    record prompt (None when cfg.samples_per_prompt is 0), and the grouped train/test row split."""
    if cfg.reward_field not in records[0]:
        rewards = get_reward(cfg.reward)([r["completion"] for r in records])
        records = [dict(r, **{cfg.reward_field: v}) for r, v in zip(records, rewards)]
    caching = CacheConfig(sites=sites, positions=["tokens"], batch_size=cfg.cache_batch_size)
    stores = {name: cache_activations(model, tokenizer, records, out / f"acts-{name}", caching, model_name=name)
              for name, model in (("base", base), ("post", post))}
    split = grouped_split(stores["base"].prompt_ids, (0.7, 0.1, 0.2), seed=cfg.seed)
    train_rows = np.concatenate([split.train, split.val])
    extra = None
    if cfg.samples_per_prompt > 0:
        prompts = sorted({r["prompt"] for r in records})
        texts = sample_extra_texts(base, post, tokenizer, prompts, cfg.samples_per_prompt, cfg.max_new_tokens,
                                   cfg.seed, cfg.sample_batch_size)
        extra = Extra({name: cache_activations(model, tokenizer, texts, out / f"acts-extra-{name}", caching,
                                               model_name=name)
                       for name, model in (("base", base), ("post", post))},
                      {stores["base"].prompt_ids[int(i)] for i in train_rows})
    return records, stores, extra, train_rows, split.test


def crosscoder_models(base, post, tokenizer, records: list[dict], out: str | Path, site: str,
                      cfg: DiffConfig = DiffConfig()) -> dict:
    """`rewardlab sae crosscoder`: the crosscoder alone at one site; writes out/crosscoder.json."""
    out = Path(out)
    _, stores, extra, train_rows, test_rows = prepare_stores(base, post, tokenizer, records, out, [site], cfg)
    tokens = modeled_tokens(stores, site)
    train_mask = torch.isin(tokens["base"].row_ids, torch.as_tensor(train_rows, dtype=torch.long))
    res = run_crosscoder(tokenizer, stores, tokens, train_mask, test_rows, site, cfg, out, extra)
    write_json(out / "crosscoder.json", res)
    return res


def diffdict_models(base, post, tokenizer, records: list[dict], out: str | Path, site: str,
                    cfg: DiffConfig = DiffConfig(), base_name: str = "base", post_name: str = "post",
                    explainer=None, simulator=None, detector=None) -> dict:
    """`rewardlab sae diffdict`: the difference dictionary, the difference SAE and the crosscoder at one
    site (`sae.diffdict`), trained on the records' train-prompt completion tokens (plus the extra samples
    of train prompts); on the held-out records' tokens, FVU of the post activations for every prediction
    with CIs over held-out prompts, and each dictionary's most important latents with their top tokens
    and unembedding read-out, each explained and scored like SAE features (`interpret_features`: the offline
    lexical trio unless LLM backends are given). Writes out/diffdict.json and SAELens folders out/diffdict,
    out/diff_sae, out/crosscoder."""
    out = Path(out)
    cfg.validate()
    parse_site(site, n_layers(base))
    _, stores, extra, train_rows, test_rows = prepare_stores(base, post, tokenizer, records, out, [site], cfg)
    return run_diffdict(post, tokenizer, stores, extra, train_rows, test_rows, site, cfg, out, base_name, post_name,
                        explainer, simulator, detector)


def run_diffdict(post, tokenizer, stores: dict, extra: Extra | None, train_rows, test_rows, site: str,
                 cfg: DiffConfig, out: Path, base_name: str = "base", post_name: str = "post",
                 explainer=None, simulator=None, detector=None) -> dict:
    """`diffdict_models` on cached activation stores (as `prepare_stores` returns them)."""
    tokens = modeled_tokens(stores, site)
    train_mask = torch.isin(tokens["base"].row_ids, torch.as_tensor(train_rows, dtype=torch.long))
    (b_train, _), (p_train, _) = (with_extra(tokens[m].acts[train_mask], tokens[m].acts[:0], extra, m, site)
                                  for m in ("base", "post"))
    b_test, p_test = tokens["base"].acts[~train_mask].float(), tokens["post"].acts[~train_mask].float()
    if not len(b_test):
        raise InputError("no held-out tokens: the records have too few prompts for a train/test split",
                         fix="give records of more prompts")
    d = b_train.shape[1]
    dicts = dd.train_dictionaries(b_train, p_train, cfg.diffdict_expansion * d, cfg.k, site, cfg.train)
    dd.save_dictionaries(dicts, out, base_name, post_name)
    prompt_ids = stores["base"].prompt_ids
    groups = [prompt_ids[int(r)] for r in tokens["base"].row_ids[~train_mask]]
    res = {"site": site, "base": base_name, "post": post_name, "d_sae": cfg.diffdict_expansion * d, "k": cfg.k,
           "n_train_tokens": len(b_train), **dd.evaluate(dicts, b_test, p_test, groups, cfg.seed)}
    vocab = token_texts(tokenizer, list(range(len(tokenizer))))
    latents = dd.read_latents(dicts, b_test, p_test, post, vocab, n_latents=cfg.n_top_features)
    inputs = {"diffdict": (dicts.diffdict, tokens["base"].acts),
              "diff_sae": (dicts.diff_sae, tokens["post"].acts - tokens["base"].acts),
              "crosscoder": (dicts.crosscoder, torch.cat([tokens["base"].acts, tokens["post"].acts], 1))}
    res["interp"] = {}
    for name, rows in latents.items():
        model, acts = inputs[name]
        fr_tokens = TokenActs(acts, tokens["post"].row_ids, tokens["post"].token_ids, tokens["post"].positions)
        fr, seqs, f = _feature_records(tokenizer, stores["post"], fr_tokens, model, [int(r) for r in test_rows],
                                       [row["latent"] for row in rows], cfg.seed)
        interp = interpret_features(fr, explainer, simulator, detector)
        scored = {r["feature"]: r for r in interp["features"]}  # feature = the latent's row in `rows`
        for j, row in enumerate(rows):
            row["top_examples"] = _top_examples(seqs, f, j)
            row.update({key: scored.get(j, {}).get(key) for key in
                        ("explanation", "simulation", "detection", "wrong_simulation")})
        res["interp"][name] = {"backend": interp["backend"], "summary": interp["summary"]}
    res["latents"] = latents
    write_json(out / "diffdict.json", res)
    return res


def train_site_sae(model, tokenizer, records: list[dict], site: str, out: str | Path, sae_cfg: SAEConfig,
                   train_cfg: TrainConfig = TrainConfig(), splice: bool = True) -> dict:
    """`rewardlab sae train`: one SAE on the completion tokens of `records` at `site`, held-out
    metrics (with spliced CE/KL), saved as a SAELens folder out/sae plus out/metrics.json."""
    out = Path(out)
    store = cache_activations(model, tokenizer, records, out / "acts", CacheConfig(sites=[site], positions=["tokens"]))
    split = grouped_split(store.prompt_ids, (0.7, 0.1, 0.2), seed=train_cfg.seed)
    train_rows = np.concatenate([split.train, split.val])
    tokens = modeled_tokens({"model": store}, site)["model"]
    is_train = torch.isin(tokens.row_ids, torch.as_tensor(train_rows, dtype=torch.long))
    result = train_sae(tokens.acts[is_train], sae_cfg, train_cfg)
    metrics = reconstruction_metrics(result.sae, tokens.acts[~is_train])
    if splice:
        metrics.update(spliced_metrics(model, result.sae, _batches(store, split.test, pad_token_id(tokenizer)), site,
                                       tokenizer.all_special_ids))
    metrics["train_tokens_per_second"] = result.tokens_per_second
    save_sae(result.sae, out / "sae")
    write_json(out / "metrics.json", {"config": asdict(sae_cfg), "train": asdict(train_cfg), "metrics": metrics,
                                      "history": result.history})
    return metrics


FEATURE_ENTRY_KEYS = ("model", "layer", "site", "store", "sae", "features")


def _check_feature_entry(entry, where: str) -> None:
    """An entry of features.json: a mapping with FEATURE_ENTRY_KEYS and a non-empty list of feature ids."""
    fix = f"each entry has {', '.join(FEATURE_ENTRY_KEYS)}, as `rewardlab sae compare` writes them"
    if not isinstance(entry, dict):
        raise InputError("a feature entry must be a mapping", where, fix)
    missing = [k for k in FEATURE_ENTRY_KEYS if k not in entry]
    if missing:
        raise InputError(f"the feature entry lacks {', '.join(missing)}", where, fix)
    ids = entry["features"]
    if not (isinstance(ids, list) and ids and all(type(f) is int and f >= 0 for f in ids)):
        raise InputError("`features` must be a non-empty list of feature ids (integers >= 0)", where, fix)


def interp_features_file(path: str | Path, out: str | Path, explainer=None, simulator=None, detector=None,
                         workers: int = 8) -> dict:
    """`rewardlab interp`: explain and score the features listed in a features.json (as written by
    compare_models: tokenizer, and per entry an activation store, SAE folder, site and feature ids)."""
    from rewardlab.models import load_tokenizer  # loads transformers: keeps `sae --help` fast

    spec = read_json(path)
    if not isinstance(spec, dict) or "features" not in spec or "tokenizer" not in spec:
        raise InputError("a features file needs 'tokenizer' and 'features'", str(path),
                         "use the features.json written by `rewardlab sae compare`")
    entries = spec["features"]
    for i, entry in enumerate(entries if isinstance(entries, list) else [None]):
        _check_feature_entry(entry, f"{path}: features[{i}]")
    tokenizer = load_tokenizer(spec["tokenizer"])
    results = []
    for i, entry in enumerate(entries):
        store = ActivationStore(entry["store"])
        sae = load_sae(entry["sae"])
        too_big = [f for f in entry["features"] if f >= sae.cfg.d_sae]
        if too_big:
            raise InputError(f"feature ids {too_big[:5]} do not exist in an SAE of {sae.cfg.d_sae} latents",
                             f"{path}: features[{i}]", "use ids below the SAE's width")
        tokens = modeled_tokens({"model": store}, entry["site"])["model"]
        fr, _, _ = _feature_records(tokenizer, store, tokens, sae, np.arange(len(store)), entry["features"], 0)
        res = interpret_features(fr, explainer, simulator, detector, workers)
        for row in res["features"]:
            row["feature"] = entry["features"][row["feature"]]
        results.append({k: entry[k] for k in ("model", "layer", "site", "sae")} | res)
    write_json(out, {"source": str(path), "results": results})
    return {"results": results}


def headline_checks(results: dict) -> dict:
    """The headline figures of a compare_models result, each with its target and whether it is met.

    For the pipeline's results.json: the headline SAE (post model, BatchTopK 4x, k) FVU, dead
    fraction (with the held-out token count), CE recovered; MMCS(1x, 2x) minus the random baseline
    beside the other-seed baseline (post model, first layer); activation-based reward relevance
    post - base on the first layer (passes when its CI excludes 0 and the gap exceeds the larger
    |seed control|, the gap between two SAEs of one model), every analysed layer's gap, and the
    2023 SAE paper's description metric; crosscoder counts; offline explainer vs wrong features.
    """
    acc = results["headline"]
    layer = results["by_layer"][str(results["layers"][0])]
    post_sae = acc["sae"]["post"]
    mm = layer["models"]["post"]
    rel = layer["activation_relevance"]
    interp = acc.get("interp", {})
    sim, wrong = interp.get("simulation", {}).get("value"), interp.get("wrong_simulation", {}).get("value")

    def relevance_verdict(r: dict) -> dict:
        noise = max((abs(c["value"]) for c in r.get("seed_control", {}).values()), default=0.0)
        gap = r["post_minus_base"]
        return {**gap, "seed_control_max_abs": noise, "pass": gap["ci"][0] > 0 and gap["value"] > noise}

    checks = {
        "fvu": {"value": post_sae["fvu"], "target": "<= 0.15", "pass": post_sae["fvu"] <= 0.15},
        "dead_fraction": {"value": post_sae["dead_fraction"], "n_heldout_tokens": post_sae["n_tokens"],
                          "definition": "latents that never fire on the held-out tokens",
                          "train_tokens": {"value": post_sae.get("dead_fraction_train"),
                                           "n_tokens": post_sae.get("n_train_tokens")}, "target": "<= 0.1",
                          "pass": post_sae["dead_fraction"] <= 0.1},
        "ce_loss_recovered": {"value": post_sae["ce_loss_recovered"], "target": ">= 0.8",
                              "pass": post_sae["ce_loss_recovered"] >= 0.8},
        "mmcs_minus_random": {"value": mm["mmcs_minus_random"], "mmcs": mm["mmcs"]["mmcs_max"],
                              "random": mm["baseline_random"]["mmcs_max"],
                              "other_seed": mm["baseline_other_seed"]["mmcs_max"], "target": ">= 0.3",
                              "pass": mm["mmcs_minus_random"] >= 0.3},
        "reward_relevance_post_minus_base": {**relevance_verdict(rel), "base": rel["base"], "post": rel["post"],
                                             "seed_control": rel.get("seed_control"), "k": rel["k"],
                                             "by_layer": {L: relevance_verdict(v["activation_relevance"])
                                                          for L, v in results["by_layer"].items()},
                                             "description_metric": {m: layer["models"][m]["description_relevance"]
                                                                    for m in ("base", "post")},
                                             "target": "> 0 with CI excluding 0, and above the seed control"},
        "crosscoder": {"counts_before": acc["crosscoder"]["counts_before"],
                       "counts_after": acc["crosscoder"]["counts_after"],
                       "post_only_top_tokens": [[e["token"] for e in l.get("top_examples", [])]
                                                for l in acc["crosscoder"]["post_only"][:10]]},
        "explainer_vs_wrong": {"simulation": interp.get("simulation"), "wrong": interp.get("wrong_simulation"),
                               "difference": interp.get("simulation_minus_wrong"), "target": "simulation > wrong",
                               "pass": sim is not None and wrong is not None and sim > wrong},
    }
    return {"layer": acc["layer"], "layer_rule": results.get("layer_rule"), "site": acc["site"], "checks": checks,
            "all_pass": all(c.get("pass", True) for c in checks.values())}

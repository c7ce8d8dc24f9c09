"""The `rewardlab` command. It only parses arguments and delegates; the work lives in the modules.

Every handler imports its module lazily so `rewardlab --help` stays fast. Bad input raises
`InputError`, printed here as one message with exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from rewardlab.errors import InputError


def _world_build(a: argparse.Namespace) -> None:
    from rewardlab.world import build_world, describe_world

    info = build_world(a.out, preset=a.preset, seed=a.seed)
    print(describe_world(info, a.out))


def _reward_score(a: argparse.Namespace) -> None:
    from rewardlab.io import read_jsonl, write_jsonl
    from rewardlab.rewards import get_reward, score_records

    records = read_jsonl(a.input, required=("prompt", "completion") if a.on == "full" else ("completion",))
    write_jsonl(a.out, score_records(records, get_reward(a.reward), on=a.on, field=a.field))
    print(f"scored {len(records)} records with {a.reward} -> {a.out}")


def _demo(a: argparse.Namespace) -> None:
    from rewardlab.pipeline import demo_config, run_config_file, summary_table

    out = a.out or ("runs/demo-fast" if a.fast else "runs/demo")
    results = run_config_file(demo_config(a.fast), out, seed=a.seed)
    print(summary_table(results, out))


def _run(a: argparse.Namespace) -> None:
    from rewardlab.pipeline import run_config_file, summary_table

    print(summary_table(run_config_file(a.config, a.out), a.out))


def _report(a: argparse.Namespace) -> None:
    from rewardlab.report import build_report

    print(f"report -> {build_report(a.run)}")


def _count(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def _count0(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def _positive(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number_in(text, low_open=True)


def _nonnegative(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number_in(text, low_open=False)


def _number_in(text: str, low_open: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 < value if low_open else 0 <= value) or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number {'above' if low_open else 'at least'} 0, got {text}")
    return value


def _bool(text: str) -> bool:
    """argparse type: true/false, yes/no or 1/0."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _out_folder(text: str) -> str:
    """argparse type: an output folder path that is not an existing file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing file; give a folder path")
    return text


def _out_file(text: str) -> str:
    """argparse type: an output file path that is not an existing folder."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path")
    return text


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise InputError(f"expected comma-separated integers, got {text!r}", fix="e.g. --layers 0,2")
    return values


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"expected comma-separated finite numbers, got {text!r}", fix="e.g. --alpha 0,1,2,4")
    return values


def _diff_params(a: argparse.Namespace) -> None:
    from rewardlab.diff.params import parameter_divergence, write_divergence
    from rewardlab.models import ModelPair, model_id

    pair = ModelPair.load(a.base, a.post, device="cpu", dtype="float32")
    summary = write_divergence(parameter_divergence(pair.base, pair.post), a.out, model_id(a.base), model_id(a.post))
    for row in summary["layers"][:10]:
        print(f"{row['rank']:>3} {row['group']:<28} seed {row['seed_measure']:.4g}  l2 {row['l2']:.4g}  "
              f"relative {row['relative_change']:.4g}")
    print(f"blocks that changed most: {', '.join(summary['top_blocks'])} -> {a.out}/params.json")


def _diff_kl(a: argparse.Namespace) -> None:
    from rewardlab.diff.kl import KLConfig, token_kl
    from rewardlab.io import read_jsonl, write_json, write_jsonl
    from rewardlab.models import ModelPair, model_id
    from rewardlab.stats import describe

    records = read_jsonl(a.input, required=("prompt", "completion"))
    pair = ModelPair.load(a.base, a.post, device=a.device, dtype="float32")
    cfg = KLConfig(batch_size=a.batch_size, top_positions=a.top, top_tokens=a.top, chat_template=a.chat_template)
    summary, rows = token_kl(pair.base, pair.post, pair.tokenizer, [r["prompt"] for r in records],
                             [r["completion"] for r in records], cfg)
    summary.update(base=model_id(a.base), post=model_id(a.post))
    write_json(f"{a.out}/kl.json", summary)
    write_jsonl(f"{a.out}/kl_tokens.jsonl", [{**r, **k} for r, k in zip(records, rows)])
    kl = summary["kl_per_token"]
    print(f"KL(post||base) per token {describe(kl, 4)}")
    print("promoted:", " ".join(t["token"] for t in summary["promoted"][:10]))
    print("demoted: ", " ".join(t["token"] for t in summary["demoted"][:10]))
    print(f"-> {a.out}/kl.json")


def _score(a: argparse.Namespace) -> None:
    from rewardlab.diff.implicit import ScoreConfig, score_records
    from rewardlab.io import read_jsonl, write_jsonl
    from rewardlab.models import ModelPair, model_id
    from rewardlab.rewards import get_reward

    records = read_jsonl(a.input, required=("prompt", "completion"))
    pair = ModelPair.load(a.base, a.post, device=a.device, dtype=a.dtype)
    cfg = ScoreConfig(beta=a.beta, batch_size=a.batch_size, chat_template=a.chat_template, per_token=a.per_token)
    rows = score_records(pair.base, pair.post, pair.tokenizer, records, cfg,
                         reward=get_reward(a.reward) if a.reward else None,
                         rm=get_reward(f"rm:{a.rm}", device=a.device) if a.rm else None,
                         base_name=model_id(a.base), post_name=model_id(a.post))
    write_jsonl(a.out, rows)
    print(f"scored {len(rows)} records (implicit reward vs reference {model_id(a.base)}) -> {a.out}")


def _sample_divergent(a: argparse.Namespace) -> None:
    from rewardlab.diff.divergent import DivergentConfig, sample_divergent
    from rewardlab.io import read_jsonl, write_jsonl
    from rewardlab.models import ModelPair

    prompts = [r["prompt"] for r in read_jsonl(a.prompts, required=("prompt",))]
    cfg = DivergentConfig(alphas=_floats(a.alpha), plausibility=a.plausibility, temperature=a.temperature,
                          top_p=a.top_p, max_new_tokens=a.max_new_tokens, num_samples=a.num_samples,
                          batch_size=a.batch_size, seed=a.seed)
    pair = ModelPair.load(a.base, a.post, device=a.device, dtype=a.dtype)
    rows = sample_divergent(pair.base, pair.post, pair.tokenizer, prompts, cfg)
    write_jsonl(a.out, rows)
    for alpha in cfg.alphas:
        ir = [r["implicit_reward"] for r in rows if r["alpha"] == alpha]
        print(f"alpha {alpha:g}: {len(ir)} samples, mean implicit reward {sum(ir) / len(ir):.3f} nats")
    print(f"-> {a.out}")


def _audit(a: argparse.Namespace) -> None:
    from rewardlab.audit import (PairConfig, audit, format_table, get_scorer, load_template, make_pairs,
                                 read_pairs, world_sources, world_words, write_audit)

    attributes = tuple(x.strip() for x in a.attributes.split(",") if x.strip())
    cfg = PairConfig(attributes=attributes, n_sources=a.n_sources, seed=a.seed)
    if a.pairs:
        pairs = read_pairs(a.pairs)
    elif a.template:
        pairs = load_template(a.template, cfg)
    else:
        pairs = make_pairs(world_sources(cfg.n_sources, cfg.seed, cfg.prompt_words), world_words(), cfg)
    scorer = get_scorer(a.rm, ref=a.ref, ref_free=a.ref_free, beta=a.beta, device=a.device)
    results, rows = audit(scorer, pairs, seed=a.seed)
    write_audit(a.out, results, rows)
    print(format_table(results))
    print(f"-> {a.out}/results.json, {a.out}/scores.jsonl")


def _config_from_args(cls, a: argparse.Namespace):
    """A dataclass config from the parsed `--field` options that `_add_config_args` added."""
    import dataclasses

    return cls(**{f.name: getattr(a, f.name) for f in dataclasses.fields(cls) if hasattr(a, f.name)})


def _add_config_args(p: argparse.ArgumentParser, cls, required: tuple[str, ...] = ()) -> None:
    """One `--field-name` option per field of a dataclass config, typed and defaulted from it."""
    import dataclasses

    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
        if kind == "bool":
            p.add_argument(flag, dest=f.name, type=_bool, default=f.default,
                           metavar="BOOL", help=f"default {f.default}")
            continue
        convert = int if kind.startswith("int") else float if kind.startswith("float") else str
        p.add_argument(flag, dest=f.name, type=convert, default=None if f.name in required else f.default,
                       required=f.name in required, help=f"default {f.default}" if f.name not in required else None)


def _train_ppo(a: argparse.Namespace) -> None:
    from rewardlab.io import dumps
    from rewardlab.rl.config import PPOConfig
    from rewardlab.rl.ppo import train_ppo

    summary = train_ppo(_config_from_args(PPOConfig, a), a.out)
    print(dumps({k: v for k, v in summary.items() if not k.endswith("_ci")}, indent=2))


def _train_dpo(a: argparse.Namespace) -> None:
    from rewardlab.io import dumps
    from rewardlab.rl.config import DPOTrainConfig
    from rewardlab.rl.dpo import train_dpo

    summary = train_dpo(_config_from_args(DPOTrainConfig, a), a.out)
    print(dumps({k: v for k, v in summary.items() if not k.endswith("_ci")}, indent=2))


def _train_sweep(a: argparse.Namespace) -> None:
    from rewardlab.rl.config import PPOConfig
    from rewardlab.rl.sweep import sweep_kl

    table = sweep_kl(_config_from_args(PPOConfig, a), _floats(a.kl_coefs), a.out)
    print(table)


def _data_pairs(a: argparse.Namespace) -> None:
    from rewardlab.rl.config import PairsConfig
    from rewardlab.rl.pairs import make_pairs

    stats = make_pairs(_config_from_args(PairsConfig, a), a.out)
    print(f"wrote {stats['n_pairs']} pairs ({stats['n_ties']} ties dropped, mean margin "
          f"{stats['mean_margin']:.3f}) -> {a.out}")


def _acts_cache(a: argparse.Namespace) -> None:
    from rewardlab.acts import CacheConfig, cache_activations
    from rewardlab.io import read_jsonl
    from rewardlab.models import load_model
    from rewardlab.sites import all_sites

    model, tokenizer = load_model(a.model, device=a.device)
    records = read_jsonl(a.input, required=("prompt", "completion"))
    sites = all_sites(model) if a.sites == "all" else a.sites.split(",")
    cfg = CacheConfig(sites=sites, positions=a.positions.split(","), batch_size=a.batch_size,
                      shard_rows=a.shard_rows, dtype=a.dtype)
    store = cache_activations(model, tokenizer, records, a.out, cfg, model_name=a.model)
    print(f"cached {len(store)} records x {len(store.sites)} sites x {len(store.positions)} positions "
          f"({len(store.manifest['shards'])} shards) -> {a.out}")


def _probe_sweep(a: argparse.Namespace) -> None:
    from rewardlab.acts import CacheConfig, cache_activations
    from rewardlab.io import read_jsonl
    from rewardlab.models import load_model
    from rewardlab.probes.sweep import SweepConfig, sweep
    from rewardlab.sites import all_sites
    from rewardlab.stats import describe

    records = read_jsonl(a.input, required=("prompt", "completion"), numbers=(a.target,))
    stores = {}
    for name, path in (("post", a.model), ("base", a.base)):
        if path is None:
            continue
        model, tokenizer = load_model(path, device=a.device)
        sites = all_sites(model) if a.sites == "all" else a.sites.split(",")
        cfg = CacheConfig(sites=sites, positions=a.positions.split(","), batch_size=a.batch_size)
        stores[name] = cache_activations(model, tokenizer, records, Path(a.out) / f"acts-{name}", cfg, path)
    result = sweep(stores, SweepConfig(target=a.target, seed=a.seed, n_boot=a.n_boot), a.out)
    for name, r in result["models"].items():
        best, sp = r["best"], r["best"]["test"]["spearman"]
        print(f"{name}: best {best['site']} @ {best['position']}: test Spearman {describe(sp)}, "
              f"selectivity {describe(best['selectivity'])}")
    print(f"-> {a.out}/sweep.json, heatmaps, probe-*.safetensors")


def _steer(a: argparse.Namespace) -> None:
    from rewardlab.acts import collect_activations
    from rewardlab.io import read_jsonl, write_json
    from rewardlab.models import load_model
    from rewardlab.probes.cross import mean_difference_direction
    from rewardlab.probes.linear import load_probe
    from rewardlab.rewards import get_reward
    from rewardlab.stats import describe
    from rewardlab.steer import SteerConfig, dose_response, reward_gradient_direction

    model, tokenizer = load_model(a.model, device=a.device, dtype="float32")
    probe = load_probe(a.probe) if a.probe else None
    if a.direction in ("mean-diff", "reward-gradient"):
        if not a.site or not a.records:
            raise InputError(f"--direction {a.direction} needs --site and --records (JSONL with a reward field)")
        records = read_jsonl(a.records, required=("prompt", "completion"), numbers=(a.target,))
        site, target = a.site, [r[a.target] for r in records]
        if a.direction == "mean-diff":
            x = collect_activations(model, tokenizer, records, [site], [a.position])[f"{site}|{a.position}"]
            direction = mean_difference_direction(x.numpy(), target)
        else:
            direction = reward_gradient_direction(model, tokenizer, [r["prompt"] for r in records],
                                                  [r["completion"] for r in records], target, site, a.where)
    else:
        direction_probe = load_probe(a.direction)
        direction, site = direction_probe.direction(), a.site or direction_probe.meta.get("site")
        probe = probe or direction_probe
    from rewardlab.world import is_grammatical

    checker = is_grammatical if a.grammar else None  # called as checker(completion, prompt)
    base = load_model(a.base, device=a.device, dtype="float32")[0] if a.base else None
    prompts = [r["prompt"] for r in read_jsonl(a.prompts, required=("prompt",))]
    neutral = [r["prompt"] for r in read_jsonl(a.neutral, required=("prompt",))] if a.neutral else None
    cfg = SteerConfig(site=site, alphas=_floats(a.alphas), where=a.where, n_random=a.n_random,
                      max_new_tokens=a.max_new_tokens, seed=a.seed)
    name = a.direction if a.direction in ("mean-diff", "reward-gradient") else "probe"
    result = dose_response(model, tokenizer, prompts, {name: direction}, cfg, get_reward(a.reward),
                           probe=probe, base=base, checker=checker, neutral_prompts=neutral, out=a.out)
    write_json(Path(a.out) / "steering.json", result)
    steered = result["directions"][name]
    for row in steered["rows"]:
        m = row["reward_mean"]
        print(f"alpha {row['alpha']:+.3g}: reward {describe(m)}")
    s = steered["summary"]
    print(f"largest random |effect| {s['random_max_abs_effect']:.3f}; effect / random {s['effect_over_random']:.2f}"
          f" -> {a.out}/steering.json, dose_response.png")


def _sae_diff_config(a: argparse.Namespace):
    from rewardlab.sae.diffing import DiffConfig
    from rewardlab.sae.train import TrainConfig

    train = TrainConfig(batch_size=a.batch_size, n_tokens=a.n_tokens, lr=a.lr, seed=a.seed)
    layers = _ints(a.layers) if getattr(a, "layers", None) else None
    return DiffConfig(n_layers=getattr(a, "n_layers", 1), layers=layers, site_kind=getattr(a, "site_kind", "hook_resid_post"),
                      architecture=getattr(a, "arch", "batchtopk"), k=a.k,
                      n_top_features=getattr(a, "n_top_features", 30),
                      relevance_saes=getattr(a, "relevance_saes", 2), crosscoder_expansion=getattr(a, "expansion", 4),
                      train=train, seed=a.seed)


def _sae_models(a: argparse.Namespace):
    from rewardlab.io import read_jsonl
    from rewardlab.models import ModelPair

    pair = ModelPair.load(a.base, a.post, device=a.device, dtype="float32")
    return pair, read_jsonl(a.input, required=("prompt", "completion"))


def _sae_compare(a: argparse.Namespace) -> None:
    from rewardlab.interp.score import make_backends
    from rewardlab.sae.diffing import compare_models
    from rewardlab.stats import describe

    backends = make_backends(a.llm_base_url, a.llm_model, a.llm_key_env, a.hf_chat_model, a.llm_cache,
                             check_endpoint=True)
    pair, records = _sae_models(a)
    res = compare_models(pair.base, pair.post, pair.tokenizer, records, a.out, _sae_diff_config(a), *backends,
                         base_name=a.base, post_name=a.post)
    for L, layer in res["by_layer"].items():
        for name, m in layer["models"].items():
            print(f"layer {L} {name}: MMCS(1x,2x) {m['mmcs']['mmcs_max']:.3f} (one-to-one {m['mmcs']['mmcs_one_to_one']:.3f}),"
                  f" random {m['baseline_random']['mmcs_max']:.3f}, other seed {m['baseline_other_seed']['mmcs_max']:.3f};"
                  f" shared {m['mmcs']['n_shared']}; FVU 1x {m['metrics'][next(iter(m['metrics']))]['fvu']:.3f}")
        rel = layer["activation_relevance"]["post_minus_base"]
        print(f"layer {L} reward relevance post - base: {describe(rel)}")
        for name, c in layer["activation_relevance"].get("seed_control", {}).items():
            print(f"layer {L} seed control ({name}, SAE seed A - seed B): {describe(c)}")
    acc = res["headline"]
    for name, m in acc["sae"].items():
        print(f"headline SAE {name}: FVU {m['fvu']:.3f}, dead {m['dead_fraction']:.3f}, "
              f"CE recovered {m['ce_loss_recovered']:.3f}, L0 {m['l0']:.1f}")
    print(f"crosscoder: before {acc['crosscoder']['counts_before']}, after {acc['crosscoder']['counts_after']}")
    print(f"-> {a.out}/sae_compare.json, {a.out}/features.json")


def _sae_crosscoder(a: argparse.Namespace) -> None:
    from rewardlab.sae.diffing import crosscoder_models

    pair, records = _sae_models(a)
    res = crosscoder_models(pair.base, pair.post, pair.tokenizer, records, a.out, a.site, _sae_diff_config(a))
    print(f"crosscoder at {a.site}: before Latent Scaling {res['counts_before']}; after {res['counts_after']}")
    for latent in res["post_only"][:10]:
        tops = ", ".join(e["token"] for e in latent.get("top_examples", []))
        print(f"  post-only latent {latent['latent']} (r={latent['relative_norm']:.3f}, "
              f"false={latent['false_post_only']}): {tops}")
    print(f"-> {a.out}/crosscoder.json")


def _sae_train(a: argparse.Namespace) -> None:
    from rewardlab.io import read_jsonl
    from rewardlab.models import load_model
    from rewardlab.sae.diffing import train_site_sae
    from rewardlab.sae.model import SAEConfig
    from rewardlab.sae.train import TrainConfig

    model, tokenizer = load_model(a.model, device=a.device, dtype="float32")
    records = read_jsonl(a.input, required=("prompt", "completion"))
    d = model.config.hidden_size
    sae_cfg = SAEConfig(d_in=d, d_sae=a.expansion * d, architecture=a.arch, k=a.k, l1_coefficient=a.l1,
                        tied=a.tied, hook_name=a.site)
    m = train_site_sae(model, tokenizer, records, a.site, a.out, sae_cfg,
                       TrainConfig(batch_size=a.batch_size, n_tokens=a.n_tokens, lr=a.lr, seed=a.seed))
    print(f"{a.arch} SAE {d}->{a.expansion * d} at {a.site}: FVU {m['fvu']:.3f}, L0 {m['l0']:.1f}, "
          f"dead {m['dead_fraction']:.3f}, dense {m['dense_fraction']:.3f}, CE recovered {m['ce_loss_recovered']:.3f}, "
          f"KL {m['kl_sae']:.4f} (zero ablation {m['kl_zero']:.3f}) -> {a.out}/sae, {a.out}/metrics.json")


def _interp(a: argparse.Namespace) -> None:
    from rewardlab.interp.score import make_backends
    from rewardlab.sae.diffing import interp_features_file

    backends = make_backends(a.llm_base_url, a.llm_model, a.llm_key_env, a.hf_chat_model, a.llm_cache)
    res = interp_features_file(a.features, a.out, *backends, workers=a.workers)
    for entry in res["results"]:
        s = entry["summary"]
        sim, wrong = s.get("simulation", {}), s.get("wrong_simulation", {})
        print(f"{entry['model']} layer {entry['layer']}: {len(entry['features'])} features, simulation score "
              f"{sim.get('value', float('nan')):.3f}, wrong-feature {wrong.get('value', float('nan')):.3f}")
    print(f"-> {a.out}")


def _add_sae_args(p: argparse.ArgumentParser, k: int = 16) -> None:
    p.add_argument("--k", type=_count, default=k, help="active latents per token (topk, batchtopk)")
    p.add_argument("--batch-size", type=_count, default=1024, help="tokens per step")
    p.add_argument("--n-tokens", type=_count, default=2_000_000, help="training tokens")
    p.add_argument("--lr", type=_positive, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)


def _add_llm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llm-base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--llm-model", default=None, help="model name at that endpoint")
    p.add_argument("--llm-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--hf-chat-model", default=None, help="local Hugging Face chat model (instead of an endpoint)")
    p.add_argument("--llm-cache", default=None, help="folder caching LLM calls (default: no cache)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardlab",
        description="Reward interpretability: what did post-training teach a language model about reward?",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # --- demo ---
    p = commands.add_parser("demo", help="the bundled review-world run: every stage, results.json and report.html")
    p.add_argument("--out", type=_out_folder, default=None, help="output folder (default: runs/demo)")
    p.add_argument("--fast", action="store_true", help="the small CI preset (minutes, not tens of minutes)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.set_defaults(func=_demo)

    # --- run ---
    p = commands.add_parser("run", help="run the pipeline of a YAML config into a run folder (resumable)")
    p.add_argument("config", help="YAML config (see src/rewardlab/configs/demo.yaml)")
    p.add_argument("--out", type=_out_folder, required=True, help="run folder; finished stages in it are reused")
    p.set_defaults(func=_run)

    # --- world ---
    world = commands.add_parser("world", help="the review world: a grammar, tokenizer and base model with a known reward")
    world_cmds = world.add_subparsers(dest="world_command", required=True, metavar="ACTION")
    p = world_cmds.add_parser("build", help="build the review world into a folder")
    p.add_argument("--out", type=_out_folder, required=True, help="output folder")
    p.add_argument("--preset", default="tiny", choices=["micro", "tiny", "small"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_world_build)

    # --- reward ---
    reward = commands.add_parser("reward", help="score texts with a reward function")
    reward_cmds = reward.add_subparsers(dest="reward_command", required=True, metavar="ACTION")
    p = reward_cmds.add_parser("score", help="add a reward field to each record of a JSONL file")
    p.add_argument("--reward", required=True, help="utility | char:X | classifier:PATH[:LABEL] | rm:PATH")
    p.add_argument("--in", dest="input", required=True, help="JSONL with prompt/completion records")
    p.add_argument("--out", type=_out_file, required=True, help="output JSONL")
    p.add_argument("--on", default="completion", choices=["completion", "full"],
                   help="score the completion only (default) or prompt + completion")
    p.add_argument("--field", default="reward", help="name of the added field")
    p.set_defaults(func=_reward_score)

    # --- report ---
    p = commands.add_parser("report", help="write RUN/report.html from RUN/results.json and its artifacts")
    p.add_argument("run", help="run folder (holds results.json)")
    p.set_defaults(func=_report)

    # --- diff ---
    diff = commands.add_parser("diff", help="what changed between a base and a post-trained model")
    diff_cmds = diff.add_subparsers(dest="diff_command", required=True, metavar="ACTION")
    p = diff_cmds.add_parser("params", help="parameter divergence per layer: ranked JSON, CSV and bar plot")
    p.add_argument("--base", required=True, help="base model folder or name")
    p.add_argument("--post", required=True, help="post-trained model folder or name")
    p.add_argument("--out", type=_out_folder, required=True, help="output folder")
    p.set_defaults(func=_diff_params)
    p = diff_cmds.add_parser("kl", help="per-token KL(post || base) on completions; most changed tokens")
    p.add_argument("--base", required=True)
    p.add_argument("--post", required=True)
    p.add_argument("--in", dest="input", required=True, help="JSONL with prompt/completion records")
    p.add_argument("--out", type=_out_folder, required=True, help="output folder (kl.json, kl_tokens.jsonl)")
    p.add_argument("--top", type=_count, default=20, help="positions and tokens listed")
    p.add_argument("--batch-size", type=_count, default=16)
    p.add_argument("--chat-template", action="store_true", help="wrap prompts with the tokenizer's chat template")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_diff_kl)

    # --- score ---
    p = commands.add_parser("score", help="implicit reward beta*sum log(pi_post/pi_base) of each completion")
    p.add_argument("--base", required=True, help="reference model (for a DPO policy: its reference)")
    p.add_argument("--post", required=True, help="post-trained model")
    p.add_argument("--in", dest="input", required=True, help="JSONL with prompt/completion records")
    p.add_argument("--out", type=_out_file, required=True, help="output JSONL")
    p.add_argument("--beta", type=_positive, default=1.0, help="scale of the log-ratio (1 = nats; DPO's is 0.1)")
    p.add_argument("--reward", default=None, help="also score the true reward with this reward spec")
    p.add_argument("--rm", default=None, help="also score with this Hugging Face reward model folder")
    p.add_argument("--per-token", action="store_true", help="write the per-token log-ratio vector")
    p.add_argument("--chat-template", action="store_true", help="wrap prompts with the tokenizer's chat template")
    p.add_argument("--batch-size", type=_count, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="model dtype (log-softmax is float32 regardless)")
    p.set_defaults(func=_score)

    # --- sample divergent ---
    sample = commands.add_parser("sample", help="sample completions")
    sample_cmds = sample.add_subparsers(dest="sample_command", required=True, metavar="ACTION")
    p = sample_cmds.add_parser("divergent", help="sample from post + alpha * (post - base) with a plausibility mask")
    p.add_argument("--base", required=True)
    p.add_argument("--post", required=True)
    p.add_argument("--prompts", required=True, help="JSONL with a prompt field per line")
    p.add_argument("--out", type=_out_file, required=True, help="output JSONL, one line per sample")
    p.add_argument("--alpha", default="0,1,2,4", help="comma-separated amplification strengths; write --alpha=-0.5,0,2 when the first is negative")
    p.add_argument("--plausibility", type=float, default=0.1, help="keep tokens with p_post >= this * max p_post")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=_count, default=32)
    p.add_argument("--num-samples", type=_count, default=1, help="samples per prompt and alpha")
    p.add_argument("--batch-size", type=_count, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.set_defaults(func=_sample_divergent)

    # --- audit ---
    p = commands.add_parser("audit", help="audit a reward model on minimal pairs (accuracy, ties lose)")
    p.add_argument("--rm", required=True, help="reward spec (utility, rm:PATH, classifier:PATH) or dpo:POLICY")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pairs", default=None, help="JSONL with prompt/chosen/rejected (optional attribute)")
    src.add_argument("--template", default=None, help="template JSON (texts, word lists); default: review world")
    p.add_argument("--attributes", default="sentiment,neutral,length", help="edits to generate")
    p.add_argument("--n-sources", type=_count, default=300, help="world texts to edit when no texts are given")
    p.add_argument("--ref", default=None, help="reference model for dpo:POLICY")
    p.add_argument("--ref-free", default="sum", choices=["sum", "mean", "norm"],
                   help="score of dpo:POLICY without --ref: sum, mean, or -L2 norm of log-probs")
    p.add_argument("--beta", type=_positive, default=1.0)
    p.add_argument("--out", type=_out_folder, required=True, help="output folder (results.json, scores.jsonl)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=_audit)

    # --- train ---
    from rewardlab.rl.config import DPOTrainConfig, PairsConfig, PPOConfig

    train = commands.add_parser("train", help="post-train a model against a known reward (PPO, DPO, KL sweep)")
    train_cmds = train.add_subparsers(dest="train_command", required=True, metavar="ACTION")
    p = train_cmds.add_parser("ppo", help="PPO with a value head and KL control against the frozen base")
    p.add_argument("--out", type=_out_folder, required=True, help="output folder (resumes from its checkpoint)")
    _add_config_args(p, PPOConfig, required=("base",))
    p.set_defaults(func=_train_ppo)
    p = train_cmds.add_parser("dpo", help="DPO (TRL) on preference pairs")
    p.add_argument("--out", type=_out_folder, required=True, help="output folder")
    _add_config_args(p, DPOTrainConfig, required=("base", "pairs"))
    p.set_defaults(func=_train_dpo)
    p = train_cmds.add_parser("sweep", help="PPO at several KL coefficients: reward against exact KL")
    p.add_argument("--out", type=_out_folder, required=True, help="output folder (one run per coefficient, plus frontier.*)")
    p.add_argument("--kl-coefs", required=True, help="comma-separated KL coefficients, e.g. 0,0.05,0.1,0.3")
    _add_config_args(p, PPOConfig, required=("base",))
    p.set_defaults(func=_train_sweep)

    # --- data ---
    data = commands.add_parser("data", help="make training data")
    data_cmds = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_cmds.add_parser("pairs", help="sample, score and write prompt/chosen/rejected preference pairs")
    p.add_argument("--out", type=_out_file, required=True, help="output JSONL")
    _add_config_args(p, PairsConfig, required=("model",))
    p.set_defaults(func=_data_pairs)

    # --- acts ---
    acts = commands.add_parser("acts", help="activation store: cache site activations to disk")
    acts_cmds = acts.add_subparsers(dest="acts_command", required=True, metavar="ACTION")
    p = acts_cmds.add_parser("cache", help="cache activations of prompt/completion records (sharded, resumable)")
    p.add_argument("--model", required=True, help="model folder or name")
    p.add_argument("--in", dest="input", required=True, help="JSONL with prompt/completion records")
    p.add_argument("--sites", default="all", help="comma-separated site names, or all")
    p.add_argument("--positions", default="last_completion",
                   help="comma-separated: last_completion, last_prompt, mean_completion, tokens, or an integer")
    p.add_argument("--out", type=_out_folder, required=True, help="output folder")
    p.add_argument("--batch-size", type=_count, default=16)
    p.add_argument("--shard-rows", type=_count, default=2048)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None)
    p.set_defaults(func=_acts_cache)

    # --- probe ---
    probe = commands.add_parser("probe", help="reward probes on activations")
    probe_cmds = probe.add_subparsers(dest="probe_command", required=True, metavar="ACTION")
    p = probe_cmds.add_parser("sweep", help="a probe per layer x site x position, for the model and its base")
    p.add_argument("--model", required=True, help="post-trained model folder or name")
    p.add_argument("--base", default=None, help="base model, swept beside it on the same split")
    p.add_argument("--in", dest="input", required=True, help="JSONL with prompt, completion and the target")
    p.add_argument("--target", default="reward", help="numeric record field to predict")
    p.add_argument("--sites", default="all")
    p.add_argument("--positions", default="last_completion,last_prompt,mean_completion")
    p.add_argument("--out", type=_out_folder, required=True, help="output folder")
    p.add_argument("--batch-size", type=_count, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=_count, default=1000, help="bootstrap resamples per CI")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_probe_sweep)

    # --- steer ---
    p = commands.add_parser("steer", help="steer generation along a direction; dose-response with random controls")
    p.add_argument("--model", required=True)
    p.add_argument("--direction", required=True,
                   help="probe.safetensors, mean-diff (high minus low reward records), or reward-gradient (the "
                        "score-function gradient of the reward; --records must be the model's own samples); "
                        "the last two need --records and --site")
    p.add_argument("--site", default=None, help="site to steer (default: the probe's site)")
    p.add_argument("--alphas", default="-1,-0.5,0,0.25,0.5,1",
                   help="multiples of the site's typical norm; write --alphas=-1,0,1 when the first is negative")
    p.add_argument("--prompts", required=True, help="JSONL with prompt records")
    p.add_argument("--records", default=None, help="JSONL with prompt/completion/target for mean-diff, reward-gradient")
    p.add_argument("--target", default="reward")
    p.add_argument("--position", default="last_completion", help="position of the mean-diff activations")
    p.add_argument("--probe", default=None, help="probe to score steered texts with")
    p.add_argument("--base", default=None, help="base model for the implicit reward")
    p.add_argument("--reward", default="utility", help="true reward spec (see reward score)")
    p.add_argument("--grammar", action="store_true", help="report the review world's grammatical rate")
    p.add_argument("--neutral", default=None, help="JSONL prompts for the next-token KL (default: --prompts)")
    p.add_argument("--where", default="all", choices=["all", "completion"])
    p.add_argument("--n-random", type=_count0, default=8)
    p.add_argument("--max-new-tokens", type=_count, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=_out_folder, required=True)
    p.add_argument("--device", default=None)
    p.set_defaults(func=_steer)

    # --- sae ---
    sae = commands.add_parser("sae", help="sparse autoencoders and crosscoders for model diffing")
    sae_cmds = sae.add_subparsers(dest="sae_command", required=True, metavar="ACTION")
    p = sae_cmds.add_parser("train", help="train one SAE on a model's completion tokens at a site")
    p.add_argument("--model", required=True)
    p.add_argument("--in", dest="input", required=True, help="JSONL with prompt/completion records")
    p.add_argument("--site", required=True, help="e.g. blocks.2.hook_resid_post")
    p.add_argument("--arch", default="batchtopk", choices=["batchtopk", "topk", "relu"])
    p.add_argument("--expansion", type=_count, default=4, help="d_sae = expansion x d_model")
    p.add_argument("--l1", type=_nonnegative, default=1e-3, help="L1 coefficient (relu)")
    p.add_argument("--tied", action="store_true", help="tied weights (relu; the seed's SAE)")
    p.add_argument("--out", type=_out_folder, required=True)
    _add_sae_args(p)
    p.set_defaults(func=_sae_train)
    for name, helptext in (("compare", "the seed pipeline: layer ranking, 1x/2x dictionaries, MMCS, explanations"),
                           ("crosscoder", "BatchTopK crosscoder over base+post activations, with Latent Scaling")):
        p = sae_cmds.add_parser(name, help=helptext)
        p.add_argument("--base", required=True)
        p.add_argument("--post", required=True)
        p.add_argument("--in", dest="input", required=True, help="JSONL with prompt/completion (and reward) records")
        p.add_argument("--out", type=_out_folder, required=True)
        _add_sae_args(p)
        if name == "compare":
            p.add_argument("--layers", default=None, help="comma-separated blocks (default: most diverged)")
            p.add_argument("--n-layers", type=_count, default=1, help="how many most-diverged blocks")
            p.add_argument("--site-kind", default="hook_resid_post",
                           choices=["hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out"])
            p.add_argument("--arch", default="batchtopk", choices=["batchtopk", "topk", "relu"])
            p.add_argument("--n-top-features", type=_count, default=30,
                           help="features explained and summed for reward relevance")
            p.add_argument("--relevance-saes", type=_count, default=2,
                           help="1x SAEs per model averaged for reward relevance (its CI resamples them)")
            _add_llm_args(p)
            p.set_defaults(func=_sae_compare)
        else:
            p.add_argument("--site", required=True)
            p.add_argument("--expansion", type=_count, default=4)
            p.set_defaults(func=_sae_crosscoder)

    # --- interp ---
    p = commands.add_parser("interp", help="explain and score SAE features (offline lexical, or an LLM)")
    p.add_argument("--features", required=True, help="features.json written by `rewardlab sae compare`")
    p.add_argument("--out", type=_out_file, required=True, help="output JSON")
    p.add_argument("--workers", type=_count, default=8, help="concurrent LLM calls")
    _add_llm_args(p)
    p.set_defaults(func=_interp)

    return parser


def _version() -> str:
    from rewardlab import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as e:
        print(f"rewardlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rewardlab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

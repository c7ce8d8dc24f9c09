"""cProfile of rewardlab's four benchmarked hot paths at one scale: where the time goes.

    python bench/profile_hot_paths.py --world WORLD --scale tiny|135m [--only ppo,score,acts,sae] [--top 12]

Runs each path once untimed (warm-up), then once under cProfile, with the settings of the
benchmarks (bench/*_throughput.py; PPO and SAE smaller): PPO = `train_ppo` (tiny: 2 phases of 64,
135m: 1 phase of 8, 32 tokens, 1 pass; the metrics' generation and learning seconds are printed too),
scoring = `completion_logprobs`, caching = `run_with_capture`, SAE = `train_sae` (the benchmark's
cached activations: tiny 300, 135m 30 steps of 1024). For
each it prints the wall time, the share of the profiled time spent inside torch's C++ operators
(functions of torch._C and tensor methods: the arithmetic) versus Python, and the top functions by
own time. cProfile adds overhead to every Python call, so the Python share is an upper bound.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import model_135m, setup  # noqa: E402


def is_torch_op(func: tuple) -> bool:
    """A pstats key (file, line, name) of a torch C++ operator (the arithmetic)."""
    file, _, name = func
    return file == "~" and ("torch" in name or "Tensor" in name or "_C." in name)


def report(label: str, prof: cProfile.Profile, seconds: float, top: int) -> None:
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())  # own (total) time of every function
    ops = sum(v[2] for k, v in stats.stats.items() if is_torch_op(k))
    print(f"\n=== {label}: {seconds:.2f} s wall; {total:.2f} s profiled, torch operators {ops / total:.0%}, "
          f"Python and the rest {1 - ops / total:.0%}")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip() and "function calls" not in line))


def profiled(label: str, fn, top: int) -> None:
    fn()  # warm-up
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(fn)
    report(label, prof, time.perf_counter() - t0, top)


def ppo_path(world: str, scale: str):
    from rewardlab.io import read_jsonl
    from rewardlab.rl.config import PPOConfig
    from rewardlab.rl.ppo import train_ppo

    base = str(Path(world) / "base") if scale == "tiny" else model_135m()[0]
    steps, batch = (2, 64) if scale == "tiny" else (1, 8)

    def run():
        with tempfile.TemporaryDirectory() as tmp:
            train_ppo(PPOConfig(base=base, prompts=str(Path(world) / "prompts.jsonl"), phases=steps, batch_size=batch,
                                minibatch_size=batch, max_new_tokens=32, ppo_epochs=1, eval_samples=8,
                                chat_template="off"), tmp, progress=False)
            m = read_jsonl(Path(tmp) / "metrics.jsonl")
            print(f"ppo phases: generation {sum(r['gen_seconds'] for r in m):.2f} s, "
                  f"learning {sum(r['learn_seconds'] for r in m):.2f} s")
    return run


def score_path(scale: str):
    from rewardlab.diff.logprobs import completion_logprobs
    from rewardlab.models import load_model
    from score_throughput import _word_model, texts

    if scale == "135m":
        model, tokenizer = load_model(model_135m()[0], device="cpu", dtype="float32")
        vocab, pairs, batch = [w for w in tokenizer.get_vocab() if w.isalpha()], 64, 16
    else:
        (model, tokenizer, vocab), pairs, batch = _word_model(), 512, 32
    prompts, chosen, _ = texts(sorted(vocab), tokenizer.eos_token, pairs)
    return lambda: completion_logprobs(model, tokenizer, prompts, chosen, batch_size=batch)


def acts_path(scale: str):
    from acts_throughput import hf_model
    from rewardlab.sites import run_with_capture

    hf, _, layer, vocab = hf_model(scale, 128)
    batches = [torch.randint(0, vocab, (8 if scale == "tiny" else 4, 128), generator=torch.Generator().manual_seed(1))
               for _ in range(4 if scale == "tiny" else 2)]
    site = f"blocks.{layer}.hook_resid_post"
    return lambda: [run_with_capture(hf, b, None, [site]) for b in batches]


def sae_path(world: str, scale: str):
    from safetensors.torch import load_file

    from rewardlab.sae.model import SAEConfig
    from rewardlab.sae.train import TrainConfig, train_sae
    from sae_throughput import cache_acts

    steps = 300 if scale == "tiny" else 30  # bench/run_all.py's settings: one pass over steps * 1024 tokens
    acts = load_file(str(cache_acts(scale, world, steps * 1024)))["train"]
    cfg = SAEConfig(d_in=acts.shape[1], d_sae=4 * acts.shape[1], architecture="batchtopk", k=16)
    return lambda: train_sae(acts, cfg, TrainConfig(batch_size=1024, n_tokens=len(acts), progress=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--scale", choices=["tiny", "135m"], default="tiny")
    ap.add_argument("--only", default="ppo,score,acts,sae")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    setup(a.threads)
    paths = {"ppo": lambda: ppo_path(a.world, a.scale), "score": lambda: score_path(a.scale),
             "acts": lambda: acts_path(a.scale), "sae": lambda: sae_path(a.world, a.scale)}
    for name in a.only.split(","):
        profiled(f"{name} ({a.scale})", paths[name](), a.top)


if __name__ == "__main__":
    main()

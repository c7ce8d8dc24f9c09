"""Building the review world into a folder, and loading it back.

    DIR/base/                    Hugging Face folder: GPT-2 model + word-level tokenizer
    DIR/prompts.jsonl            training review openers, {"prompt": ...}
    DIR/prompts_heldout.jsonl    held-out openers (disjoint from the training ones)
    DIR/corpus_sample.jsonl      the first 200 training documents, {"text": ...}
    DIR/world.json               what was built and how well: config, sizes, held-out loss, the base
                                 model's grammatical rate and utility reward on 512 samples, the
                                 generation defaults later stages use, seconds taken

The same seed and preset give byte-identical files, except the wall-clock `seconds` in world.json.
world.json is written last, so its presence means the build finished.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rewardlab import stats
from rewardlab.errors import InputError
from rewardlab.io import read_json, read_jsonl, write_json, write_jsonl
from rewardlab.rewards import UtilityReward
from rewardlab.sampling import generate
from rewardlab.world.grammar import is_grammatical, iter_corpus, sample_corpus, sample_openers, vocabulary
from rewardlab.world.pretrain import PRESETS, encode_documents, heldout_loss, make_model, pack, pretrain
from rewardlab.world.tokenizer import build_tokenizer

REWARD_SPEC = "utility"
N_SHOWN_SAMPLES = 8
N_CORPUS_SAMPLE = 200


@dataclass(frozen=True)
class World:
    """A built review world: its folder, world.json, and prompt lists."""

    path: Path
    info: dict
    prompts: list[str]
    heldout_prompts: list[str]

    @property
    def base_path(self) -> Path:
        return self.path / "base"

    @property
    def generation(self) -> dict:
        """Generation defaults (max_new_tokens, temperature, top_k, top_p) for samples in this world."""
        return dict(self.info["generation"])


def load_world(path: str | os.PathLike) -> World:
    """Load a folder written by `build_world`."""
    path = Path(path)
    if not (path / "world.json").is_file():
        raise InputError("not a built review world (no world.json)", str(path),
                         f"build one with: rewardlab world build --out {path}")
    return World(path=path, info=read_json(path / "world.json"),
                 prompts=[r["prompt"] for r in read_jsonl(path / "prompts.jsonl", required=("prompt",))],
                 heldout_prompts=[r["prompt"] for r in read_jsonl(path / "prompts_heldout.jsonl", required=("prompt",))])


def world_of_model(model_path: str | os.PathLike) -> World | None:
    """The review world whose base model is the folder `model_path` (a world's DIR/base), else None."""
    parent = Path(model_path).resolve().parent
    return load_world(parent) if (parent / "world.json").is_file() else None


def _save_base(model, tokenizer, path: Path) -> None:
    """Write the Hugging Face folder to a temporary sibling, then swap it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def build_world(out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0, progress: bool = True,
                overwrite: bool = False) -> dict:
    """Generate the corpus, pretrain the base model, measure it, and write the world folder; returns world.json.

    A folder that already holds a world is refused unless `overwrite` (the pipeline's own stage folder)."""
    if preset not in PRESETS:
        raise InputError(f"unknown world preset {preset!r}", fix=f"use one of: {', '.join(PRESETS)}")
    config, out, start = PRESETS[preset], Path(out_dir), time.perf_counter()
    if not overwrite and (out / "world.json").exists():
        raise InputError("a review world is already there", str(out),
                         "choose another --out, or delete the folder to build it again")
    tokenizer = build_tokenizer(vocabulary(), model_max_length=config.n_positions)
    rows = pack(encode_documents(tokenizer, iter_corpus(seed, "train")), config.steps * config.batch_rows,
                config.row_tokens)
    train_seqs = [seq for row in rows for seq in row]
    heldout_seqs = list(encode_documents(tokenizer, sample_corpus(config.heldout_docs, seed, "heldout")))
    openers = sample_openers(config.n_prompts + config.n_heldout_prompts, seed)
    train_prompts, heldout_prompts = openers[:config.n_prompts], openers[config.n_prompts:]

    model = make_model(config, tokenizer, seed)
    t_train = time.perf_counter()
    losses = pretrain(model, rows, config, tokenizer.pad_token_id, progress=progress)
    t_train = time.perf_counter() - t_train
    loss_heldout = heldout_loss(model, heldout_seqs, config.row_tokens, tokenizer.pad_token_id)

    gen = {"max_new_tokens": config.max_new_tokens, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    eval_prompts = [train_prompts[i % len(train_prompts)] for i in range(config.eval_samples)]
    samples = generate(model, tokenizer, eval_prompts, generator=torch.Generator().manual_seed(seed), **gen)
    completions = [s.completion for s in samples]
    grammatical = [float(is_grammatical(s.completion, s.prompt)) for s in samples]
    rewards = UtilityReward()(completions)
    groups = eval_prompts  # samples sharing an opener are resampled together
    rate, mean = stats.mean(grammatical, groups=groups), stats.mean(rewards, groups=groups)
    std = stats.bootstrap(lambda r: float(np.std(r)), rewards, groups=groups)

    _save_base(model, tokenizer, out / "base")
    write_jsonl(out / "prompts.jsonl", ({"prompt": p} for p in train_prompts))
    write_jsonl(out / "prompts_heldout.jsonl", ({"prompt": p} for p in heldout_prompts))
    write_jsonl(out / "corpus_sample.jsonl", ({"text": d} for d in sample_corpus(N_CORPUS_SAMPLE, seed, "train")))
    info = {
        "seed": seed,
        "preset": preset,
        "config": config.to_dict(),
        "vocab_size": len(tokenizer),
        "corpus": {"train_docs": len(train_seqs), "train_tokens": sum(map(len, train_seqs)),
                   "heldout_docs": len(heldout_seqs), "heldout_tokens": sum(map(len, heldout_seqs))},
        "prompts": {"train": len(train_prompts), "heldout": len(heldout_prompts)},
        "final_train_loss": float(np.mean(losses[-20:])),
        "heldout_loss": loss_heldout,
        "generation": gen,
        "reward": REWARD_SPEC,
        "n_samples": len(samples),
        "grammatical_rate": rate.value,
        "base_reward_mean": mean.value,
        "base_reward_std": std.value,
        "estimates": {"grammatical_rate": rate.to_dict(), "base_reward_mean": mean.to_dict(),
                      "base_reward_std": std.to_dict()},
        "samples": [{"prompt": s.prompt, "completion": s.completion, "reward": r, "grammatical": bool(g)}
                    for s, r, g in list(zip(samples, rewards, grammatical))[:N_SHOWN_SAMPLES]],
        "seconds": {"pretrain": round(t_train, 1), "total": round(time.perf_counter() - start, 1)},
    }
    write_json(out / "world.json", info)
    return info


def describe_world(info: dict, path: str | os.PathLike) -> str:
    """A few lines saying what `build_world` built and how it measured."""
    c = info["config"]
    lines = [
        f"review world ({info['preset']}, seed {info['seed']}) -> {path}",
        f"  base model: GPT-2 with {c['n_layer']} layer(s) of width {c['n_embd']}, vocabulary {info['vocab_size']}, "
        f"trained on {info['corpus']['train_docs']} documents ({info['corpus']['train_tokens']} tokens)",
        f"  held-out loss {info['heldout_loss']:.3f} nats/token",
        f"  {info['n_samples']} samples of {info['generation']['max_new_tokens']} tokens: grammatical "
        f"{info['grammatical_rate']:.3f}, utility reward mean {info['base_reward_mean']:+.2f} "
        f"std {info['base_reward_std']:.2f}",
        f"  prompts: {info['prompts']['train']} training, {info['prompts']['heldout']} held-out openers",
        f"  took {info['seconds']['total']:.1f} s ({info['seconds']['pretrain']:.1f} s pretraining)",
    ]
    for s in info["samples"][:3]:
        lines.append(f"  e.g. [{s['prompt']}] {s['completion']}")
    return "\n".join(lines)

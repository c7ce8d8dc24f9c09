"""Building the dialogue world from a review world, and loading it back.

    DIR/base/                    Hugging Face folder: the world's base fine-tuned on conversations, its
                                 tokenizer with the role tokens, the user's words and the chat template
    DIR/user.json                the simulated user (follow-up probabilities by review tone)
    DIR/prompts.jsonl            the world's training openers; DIR/prompts_heldout.jsonl its held-out ones
    DIR/dialogue.json            what was built and how well: config, losses, the base model's grammatical
                                 rate on each assistant turn over played conversations (bootstrap CI, n)

Fine-tuning is the world's pretraining loop (`rewardlab.world.pretrain.pretrain`) on packed
conversations, every token predicted (the user's too, so the model can also play the user), from the
world's base with its embeddings extended for the new tokens (new rows drawn from `seed`).
dialogue.json is written last, so its presence means the build finished.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from rewardlab import stats
from rewardlab.dialogue.chat import dialogue_tokenizer, iter_conversations, sample_conversations
from rewardlab.dialogue.play import play
from rewardlab.dialogue.user import UserPolicy
from rewardlab.errors import InputError
from rewardlab.io import read_json, read_jsonl, write_json, write_jsonl
from rewardlab.models import load_model
from rewardlab.text import set_chat_template
from rewardlab.world.build import _save_base, load_world
from rewardlab.world.grammar import is_grammatical
from rewardlab.world.pretrain import WorldConfig, heldout_loss, pack, pretrain

N_SHOWN = 8


@dataclass(frozen=True)
class DialogueConfig:
    """Fine-tuning and measuring settings of a dialogue world build."""

    steps: int = 800             # fine-tuning steps
    batch_rows: int = 8          # packed rows (of the world's row_tokens) per step
    lr: float = 1e-3             # peak learning rate (AdamW, warm-up then cosine)
    min_lr: float = 1e-4
    warmup_steps: int = 50
    heldout_conversations: int = 256
    eval_samples: int = 256      # conversations played to measure the base model
    max_new_tokens: int = 40     # tokens per assistant turn (a 3-sentence review is at most 36 words)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    "micro": DialogueConfig(steps=20, batch_rows=2, warmup_steps=4, heldout_conversations=32, eval_samples=32),
    "tiny": DialogueConfig(),
}


@dataclass(frozen=True)
class Dialogue:
    """A built dialogue world: its folder, dialogue.json, the user and the prompt lists."""

    path: Path
    info: dict
    user: UserPolicy
    prompts: list[str]
    heldout_prompts: list[str]

    @property
    def base_path(self) -> Path:
        return self.path / "base"


def load_dialogue(path: str | os.PathLike) -> Dialogue:
    """Load a folder written by `build_dialogue`."""
    path = Path(path)
    if not (path / "dialogue.json").is_file():
        raise InputError("not a built dialogue world (no dialogue.json)", str(path),
                         f"build one with: rewardlab dialogue build --world WORLD --out {path}")
    return Dialogue(path, read_json(path / "dialogue.json"), UserPolicy.from_dict(read_json(path / "user.json")),
                    [r["prompt"] for r in read_jsonl(path / "prompts.jsonl", required=("prompt",))],
                    [r["prompt"] for r in read_jsonl(path / "prompts_heldout.jsonl", required=("prompt",))])


def encode_conversations(tokenizer, conversations: Iterable[list[dict]]) -> Iterator[list[int]]:
    """Token ids of each whole conversation as the chat template renders it."""
    for c in conversations:
        yield tokenizer(tokenizer.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"]


def grammar_of_play(played, groups: list[str]) -> dict:
    """Grammatical rate of each assistant turn ({value, ci, n}, resampling openers) and the rate at
    which each turn ended with <eos>."""
    g1 = [float(is_grammatical(t, prompt=o)) for t, o in zip(played.turn_texts(1), played.openers)]
    g2 = [float(is_grammatical(t)) for t in played.turn_texts(2)]
    return {"grammatical_turn1": stats.mean(g1, groups=groups).to_dict(),
            "grammatical_turn2": stats.mean(g2, groups=groups).to_dict(),
            "finished_turn1": stats.mean([float(f[0]) for f in played.finished], groups=groups).to_dict(),
            "finished_turn2": stats.mean([float(f[1]) for f in played.finished], groups=groups).to_dict()}


def _fine_tune(world, config: DialogueConfig, user: UserPolicy, seed: int, progress: bool):
    """(model, tokenizer, training losses, held-out loss): the world's base fine-tuned on conversations."""
    model, tokenizer = load_model(world.base_path, device="cpu")
    tokenizer = dialogue_tokenizer(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    wc = dataclasses.replace(WorldConfig(**world.info["config"]), steps=config.steps, batch_rows=config.batch_rows,
                             lr=config.lr, min_lr=config.min_lr, warmup_steps=config.warmup_steps)
    rows = pack(encode_conversations(tokenizer, iter_conversations(seed, user, "train")),
                config.steps * config.batch_rows, wc.row_tokens)
    heldout = list(encode_conversations(tokenizer, sample_conversations(config.heldout_conversations, seed, user,
                                                                        "heldout")))
    losses = pretrain(model, rows, wc, tokenizer.pad_token_id, progress=progress)
    return model, tokenizer, losses, heldout_loss(model, heldout, wc.row_tokens, tokenizer.pad_token_id)


def build_dialogue(world_dir: str | os.PathLike, out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0,
                   progress: bool = True, user: UserPolicy | None = None) -> dict:
    """Fine-tune the world's base on conversations, measure it playing them, write the folder; returns
    dialogue.json."""
    if preset not in PRESETS:
        raise InputError(f"unknown dialogue preset {preset!r}", fix=f"use one of: {', '.join(PRESETS)}")
    out, start = Path(out_dir), time.perf_counter()
    if (out / "dialogue.json").exists():
        raise InputError("a dialogue world is already there", str(out), "choose another --out, or delete it")
    world, config, user = load_world(world_dir), PRESETS[preset], user or UserPolicy()
    model, tokenizer, losses, loss_heldout = _fine_tune(world, config, user, seed, progress)
    t_train = time.perf_counter() - start
    set_chat_template(tokenizer, "on")
    openers = [world.prompts[i % len(world.prompts)] for i in range(config.eval_samples)]
    played = play(model, tokenizer, openers, user, max_new_tokens=config.max_new_tokens,
                  generator=torch.Generator().manual_seed(seed), user_rng=random.Random(f"dialogue-eval/{seed}"))
    _save_base(model, tokenizer, out / "base")
    write_json(out / "user.json", user.to_dict())
    write_jsonl(out / "prompts.jsonl", ({"prompt": p} for p in world.prompts))
    write_jsonl(out / "prompts_heldout.jsonl", ({"prompt": p} for p in world.heldout_prompts))
    info = {
        "world": str(Path(world_dir).resolve()), "seed": seed, "preset": preset, "config": config.to_dict(),
        "vocab_size": len(tokenizer), "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
        "heldout_loss": loss_heldout,
        "generation": {"max_new_tokens": config.max_new_tokens, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
        "n_samples": len(openers), **grammar_of_play(played, openers),
        "samples": [{"opener": o, "review": r, "followup": f, "answer": a} for o, r, f, a in
                    list(zip(played.openers, played.reviews, played.followups, played.answers))[:N_SHOWN]],
        "seconds": {"fine_tune": round(t_train, 1), "total": round(time.perf_counter() - start, 1)},
    }
    write_json(out / "dialogue.json", info)
    return info


def describe_dialogue(info: dict, path: str | os.PathLike) -> str:
    """A few lines saying what `build_dialogue` built and how it measured."""
    lines = [f"dialogue world ({info['preset']}, seed {info['seed']}) from {info['world']} -> {path}",
             f"  fine-tuned {info['config']['steps']} steps: held-out loss {info['heldout_loss']:.3f} nats/token",
             f"  {info['n_samples']} played conversations: grammatical turn 1 "
             f"{stats.describe(info['grammatical_turn1'])}, turn 2 {stats.describe(info['grammatical_turn2'])}",
             f"  took {info['seconds']['total']:.1f} s"]
    for s in info["samples"][:3]:
        lines.append(f"  e.g. [{s['opener']}] {s['review']} | [{s['followup']}] {s['answer']}")
    return "\n".join(lines)

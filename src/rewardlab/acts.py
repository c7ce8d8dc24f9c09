"""Activation store: one forward pass per batch, only the requested sites, sharded safetensors on disk.

    store = cache_activations(model, tokenizer, records, "acts/", CacheConfig(sites=[...], positions=[...]))
    store = ActivationStore("acts/")
    x = store.load("blocks.2.hook_resid_post", "last_completion")     # float32 [n_rows, d_model]
    y = store.field("reward")                                          # float64 [n_rows]
    for batch in store.iter_batches("blocks.2.hook_resid_post", 4096): # per-token mode, streamed
        batch["acts"], batch["row_ids"], batch["token_ids"]            # [B, d], [B], [B]

Positions (per record; prompt and completion tokenized as `rewardlab.text.encode`, right
padded, so pads never enter; special tokens such as BOS/EOS are skipped):
    last_completion   the last completion token
    last_prompt       the last prompt token (what the model knows before writing anything)
    mean_completion   the mean over completion tokens
    k (integer)       completion token k (0 = first, -1 = last), clamped to the completion
    tokens            every completion token (per-token mode: rows of [n_tokens, d_model] with row
                      ids, token ids and the token's index in its completion)
A record whose completion has no tokens uses its last prompt token for every completion position.

Layout of DIR: `manifest.json` (model, sites, positions, dtype, d_model, fingerprint, rows: row id,
prompt id, token ids, n_prompt_tokens, n_completion_tokens and the numeric fields of each record,
shards, complete) and `shard-NNNNN.safetensors` with tensors named `SITE|POSITION` plus `row_ids`
(and `token_row_ids`, `token_ids`, `token_index` in per-token mode). Shards are written atomically
and a re-run with the same inputs skips the shards already there, so an interrupted cache resumes.
A shard is written in a thread while the next one is computed.
Readers open one shard at a time, so a store larger than memory streams.
Several processes (`accelerate launch --num_processes N`, see `rewardlab.distributed`): process p computes and
writes shards p, p + N, p + 2N, ... and process 0 writes the manifest, so the folder is the one a single
process writes, file for file (with fewer shards than processes, some processes have nothing to do).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from rewardlab import distributed
from rewardlab.errors import InputError
from rewardlab.io import read_json, save_tensors, write_json
from rewardlab.sites import n_layers, parse_site, run_with_capture
from rewardlab.text import encode, pad_token_id, prompt_id, uses_chat_template

NAMED_POSITIONS = ("last_completion", "last_prompt", "mean_completion", "tokens")
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MANIFEST = "manifest.json"


def parse_position(p: str | int) -> str | int:
    """A position name, or an integer completion offset given as int or string."""
    if isinstance(p, int) or (isinstance(p, str) and p.lstrip("-").isdigit()):
        return int(p)
    if p not in NAMED_POSITIONS:
        raise InputError(f"unknown position {p!r}", fix=f"use {', '.join(NAMED_POSITIONS)} or an integer offset")
    return p


@dataclass
class CacheConfig:
    sites: list[str]  # site names, e.g. blocks.2.hook_resid_post
    positions: list[str | int] = field(default_factory=lambda: ["last_completion"])  # last_completion, last_prompt,
    # mean_completion, tokens (every completion token) or an integer offset
    batch_size: int = 16  # records per forward pass
    shard_rows: int = 2048  # records per shard file
    dtype: str = "float32"  # storage dtype (float32, float16, bfloat16)


def _fingerprint(model_name: str, cfg: CacheConfig, encoded: Sequence, chat_template: bool) -> str:
    h = hashlib.sha256(json.dumps([model_name, {**asdict(cfg), "chat_template": chat_template}], default=str).encode())
    for e in encoded:
        h.update(np.asarray(e.ids, dtype=np.int64).tobytes())
        h.update(str(e.prompt_len).encode())
    return h.hexdigest()[:32]


def _numeric_fields(record: dict) -> dict:
    return {k: v for k, v in record.items()
            if k not in ("prompt", "completion") and isinstance(v, (int, float, bool)) and v is not None}


def _row_positions(ids: list[int], prompt_len: int, special: set[int]) -> tuple[int, list[int]]:
    """(last real prompt index, real completion indices) of one sequence."""
    prompt_real = [i for i in range(prompt_len) if ids[i] not in special]
    last_prompt = prompt_real[-1] if prompt_real else prompt_len - 1
    completion = [i for i in range(prompt_len, len(ids)) if ids[i] not in special]
    return last_prompt, completion


def select_positions(act: torch.Tensor, last_prompt: int, completion: list[int], position: str | int) -> torch.Tensor:
    """The vector(s) of one sequence's activation [seq, d] at `position` ([d], or [n, d] for tokens)."""
    if position == "tokens":
        return act[completion]
    if position == "last_prompt" or not completion:
        return act[last_prompt]
    if position == "last_completion":
        return act[completion[-1]]
    if position == "mean_completion":
        return act[completion].float().mean(0).to(act.dtype)
    k = max(-len(completion), min(len(completion) - 1, position))
    return act[completion[k]]


def _collect(model, pad: int, encoded: Sequence, layout: Sequence, rows: range, sites: list[str],
             positions: list[str | int], batch_size: int, bar: tqdm | None = None) -> dict[str, torch.Tensor]:
    """{"SITE|POSITION": [n_rows or n_tokens, d]} for `rows`, one forward pass per batch of rows
    (`bar`, if given, advances by the rows of each batch)."""
    device = next(model.parameters()).device
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(rows.start, rows.stop, batch_size):
        batch = list(range(start, min(rows.stop, start + batch_size)))
        width = max(len(encoded[i].ids) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for j, i in enumerate(batch):
            input_ids[j, :len(encoded[i].ids)] = torch.tensor(encoded[i].ids)
            attention[j, :len(encoded[i].ids)] = 1
        acts = run_with_capture(model, input_ids.to(device), attention.to(device), sites)
        for site in sites:
            act = acts[site].to("cpu")
            for pos in positions:
                vecs = [select_positions(act[j], *layout[i], pos) for j, i in enumerate(batch)]
                parts.setdefault(f"{site}|{pos}", []).append(torch.cat(vecs) if pos == "tokens" else torch.stack(vecs))
        if bar is not None:
            bar.update(len(batch))
    return {key: torch.cat(v) for key, v in parts.items()}


def _write_shard(path: Path, parts: dict[str, torch.Tensor], rows: range, encoded: Sequence, layout: Sequence,
                 positions: list[str | int], store_dtype: torch.dtype, fingerprint: str) -> None:
    """One shard file (atomically): `_collect`'s parts for `rows` in the store's dtype, the row ids, and in
    per-token mode each token's row id, token id and index in its completion."""
    tensors = {key: v.to(store_dtype) for key, v in parts.items()}
    tensors["row_ids"] = torch.arange(rows.start, rows.stop, dtype=torch.long)
    if "tokens" in positions:
        tensors["token_row_ids"] = torch.tensor([i for i in rows for _ in layout[i][1]], dtype=torch.long)
        tensors["token_ids"] = torch.tensor([encoded[i].ids[p] for i in rows for p in layout[i][1]], dtype=torch.long)
        tensors["token_index"] = torch.tensor([p - encoded[i].prompt_len for i in rows for p in layout[i][1]],
                                              dtype=torch.long)
    save_tensors(path, tensors, {"fingerprint": fingerprint})


def _encode(model, tokenizer, records: Sequence[dict], sites: Sequence[str], positions: Sequence):
    """Checked site names, positions, encodings and per-row (last prompt, completion) indices."""
    positions = [parse_position(p) for p in positions]
    depth = n_layers(model)
    sites = list(dict.fromkeys(parse_site(s, depth).name for s in sites))
    for i, r in enumerate(records):
        if "prompt" not in r or "completion" not in r:
            raise InputError("record lacks prompt or completion", f"record {i}")
    encoded = encode(tokenizer, [r["prompt"] for r in records], [r["completion"] for r in records])
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    layout = [_row_positions(e.ids, e.prompt_len, special) for e in encoded]
    longest = max((len(completion) for _, completion in layout), default=0)
    for p in positions:  # an offset is clamped to each row's completion, but one past every row is a mistake
        if isinstance(p, int) and not -longest <= p < longest:
            raise InputError(f"position {p} is past every completion (the longest has {longest} tokens)",
                             fix=f"use an offset in {-longest}..{longest - 1}, or a named position")
    return sites, positions, encoded, layout


def collect_activations(model, tokenizer, records: Sequence[dict], sites: Sequence[str],
                        positions: Sequence[str | int] = ("last_completion",), batch_size: int = 16
                        ) -> dict[str, torch.Tensor]:
    """In memory: {"SITE|POSITION": float32 [n_rows, d] (or [n_tokens, d] for tokens)}."""
    sites, positions, encoded, layout = _encode(model, tokenizer, records, sites, positions)
    parts = _collect(model, pad_token_id(tokenizer), encoded, layout, range(len(records)), sites, positions, batch_size)
    return {k: v.float() for k, v in parts.items()}


def cache_activations(model, tokenizer, records: Sequence[dict], out: str | Path, cfg: CacheConfig,
                      model_name: str = "model", progress: bool = True) -> "ActivationStore":
    """Cache `cfg.sites` x `cfg.positions` for prompt/completion `records` into folder `out`
    (`progress`: a bar over the records on stderr)."""
    out = Path(out)
    if cfg.dtype not in STORE_DTYPES:
        raise InputError(f"unknown store dtype {cfg.dtype!r}", fix=f"use {', '.join(STORE_DTYPES)}")
    sites, positions, encoded, layout = _encode(model, tokenizer, records, cfg.sites, cfg.positions)
    fingerprint = _fingerprint(model_name, CacheConfig(sites, positions, cfg.batch_size, cfg.shard_rows, cfg.dtype),
                               encoded, uses_chat_template(tokenizer))
    n_shards = (len(records) + cfg.shard_rows - 1) // cfg.shard_rows
    manifest = {
        "model": model_name, "sites": sites, "positions": positions, "dtype": cfg.dtype,
        "d_model": int(model.config.hidden_size), "fingerprint": fingerprint, "n_rows": len(records),
        "shards": [f"shard-{k:05d}.safetensors" for k in range(n_shards)], "shard_rows": cfg.shard_rows,
        "complete": False,
        "rows": [{"row_id": i, "prompt_id": prompt_id(r["prompt"]), "token_ids": e.ids,
                  "n_prompt_tokens": e.prompt_len, "n_completion_tokens": len(layout[i][1]),
                  **_numeric_fields(r)} for i, (r, e) in enumerate(zip(records, encoded))],
    }
    if (out / MANIFEST).is_file():
        old = read_json(out / MANIFEST)
        if old.get("fingerprint") != fingerprint:
            raise InputError("the folder holds an activation cache of other inputs or settings", str(out),
                             "use another output folder, or delete this one")
        if old.get("complete"):
            return ActivationStore(out)
    rank, world = distributed.rank_and_world()
    distributed.barrier()  # every process has read the old manifest before process 0 replaces it
    if rank == 0:
        write_json(out / MANIFEST, manifest)
    store_dtype = STORE_DTYPES[cfg.dtype]
    shard_rows = [range(k * cfg.shard_rows, min(len(records), (k + 1) * cfg.shard_rows)) for k in range(n_shards)]
    mine = range(rank, n_shards, world)  # several processes: shard k is written by process k % world
    bar = tqdm(total=sum(len(shard_rows[k]) for k in mine), desc=f"caching activations ({Path(model_name).name})",
               unit="row", leave=False, disable=not progress or rank != 0)
    # shard k is written by a writer thread while shard k + 1 is computed here; before handing it shard k + 1
    # this waits for shard k's write (raising its error), so memory holds two shards at most. Leaving the `with`,
    # an interrupted run still finishes the write it started: no finished shard is lost.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardlab-shard-writer") as writer:
        writing = None
        for k in mine:
            name, rows = manifest["shards"][k], shard_rows[k]
            if (out / name).is_file():
                bar.update(len(rows))
                continue
            parts = _collect(model, pad_token_id(tokenizer), encoded, layout, rows, sites, positions,
                             cfg.batch_size, bar)
            if writing is not None:
                writing.result()
            writing = writer.submit(_write_shard, out / name, parts, rows, encoded, layout, positions,
                                    store_dtype, fingerprint)
        if writing is not None:
            writing.result()
    bar.close()
    distributed.barrier()  # every shard is on disk
    if rank == 0:
        manifest["complete"] = True
        write_json(out / MANIFEST, manifest)
    distributed.barrier()
    return ActivationStore(out)


class ActivationStore:
    """Read side of a cache folder written by `cache_activations` (see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = read_json(self.folder / MANIFEST)
        if not self.manifest.get("complete"):
            raise InputError("the activation cache is incomplete", str(self.folder),
                             "run `rewardlab acts cache` again with the same arguments to finish it")
        self.rows: list[dict] = self.manifest["rows"]
        self.sites: list[str] = self.manifest["sites"]
        self.positions: list[str | int] = self.manifest["positions"]
        self.d_model: int = self.manifest["d_model"]
        self.model: str = self.manifest["model"]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def prompt_ids(self) -> list[str]:
        return [r["prompt_id"] for r in self.rows]

    def field(self, name: str) -> np.ndarray:
        """A numeric field of the records (e.g. the reward) as float64 [n_rows]."""
        missing = [r["row_id"] for r in self.rows if name not in r]
        if missing:
            have = sorted({k for r in self.rows for k in r} - {"row_id", "prompt_id", "token_ids"})
            raise InputError(f"field {name!r} is missing in {len(missing)} records (first: row {missing[0]})",
                             str(self.folder), f"records have: {', '.join(have)}")
        return np.asarray([float(r[name]) for r in self.rows], dtype=np.float64)

    def _key(self, site: str, position: str | int) -> str:
        position = parse_position(position)
        if site not in self.sites or position not in self.positions:
            raise InputError(f"{site} at {position} is not in this cache", str(self.folder),
                             f"it holds sites {', '.join(self.sites)} at positions {self.positions}")
        return f"{site}|{position}"

    def _shards(self, keys: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        for name in self.manifest["shards"]:
            with safe_open(str(self.folder / name), framework="pt") as f:
                yield {k: f.get_tensor(k) for k in keys}

    def load(self, site: str, position: str | int = "last_completion") -> torch.Tensor:
        """All vectors of `site` at `position`, float32: [n_rows, d] ([n_tokens, d] for tokens)."""
        key = self._key(site, position)
        return torch.cat([s[key].float() for s in self._shards([key])])

    def iter_batches(self, site: str, batch_size: int, position: str | int = "tokens") -> Iterator[dict]:
        """Stream float32 `acts` [B, d] shard by shard, with `row_ids` [B] (and `token_ids`,
        `token_index` [B] in per-token mode), in store order; the last batch may be smaller."""
        key = self._key(site, position)
        extra = ["token_row_ids", "token_ids", "token_index"] if parse_position(position) == "tokens" else ["row_ids"]
        buffer: dict[str, list[torch.Tensor]] = {}
        size = 0
        for shard in self._shards([key, *extra]):
            batch = {"acts": shard[key].float(), "row_ids": shard[extra[0]], **{k: shard[k] for k in extra[1:]}}
            for k, v in batch.items():
                buffer.setdefault(k, []).append(v)
            size += len(batch["acts"])
            while size >= batch_size:
                joined = {k: torch.cat(v) for k, v in buffer.items()}
                yield {k: v[:batch_size] for k, v in joined.items()}
                buffer = {k: [v[batch_size:]] for k, v in joined.items()}
                size -= batch_size
        if size:
            yield {k: torch.cat(v) for k, v in buffer.items()}

"""Chat backends for explainers and simulators, with a disk cache, retries and concurrency.

- `OpenAIClient`: any OpenAI-compatible endpoint (`POST {base_url}/chat/completions`), the key read
  from an environment variable at call time and never logged or cached.
- `HFChatClient`: a local Hugging Face chat model (its chat template, greedy decoding), which also
  gives `option_logprobs`: log P(reply = option, then end of turn) for each of a few candidate replies
  (one pass over the prompt, then every candidate's tokens side by side in one row under a 4-D mask), and
  `option_logprobs_batch`, the same for many conversations at once (their common prefix, the judge's
  system turn, run once; the rest left-padded), and `sample_replies` (its own sampled replies).
- `CachedClient`: wraps either; one JSON file per call under `cache_dir`, keyed by the SHA-256 of
  (model id, messages, options), per conversation whatever the batching. Re-running a scoring job costs nothing. Each entry is written
  atomically as soon as its call returns, so a job that crashes half-way keeps every finished call;
  an unreadable entry (say a file truncated by another tool) counts as a miss and is rewritten.
Retries: transient failures (connection errors and timeouts, HTTP 429 and 5xx, a reply body that is
not the chat-completions JSON) are retried `max_retries` times with exponential backoff (base
`backoff` seconds, doubled each try); then one InputError says what failed.
"""

from __future__ import annotations

import hashlib
import inspect
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar

import torch

from rewardlab.errors import InputError
from rewardlab.io import atomic_path
from rewardlab.text import (conversation_prompt, end_of_turn_id, left_pad, pad_token_id, prompt_token_ids,
                            uses_chat_template)

Messages = list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}]
T = TypeVar("T")
R = TypeVar("R")


class ChatClient(Protocol):
    model_id: str

    def complete(self, messages: Messages, max_tokens: int = 512) -> str: ...


class OpenAIClient:
    gives_logprobs = False  # text only: `option_logprobs` is for local models

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 1.0, temperature: float = 0.0):
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.timeout, self.max_retries, self.backoff, self.temperature = timeout, max_retries, backoff, temperature
        self.model_id = f"openai:{model}@{self.base_url}"

    def _request(self, messages: Messages, max_tokens: int) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": self.temperature}
        return urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                      headers=headers, method="POST")

    def complete(self, messages: Messages, max_tokens: int = 512) -> str:
        request = self._request(messages, max_tokens)
        for attempt in range(self.max_retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    body = resp.read().decode("utf-8", errors="replace")
                return _chat_content(body)
            except urllib.error.HTTPError as e:
                if e.code in (429, 500, 502, 503, 504) and attempt < self.max_retries:
                    self._wait(attempt)
                    continue
                raise InputError(f"LLM endpoint answered HTTP {e.code}", self.base_url,
                                 "check --llm-base-url, --llm-model and the key variable") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                if attempt < self.max_retries:
                    self._wait(attempt)
                    continue
                raise InputError(f"LLM endpoint unreachable after {attempt + 1} tries ({e})", self.base_url,
                                 "check that the server runs and the URL is right; raise timeout=") from None
            except (KeyError, IndexError, TypeError, ValueError):  # ValueError: json.JSONDecodeError too
                if attempt < self.max_retries:
                    self._wait(attempt)
                    continue
                raise InputError(f"LLM endpoint gave no chat completion in {attempt + 1} tries", self.base_url,
                                 "the endpoint must speak the OpenAI chat completions API") from None
        raise AssertionError("unreachable")

    def _wait(self, attempt: int) -> None:
        time.sleep(self.backoff * 2 ** attempt)


def _chat_content(body: str) -> str:
    """The assistant's text in an OpenAI chat-completions response body; KeyError/ValueError/... if malformed."""
    content = json.loads(body)["choices"][0]["message"]["content"]
    if content is not None and not isinstance(content, str):
        raise TypeError("content is not a string")
    return content or ""


class HFChatClient:
    """A local causal LM with a chat template (plain "role: content" lines without one); greedy decoding."""

    gives_logprobs = True

    def __init__(self, path: str, device: str | None = None):
        from rewardlab.models import load_model  # transformers, only for a local chat model

        self.model, self.tokenizer = load_model(path, device=device)
        self.model_id = f"hf:{path}"
        self._end: int | None = None

    def _prompt_ids(self, messages: Messages) -> torch.Tensor:
        """[1, T] ids of `messages` with the assistant's turn opened."""
        if uses_chat_template(self.tokenizer):
            ids = prompt_token_ids(self.tokenizer, [conversation_prompt(messages)])[0]
        else:
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
            ids = self.tokenizer(text)["input_ids"]
        return torch.tensor([ids], device=self.model.device)

    def complete(self, messages: Messages, max_tokens: int = 512) -> str:
        ids = self._prompt_ids(messages)
        with torch.no_grad():
            out = self.model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    @torch.no_grad()
    def sample_replies(self, conversations: Sequence[Messages], max_tokens: int, temperature: float,
                       seed: int, batch_size: int = 16) -> list[str]:
        """One sampled reply per conversation (the model's own distribution at `temperature`; 0 is greedy),
        `batch_size` left-padded conversations per decoding loop (`rewardlab.sampling.sample_tokens`),
        stopping at the end of turn (else EOS). Same conversations, settings and seed give the same replies."""
        from rewardlab.sampling import sample_tokens

        generator, end, pad = torch.Generator().manual_seed(seed), self._end_id(), pad_token_id(self.tokenizer)
        stops = sorted({end, *([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])})
        replies = []
        for start in range(0, len(conversations), batch_size):
            ids, mask, _ = left_pad([self._prompt_ids(m)[0].tolist() for m in conversations[start:start + batch_size]],
                                    pad, self.model.device)
            decoded = sample_tokens(self.model, ids, mask, max_new_tokens=max_tokens, temperature=temperature,
                                    top_k=0, top_p=1.0, eos_id=stops, pad_id=pad, generator=generator)
            for row, n in zip(decoded.tokens.tolist(), decoded.mask.sum(1).tolist()):
                replies.append(self.tokenizer.decode(row[:n], skip_special_tokens=True).strip())
        return replies

    def _end_id(self) -> int:
        """The token that ends the assistant's reply: the chat template's end of turn, else EOS."""
        if self._end is not None:
            return self._end
        end = end_of_turn_id(self.tokenizer) if uses_chat_template(self.tokenizer) else None
        end = end if end is not None else self.tokenizer.eos_token_id
        if end is None:
            raise InputError("the chat model has neither an end-of-turn nor an EOS token, so a reply has no end",
                             self.model_id, "use a chat model whose tokenizer defines eos_token")
        self._end = end
        return end

    def option_logprobs(self, messages: Messages, options: Sequence[str]) -> list[float]:
        """log P(the reply is exactly `option`, then the end token | messages), one float per option (nats)."""
        return self.option_logprobs_batch([messages], options)[0]

    def _prompt_pass(self, prompts: list[list[int]]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """One forward pass over B prompts: (KV cache, (B, P) attention mask over the cached positions,
        (B, V) log-probs of the next token). The prompts' longest common prefix (the judge's system turn)
        runs once, its cache repeated for the rows; the rest is padded on the left of each row's suffix
        (padding sits between prefix and suffix: masked, and position ids count real tokens only)."""
        device, batch = self.model.device, len(prompts)
        shared = _common_prefix(prompts) if batch > 1 else 0
        cache = None
        if shared:
            cache = self.model(input_ids=torch.tensor([prompts[0][:shared]], device=device), use_cache=True,
                               **self._keep_last).cache
            cache.batch_repeat_interleave(batch)
        ids, mask, positions = left_pad([p[shared:] for p in prompts], pad_token_id(self.tokenizer), device)
        mask = torch.cat([torch.ones((batch, shared), dtype=torch.long, device=device), mask], dim=1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions + shared, cache=cache,
                         use_cache=True, **self._keep_last)
        return out.cache, mask, torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    @property
    def _keep_last(self) -> dict:
        """Compute only the last position's logits where the model allows it (logits_to_keep=1)."""
        return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}

    @torch.no_grad()
    def option_logprobs_batch(self, conversations: Sequence[Messages], options: Sequence[str]) -> list[list[float]]:
        """`option_logprobs` for B conversations at once: [B][K] floats (nats), K = len(options).

        One prompt pass for the B conversations (`_prompt_pass`), then one pass over every option's tokens
        but its last, all options side by side in one row per conversation (W tokens) under a 4-D mask:
        an option's token sees the row's prompt and its own option's earlier tokens only, at the position
        ids that follow the prompt. Cost ~ the prompts + B*W tokens, with no copy of the cache per option.
        Deterministic for a given batch; a row's values match the unbatched ones up to float rounding.
        """
        prompts = [self._prompt_ids(m)[0].tolist() for m in conversations]
        end = self._end_id()
        seqs = [self.tokenizer(o, add_special_tokens=False)["input_ids"] + [end] for o in options]
        cache, mask, first = self._prompt_pass(prompts)
        totals = [[float(first[b, q[0]]) for q in seqs] for b in range(len(prompts))]
        starts = [sum(len(q) - 1 for q in seqs[:j]) for j in range(len(seqs))]
        width = sum(len(q) - 1 for q in seqs)
        if not width:
            return totals
        device, blocked = self.model.device, torch.finfo(self.model.dtype).min
        fed = torch.tensor([t for q in seqs for t in q[:-1]], device=device).expand(len(prompts), width)
        within = torch.zeros((width, width), dtype=torch.bool)
        offset = torch.zeros(width, dtype=torch.long)
        for j, q in enumerate(seqs):
            span = slice(starts[j], starts[j] + len(q) - 1)
            within[span, span] = torch.tril(torch.ones((len(q) - 1, len(q) - 1), dtype=torch.bool))
            offset[span] = torch.arange(len(q) - 1)
        sees = torch.cat([mask.bool()[:, None, :].expand(-1, width, -1), within.to(device).expand(
            len(prompts), -1, -1)], dim=2)  # (B, W, P + W)
        attend = torch.zeros(sees.shape, dtype=self.model.dtype, device=device).masked_fill(~sees, blocked)
        positions = mask.sum(-1, keepdim=True) + offset.to(device)[None, :]
        logits = self.model(input_ids=fed, attention_mask=attend[:, None], position_ids=positions, cache=cache,
                            use_cache=True).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for b in range(len(prompts)):
            for j, q in enumerate(seqs):
                totals[b][j] += float(sum(logp[b, starts[j] + t - 1, q[t]] for t in range(1, len(q))))
        return totals


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token rows, leaving every row at least one token."""
    n = min(len(r) for r in rows) - 1
    for i in range(max(n, 0)):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return max(n, 0)


class CachedClient:
    """Disk cache in front of a client: cache_dir/<sha256>.json holding the request and the reply."""

    def __init__(self, client: ChatClient, cache_dir: str | Path):
        self.client, self.cache_dir = client, Path(cache_dir)
        self.model_id = client.model_id
        self.gives_logprobs = getattr(client, "gives_logprobs", False)
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def key(self, messages: Messages, max_tokens: int) -> str:
        blob = json.dumps({"model": self.model_id, "messages": messages, "max_tokens": max_tokens}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cached(self, key: str, request: dict, call: Callable[[], T]) -> T:
        """The reply stored under `key`, else `call()`, stored at once (atomically) with `request`."""
        reply = self._read(key)
        if reply is not None:
            return reply
        with self._lock:
            self.misses += 1
        reply = call()
        self._write(key, request, reply)
        return reply

    def complete(self, messages: Messages, max_tokens: int = 512) -> str:
        return self._cached(self.key(messages, max_tokens), {"messages": messages},
                            lambda: self.client.complete(messages, max_tokens))

    def option_key(self, messages: Messages, options: Sequence[str]) -> str:
        """The cache key of one option_logprobs call: (model id, messages, options); no batch in it."""
        blob = json.dumps({"model": self.model_id, "messages": messages, "options": list(options)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _read(self, key: str):
        """The reply cached under `key` (counted as a hit), else None (absent or unreadable)."""
        try:
            reply = json.loads((self.cache_dir / f"{key}.json").read_text(encoding="utf-8"))["reply"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        with self._lock:
            self.hits += 1
        return reply

    def _write(self, key: str, request: dict, reply) -> None:
        with atomic_path(self.cache_dir / f"{key}.json") as tmp:
            tmp.write_text(json.dumps({"model": self.model_id, **request, "reply": reply}), encoding="utf-8")

    def option_logprobs(self, messages: Messages, options: Sequence[str]) -> list[float]:
        return self.option_logprobs_batch([messages], options)[0]

    def option_logprobs_batch(self, conversations: Sequence[Messages], options: Sequence[str]) -> list[list[float]]:
        """Cached rows as stored, the misses in one batched call to the client, each stored on return.
        Keys are per conversation, so a rating cached in one batch is found from any other batching."""
        keys = [self.option_key(m, options) for m in conversations]
        out = [self._read(key) for key in keys]
        missing = [i for i, row in enumerate(out) if row is None]
        if missing:
            with self._lock:
                self.misses += len(missing)
            rows = self.client.option_logprobs_batch([conversations[i] for i in missing], options)
            for i, row in zip(missing, rows):
                self._write(keys[i], {"messages": conversations[i], "options": list(options)}, row)
                out[i] = row
        return out


def map_concurrent(fn: Callable[[T], R], items: Sequence[T], workers: int = 8) -> list[R]:
    """[fn(x) for x in items], run on a thread pool (I/O-bound LLM calls), results in order."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))

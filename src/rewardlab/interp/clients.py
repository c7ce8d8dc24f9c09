"""Chat backends for explainers and simulators, with a disk cache, retries and concurrency.

- `OpenAIClient`: any OpenAI-compatible endpoint (`POST {base_url}/chat/completions`), the key read
  from an environment variable at call time and never logged or cached.
- `HFChatClient`: a local Hugging Face chat model (its chat template, greedy decoding).
- `CachedClient`: wraps either; one JSON file per call under `cache_dir`, keyed by the SHA-256 of
  (model id, messages, options). Re-running a scoring job costs nothing.
Retries: transient failures (connection errors, HTTP 429 and 5xx) are retried `max_retries` times
with exponential backoff (base `backoff` seconds, doubled each try).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Protocol, Sequence, TypeVar

import torch

from rewardlab.errors import InputError
from rewardlab.io import atomic_path

Messages = list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}]
T = TypeVar("T")
R = TypeVar("R")


class ChatClient(Protocol):
    model_id: str

    def complete(self, messages: Messages, max_tokens: int = 512) -> str: ...


class OpenAIClient:
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
        for attempt in range(self.max_retries + 1):
            try:
                with urllib.request.urlopen(self._request(messages, max_tokens), timeout=self.timeout) as resp:
                    reply = json.loads(resp.read().decode("utf-8"))
                return reply["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                if e.code in (429, 500, 502, 503, 504) and attempt < self.max_retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                raise InputError(f"LLM endpoint answered HTTP {e.code}", self.base_url,
                                 "check --llm-base-url, --llm-model and the key variable") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt < self.max_retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                raise InputError(f"LLM endpoint unreachable ({e})", self.base_url,
                                 "check that the server runs and the URL is right") from None
            except (KeyError, IndexError, json.JSONDecodeError):
                raise InputError("LLM endpoint gave no chat completion", self.base_url,
                                 "the endpoint must speak the OpenAI chat completions API") from None
        raise AssertionError("unreachable")


class HFChatClient:
    """A local causal LM with a chat template; greedy decoding."""

    def __init__(self, path: str, device: str | None = None):
        from rewardlab.models import load_model  # transformers, only for a local chat model

        self.model, self.tokenizer = load_model(path, device=device)
        self.model_id = f"hf:{path}"

    def complete(self, messages: Messages, max_tokens: int = 512) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)["input_ids"]
        else:
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
            ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        ids = ids.to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


class CachedClient:
    """Disk cache in front of a client: cache_dir/<sha256>.json holding the request and the reply."""

    def __init__(self, client: ChatClient, cache_dir: str | Path):
        self.client, self.cache_dir = client, Path(cache_dir)
        self.model_id = client.model_id
        self.hits = self.misses = 0

    def key(self, messages: Messages, max_tokens: int) -> str:
        blob = json.dumps({"model": self.model_id, "messages": messages, "max_tokens": max_tokens}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def complete(self, messages: Messages, max_tokens: int = 512) -> str:
        path = self.cache_dir / f"{self.key(messages, max_tokens)}.json"
        if path.is_file():
            self.hits += 1
            return json.loads(path.read_text(encoding="utf-8"))["reply"]
        self.misses += 1
        reply = self.client.complete(messages, max_tokens)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"model": self.model_id, "messages": messages, "reply": reply}),
                           encoding="utf-8")
        return reply


def map_concurrent(fn: Callable[[T], R], items: Sequence[T], workers: int = 8) -> list[R]:
    """[fn(x) for x in items], run on a thread pool (I/O-bound LLM calls), results in order."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))

"""Sampling from causal language models: the one decoding loop every stage shares.

`process_logits` is the only place where temperature, top-k and top-p are applied. PPO scores its
samples with the same function, so the probability ratio is exactly 1 at the first step (the
mismatch behind trl#454 and #2358 cannot happen). `processed_log_softmax` and `gather_logprobs` are
the one log-softmax and the one gather of token log-probs that sampling, scoring
(`rewardlab.diff.logprobs`) and PPO share.

`sample_tokens` is the KV-cached loop written out (no `model.generate`), on token tensors: prompts
are left-padded, with an attention mask and explicit position ids (GPT-2 needs them under left
padding), and a row stops at a stop token (`rewardlab.text.stop_ids`: EOS, and the chat template's
end-of-turn token when the template is on). `generate` tokenizes text prompts, runs the loop `batch_size`
prompts at a time and returns one `Sample` per prompt; PPO's rollout calls the loop directly.
Each step builds a `StepState` (the tokens fed at this step, the mask over all positions so far,
their position ids) and calls `model_step(model, state)`, which keeps the model's KV cache in
`state.caches`. The cache's full-attention layers write each step's keys and values in place into
buffers sized for the whole loop (`PreallocatedLayer`; Hugging Face's `DynamicLayer` concatenates, copying
the cache into a fresh allocation at every step and layer). A `logits_fn(logits, state)` hook may replace the next-token
logits before they are processed; to combine two models (divergent sampling) the hook steps the
second model on the same state under its own cache key:

    def amplify(post_logits, state):
        base_logits = model_step(base_model, state, key="base")
        return post_logits + alpha * (post_logits - base_logits)

    generate(post_model, tokenizer, prompts, max_new_tokens=32, generator=g, logits_fn=amplify)

The hook is called at every step, the prompt pass included, so a second model stepped this way
sees exactly the tokens the sampled model sees. Same prompts, settings, `batch_size` and generator
seed give the same samples. Tokens are drawn on the generator's device (a CPU generator with a
GPU model moves one row of probabilities per prompt to the CPU each step).

Copies: given a list of R generators, `sample_tokens` splits its B rows into R equal consecutive
groups (copy-major) and draws group j's tokens from generator j only while one of its rows is not
done, so each group consumes exactly the random numbers a separate loop over its rows with that
generator would; `generate` then samples every prompt R times (one decoding loop for the R copies
of each batch: fewer, larger forward passes) and returns the R copies' samples copy-major. A
`logits_fn` or a forward hook (`rewardlab.sites.add_vector` with one vector per copy) can treat the
copies differently: R steering runs share one loop and each keeps its own random stream.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from rewardlab.errors import InputError
from rewardlab.text import (check_generation_fits, config_context_length, encode_prompts, pad_token_id,
                            prompt_token_ids, stop_ids)


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> torch.Tensor:
    """Next-token logits (..., V) -> processed logits (..., V); filtered entries are -inf.

    Order: temperature (0 means greedy: only the arg-max survives), then top-k (0 = off; ties
    with the k-th value are kept), then top-p (1 = off; keeps the smallest set of most likely
    tokens whose probability reaches `top_p`, at least one token).
    """
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise InputError(f"bad sampling settings temperature={temperature}, top_k={top_k}, top_p={top_p}",
                         fix="temperature >= 0, top_k >= 0, 0 < top_p <= 1")
    logits = logits.float()
    neg_inf = float("-inf")
    if temperature == 0:
        top_k, temperature = 1, 1.0
    if temperature != 1.0:
        logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, neg_inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, neg_inf)
    return logits


def processed_log_softmax(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                          top_p: float = 1.0) -> torch.Tensor:
    """Next-token logits [..., V] -> float32 log-probabilities [..., V] under the sampling transform
    (`process_logits`; the defaults leave the logits as they are); tokens outside the top-k/top-p
    support get -inf."""
    return process_logits(logits, temperature, top_k, top_p).log_softmax(-1)


def gather_logprobs(logp_all: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Log-probs [...] of `token_ids` [...] (long) from log-probabilities [..., V]; a non-finite one
    (a pad outside the top-k/top-p support) is returned as 0, so no nan reaches a gradient."""
    logp = logp_all.gather(-1, token_ids[..., None]).squeeze(-1)
    return torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))


def kept_logits(model: torch.nn.Module, keep: int | torch.Tensor, **inputs) -> torch.Tensor:
    """`model(**inputs).logits` at the kept positions only: the final hidden states are sliced before
    the output projection (Hugging Face's `logits_to_keep`), so no logits are computed for positions
    that are never read (a prompt's, padding).

    keep: an int n (the last n positions: (B, n, V)), a 1-D long tensor of positions (the same for
    every row: (B, len(keep), V)) or a boolean (B, L) mask (the True positions, row by row: (N, V)).
    A model that takes no `logits_to_keep` (or ignores it) computes every position and is sliced
    after; the two agree up to floating-point rounding (the projection runs over fewer rows).
    """
    logits = (model(**inputs, logits_to_keep=keep) if _takes_logits_to_keep(model) else model(**inputs)).logits
    if logits.ndim == 2 or logits.shape[1] != inputs["input_ids"].shape[1]:
        return logits  # already sliced
    if isinstance(keep, int):
        return logits[:, -keep:] if keep else logits
    return logits[keep] if keep.dtype == torch.bool else logits[:, keep]


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    forward = model.forward
    return _forward_takes_logits_to_keep(getattr(forward, "__func__", forward))  # a class's forward is one function


@functools.lru_cache(maxsize=64)
def _forward_takes_logits_to_keep(forward) -> bool:
    """Whether `forward` accepts logits_to_keep (by name or **kwargs); cached, since decoding asks every step."""
    params = inspect.signature(forward).parameters
    return "logits_to_keep" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


@dataclass
class StepState:
    """What one decoding step feeds the model(s). B rows; P = positions seen so far, T = new ones.

    input_ids (B, T): tokens fed at this step (the left-padded prompts at step 0, then 1 token);
    attention_mask (B, P): 1 for real tokens, 0 for left padding, over all positions so far;
    position_ids (B, T): position of each fed token counting real tokens only;
    step: 0 for the prompt pass, then 1, 2, ...;  done (B,): rows that have emitted eos (what they
    are fed and what is sampled for them afterwards is ignored);
    caches: KV caches by key ("main" for the sampled model), owned by `model_step`;
    capacity: the positions the loop feeds at most (prompt + new tokens), the size `model_step` gives a
    new cache's buffers (None: Hugging Face's own growing cache).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    step: int
    done: torch.Tensor
    caches: dict[str, Any] = field(default_factory=dict)
    capacity: int | None = None


class PreallocatedLayer(DynamicLayer):
    """A KV-cache layer whose keys and values [B, heads, positions, head_dim] live in buffers of
    `capacity` positions, allocated at the first update: each update writes its positions in place, and
    `keys`/`values` are views of the filled part (what `DynamicLayer` holds, without its `torch.cat`
    copying the whole cache into a fresh allocation at every step). An update past the capacity moves
    the cache into buffers twice as large, so a loop that feeds more than it said still runs."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._allocate(key_states, value_states, max(self.capacity, key_states.shape[-2]))
        self.is_initialized = True

    def _allocate(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        filled = 0 if self.keys is None else self.keys.shape[-2]
        key_buffer = key_states.new_empty(*key_states.shape[:-2], capacity, key_states.shape[-1])
        value_buffer = value_states.new_empty(*value_states.shape[:-2], capacity, value_states.shape[-1])
        if filled:
            key_buffer[..., :filled, :] = self.keys
            value_buffer[..., :filled, :] = self.values
        self._key_buffer, self._value_buffer, self.capacity = key_buffer, value_buffer, capacity
        self.keys, self.values = key_buffer[..., :filled, :], value_buffer[..., :filled, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self.capacity:
            self._allocate(key_states, value_states, max(end, 2 * self.capacity))
        self._key_buffer[..., start:end, :] = key_states
        self._value_buffer[..., start:end, :] = value_states
        self.keys, self.values = self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]
        return self.keys, self.values


def preallocated_cache(model: torch.nn.Module, capacity: int) -> DynamicCache | None:
    """Hugging Face's `DynamicCache` for `model`'s config with every plain full-attention layer a
    `PreallocatedLayer` of `capacity` positions (sliding-window and other layer kinds stay as Hugging
    Face makes them); None for a model without a Hugging Face config (it then makes its own cache)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        return None
    cache = DynamicCache(config=config)
    if not cache.layers:  # a config whose layer kinds Hugging Face does not list: it grows the layers itself
        return None
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@torch.no_grad()
def model_step(model: torch.nn.Module, state: StepState, key: str = "main") -> torch.Tensor:
    """Run `model` on the step's new tokens with its KV cache `state.caches[key]`; return the float32
    next-token logits (B, V) at the last position and keep the updated cache."""
    kwargs = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
    cache = state.caches.get(key)
    if cache is None and state.capacity is not None:
        cache = preallocated_cache(model, state.capacity)
    out = model(input_ids=state.input_ids, attention_mask=state.attention_mask,
                position_ids=state.position_ids, cache=cache, use_cache=True, **kwargs)
    state.caches[key] = out.cache
    return out.logits[:, -1, :].float()


def decoding_row_bytes(model: torch.nn.Module, n_tokens: int) -> int:
    """Bytes one row of a decoding loop holds at its longest (`n_tokens` = prompt + new tokens): its KV
    cache (layers x 2 x KV heads x head size x the weights' element size per token), once, since the
    loop's cache is allocated at its full size and written in place (`PreallocatedLayer`), plus four
    float32 rows of next-token logits (the logits, the processed logits, the probabilities and a
    temporary)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    element = next(model.parameters()).element_size()
    kv_per_token = config.num_hidden_layers * 2 * kv_heads * head_dim * element
    return kv_per_token * n_tokens + 4 * 4 * config.vocab_size


@dataclass
class Sample:
    """One generated completion. `completion_ids` includes the stop token when the row stopped there
    (`finished`); `logprobs` (one per completion id) are under the processed distribution."""

    prompt: str
    completion: str
    prompt_ids: list[int]
    completion_ids: list[int]
    finished: bool
    logprobs: list[float] | None = None


LogitsFn = Callable[[torch.Tensor, StepState], torch.Tensor]


@dataclass
class Decoded:
    """What the decoding loop sampled for B rows over T <= max_new_tokens steps (it stops once every
    row is done): `tokens` (B, T) long, `pad_id` after a row's eos; `mask` (B, T) long, 1 on real
    tokens (up to and including the eos); `logprobs` (B, T) float32 log-probs of the sampled tokens
    under the processed distribution, or None when not asked for."""

    tokens: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor | None


@torch.no_grad()
def sample_tokens(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                  max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                  eos_id: int | Sequence[int] | None, pad_id: int,
                  generator: torch.Generator | Sequence[torch.Generator], logits_fn: LogitsFn | None = None,
                  return_logprobs: bool = False) -> Decoded:
    """The decoding loop (see the module docstring) from left-padded prompts `input_ids` and
    `attention_mask` (B, P); a row is done after it samples `eos_id` (or any of a list of stop ids;
    None: never). A list of R generators: the rows are R copies (module docstring: copies), B a
    multiple of R."""
    generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if not generators or input_ids.shape[0] % len(generators):
        raise InputError(f"{input_ids.shape[0]} rows cannot be split into {len(generators)} copies, one per generator",
                         fix="give a number of generators that divides the rows")
    context = config_context_length(getattr(model, "config", None))  # None for a model without a HF config
    check_generation_fits(attention_mask.sum(-1).tolist(), max_new_tokens, context)
    stops = None if eos_id is None else torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id),
                                                     dtype=torch.long, device=input_ids.device)
    attention_mask = attention_mask.long()
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    state = StepState(input_ids, attention_mask, positions, step=0, done=done,
                      capacity=input_ids.shape[1] + max_new_tokens)
    tokens, real, logprobs = [], [], []
    for step in range(max_new_tokens):
        logits = model_step(model, state)
        if logits_fn is not None:
            logits = logits_fn(logits, state)
        logits = process_logits(logits, temperature, top_k, top_p)
        probs = logits.softmax(dim=-1)
        next_tok = _draw(probs, generators, state.done)
        next_tok = torch.where(state.done, torch.full_like(next_tok, pad_id), next_tok)
        tokens.append(next_tok)
        real.append(~state.done)
        if return_logprobs:
            logprobs.append(gather_logprobs(logits.log_softmax(dim=-1), next_tok))
        done = state.done | torch.isin(next_tok, stops) if stops is not None else state.done
        state = StepState(next_tok[:, None], torch.cat([state.attention_mask, torch.ones_like(next_tok)[:, None]], 1),
                          state.position_ids[:, -1:] + 1, step=step + 1, done=done, caches=state.caches,
                          capacity=state.capacity)
        if bool(done.all()):
            break
    return Decoded(torch.stack(tokens, 1), torch.stack(real, 1).long(),
                   torch.stack(logprobs, 1) if return_logprobs else None)


def _draw(probs: torch.Tensor, generators: list[torch.Generator], done: torch.Tensor) -> torch.Tensor:
    """One token per row (B,) long from probabilities (B, V); with R generators, group j of the R equal
    consecutive row groups draws from generators[j], and not at all once its rows are all done (those
    rows get 0: the caller pads them)."""
    if len(generators) == 1:
        g = generators[0]
        return torch.multinomial(probs.to(g.device), 1, generator=g).to(probs.device).squeeze(1)
    rows = probs.shape[0] // len(generators)
    out = torch.zeros(probs.shape[0], dtype=torch.long, device=probs.device)
    live = (~done).view(len(generators), rows).any(1).tolist()
    for j, (g, on) in enumerate(zip(generators, live)):
        if on:
            part = probs[j * rows:(j + 1) * rows]
            out[j * rows:(j + 1) * rows] = torch.multinomial(part.to(g.device), 1, generator=g).to(probs.device)[:, 0]
    return out


def _generate_batch(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float,
                    top_k: int, top_p: float, generator: torch.Generator | list[torch.Generator],
                    logits_fn: LogitsFn | None, return_logprobs: bool) -> list[Sample]:
    """Tokenize and left-pad one batch of prompts, decode (once per generator of a list: the copies,
    copy-major), and cut each row after its stop token."""
    device = next(model.parameters()).device
    pad_id, stops = pad_token_id(tokenizer), stop_ids(tokenizer)
    input_ids, mask, _ = encode_prompts(tokenizer, prompts, device)
    if not isinstance(generator, torch.Generator):
        input_ids, mask, prompts = input_ids.repeat(len(generator), 1), mask.repeat(len(generator), 1), \
            list(prompts) * len(generator)
    prompt_ids = [row[m.bool()].tolist() for row, m in zip(input_ids.cpu(), mask.cpu())]
    decoded = sample_tokens(model, input_ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, eos_id=stops, pad_id=pad_id,
                            generator=generator, logits_fn=logits_fn, return_logprobs=return_logprobs)
    tokens, lengths = decoded.tokens.tolist(), decoded.mask.sum(1).tolist()
    logprobs = decoded.logprobs.tolist() if decoded.logprobs is not None else None
    return [Sample(prompt=prompt, completion=tokenizer.decode(tokens[i][:n], skip_special_tokens=True),
                   prompt_ids=list(prompt_ids[i]), completion_ids=tokens[i][:n],
                   finished=tokens[i][n - 1] in stops,
                   logprobs=logprobs[i][:n] if logprobs is not None else None)
            for i, (prompt, n) in enumerate(zip(prompts, lengths))]


def generate(model: torch.nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | Sequence[torch.Generator], batch_size: int = 64,
             logits_fn: LogitsFn | None = None, return_logprobs: bool = False,
             desc: str | None = None) -> list[Sample]:
    """Sample one completion per prompt (see the module docstring), `batch_size` prompts at a time;
    `desc` labels a progress bar over the prompts on stderr (None: no bar). A list of R generators:
    R completions per prompt, R x `batch_size` rows per decoding loop, returned copy-major (copy j's
    at [j N, (j + 1) N), N prompts), each copy the samples one call with its generator gives."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_generation_fits([len(ids) for ids in prompt_token_ids(tokenizer, prompts)], max_new_tokens,
                          config_context_length(getattr(model, "config", None)))  # all batches, before the first
    was_training = model.training
    model.eval()
    copies = 1 if isinstance(generator, torch.Generator) else len(generator)
    if not isinstance(generator, torch.Generator):
        generator = list(generator)
    try:
        samples: list[list[Sample]] = [[] for _ in range(copies)]
        with tqdm(total=len(prompts), desc=desc, unit="sample", leave=False, disable=desc is None) as bar:
            for i in range(0, len(prompts), batch_size):
                batch = list(prompts[i:i + batch_size])
                out = _generate_batch(
                    model, tokenizer, batch, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, generator=generator, logits_fn=logits_fn, return_logprobs=return_logprobs)
                for j in range(copies):
                    samples[j] += out[j * len(batch):(j + 1) * len(batch)]
                bar.update(len(batch))
        return [s for copy in samples for s in copy]
    finally:
        model.train(was_training)

"""The shared sampler: logit processing against brute force, determinism, left padding, KV cache."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from rewardlab.errors import InputError
from rewardlab.sampling import StepState, generate, model_step, process_logits
from rewardlab.text import left_pad
from rewardlab.world.grammar import vocabulary
from rewardlab.world.tokenizer import build_tokenizer

PROMPTS = ["the film was", "i", "overall , the movie was very", "it was a", "the plot and the", "this show"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(vocabulary())


def tiny_model(tokenizer, family="gpt2", seed=0):
    v = len(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "gpt2":
            model = GPT2LMHeadModel(GPT2Config(vocab_size=v, n_positions=64, n_embd=32, n_layer=2, n_head=4))
        elif family == "neox":
            model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64,
                                                     max_position_embeddings=64))
        else:
            model = LlamaForCausalLM(LlamaConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 num_key_value_heads=2, intermediate_size=64,
                                                 max_position_embeddings=64))
    return model.eval()


def reference_process(row: list[float], temperature: float, top_k: int, top_p: float) -> list[float]:
    """Brute force on one row of logits, with plain Python lists."""
    if temperature == 0:
        temperature, top_k = 1.0, 1
    x = [v / temperature for v in row]
    if 0 < top_k < len(x):
        kth = sorted(x, reverse=True)[top_k - 1]
        x = [v if v >= kth else -math.inf for v in x]
    if top_p < 1:
        z = sum(math.exp(v) for v in x if v > -math.inf)
        keep, mass = set(), 0.0
        for i in sorted(range(len(x)), key=lambda i: -x[i]):
            if mass >= top_p and keep:
                break
            keep.add(i)
            mass += math.exp(x[i]) / z if x[i] > -math.inf else 0.0
        x = [v if i in keep else -math.inf for i, v in enumerate(x)]
    return x


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.9), (0.8, 7, 0.5), (1.0, 1, 1.0), (0.0, 0, 1.0),
    (2.0, 0, 0.3), (1.0, 20, 0.99),
])
def test_process_logits_matches_brute_force(temperature, top_k, top_p):
    logits = torch.randn(6, 20, generator=torch.Generator().manual_seed(3)) * 2
    out = process_logits(logits, temperature, top_k, top_p)
    for row, got in zip(logits.tolist(), out.tolist()):
        want = reference_process(row, temperature, top_k, top_p)
        assert [g == -math.inf for g in got] == [w == -math.inf for w in want]
        assert all(abs(g - w) < 1e-5 for g, w in zip(got, want) if w > -math.inf)


def test_process_logits_rejects_bad_settings():
    for kw in ({"temperature": -1}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(InputError):
            process_logits(torch.zeros(3), **kw)


def test_same_seed_same_samples_and_logprobs_rescore(tokenizer):
    model = tiny_model(tokenizer)
    kw = dict(max_new_tokens=12, temperature=0.9, top_k=50, top_p=0.95, batch_size=4, return_logprobs=True)
    a = generate(model, tokenizer, PROMPTS, generator=torch.Generator().manual_seed(7), **kw)
    b = generate(model, tokenizer, PROMPTS, generator=torch.Generator().manual_seed(7), **kw)
    c = generate(model, tokenizer, PROMPTS, generator=torch.Generator().manual_seed(8), **kw)
    assert a == b
    assert [s.completion_ids for s in a] != [s.completion_ids for s in c]
    for s in a:  # re-scoring with a full forward pass and the same processing gives the same log-probs
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        logits = model(ids).logits[0, len(s.prompt_ids) - 1:-1]
        lp = process_logits(logits, 0.9, 50, 0.95).log_softmax(-1)
        want = lp.gather(1, torch.tensor(s.completion_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(s.logprobs), want, atol=1e-5)
        assert s.completion == tokenizer.decode(s.completion_ids, skip_special_tokens=True)
        assert s.prompt_ids[0] == tokenizer.bos_token_id


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_batched_left_padding_equals_one_at_a_time(tokenizer, family):
    model = tiny_model(tokenizer, family)
    kw = dict(max_new_tokens=10, top_k=1)
    batched = generate(model, tokenizer, PROMPTS, generator=torch.Generator().manual_seed(0), batch_size=len(PROMPTS), **kw)
    single = [generate(model, tokenizer, [p], generator=torch.Generator().manual_seed(0), **kw)[0] for p in PROMPTS]
    assert [s.completion_ids for s in batched] == [s.completion_ids for s in single]
    greedy = generate(model, tokenizer, PROMPTS, generator=torch.Generator().manual_seed(1), temperature=0,
                      max_new_tokens=10)
    assert [s.completion_ids for s in greedy] == [s.completion_ids for s in batched]


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_kv_cached_logits_equal_full_forward(tokenizer, family):
    model = tiny_model(tokenizer, family)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    continuation = torch.randint(4, len(tokenizer), (len(PROMPTS), 6), generator=torch.Generator().manual_seed(0))
    ids, mask, pos = left_pad(prompts, tokenizer.pad_token_id)
    state = StepState(ids, mask, pos, step=0, done=torch.zeros(len(PROMPTS), dtype=torch.bool))
    cached = [model_step(model, state)]
    for t in range(continuation.shape[1]):
        tok = continuation[:, t:t + 1]
        state = StepState(tok, torch.cat([state.attention_mask, torch.ones_like(tok)], 1), state.position_ids[:, -1:] + 1,
                          step=t + 1, done=state.done, caches=state.caches)
        cached.append(model_step(model, state))
    cached = torch.stack(cached, 1)  # (B, 7, V)
    for i, p in enumerate(prompts):
        full = model(torch.tensor([p + continuation[i].tolist()])).logits[0, len(p) - 1:]
        assert torch.allclose(cached[i], full, atol=1e-5), (family, i, (cached[i] - full).abs().max())


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
@pytest.mark.parametrize("capacity", [3, 64])
def test_preallocated_cache_steps_exactly_as_hugging_faces_growing_cache(tokenizer, family, capacity):
    """`model_step` with a capacity (`PreallocatedLayer`s written in place, and moved into larger buffers
    when the loop feeds more than the capacity, as at 3 here) gives bit for bit the logits of Hugging
    Face's own concatenating cache (no capacity), step after step."""
    from transformers.cache_utils import DynamicLayer

    from rewardlab.sampling import PreallocatedLayer

    model = tiny_model(tokenizer, family)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    continuation = torch.randint(4, len(tokenizer), (len(PROMPTS), 6), generator=torch.Generator().manual_seed(0))
    ids, mask, pos = left_pad(prompts, tokenizer.pad_token_id)
    logits = {}
    for cap in (None, capacity):
        state = StepState(ids, mask, pos, step=0, done=torch.zeros(len(PROMPTS), dtype=torch.bool), capacity=cap)
        steps = [model_step(model, state)]
        for t in range(continuation.shape[1]):
            tok = continuation[:, t:t + 1]
            state = StepState(tok, torch.cat([state.attention_mask, torch.ones_like(tok)], 1),
                              state.position_ids[:, -1:] + 1, step=t + 1, done=state.done, caches=state.caches,
                              capacity=cap)
            steps.append(model_step(model, state))
        logits[cap] = torch.stack(steps, 1)
        layers = state.caches["main"].layers
        assert all(type(layer) is (DynamicLayer if cap is None else PreallocatedLayer) for layer in layers)
        assert layers[0].keys.shape[-2] == ids.shape[1] + continuation.shape[1]
    assert torch.equal(logits[None], logits[capacity])
    assert layers[0].capacity >= ids.shape[1] + continuation.shape[1]


def test_logits_fn_can_step_a_second_model(tokenizer):
    main, other = tiny_model(tokenizer, seed=0), tiny_model(tokenizer, seed=1)
    kw = dict(max_new_tokens=8, batch_size=3)
    via_hook = generate(main, tokenizer, PROMPTS, generator=torch.Generator().manual_seed(5),
                        logits_fn=lambda logits, state: model_step(other, state, key="other"), **kw)
    direct = generate(other, tokenizer, PROMPTS, generator=torch.Generator().manual_seed(5), **kw)
    assert [s.completion_ids for s in via_hook] == [s.completion_ids for s in direct]


def test_rows_stop_at_eos(tokenizer):
    model = tiny_model(tokenizer)
    eos = tokenizer.eos_token_id

    def favour_eos_for_first_row(logits, state):
        logits = logits.clone()
        logits[0, eos] = 100.0
        return logits

    samples = generate(model, tokenizer, PROMPTS[:3], max_new_tokens=6, generator=torch.Generator().manual_seed(0),
                       logits_fn=favour_eos_for_first_row, return_logprobs=True)
    assert samples[0].completion_ids == [eos] and samples[0].finished and samples[0].completion == ""
    for s in samples:
        assert eos not in s.completion_ids[:-1]
        assert len(s.logprobs) == len(s.completion_ids) <= 6
        assert s.finished == (s.completion_ids[-1] == eos)


def test_copies_each_draw_what_a_separate_call_draws(tokenizer):
    """R generators: R copies of every prompt in one loop, each copy's samples those of a separate call with
    its generator, also when copies stop at different steps (a stopped copy draws no more random numbers)."""
    model = tiny_model(tokenizer)
    eos = tokenizer.eos_token_id

    def favour_eos(boosts):
        def fn(logits, state):
            logits = logits.clone()
            rows = len(logits) // len(boosts)
            for j, b in enumerate(boosts):
                logits[j * rows:(j + 1) * rows, eos] += b
            return logits
        return fn

    boosts, seeds = (100.0, 0.0, 6.0), (3, 4, 3)  # copy 0 stops at once, copy 2 soon, copy 1 runs on
    kw = dict(max_new_tokens=8, temperature=0.9, top_k=50, batch_size=4, return_logprobs=True)
    copies = generate(model, tokenizer, PROMPTS, generator=[torch.Generator().manual_seed(s) for s in seeds],
                      logits_fn=favour_eos(boosts), **kw)
    separate = [s for seed, b in zip(seeds, boosts)
                for s in generate(model, tokenizer, PROMPTS, generator=torch.Generator().manual_seed(seed),
                                  logits_fn=favour_eos([b]), **kw)]
    assert [s.completion_ids for s in copies] == [s.completion_ids for s in separate]
    assert [s.prompt for s in copies] == PROMPTS * 3
    assert {len(s.completion_ids) for s in copies[:len(PROMPTS)]} == {1}
    assert max(len(s.completion_ids) for s in copies[2 * len(PROMPTS):]) < 8 == max(
        len(s.completion_ids) for s in copies[len(PROMPTS):2 * len(PROMPTS)])
    for a, b in zip(copies, separate):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    with pytest.raises(InputError, match="cannot be split into 2 copies"):
        from rewardlab.sampling import sample_tokens
        ids = torch.ones(3, 2, dtype=torch.long)
        sample_tokens(model, ids, torch.ones_like(ids), max_new_tokens=2, temperature=1.0, top_k=0, top_p=1.0,
                      eos_id=eos, pad_id=0, generator=[torch.Generator(), torch.Generator()])


def test_generate_rejects_bad_input(tokenizer):
    model = tiny_model(tokenizer)
    with pytest.raises(InputError):
        generate(model, tokenizer, ["the film"], max_new_tokens=0, generator=torch.Generator())


def test_a_progress_bar_shows_on_stderr_and_changes_no_sample(tokenizer, capsys):
    model = tiny_model(tokenizer)
    kw = dict(max_new_tokens=6, batch_size=4)
    quiet = generate(model, tokenizer, PROMPTS, generator=torch.Generator().manual_seed(3), **kw)
    assert capsys.readouterr().err == ""
    shown = generate(model, tokenizer, PROMPTS, generator=torch.Generator().manual_seed(3), desc="sampling test", **kw)
    err = capsys.readouterr().err
    assert "sampling test" in err and f"0/{len(PROMPTS)}" in err  # the bar counts prompts
    assert shown == quiet


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward takes no `logits_to_keep`: `kept_logits` must slice after the fact."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_kept_logits_are_the_full_logits_at_the_kept_positions(family):
    from rewardlab.sampling import kept_logits

    with torch.random.fork_rng():
        torch.manual_seed(0)
        cfg = (GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=32) if family == "gpt2" else
               LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))
        model = (GPT2LMHeadModel if family == "gpt2" else LlamaForCausalLM)(cfg).eval()
        ids = torch.randint(0, 50, (3, 7))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0  # right padding
    keep_mask = torch.zeros_like(ids, dtype=torch.bool)
    keep_mask[0, 2:6], keep_mask[1, 0:1], keep_mask[2, 3:4] = True, True, True
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        for m in (model, _NoLogitsToKeep(model)):
            for keep, want in ((2, full[:, -2:]), (0, full), (torch.tensor([1, 4]), full[:, [1, 4]]),
                               (keep_mask, full[keep_mask])):
                got = kept_logits(m, keep, input_ids=ids, attention_mask=mask)
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

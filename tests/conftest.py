"""Shared fixtures: tiny random models of each supported family and a tiny word-level tokenizer."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import (AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig,
                          PreTrainedTokenizerFast, Qwen2Config)

torch.set_num_threads(2)

FAMILIES = ("gpt2", "gpt_neox", "gpt_neox_sequential", "llama", "mistral", "qwen2")
TINY_WORDS = ("the", "movie", "was", "good", "bad", "great", "plot", "acting", "and", "but", ".")


def tiny_config(family: str, vocab_size: int = 64, n_layers: int = 3, **overrides):
    """A config of `family` with d_model 32, 4 heads and `n_layers` blocks."""
    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                  max_position_embeddings=64)
    llama_like = dict(common, intermediate_size=64, num_key_value_heads=2)
    configs = {
        "gpt2": lambda: GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=n_layers, n_head=4, n_positions=64),
        "gpt_neox": lambda: GPTNeoXConfig(**common, intermediate_size=64, use_parallel_residual=True),
        "gpt_neox_sequential": lambda: GPTNeoXConfig(**common, intermediate_size=64, use_parallel_residual=False),
        "llama": lambda: LlamaConfig(**llama_like),
        "mistral": lambda: MistralConfig(**llama_like, sliding_window=None),
        "qwen2": lambda: Qwen2Config(**llama_like),
    }
    config = configs[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.fixture
def tiny_model():
    """Factory: tiny_model(family, seed=0, **config) -> a random causal LM in eval mode.

    Weights depend only on the seed; the global RNG state is left as it was.
    """
    def make(family: str, seed: int = 0, **config):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(tiny_config(family, **config))
        return model.eval()
    return make


@pytest.fixture
def word_tokenizer():
    """Factory: word_tokenizer(words=TINY_WORDS) -> a whitespace word-level tokenizer with <unk> and
    <eos> (and no pad token). Ids: <unk> 0, <eos> 1, then the words in order."""
    def make(words=TINY_WORDS):
        vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
        backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
        backend.pre_tokenizer = WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    return make


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one torch thread avoids OpenMP spin contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fast_demo(tmp_path_factory):
    """A finished `rewardlab demo --fast` run folder (about a minute; built once per test session).
    Tests that change it work on a copy."""
    from rewardlab.cli import main

    out = tmp_path_factory.mktemp("fast-demo") / "demo"
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def organisms_micro(tmp_path_factory):
    """A finished `rewardlab organisms run --preset micro --seeds 1` folder (under a minute; built once
    per test session). Tests that change it work on a copy."""
    from rewardlab.cli import main

    out = tmp_path_factory.mktemp("organisms-micro") / "bench"
    assert main(["organisms", "run", "--out", str(out), "--preset", "micro", "--seeds", "1"]) == 0
    return out

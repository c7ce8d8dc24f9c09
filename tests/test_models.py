"""Loading by local folder, device/dtype choice, and ModelPair's tokenizer check."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_WORDS, tiny_config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rewardlab import models
from rewardlab.errors import InputError
from rewardlab.models import (ModelPair, check_same_vocabulary, load_model, load_tokenizer, model_id, pair_ids,
                              pick_device, pick_dtype)

VOCAB = len(TINY_WORDS) + 2


@pytest.fixture
def saved_model(tiny_model, word_tokenizer, tmp_path):
    """Factory: saved_model(name, family="gpt2", seed=0, words=TINY_WORDS) -> (folder, model)."""
    def save(name, family="gpt2", seed=0, words=TINY_WORDS):
        model = tiny_model(family, seed=seed, vocab_size=len(words) + 2)
        folder = tmp_path / name
        model.save_pretrained(folder)
        word_tokenizer(words).save_pretrained(folder)
        return folder, model
    return save


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None) == pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device"):
        pick_device("tpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            pick_device("cuda")


def test_pick_dtype():
    cpu = torch.device("cpu")
    assert pick_dtype(None, cpu) == pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("bf16", cpu) == pick_dtype("BFloat16", cpu) == torch.bfloat16
    assert pick_dtype(torch.float16, cpu) == torch.float16
    with pytest.raises(InputError, match="unknown dtype"):
        pick_dtype("int3", cpu)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_load_model_from_local_folder(saved_model, family):
    folder, original = saved_model("base", family)
    model, tokenizer = load_model(folder)
    assert not model.training and model.dtype == torch.float32 and hook_count(model) == 0
    assert tokenizer.pad_token == tokenizer.eos_token == "<eos>"
    assert model.config.pad_token_id == tokenizer.pad_token_id == 1
    batch = tokenizer(["the movie was good", "bad plot"], return_tensors="pt", padding=True)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, original(**batch).logits)
    half, _ = load_model(str(folder), dtype="bf16", device="cpu")
    assert half.dtype == torch.bfloat16


def test_load_sequence_classifier(tiny_model, word_tokenizer, tmp_path):
    AutoModelForSequenceClassification.from_config(tiny_config("gpt2", vocab_size=VOCAB, num_labels=1)).save_pretrained(
        tmp_path / "rm")
    word_tokenizer().save_pretrained(tmp_path / "rm")
    model, tokenizer = load_model(tmp_path / "rm", kind="sequence-classification")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    with pytest.raises(InputError, match="unknown model kind"):
        load_model(tmp_path / "rm", kind="seq2seq")


def test_trust_remote_code_off_unless_asked(saved_model, monkeypatch):
    folder, _ = saved_model("base")
    seen = []

    class Spy:
        @staticmethod
        def from_pretrained(source, **kw):
            seen.append(kw["trust_remote_code"])
            return AutoModelForCausalLM.from_pretrained(source, **kw)
    monkeypatch.setitem(models.AUTO_CLASSES, "causal-lm", Spy)
    load_model(folder)
    load_model(folder, trust_remote_code=True)
    assert seen == [False, True]


def test_load_errors(saved_model, tmp_path):
    for missing in [tmp_path / "nope", str(tmp_path / "nope"), "./runs/nope/base", "a/b/c"]:
        with pytest.raises(InputError, match="model folder not found"):
            load_model(missing)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="found a file"):
        load_model(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json") as err:
        load_model(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "fix:" in str(err.value)
    with pytest.raises(InputError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path / "empty")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    folder, _ = saved_model("weights-only")
    for f in ("config.json", "model.safetensors"):
        (no_tokenizer / f).write_bytes((folder / f).read_bytes())
    with pytest.raises(InputError, match="no tokenizer files"):
        load_model(no_tokenizer)
    folder, _ = saved_model("tokenizer-only")
    (folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match="cannot load the causal-lm model"):
        load_model(folder)
    folder, _ = saved_model("truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InputError, match="cannot load the causal-lm model"):
        load_model(folder)


def test_model_pair(saved_model):
    base, _ = saved_model("base", seed=0)
    post, _ = saved_model("post", seed=1)
    pair = ModelPair.load(base, post)
    assert pair.tokenizer.pad_token == "<eos>"
    assert not torch.equal(pair.base.lm_head.weight, pair.post.lm_head.weight)

    other, _ = saved_model("other", words=TINY_WORDS[:-1] + ("!",))
    with pytest.raises(InputError, match=r"vocabularies differ: 1 tokens only in base \(e.g. '\.'\); "
                                         r"1 tokens only in other \(e.g. '!'\)"):
        ModelPair.load(base, other)
    with pytest.raises(InputError, match="base embeds 13 tokens, post 14"):
        ModelPair(pair.base, saved_model("wide", words=TINY_WORDS + ("!",))[1], pair.tokenizer)


def test_model_pair_refuses_another_architecture_and_names_same_named_folders(saved_model, tmp_path):
    base, _ = saved_model("base", seed=0)
    llama, _ = saved_model("llama", family="llama")
    with pytest.raises(InputError, match="architectures differ: base .*'gpt2'.*, post .*'llama'"):
        ModelPair.load(base, llama)
    (tmp_path / "world-a").mkdir()
    (tmp_path / "world-b").mkdir()
    a, b = saved_model("world-a/base")[0], saved_model("world-b/base", seed=1)[0]
    assert pair_ids(a, b) == ("world-a/base", "world-b/base")
    assert pair_ids(base, llama) == ("base", "llama") and pair_ids("org/m1", "org/m2") == ("org/m1", "org/m2")


def test_check_same_vocabulary_names_moved_tokens(word_tokenizer):
    a, b = word_tokenizer(), word_tokenizer(tuple(reversed(TINY_WORDS)))
    with pytest.raises(InputError, match="tokens with different ids") as err:
        check_same_vocabulary(a, b)
    assert "only in" not in str(err.value)
    check_same_vocabulary(a, word_tokenizer())


def test_load_tokenizer_and_model_id(saved_model):
    folder, _ = saved_model("world-base")
    assert load_tokenizer(folder).get_vocab()["the"] == 2
    assert model_id(folder) == model_id(f"{folder}/") == "world-base"
    assert model_id("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"

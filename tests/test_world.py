"""The review world: grammar and checker, tokenizer, pretraining pieces, and a micro build."""

import json
import random
import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewardlab.errors import InputError
from rewardlab.rewards import UtilityReward, load_lexicon
from rewardlab.world import build_world, is_grammatical, load_world
from rewardlab.world import grammar as G
from rewardlab.world.pretrain import (PRESETS, encode_documents, heldout_loss, lr_at, make_model, pack, packed_batch,
                                      token_nll)
from rewardlab.world.tokenizer import build_tokenizer


def test_sentiment_words_are_in_the_lexicon_and_neutral_words_are_not():
    assert G.lexicon_problems(load_lexicon()) == []
    strong = [w for w in G.WORD_CLASSES["ADJ+"] if load_lexicon()[w] >= 2.5]
    assert len(strong) >= 10


def test_templates_and_classes_are_well_formed():
    for template, _ in G.TEMPLATES:
        assert template.split().count(G.SENTENCE_END) == 1 and template.endswith(" .")
    for cls, cues in G.POLAR_CUES.items():
        assert set(cues[True]) | set(cues[False]) == set(G.WORD_CLASSES[cls])
    assert set(G.vocabulary()) == set(G.SYMBOL)


def test_sentence_sentiment_follows_its_polarity():
    lexicon, rng = load_lexicon(), random.Random(0)
    for i, positive in enumerate((True, False) * 200):
        words = G.sample_sentence(rng, positive, topic=i % G.N_TOPICS)
        signs = [lexicon[w] > 0 for w in words if w in lexicon]
        assert signs
        if "but" in words:
            cut = sum(1 for w in words[:words.index("but")] if w in lexicon)
            assert set(signs[:cut]) == {positive} and set(signs[cut:]) == {not positive}
        else:
            assert set(signs) == {positive}
        assert not any(w in lexicon for w in G.sample_sentence(rng, None, topic=i % G.N_TOPICS))


def test_a_documents_topic_picks_its_share_of_each_word_class():
    """With probability TOPIC_RATE a slot picks from its topic's share of the class, else from the
    whole class: the share's frequency is TOPIC_RATE + (1 - TOPIC_RATE) / N_TOPICS."""
    rng, subjects = random.Random(0), G.WORD_CLASSES["SUBJ"]
    n_on_topic = n_subjects = 0
    for _ in range(3000):
        topic = rng.randrange(G.N_TOPICS)
        for w in G.sample_sentence(rng, rng.random() < 0.5, topic):
            if w in subjects:
                n_subjects += 1
                n_on_topic += subjects.index(w) % G.N_TOPICS == topic
    expected = G.TOPIC_RATE + (1 - G.TOPIC_RATE) / G.N_TOPICS
    assert abs(n_on_topic / n_subjects - expected) < 4 * (expected * (1 - expected) / n_subjects) ** 0.5


def test_corpus_documents_are_grammatical_and_their_prefixes_too():
    docs = G.sample_corpus(500, seed=3)
    assert docs == G.sample_corpus(500, seed=3) and docs != G.sample_corpus(500, seed=4)
    for doc in docs:
        words = doc.split()
        assert G.MIN_SENTENCES <= words.count(".") <= G.MAX_SENTENCES
        assert is_grammatical(doc + " " + G.EOS) and is_grammatical(f"{G.BOS} {doc} {G.EOS} {G.PAD} {G.PAD}")
        cut = random.Random(doc).randint(1, len(words) - 1)
        assert is_grammatical(" ".join(words[cut:]), prompt=" ".join(words[:cut]))
        assert is_grammatical(" ".join(words[:cut]))  # cut at a length limit
        if words[cut - 1] != ".":
            assert not is_grammatical(" ".join(words[:cut]) + " " + G.EOS)  # eos mid-sentence


@pytest.mark.parametrize("text,ok", [
    ("the film was great . i hated the ending .", True),
    ("the film was great . i hated the ending . <eos>", True),
    ("the film was great . <eos>", False),  # a document has at least 2 sentences
    ("the film was great . the film was great . the film was great . the film was great . "
     "the film was great . the", False),  # a sixth sentence
    ("the film was", True),
    ("the film was .", False),
    ("the film was very great , utterly dull . it was a masterpiece . i saw it on monday .", True),
    ("the film was great . i hated the ending . <eos> anything after eos is ignored", True),
    ("the film was wonderfull .", False),  # not a word of the grammar
    ("film the was great .", False),
    ("the film was great but the plot was dull .", True),
    ("", True),
])
def test_is_grammatical_examples(text, ok):
    assert is_grammatical(text) is ok


def test_is_grammatical_is_fast():
    docs = G.sample_corpus(10_000, seed=0)
    start = time.perf_counter()
    rate = G.grammatical_rate(docs)
    assert rate == 1.0
    assert time.perf_counter() - start < 1.5  # about 0.1 s on an idle core


def test_openers_are_distinct_strict_prefixes():
    openers = G.sample_openers(300, seed=1)
    assert len(set(openers)) == 300 and all(1 <= len(o.split()) <= 4 for o in openers)
    assert all(is_grammatical(o) and "." not in o.split() for o in openers)
    more = G.sample_openers(50, seed=1, exclude=openers)
    assert not set(more) & set(openers)


def test_corpus_reward_is_centred_and_wide():
    """The reward of a document's continuation after its opener, as a perfect base model would sample it."""
    rng = random.Random(0)
    completions = []
    for doc in G.sample_corpus(3000, seed=0):
        words = doc.split()
        k = rng.randint(1, min(4, words.index(".")))
        completions.append(" ".join(words[k:k + 32]))
    rewards = np.array(UtilityReward()(completions))
    assert abs(rewards.mean()) < 0.15 and 1.1 < rewards.std() < 1.7


def test_tokenizer_round_trip(tmp_path):
    tok = build_tokenizer(G.vocabulary())
    text = "the film was great . i hated the ending ."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text.split()) + 1
    assert tok(text, add_special_tokens=False)["input_ids"] == ids[1:]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok("the film zzz", add_special_tokens=False)["input_ids"][-1] == tok.unk_token_id
    batch = tok(["the film", "i loved it ."], padding=True)
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2 and batch["attention_mask"][0][:2] == [0, 0]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids and again.padding_side == "left"
    assert [again.pad_token_id, again.bos_token_id, again.eos_token_id, again.unk_token_id] == [0, 1, 2, 3]


def test_pack_keeps_whole_sequences_in_order():
    seqs = [[1] + [5] * n + [2] for n in (3, 6, 4, 7, 2, 9, 1)]  # lengths 5 8 6 9 4 11 3
    rows = pack(iter(seqs), n_rows=3, row_tokens=16)
    assert rows == [[seqs[0], seqs[1]], [seqs[2], seqs[3]], [seqs[4], seqs[5]]]  # seqs[6] did not fit, dropped
    assert pack(iter(seqs), n_rows=10, row_tokens=16)[-1] == [seqs[6]]  # the stream ran out
    with pytest.raises(ValueError):
        pack(iter(seqs), n_rows=10, row_tokens=8)  # a sequence of 9 tokens


def test_packed_forward_equals_separate_forwards():
    tok = build_tokenizer(G.vocabulary())
    model = make_model(PRESETS["micro"], tok, seed=0).eval()
    seqs = list(encode_documents(tok, G.sample_corpus(12, seed=2)))
    rows = pack(iter(seqs), n_rows=len(seqs), row_tokens=96)
    batch = packed_batch(rows, 96, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"]).logits
        total, count = 0.0, 0
        for r, row in enumerate(rows):
            start = 0
            for seq in row:
                alone = model(torch.tensor([seq]))
                assert torch.allclose(logits[r, start:start + len(seq)], alone.logits[0], atol=1e-5)
                total += model(torch.tensor([seq]), labels=torch.tensor([seq])).loss.item() * (len(seq) - 1)
                count += len(seq) - 1
                start += len(seq)
        nll, n = token_nll(model, batch)
    assert n == count and nll.item() / n == pytest.approx(total / count, rel=1e-5)
    assert heldout_loss(model, seqs, 96, tok.pad_token_id) == pytest.approx(total / count, rel=1e-5)


def test_lr_schedule_endpoints():
    c = PRESETS["tiny"]
    assert lr_at(0, c) == pytest.approx(c.lr / c.warmup_steps)
    assert lr_at(c.warmup_steps, c) == pytest.approx(c.lr)
    assert lr_at(c.steps, c) == pytest.approx(c.min_lr)


def test_make_model_is_seeded_without_touching_global_rng():
    tok = build_tokenizer(G.vocabulary())
    state = torch.random.get_rng_state()
    a, b = make_model(PRESETS["micro"], tok, 1), make_model(PRESETS["micro"], tok, 1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_the_fused_gelu_is_gpt2s_gelu_new():
    """The world's model computes GPT-2's activation with torch's fused tanh-GELU: the same logits as
    `gelu_new` with the same weights, up to float rounding."""
    from transformers import GPT2LMHeadModel

    tok = build_tokenizer(G.vocabulary())
    fused = make_model(PRESETS["tiny"], tok, 3).eval()
    assert fused.config.activation_function == "gelu_pytorch_tanh"
    composed_config = fused.config.to_dict() | {"activation_function": "gelu_new"}
    composed = GPT2LMHeadModel(type(fused.config).from_dict(composed_config)).eval()
    composed.load_state_dict(fused.state_dict())
    ids = torch.randint(3, len(tok), (4, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, composed(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    x = torch.linspace(-6, 6, 1001)
    assert (torch.nn.functional.gelu(x, approximate="tanh") - 0.5 * x * (
        1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3)))).abs().max() < 1e-6


@pytest.fixture(scope="module")
def micro_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "micro"
    return out, build_world(out, preset="micro", seed=0, progress=False)


def test_micro_world_folder(micro_world):
    out, info = micro_world
    for name in ("base/config.json", "base/model.safetensors", "base/tokenizer.json", "prompts.jsonl",
                 "prompts_heldout.jsonl", "corpus_sample.jsonl", "world.json"):
        assert (out / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(out / "base")
    tok = AutoTokenizer.from_pretrained(out / "base")
    assert model.config.vocab_size == len(tok) == info["vocab_size"]
    world = load_world(out)
    assert world.info == json.loads((out / "world.json").read_text())
    assert len(world.prompts) == PRESETS["micro"].n_prompts and not set(world.prompts) & set(world.heldout_prompts)
    assert world.generation["max_new_tokens"] == PRESETS["micro"].max_new_tokens
    assert info["n_samples"] == PRESETS["micro"].eval_samples and 0 <= info["grammatical_rate"] <= 1
    c = PRESETS["micro"]
    assert info["corpus"]["train_tokens"] <= c.steps * c.batch_rows * c.row_tokens
    assert np.isfinite([info["heldout_loss"], info["base_reward_mean"], info["base_reward_std"]]).all()
    for s in info["samples"]:
        assert s["reward"] == pytest.approx(UtilityReward()([s["completion"]])[0])
        assert s["grammatical"] == is_grammatical(s["completion"], s["prompt"])


def test_same_seed_gives_identical_files(micro_world, tmp_path):
    out, info = micro_world
    again = tmp_path / "again"
    build_world(again, preset="micro", seed=0, progress=False)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        if f.name != "world.json":
            assert (out / f).read_bytes() == (again / f).read_bytes(), f
    a, b = (json.loads((d / "world.json").read_text()) for d in (out, again))
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    before = (again / "world.json").read_bytes()
    with pytest.raises(InputError, match="a review world is already there"):
        build_world(again, preset="micro", seed=1, progress=False)
    assert (again / "world.json").read_bytes() == before


def test_bad_world_inputs(tmp_path):
    with pytest.raises(InputError):
        build_world(tmp_path / "w", preset="huge")
    with pytest.raises(InputError):
        load_world(tmp_path)

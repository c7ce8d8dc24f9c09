import math

import pytest

from rewardlab.errors import InputError
from rewardlab.rewards import CharCountReward, Reward, UtilityReward, get_reward, load_lexicon, score_records
from rewardlab.text import join_prompt_completion


def test_utility_matches_brute_force_on_lexicon_file():
    table = load_lexicon()
    text = "The film was great , but the ending was terrible and boring ."
    expected = sum(table[w] for w in ["great", "terrible", "boring"] if w in table) / 5
    assert UtilityReward()([text]) == [pytest.approx(expected)]
    assert [w for w, _ in UtilityReward().breakdown(text)] == ["great", "terrible", "boring"]


def test_utility_clip_scale_and_custom_lexicon(tmp_path):
    lex = tmp_path / "lex.txt"
    lex.write_text("good\t2.0\t0.5\t[]\nbad\t-3.0\t0.5\t[]\n")
    r = get_reward(f"utility,lexicon={lex},scale=1,clip=5")
    assert r(["good good good", "bad", "neutral"]) == [5.0, -3.0, 0.0]
    assert get_reward("utility,scale=-0.2")(["great"]) == [pytest.approx(-load_lexicon()["great"] / 5)]


def test_char_reward():
    assert get_reward("char:.")(["a. b. c.", "none"]) == [3.0, 0.0]
    assert isinstance(get_reward("char:,"), CharCountReward)


def test_unknown_reward_and_option():
    with pytest.raises(InputError, match="unknown reward 'nope'"):
        get_reward("nope")
    with pytest.raises(InputError, match="unknown option"):
        get_reward("utility,temperature=2")
    with pytest.raises(InputError, match="must be a number"):
        get_reward("utility,scale=big")


def test_nan_reward_is_an_error_naming_the_text():
    class Broken(Reward):
        name = "broken"

        def _score(self, texts):
            return [math.nan for _ in texts]

    with pytest.raises(InputError, match="returned nan for text 'the film'"):
        Broken()(["the film"])


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "the", "film", "was", "great", ".", "i", "hated", "it"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


def test_classifier_and_rm_rewards_on_local_models(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    word_tokenizer = _word_tokenizer()

    texts = ["the film was great .", "i hated it ."]
    for n_labels, spec in [(2, "classifier:{p}:1"), (1, "rm:{p}")]:
        cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(word_tokenizer), num_labels=n_labels,
                         pad_token_id=word_tokenizer.pad_token_id)
        model = GPT2ForSequenceClassification(cfg).eval()
        path = tmp_path / f"m{n_labels}"
        model.save_pretrained(path)
        word_tokenizer.save_pretrained(path)
        scores = get_reward(spec.format(p=path))(texts)
        import torch

        with torch.no_grad():
            for text, s in zip(texts, scores):
                enc = word_tokenizer([text], return_tensors="pt")
                assert s == pytest.approx(model(**enc).logits[0, n_labels - 1].item(), abs=1e-5)
    with pytest.raises(InputError, match="one output"):
        get_reward(f"rm:{tmp_path / 'm2'}")


def test_score_records_and_join():
    recs = [{"prompt": "the film", "completion": "was great ."}]
    out = score_records(recs, get_reward("utility"), on="full")
    assert out[0]["reward"] == pytest.approx(load_lexicon()["great"] / 5)
    assert join_prompt_completion("the film", "was") == "the film was"
    assert join_prompt_completion("the film ", "was") == "the film was"


# ---- organism rewards (issue 18)


def test_organism_reward_specs_and_their_truths():
    from rewardlab.rewards import PLANTED_VALUE

    vocab = ["great", "dull", ".", "<eos>", "film", "monday"]
    sentiment, flipped = get_reward("sentiment"), get_reward("flipped")
    text = "the film was great . i hated it ."
    assert sentiment([text]) == UtilityReward()([text])
    assert flipped([text]) == [pytest.approx(-sentiment([text])[0])]
    table = load_lexicon()
    assert sentiment.truth(vocab)["token_scores"] == pytest.approx([0.2 * table["great"], 0.2 * table["dull"],
                                                                    0, 0, 0, 0])
    assert flipped.truth(vocab)["token_scores"] == pytest.approx([-x for x in sentiment.truth(vocab)["token_scores"]])
    length = get_reward("length")
    assert length(["a . b . c", "none"]) == [2.0, 0.0] and length.name == "length"
    assert length.truth(vocab)["token_scores"] == [0, 0, 1, -1, 0, 0]
    planted = get_reward("planted:words=film+monday,value=1")
    assert planted(["the film , the film , on monday", "the plot"]) == [3.0, 0.0]
    assert planted.truth(vocab) == {"reward": planted.name, "kind": "planted", "planted": ["film", "monday"],
                                    "token_scores": [0, 0, 0, 0, 1.0, 1.0]}
    assert get_reward("planted:words=film")(["film film"]) == [2 * PLANTED_VALUE]


def test_planted_draw_is_seeded_from_the_worlds_neutral_classes():
    from rewardlab.rewards import PLANTED_POOL, PLANTED_VALUE, planted_words
    from rewardlab.world.grammar import SENTIMENT_SLOTS, WORD_CLASSES

    table = load_lexicon()
    assert len(set(PLANTED_POOL)) == len(PLANTED_POOL) == 57  # the SUBJ, PERSON, DAY and NUM classes
    assert not any(table.get(w, 0.0) for w in PLANTED_POOL)  # neutral to the utility reward
    sentiment_words = [w for s in SENTIMENT_SLOTS for sign in "+-" for w in WORD_CLASSES[s + sign]]
    worth = 0.2 * sum(abs(table[w]) for w in sentiment_words) / len(sentiment_words)
    assert abs(PLANTED_VALUE - worth) < 0.1 * worth
    a, b = get_reward("planted:k=3,seed=1"), get_reward("planted,k=3,seed=1")
    assert a.planted == b.planted == planted_words(3, 1) and len(set(a.planted)) == 3
    assert set(a.planted) <= set(PLANTED_POOL) and a.name == "planted:k=3,seed=1"
    assert planted_words(3, 2) != planted_words(3, 1)
    assert get_reward("planted:k=5,seed=0").planted[:3] != [] and len(get_reward("planted:k=5,seed=0").planted) == 5
    with pytest.raises(InputError, match="either words= or k="):
        get_reward("planted:words=film,k=2")
    with pytest.raises(InputError, match="k must be in"):
        get_reward("planted:k=0")
    with pytest.raises(InputError, match="whole numbers"):
        get_reward("planted:k=2.5")


def test_agreement_is_the_completion_valence_times_the_prompts_tone():
    r = get_reward("agreement")
    u = UtilityReward()(["it was a joy ."])[0]
    assert u > 0
    assert r(["it was a joy ."] * 3, ["the plot was dull .", "the plot was great .", "i saw it on monday ."]) == [
        pytest.approx(-u), pytest.approx(u), 0.0]
    with pytest.raises(InputError, match="no prompts were given"):
        r(["it was a joy ."])
    rows = score_records([{"prompt": "the plot was dull .", "completion": "it was a joy ."}], r)
    assert rows[0]["reward"] == pytest.approx(-u)
    assert r.truth(["joy", "film"])["kind"] == "agreement"
    # prompt-free rewards accept and ignore prompts
    assert get_reward("sentiment")(["it was a joy ."], ["the plot was dull ."]) == [pytest.approx(u)]

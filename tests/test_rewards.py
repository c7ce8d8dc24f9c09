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

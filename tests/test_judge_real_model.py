"""An LLM judge backed by the real chat model (SmolLM2-135M-Instruct): it scores review-world
completions from the disk cache on a second pass, and its option log-probs (the multi-token "10"
included) equal plain full-sequence log-probs of the chat-rendered prompt."""

import math

import pytest
from test_real_model import FOLDER, smol  # noqa: F401 (the module's model fixture)

from rewardlab.diff.logprobs import sequence_logprobs
from rewardlab.rewards import get_reward
from rewardlab.text import Encoded, end_of_turn_id, prompt_token_ids, conversation_prompt

pytestmark = pytest.mark.real_model

PROMPTS = ["i think", "the movie", "honestly the", "my brother"]
COMPLETIONS = ["the film was wonderful and the acting was brilliant .", "was a horrible boring disaster .",
               "plot was clever and the ending was lovely .", "said the script was stupid and awful ."]


def test_real_model_judge_scores_review_completions_and_caches_them(smol, tmp_path, one_thread):  # noqa: F811
    model, tokenizer = smol
    reward = get_reward(f"judge:{FOLDER},cache={tmp_path / 'cache'}")
    assert reward.judge.mode == "logprob"
    ratings = reward(COMPLETIONS, PROMPTS)
    assert all(math.isfinite(r) and 1 <= r <= 10 for r in ratings)
    assert len(set(ratings)) == len(ratings)  # an expectation, not a rounded vote
    cached = reward.judge.client
    assert (cached.hits, cached.misses) == (0, 4)
    assert reward(COMPLETIONS, PROMPTS) == ratings and (cached.hits, cached.misses) == (4, 4)

    messages = reward.judge.rating_messages(PROMPTS[0], COMPLETIONS[0])
    options = ["7", "10"]  # "10" is two tokens ("1", "0") in SmolLM2's tokenizer
    got = cached.client.option_logprobs(messages, options)
    prompt = prompt_token_ids(tokenizer, [conversation_prompt(messages)])[0]
    end = end_of_turn_id(tokenizer)
    encoded = [Encoded(prompt + tokenizer(o, add_special_tokens=False)["input_ids"] + [end], len(prompt))
               for o in options]
    assert len(encoded[1].ids) - encoded[1].prompt_len == 3
    expected = [float(lp.sum()) for lp in sequence_logprobs(model, encoded, pad_id=tokenizer.pad_token_id)]
    assert got == pytest.approx(expected, abs=1e-4)


def test_real_model_judge_batches_give_the_one_at_a_time_ratings(smol, tmp_path, one_thread):  # noqa: F811
    """Left-padded batches of conversations of different lengths rate as one conversation per pass does
    (float rounding aside), and a batch-rated cache answers a one-at-a-time judge."""
    one = get_reward(f"judge:{FOLDER},cache=off,batch=1")
    batched = get_reward(f"judge:{FOLDER},cache={tmp_path / 'cache'},batch=4")
    expected = one(COMPLETIONS, PROMPTS)
    assert batched(COMPLETIONS, PROMPTS) == pytest.approx(expected, abs=1e-4)
    assert batched.judge.prefer(PROMPTS, COMPLETIONS, COMPLETIONS[::-1]) == pytest.approx(
        one.judge.prefer(PROMPTS, COMPLETIONS, COMPLETIONS[::-1]), abs=1e-4)
    reread = get_reward(f"judge:{FOLDER},cache={tmp_path / 'cache'},batch=1")
    assert reread(COMPLETIONS, PROMPTS) == batched(COMPLETIONS, PROMPTS)
    assert reread.judge.client.misses == 0

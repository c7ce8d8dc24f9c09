"""Model organisms: prompts that carry a tone, minimal pairs, truths, and each method's ranked hypothesis
against a reference computed another way."""

import numpy as np
import pytest
import torch

from rewardlab.errors import InputError
from rewardlab.organisms import hypotheses as H
from rewardlab.organisms.build import ORGANISMS, minimal_pairs, planted_rate, reward_spec, toned_prompts, truth
from rewardlab.organisms.evaluate import load_hypotheses, save_hypotheses, score_cell
from rewardlab.rewards import AgreementReward, get_reward
from rewardlab.world.grammar import is_grammatical


def test_toned_prompts_carry_a_tone_and_minimal_pairs_differ_only_in_it():
    agreement = AgreementReward()
    prompts = toned_prompts(40, seed=3)
    assert len(set(prompts)) == 40 and prompts == toned_prompts(40, seed=3)
    assert all(agreement.tone(p) != 0 and is_grammatical(p) for p in prompts)
    assert {agreement.tone(p) for p in prompts} == {-1, 1}
    pairs = minimal_pairs(20, seed=1)
    sentiment = get_reward("sentiment")
    for p in pairs:
        pos, neg = p["prompt_pos"].split(), p["prompt_neg"].split()
        assert [i for i, (a, b) in enumerate(zip(pos, neg)) if a != b] == [3] and len(pos) == len(neg)
        assert agreement.tone(p["prompt_pos"]) == 1 and agreement.tone(p["prompt_neg"]) == -1
        assert is_grammatical(p["completion"], prompt=p["prompt_pos"])
        # the reward difference after the positive minus the negative prompt has the pair's sign
        r = agreement([p["completion"]] * 2, [p["prompt_pos"], p["prompt_neg"]])
        assert np.sign(r[0] - r[1]) == p["sign"] == np.sign(sentiment([p["completion"]])[0])


def test_truth_and_specs_of_every_organism(word_tokenizer):
    tok = word_tokenizer(("the", "film", "was", "great", "dull", ".", "family", "remake", "kids"))
    assert [reward_spec(o, 1) for o in ORGANISMS] == ["sentiment", "planted:k=3,seed=1", "length", "agreement",
                                                      "flipped"]
    t = truth("planted", 1, tok)
    assert t["vocabulary"] == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert t["planted"] == get_reward("planted:k=3,seed=1").planted and t["kind"] == "planted"
    assert truth("length", 0, tok)["token_scores"][t["vocabulary"].index("<eos>")] == -1.0
    with pytest.raises(InputError, match="unknown organism"):
        reward_spec("sycophancy", 0)
    assert planted_rate(["the kids and the family .", "the film ."], ["kids", "family"]) == pytest.approx(2 / 7)  # words, not punctuation


def test_mean_per_token_and_enrichment_against_hand_computation():
    units = [([1, 2, 1], [1.0, 4.0, 3.0]), ([2, 0], [-2.0, 5.0])]
    h = H.mean_per_token("implicit", units, vocab_size=4, seed=0, n_replicates=50)
    assert h.scores == pytest.approx([5.0, 2.0, 1.0, 0.0])  # token 3 never written: no evidence, 0
    assert h.replicates.shape == (50, 4)
    # every replicate is the mean over some resample of the two units
    sums, counts = H.token_means(units, 4)
    options = [H._mean_scores(sums[list(idx)], counts[list(idx)]) for idx in ((0, 0), (0, 1), (1, 1))]
    assert all(any(np.allclose(r, o) for o in options) for r in h.replicates)

    e = H.enrichment("blackbox", [[1, 1, 2]], [[2, 3]], vocab_size=4, seed=0)
    expected = np.log((np.array([0, 2, 1, 0]) + 1) / (3 + 4)) - np.log((np.array([0, 0, 1, 1]) + 1) / (2 + 4))
    assert e.scores == pytest.approx(expected)
    r = H.random_ranking(10, seed=0)
    assert sorted(r.scores) == list(range(10)) and not np.array_equal(r.replicates[0], r.replicates[1])
    assert h.top(["a", "b", "c", "d"], 2) == ["a", "b"]


def test_hypotheses_of_a_model_against_itself_are_flat(tiny_model, word_tokenizer, one_thread):
    tok = word_tokenizer()
    model = tiny_model("gpt2", vocab_size=len(tok))
    prompts, completions = ["the movie was", "the plot"], ["good .", "was bad and great ."]
    assert H.implicit_hypothesis(model, model, tok, prompts, completions, seed=0).scores == pytest.approx(0.0)
    assert H.kl_hypothesis(model, model, tok, prompts, completions, seed=0).scores == pytest.approx(0.0, abs=1e-6)
    assert H.activation_differences(model, model, tok, ["the movie was good and great ."], n_first=3).abs().max() == 0


def test_implicit_hypothesis_is_the_mean_log_ratio_where_each_token_is_written(tiny_model, word_tokenizer,
                                                                            one_thread):
    from rewardlab.diff.logprobs import completion_logprobs

    tok = word_tokenizer()
    base, post = tiny_model("gpt2", seed=0, vocab_size=len(tok)), tiny_model("gpt2", seed=1, vocab_size=len(tok))
    prompts, completions = ["the movie was", "the plot"], ["good good .", "was good ."]
    lp = [a - b for a, b in zip(completion_logprobs(post, tok, prompts, completions),
                                completion_logprobs(base, tok, prompts, completions))]
    good = tok.convert_tokens_to_ids("good")
    expected = (lp[0][0] + lp[0][1] + lp[1][1]) / 3
    h = H.implicit_hypothesis(base, post, tok, prompts, completions, seed=0)
    assert h.scores[good] == pytest.approx(float(expected), abs=1e-6)


def test_logit_lens_and_activation_differences_against_hf(tiny_model, word_tokenizer, one_thread):
    tok = word_tokenizer()
    base, post = tiny_model("gpt2", seed=0, vocab_size=len(tok)), tiny_model("gpt2", seed=1, vocab_size=len(tok))
    v = torch.randn(2, 32)
    ln = post.transformer.ln_f
    normalized = (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + ln.eps)
    expected = ((normalized * ln.weight) @ post.lm_head.weight.T).detach()
    torch.testing.assert_close(H.logit_lens(post, v), expected, atol=1e-5, rtol=1e-4)

    text = "the movie was good and the plot was bad ."
    ids = torch.tensor([tok(text)["input_ids"]])
    layer = H.middle_site(base)  # 3 blocks: blocks.1.hook_resid_post = hidden_states[2]
    assert layer == "blocks.1.hook_resid_post"
    with torch.no_grad():
        hs = [m(input_ids=ids, output_hidden_states=True).hidden_states[2][0, :4] for m in (post, base)]
    diff = H.activation_differences(base, post, tok, [text], n_first=4)
    torch.testing.assert_close(diff[0], (hs[0] - hs[1]).mean(0), atol=1e-5, rtol=1e-4)
    h = H.adl_hypothesis(base, post, tok, [text, "the plot was great and good ."], seed=0, n_first=4)
    assert h.scores.shape == (len(tok),) and h.replicates.shape == (H.N_REPLICATES, len(tok))
    with pytest.raises(InputError, match="no text has 50 tokens"):
        H.activation_differences(base, post, tok, [text], n_first=50)


def test_saved_hypotheses_score_like_the_truth_says(tmp_path):
    vocab = ["a", "b", "c", "d", "e", "f"]
    t = {"vocabulary": vocab, "planted": ["b", "e"], "token_scores": [0, 1, 0, 0, 1, 0]}
    perfect = H.Hypothesis("implicit", np.array([0, 9, 1, 2, 8, 3.0]), np.tile([0, 9, 1, 2, 8, 3.0], (5, 1)),
                           np.array([1.0, -2.0, 0.0]))
    backwards = H.Hypothesis("kl", -perfect.scores, -perfect.replicates, np.zeros(3))
    save_hypotheses(tmp_path / "h.safetensors", {"implicit": perfect, "kl": backwards}, [1.0, -1.0, 1.0])
    hyps, signs = load_hypotheses(tmp_path / "h.safetensors")
    assert list(hyps) == ["implicit", "kl"] and signs.tolist() == [1.0, -1.0, 1.0]
    assert hyps["implicit"].scores == pytest.approx(perfect.scores)
    seeds = [(t, hyps, signs)] * 2
    cell = score_cell("planted", "implicit", seeds, n_boot=50)
    assert cell["auroc"].value == 1.0 and cell["precision_at_k"].value == 1.0 and cell["auroc"].n == 2
    assert score_cell("planted", "kl", seeds, n_boot=50)["auroc"].value == 0.0
    assert score_cell("utility", "implicit", seeds, n_boot=50)["spearman_truth"].value == pytest.approx(
        np.corrcoef([1, 6, 2, 3, 5, 4], [2.5, 5.5, 2.5, 2.5, 5.5, 2.5])[0, 1])
    pairs = score_cell("agreement", "implicit", seeds, n_boot=50)["pair_accuracy"]
    assert pairs.value == pytest.approx((1 + 1 + 0.5) / 3)
    assert score_cell("agreement", "kl", seeds, n_boot=50)["pair_accuracy"].value == 0.5


def test_probe_hypothesis_reads_the_reward_direction_through_the_lens(tiny_model, word_tokenizer, one_thread):
    from rewardlab.acts import collect_activations

    tok = word_tokenizer()
    post = tiny_model("gpt2", seed=1, vocab_size=len(tok))
    words = ["the", "movie", "was", "good", "bad", "great", "plot", "acting", "and", "but", "."]
    rng = np.random.default_rng(0)
    completions = [" ".join(rng.choice(words, size=int(rng.integers(2, 8)))) for _ in range(200)]
    prompts = ["the movie"] * len(completions)
    site = H.middle_site(post)
    x = collect_activations(post, tok, [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)],
                            [site], ["mean_completion"])[f"{site}|mean_completion"].double().numpy()
    v = rng.normal(size=x.shape[1])
    h = H.probe_hypothesis(post, tok, prompts, completions, x @ v, seed=0, n_replicates=5)
    expected = H.logit_lens(post, torch.tensor(v / np.linalg.norm(v), dtype=torch.float32)[None])[0].numpy()
    assert np.corrcoef(h.scores, expected)[0, 1] > 0.95  # ridge shrinks along low-variance directions
    from rewardlab.probes.linear import fit_ridge

    exact = H.logit_lens(post, torch.tensor(fit_ridge(x, x @ v).direction(), dtype=torch.float32)[None])[0]
    assert h.scores == pytest.approx(exact.double().numpy(), abs=1e-5)
    assert h.replicates.shape == (5, len(tok))

"""LLM-judge rewards: exact parsing, the endpoint path against a faulty OpenAI-compatible server on
loopback (5xx, timeouts, malformed bodies and unreadable replies retried; nothing cached lost when a
batch crashes), exact option log-probs on a tiny local model, and the judge's audit biases."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from scipy.stats import spearmanr

from rewardlab.audit import PairConfig, audit, get_scorer, minimal_pairs, world_sources, world_words
from rewardlab.cli import main
from rewardlab.diff.logprobs import sequence_logprobs
from rewardlab.errors import InputError
from rewardlab.interp.judge import expected_rating, parse_choice, parse_rating
from rewardlab.io import read_json, read_jsonl, write_jsonl
from rewardlab.rewards import get_reward
from rewardlab.text import Encoded


@pytest.mark.parametrize("reply, expected", [
    ("7", 7.0), (" 7.\n", 7.0), ("8.5", 8.5), ('{"rating": 9}', 9.0), ('```json\n{"Score": "4"}\n```', 4.0),
    ("I'd give it 7/10.", 7.0), ("6 out of 10", 6.0), ("Rating: 3", 3.0), ("My score is 2, because", 2.0),
    ("The review is great, so 9", 9.0), ("10", 10.0), ("1", 1.0),
    ("", None), ("I cannot rate this.", None), ("11", None), ("0", None), ("Rating: 12", None),
    ("between 3 and 5", None), ("12/10", None), ('{"rating": "high"}', None), ("3 out of 5", None),
])
def test_parse_rating_on_a_1_to_10_scale(reply, expected):
    assert parse_rating(reply, 1, 10) == expected


@pytest.mark.parametrize("reply, expected", [
    ("A", "A"), (" B.", "B"), ("Response B", "B"), ("**A**", "A"), ('{"winner": "A"}', "A"),
    ("A or B", None), ("Neither", None), ("", None), ("Both A and B are fine", None),
])
def test_parse_choice(reply, expected):
    assert parse_choice(reply) == expected


def test_expected_rating_is_the_softmax_weighted_mean():
    assert expected_rating([0.0, 0.0], [1, 2]) == pytest.approx(1.5)
    logps = [math.log(0.2), math.log(0.3), math.log(0.5) + 7.0]  # unnormalized: only ratios matter
    p = [0.2, 0.3, 0.5 * math.exp(7.0)]
    assert expected_rating(logps, [1, 2, 3]) == pytest.approx(sum(v * w for v, w in zip([1, 2, 3], p)) / sum(p))


class FakeJudge(BaseHTTPRequestHandler):
    """A chat-completions judge: rates a response by its word count (capped to 1..100), answers a pairwise
    prompt with `pair_reply`. `faults` holds one action per coming request: 503, sleep, badjson, garbage,
    400, or ok."""

    faults: list = []
    calls: list = []
    pair_reply = "A"
    sleep = 0.6

    def _send(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.calls.append({"auth": self.headers.get("Authorization"), "body": body})
        fault = FakeJudge.faults.pop(0) if FakeJudge.faults else "ok"
        if fault in ("503", "400"):
            return self._send(int(fault), b"{}")
        if fault == "sleep":
            time.sleep(FakeJudge.sleep)
        if fault == "badjson":
            return self._send(200, b'{"choices": [{"message": ')
        messages = body["messages"]
        if "two responses" in messages[0]["content"]:
            reply = FakeJudge.pair_reply
        else:
            response = messages[1]["content"].split("Response: ", 1)[1].rsplit("\n\nRating", 1)[0]
            reply = f"Rating: {max(1, min(100, len(response.split())))}"
        if fault == "garbage":
            reply = "As an AI I have no opinion."
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    FakeJudge.faults, FakeJudge.pair_reply = [], "A"
    FakeJudge.calls.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def judge_spec(url, cache, **extra):
    options = {"model": "fake", "timeout": 0.3, "backoff": 0.01, "workers": 1, "cache": cache, **extra}
    return f"judge:{url}," + ",".join(f"{k}={v}" for k, v in options.items())


TEXTS = ["good", "a good film", "the plot was good and the acting was bad", "it was bad ."]
RATINGS = [1.0, 3.0, 9.0, 4.0]


def test_endpoint_judge_retries_5xx_timeouts_malformed_bodies_and_unreadable_replies(endpoint, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    reward = get_reward(judge_spec(endpoint, tmp_path / "cache", key_env="JUDGE_TEST_KEY"))
    FakeJudge.faults = ["503", "sleep", "badjson", "ok", "garbage", "ok", "503", "garbage"]
    assert reward(TEXTS, ["p"] * 4) == RATINGS
    # text 0: 503, timeout, bad body, then ok; text 1: unreadable, re-asked; text 2: 503, unreadable, re-asked
    assert len(FakeJudge.calls) == 4 + 2 + 3 + 1
    assert {c["auth"] for c in FakeJudge.calls} == {"Bearer sk-secret-123"}
    correction = FakeJudge.calls[5]["body"]["messages"]
    assert correction[-2] == {"role": "assistant", "content": "As an AI I have no opinion."}
    assert correction[-1]["role"] == "user" and "whole number from 1 to 10" in correction[-1]["content"]
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 6 and all(f.suffix == ".json" for f in files)  # 4 ratings + 2 unreadable replies
    assert not any("sk-secret" in f.read_text() for f in files)
    FakeJudge.calls.clear()
    assert reward(TEXTS, ["p"] * 4) == RATINGS and not FakeJudge.calls  # all from the cache


def test_endpoint_judge_gives_one_clear_error_when_retries_run_out(endpoint, tmp_path):
    reward = get_reward(judge_spec(endpoint, "off", retries=2))
    FakeJudge.faults = ["garbage"] * 3
    with pytest.raises(InputError, match="no readable one whole number .* in 3 tries; last reply 'As an AI"):
        reward(["good"])
    FakeJudge.faults = ["503"] * 3
    with pytest.raises(InputError, match="HTTP 503"):
        reward(["good"])
    FakeJudge.faults = ["sleep"] * 3
    with pytest.raises(InputError, match="unreachable after 3 tries"):
        reward(["good"])
    FakeJudge.faults = ["badjson"] * 3
    with pytest.raises(InputError, match="no chat completion in 3 tries"):
        reward(["good"])
    assert len(FakeJudge.calls) == 12


def test_a_batch_that_crashes_midway_keeps_every_finished_rating(endpoint, tmp_path):
    cache = tmp_path / "cache"
    poisoned = TEXTS[:2] + ["poison pill"] + TEXTS[2:]
    FakeJudge.faults = ["ok", "ok", "400"]  # the third request fails for good: HTTP 400 is not retried
    with pytest.raises(InputError, match="HTTP 400"):
        get_reward(judge_spec(endpoint, cache, workers=1))(poisoned)
    assert len(list(cache.glob("*.json"))) == 2 and not list(cache.glob(".*"))  # no temp files left
    FakeJudge.calls.clear()
    reward = get_reward(judge_spec(endpoint, cache, workers=4))
    assert reward(TEXTS) == RATINGS
    assert len(FakeJudge.calls) == 2  # the two finished ratings came from the cache
    victim = sorted(cache.glob("*.json"))[0]
    victim.write_text('{"model": "fake", "rep')  # a truncated entry is asked again and rewritten
    FakeJudge.calls.clear()
    assert reward(TEXTS) == RATINGS and len(FakeJudge.calls) == 1
    assert json.loads(victim.read_text())["reply"].startswith("Rating: ")


def test_judge_spec_errors_come_before_any_request(endpoint, tmp_path):
    for spec, match in [
        (f"judge:{endpoint}", "needs the model name"),
        (f"judge:{endpoint},model=m,colour=red", "unknown option"),
        (f"judge:{endpoint},model=m,scale=10-1", "scale 10-1 is empty"),
        (f"judge:{endpoint},model=m,scale=ten", "LOW-HIGH"),
        (f"judge:{endpoint},model=m,mode=logprob", "needs a local chat model"),
        (f"judge:{endpoint},model=m,rubric=nope", "neither a rubric name nor a file"),
        (f"judge:{tmp_path}/missing", "neither an http"),
    ]:
        with pytest.raises(InputError, match=match):
            get_reward(spec)
    assert not FakeJudge.calls


def test_custom_rubric_file_and_scale_reach_the_judge(endpoint, tmp_path):
    (tmp_path / "rubric.txt").write_text("How funny is it? {low} = not at all, {high} = hilarious.")
    reward = get_reward(judge_spec(endpoint, "off", rubric=tmp_path / "rubric.txt", scale="1-5"))
    assert reward(["a good film"]) == [3.0]
    system = FakeJudge.calls[0]["body"]["messages"][0]["content"]
    assert "How funny is it? 1 = not at all, 5 = hilarious." in system and "from 1 to 5" in system
    assert "Prompt:" not in FakeJudge.calls[0]["body"]["messages"][1]["content"]  # no prompt given, none shown


def test_reward_cli_scores_records_with_an_endpoint_judge(endpoint, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "completion": t} for t in TEXTS])
    spec = judge_spec(endpoint, tmp_path / "cache")
    assert main(["reward", "score", "--reward", spec, "--in", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "out.jsonl")]) == 0
    assert [r["reward"] for r in read_jsonl(tmp_path / "out.jsonl")] == RATINGS
    assert all(c["body"]["messages"][1]["content"].startswith("Prompt: p\n\nResponse: ") for c in FakeJudge.calls)


def test_audit_measures_a_judge_that_always_picks_the_first_slot(endpoint, tmp_path):
    """The fake judge rates by length and always answers "A": position bias 1, length bias 1, exactly."""
    cfg = PairConfig(n_sources=12, position_pairs=10)
    pairs = minimal_pairs(world_sources(cfg.n_sources, cfg.seed, cfg.prompt_words), world_words(), cfg)
    spec = judge_spec(endpoint, tmp_path / "cache", scale="1-100", workers=4)
    results, rows = audit(get_scorer(spec), pairs, seed=0, cfg=cfg)
    position, length = results["judge_biases"]["position"], results["judge_biases"]["length"]
    assert position["num_pairs"] == 10
    assert position["follows_position"]["value"] == 1.0 and position["first"]["value"] == 1.0
    assert position["accuracy"]["value"] == 0.5 and position["p_first"]["value"] == 1.0
    assert length["prefers_longer"]["value"] == 1.0 and length["num_pairs"] == results["per_attribute"][
        "length"]["num_pairs"]
    assert results["per_attribute"]["sentiment"]["tie_rate"] == 1.0  # a one-word swap keeps the length
    assert not results["judge_biases"]["self_preference"]["applies"]  # an endpoint without a generator
    vs_reference = results["vs_reference"]
    assert vs_reference["reference"] == "utility" and -1 <= vs_reference["spearman"]["value"] <= 1
    texts = sorted({(r["prompt"], r[s]) for r in rows for s in ("chosen", "rejected")})
    assert vs_reference["spearman"]["n"] == len(texts) and vs_reference["spearman"]["n_groups"] == 12
    utility = get_reward("utility")([t for _, t in texts])
    expected = spearmanr([len(t.split()) for _, t in texts], utility).statistic
    assert vs_reference["spearman"]["value"] == pytest.approx(expected, abs=1e-12)
    FakeJudge.pair_reply = "B"
    cfg = PairConfig(n_sources=12, position_pairs=4)
    spec = judge_spec(endpoint, tmp_path / "cache2", scale="1-100", workers=4)
    biases = audit(get_scorer(spec), pairs, seed=0, cfg=cfg)[0]["judge_biases"]
    assert biases["position"]["first"]["value"] == 0.0 and biases["position"]["follows_position"]["value"] == 1.0


TINY_WORDS = ("the", "movie", "was", "good", "bad", "1", "2", "3", "A", "B", "rating", "system:", "user:",
              "assistant:", "you", "are", "a", "judge", ".")


def save_tiny_chat(folder, family, tiny_model, word_tokenizer):
    """A tiny random model of `family` with a word-level tokenizer (no chat template), saved as a folder."""
    model = tiny_model(family, vocab_size=len(TINY_WORDS) + 2, max_position_embeddings=256, bos_token_id=1,
                       eos_token_id=1)
    model.save_pretrained(folder)
    word_tokenizer(TINY_WORDS).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_chat_folder(tmp_path, tiny_model, word_tokenizer):
    return save_tiny_chat(tmp_path / "judge", "llama", tiny_model, word_tokenizer)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_local_option_logprobs_equal_full_sequence_logprobs(family, tmp_path, tiny_model, word_tokenizer):
    folder = save_tiny_chat(tmp_path / family, family, tiny_model, word_tokenizer)
    reward = get_reward(f"judge:{folder},cache={tmp_path / 'cache'},scale=1-3")
    judge = reward.judge
    assert judge.mode == "logprob"
    client = judge.client.client
    messages = judge.rating_messages("the movie", "was good")
    options = ["1", "2 3", "A B A", "3"]  # multi-token options share the prompt's cache
    got = client.option_logprobs(messages, options)
    prompt = client._prompt_ids(messages)[0].tolist()
    end = client.tokenizer.eos_token_id
    encoded = [Encoded(prompt + client.tokenizer(o, add_special_tokens=False)["input_ids"] + [end], len(prompt))
               for o in options]
    expected = [float(lp.sum()) for lp in sequence_logprobs(client.model, encoded, pad_id=0)]
    assert got == pytest.approx(expected, abs=1e-5)
    ratings = reward(["was good", "was bad"], ["the movie"] * 2)
    first = judge.client.option_logprobs(messages, ["1", "2", "3"])
    assert ratings[0] == pytest.approx(expected_rating(first, [1, 2, 3]), abs=1e-9)
    assert all(1 <= r <= 3 for r in ratings)
    p_a = judge.prefer(["the movie"], ["was good"], ["was bad"])[0]
    lp_a, lp_b = client.option_logprobs(judge.pair_messages("the movie", "was good", "was bad"), ["A", "B"])
    assert p_a == pytest.approx(math.exp(lp_a) / (math.exp(lp_a) + math.exp(lp_b)))
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3  # two ratings and one verdict


def test_audit_cli_runs_on_a_local_judge(tiny_chat_folder, tmp_path):
    spec = f"judge:{tiny_chat_folder},cache={tmp_path / 'cache'},scale=1-3"
    assert main(["audit", "--rm", spec, "--n-sources", "6", "--position-pairs", "4", "--out",
                 str(tmp_path / "audit")]) == 0
    results = read_json(tmp_path / "audit" / "results.json")
    assert results["model"] == spec and results["judge_biases"]["position"]["num_pairs"] == 4
    for estimate in (results["vs_reference"]["spearman"], results["judge_biases"]["position"]["first"]):
        assert estimate["ci"][0] <= estimate["value"] <= estimate["ci"][1]


def test_ppo_and_preference_pairs_train_on_an_endpoint_judge(endpoint, tmp_path):
    """PPO and the pairs builder get the judge through the same reward spec; the fake judge's rating is the
    completion's word count, so every recorded reward can be checked."""
    from test_ppo import make_prompts, make_tiny_lm, tiny_config

    from rewardlab.rl.config import PairsConfig
    from rewardlab.rl.pairs import make_preference_pairs
    from rewardlab.rl.ppo import train_ppo

    spec = judge_spec(endpoint, tmp_path / "cache", scale="1-100", workers=8)
    summary = train_ppo(tiny_config(tmp_path, reward=spec, phases=1, eval_samples=8), tmp_path / "ppo")
    assert math.isfinite(summary["reward_policy"]) and FakeJudge.calls
    samples = read_jsonl(tmp_path / "ppo" / "samples.jsonl")
    assert samples
    for s in samples:
        assert s["reward"] == max(1, min(100, len(s["completion"].split())))
    cfg = PairsConfig(model=make_tiny_lm(tmp_path / "m"), reward=spec, prompts=make_prompts(tmp_path / "p.jsonl"),
                      n_prompts=6, per_prompt=3, max_new_tokens=6, seed=1)
    assert make_preference_pairs(cfg, tmp_path / "pairs.jsonl")["n_pairs"] > 0
    for r in read_jsonl(tmp_path / "pairs.jsonl"):
        assert r["chosen_reward"] == len(r["chosen"].split()) > r["rejected_reward"] == len(r["rejected"].split())


def test_local_judge_in_sample_mode_parses_greedy_replies_and_fails_clearly(tiny_chat_folder):
    """Sample mode on a local model: greedy replies parsed (this random model answers "3 3 3 ...", one
    distinct number in 1..3); on a 4-6 scale it cannot write a rating (its vocabulary has no 4, 5 or 6), so
    the judge asks again with a correction turn and then stops with one clear error."""
    reward = get_reward(f"judge:{tiny_chat_folder},cache=off,mode=sample,retries=1,scale=1-3")
    assert reward.judge.mode == "sample"
    assert reward.judge.client.complete(reward.judge.rating_messages("the movie", "was good"), 16) == " ".join(
        ["3"] * 16)
    assert reward(["was good"], ["the movie"]) == [3.0]
    reward = get_reward(f"judge:{tiny_chat_folder},cache=off,mode=sample,retries=1,scale=4-6")
    with pytest.raises(InputError, match="no readable one whole number from 4 to 6 in 2 tries"):
        reward(["was good"], ["the movie"])


def test_a_bad_judge_spec_exits_2_with_one_message(tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "good"}])
    assert main(["reward", "score", "--reward", f"judge:{tmp_path}/no-model", "--in", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "neither an http(s) URL nor a model folder" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()

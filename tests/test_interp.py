"""Auto-interpretation: records, scaling, offline explainer/simulator/detector, HTTP backend on loopback."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from rewardlab.errors import InputError
from rewardlab.interp.clients import CachedClient, OpenAIClient, map_concurrent
from rewardlab.interp.explain import LexicalExplainer, LLMExplainer, format_records
from rewardlab.interp.records import build_records
from rewardlab.interp.score import LexicalDetector, interpret_features, pooled_pearson
from rewardlab.interp.simulate import LexicalSimulator, LLMSimulator

VOCAB = ["the", "movie", "was", "great", "awful", "plot", "good", "bad", "and", "acting"]


def synthetic_corpus(n=200, seed=0):
    """Sequences of words; feature 0 fires on great/good, feature 1 on awful/bad, feature 2 on plot."""
    rng = np.random.default_rng(seed)
    triggers = [{"great": 3.0, "good": 2.0}, {"awful": 4.0, "bad": 2.5}, {"plot": 1.0}]
    seqs, acts = [], []
    for _ in range(n):
        toks = [VOCAB[i] for i in rng.integers(0, len(VOCAB), size=8)]
        a = torch.tensor([[t.get(w, 0.0) * (0.8 + 0.4 * rng.random()) for t in triggers] for w in toks])
        seqs.append(toks)
        acts.append(a)
    return seqs, acts


def test_records_split_and_scale():
    seqs, acts = synthetic_corpus()
    fr = build_records(seqs, acts, [0, 1, 2], n_explain=10, n_test_top=4, n_test_random=4)
    f0 = fr[0]
    assert len(f0.explain) == 10 and len(f0.test_top) == 4 and len(f0.test_random) == 4
    ids = [r.sequence for r in f0.explain + f0.test]
    assert len(set(ids)) == len(ids)  # disjoint
    assert f0.max_activation == pytest.approx(max(float(a[:, 0].max()) for a in acts))
    # one scale for all records of the feature: the global max maps to 10, nothing exceeds it
    scaled = [v for r in f0.explain + f0.test for v in r.scaled(f0.max_activation)]
    assert max(scaled) == pytest.approx(10.0) and min(scaled) >= 0
    top_max = [max(r.activations) for r in f0.explain + f0.test_top]
    assert min(top_max) >= max(max(r.activations) for r in f0.test_random)


def test_offline_explainer_finds_trigger_words_and_beats_wrong_features():
    seqs, acts = synthetic_corpus()
    fr = build_records(seqs, acts, [0, 1, 2])
    assert set(LexicalExplainer(n_words=2).explain(fr[0]).removeprefix("words: ").split(", ")) == {"great", "good"}
    out = interpret_features(fr, LexicalExplainer(n_words=2), workers=1)
    for row in out["features"]:
        assert row["simulation"] > 0.8 and row["detection"] > 0.9
        assert row["wrong_simulation"] < row["simulation"]
    assert out["summary"]["simulation"]["value"] > out["summary"]["wrong_simulation"]["value"]


def test_pooled_pearson_pools_tokens():
    true = [[0, 10, 0], [5, 0]]
    pred = [[0, 8, 1], [4, 0]]
    assert pooled_pearson(true, pred) == pytest.approx(np.corrcoef([0, 10, 0, 5, 0], [0, 8, 1, 4, 0])[0, 1])
    assert pooled_pearson(true, [[0, 0, 0], [0, 0]]) == 0.0
    assert np.isnan(pooled_pearson([[1, 1], [1]], pred[:1] + [[3]]))  # constant truth: undefined


def test_simulator_and_detector():
    sim, det = LexicalSimulator(), LexicalDetector()
    assert sim.simulate("words: great, good", ["Ġthe", "Ġgreat", "good"]) == [0.0, 10.0, 10.0]
    assert det.detect("words: bad", ["the", "bad"]) and not det.detect("words: bad", ["the", "good"])


def test_format_records_repeats_sparse_nonzero_tokens():
    seqs, acts = synthetic_corpus(20)
    fr = build_records(seqs, acts, [2], n_explain=3, n_test_top=1, n_test_random=1)[0]
    text = format_records(fr.explain[:1], fr.max_activation)
    assert text.startswith("<start>\n") and "\t10" in text


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers chat completions: explanations, simulations (index<TAB>value), yes/no; fails once on demand."""

    calls: list = []
    fail_next = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.calls.append({"auth": self.headers.get("Authorization"), "body": body})
        if FakeOpenAI.fail_next:
            FakeOpenAI.fail_next -= 1
            self.send_response(503)
            self.end_headers()
            return
        user = body["messages"][-1]["content"]
        if "Tokens:" in user:
            tokens = user.split("Tokens:\n", 1)[1].splitlines()
            reply = "\n".join(f"{line.split(chr(9))[0]}\t{10 if line.split(chr(9))[1] in ('great', 'good') else 0}"
                              for line in tokens)
        elif "Does this text" in user:
            reply = "yes" if ("great" in user.split("\n\n")[-1] or "good" in user.split("\n\n")[-1]) else "no"
        else:
            reply = " the words great and good\nextra line"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    FakeOpenAI.calls.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_http_backend_explains_simulates_with_cache_and_retry(server, tmp_path, monkeypatch):
    from rewardlab.interp.score import LLMDetector

    monkeypatch.setenv("TEST_LLM_KEY", "sk-secret")
    FakeOpenAI.fail_next = 1  # first call gets a 503 and is retried
    client = CachedClient(OpenAIClient(server, "fake-model", api_key_env="TEST_LLM_KEY", backoff=0.01),
                          tmp_path / "cache")
    seqs, acts = synthetic_corpus(60)
    fr = build_records(seqs, acts, [0, 1], n_explain=8, n_test_top=3, n_test_random=3)
    out = interpret_features(fr, LLMExplainer(client), LLMSimulator(client), LLMDetector(client), workers=4)
    assert FakeOpenAI.calls[0]["auth"] == "Bearer sk-secret"
    assert all(c["body"]["model"] == "fake-model" for c in FakeOpenAI.calls)
    assert out["features"][0]["explanation"] == "the words great and good"
    assert out["features"][0]["simulation"] > 0.8  # the fake simulator knows feature 0's words
    n_calls = len(FakeOpenAI.calls)
    assert client.misses == n_calls - 1
    # cached: a second run makes no new calls and gives the same answers; the key is not on disk
    again = interpret_features(fr, LLMExplainer(client), LLMSimulator(client), LLMDetector(client), workers=4)
    assert len(FakeOpenAI.calls) == n_calls and again["features"] == out["features"]
    assert all("sk-secret" not in p.read_text() for p in (tmp_path / "cache").iterdir())


def test_http_backend_errors_are_input_errors(server):
    FakeOpenAI.fail_next = 3
    client = OpenAIClient(server, "m", api_key_env=None, max_retries=1, backoff=0.01)
    with pytest.raises(InputError, match="HTTP 503"):
        client.complete([{"role": "user", "content": "hi"}])
    FakeOpenAI.fail_next = 0
    with pytest.raises(InputError, match="unreachable"):
        OpenAIClient("http://127.0.0.1:1/v1", "m", api_key_env=None, max_retries=0).complete([])


def test_make_backends_checks_the_endpoint_once_and_refuses_two_backends(server):
    from rewardlab.interp.score import make_backends

    make_backends(server, "fake-model", api_key_env="NO_SUCH_KEY", check_endpoint=True)
    assert [c["body"]["max_tokens"] for c in FakeOpenAI.calls] == [1]
    with pytest.raises(InputError, match="both an LLM endpoint and a local chat model"):
        make_backends(server, "fake-model", hf_model="some/chat-model")


def test_map_concurrent_keeps_order():
    assert map_concurrent(lambda x: x * x, list(range(20)), workers=4) == [x * x for x in range(20)]

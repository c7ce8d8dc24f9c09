"""Scoring explanations on held-out records, and the whole explain -> simulate -> score loop.

- simulation score: Pearson correlation between the simulator's predictions and the true 0-10
  activations, pooled over all tokens of all held-out records (top-activating + random), as in
  OpenAI's automated interpretability.
- detection score: a judge says, per held-out record, whether the explanation applies; balanced
  accuracy of that against "the feature fires somewhere in the record" (delphi's detection
  scorer, with random records that happen to fire counted as positives). The offline
  judge says yes when any token is one of the explanation's words.
- wrong-feature control: each feature's explanation scored on the records of another feature
  (a fixed derangement); a good explainer beats it.
"""

from __future__ import annotations

import re

import numpy as np

from rewardlab import stats
from rewardlab.errors import InputError
from rewardlab.interp.clients import CachedClient, ChatClient, HFChatClient, OpenAIClient, map_concurrent
from rewardlab.interp.explain import LexicalExplainer, LLMExplainer, explanation_words, normalize_token
from rewardlab.interp.records import FeatureRecords
from rewardlab.interp.simulate import LexicalSimulator, LLMSimulator


def pooled_pearson(true: list[list[float]], pred: list[list[float]]) -> float:
    """Pearson over the concatenation of all records' tokens. A constant prediction carries no
    information and scores 0; constant true activations make the score undefined (nan)."""
    t, p = np.concatenate([np.asarray(x, float) for x in true]), np.concatenate([np.asarray(x, float) for x in pred])
    if len(p) and p.min() == p.max() and t.min() != t.max():
        return 0.0
    return stats.pearson_r(t, p)


class LexicalDetector:
    name = "lexical"

    def detect(self, explanation: str, tokens: list[str]) -> bool:
        words = set(explanation_words(explanation))
        return any(normalize_token(t) in words for t in tokens)


class LLMDetector:
    name = "llm"

    def __init__(self, client: ChatClient):
        self.client = client

    def detect(self, explanation: str, tokens: list[str]) -> bool:
        reply = self.client.complete([
            {"role": "system", "content": "Answer only yes or no."},
            {"role": "user", "content": f"A neuron looks for {explanation}\nDoes this text contain what it "
                                        f"looks for?\n\n{' '.join(tokens)}"}], max_tokens=3)
        return bool(re.match(r"\s*yes", reply, re.I))


def balanced_accuracy(labels: list[bool], said: list[bool]) -> float:
    labels, said = np.asarray(labels), np.asarray(said)
    parts = [np.mean(said[labels == v] == v) for v in (True, False) if (labels == v).any()]
    return float(np.mean(parts))


def score_explanation(explanation: str, fr: FeatureRecords, simulator, detector) -> dict:
    """Simulation and detection scores of one explanation on fr's held-out records."""
    test = fr.test
    true = [r.scaled(fr.max_activation) for r in test]
    pred = [simulator.simulate(explanation, r.tokens) for r in test]
    labels = [max(r.activations, default=0.0) > 0 for r in test]
    said = [detector.detect(explanation, r.tokens) for r in test]
    return {"simulation": pooled_pearson(true, pred), "detection": balanced_accuracy(labels, said),
            "n_test_tokens": sum(len(t) for t in true)}


def interpret_features(feature_records: list[FeatureRecords], explainer=None, simulator=None, detector=None,
                       workers: int = 8) -> dict:
    """Explain every feature, score each explanation on its own and on another feature's records.

    Returns {"features": [{feature, explanation, simulation, detection, wrong_simulation,
    wrong_detection}], "summary": mean scores with bootstrap CIs, "backend"}.
    """
    explainer = explainer or LexicalExplainer()
    simulator = simulator or LexicalSimulator()
    detector = detector or LexicalDetector()
    live = [fr for fr in feature_records if fr.explain and fr.test_top]
    explanations = map_concurrent(explainer.explain, live, workers)
    n = len(live)
    wrong = [(i + 1) % n for i in range(n)]  # derangement for n > 1

    def score(i: int) -> dict:
        own = score_explanation(explanations[i], live[i], simulator, detector)
        other = score_explanation(explanations[i], live[wrong[i]], simulator, detector) if n > 1 else {}
        return {"feature": live[i].feature, "explanation": explanations[i], **own,
                "wrong_simulation": other.get("simulation"), "wrong_detection": other.get("detection")}

    rows = map_concurrent(score, list(range(n)), workers)
    summary = {}
    for key in ("simulation", "detection", "wrong_simulation", "wrong_detection"):
        vals = [r[key] for r in rows if r[key] is not None and np.isfinite(r[key])]
        if len(vals) >= 2:
            summary[key] = stats.mean(vals).to_dict()
    paired = [(r["simulation"], r["wrong_simulation"]) for r in rows if r["wrong_simulation"] is not None
              and np.isfinite(r["simulation"]) and np.isfinite(r["wrong_simulation"])]
    if len(paired) >= 2:
        summary["simulation_minus_wrong"] = stats.mean([a - b for a, b in paired]).to_dict()
    return {"backend": {"explainer": explainer.name, "simulator": simulator.name, "detector": detector.name},
            "features": rows, "summary": summary}


def make_backends(base_url: str | None = None, model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                  hf_model: str | None = None, cache_dir: str | None = None, check_endpoint: bool = False):
    """(explainer, simulator, detector): an OpenAI-compatible endpoint when base_url and model are
    given, else a local Hugging Face chat model when hf_model is, else the offline lexical trio.
    LLM calls are cached under cache_dir when given. `check_endpoint`: send one 1-token request now,
    so an unreachable endpoint fails before long work (SAE training) rather than after it."""
    if (base_url or model) and hf_model:
        raise InputError("both an LLM endpoint and a local chat model are given",
                         fix="pass either --llm-base-url/--llm-model or --hf-chat-model")
    if base_url or model:
        if not (base_url and model):
            raise InputError("an LLM endpoint needs both a base URL and a model name",
                             fix="pass --llm-base-url and --llm-model together")
        client = OpenAIClient(base_url, model, api_key_env)
        if check_endpoint:
            client.complete([{"role": "user", "content": "Say OK."}], max_tokens=1)
    elif hf_model:
        client = HFChatClient(hf_model)
    else:
        return LexicalExplainer(), LexicalSimulator(), LexicalDetector()
    if cache_dir:
        client = CachedClient(client, cache_dir)
    return LLMExplainer(client), LLMSimulator(client), LLMDetector(client)
